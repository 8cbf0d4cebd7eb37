"""Training the tiny autoencoder on CPU: steps/s, peak memory, and held-out PSNR after 5 minutes.

    python benchmarks/bench_train_vae.py            # embedded data set, train_configs/vae/tiny.yaml, 2 cores
    python benchmarks/bench_train_vae.py --quick    # 1-minute smoke run

Steps/s comes from two runs of different length (their difference cancels start-up, validation and export).
PSNR/SSIM are scored on every held-out clip of the split's test list from the exported model.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "train_configs" / "vae" / "tiny.yaml"


def train(data: Path, output_dir: Path, *extra: str) -> float:
    """Wall seconds of one `train-vae` process."""
    command = [sys.executable, "-m", "vidtwin_gen.training.train_vae", "--config", str(CONFIG), "--data_root", str(data),
               "--output_dir", str(output_dir), "--report_to", "none", "--checkpointing_steps", "100000",
               "--validation_steps", "100000", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def held_out_scores(vae_dir: Path, data: Path) -> dict:
    from vidtwin_gen import AutoencoderVidTwin
    from vidtwin_gen.data.ucf101 import UCF101Clips
    from vidtwin_gen.evaluation.reconstruction import evaluate_reconstruction

    vae = AutoencoderVidTwin.from_pretrained(vae_dir).eval()
    _, frames, height, width = vae.sample_shape
    clips = UCF101Clips(data, 1, "test", frames, (height, width), 8.0, train=False)
    items = (clips[i] for i in range(len(clips)))
    scores = evaluate_reconstruction(vae, (item["video"] for item in items if item is not None), batch_size=8)
    return {"clips": len(scores["psnr"]), "psnr": sum(scores["psnr"]) / len(scores["psnr"]),
            "ssim": sum(scores["ssim"]) / len(scores["ssim"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args()
    minutes = 1.0 if args.quick else args.minutes

    from vidtwin_gen.data.embedded import make_embedded_dataset

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = make_embedded_dataset(folder / "data")
        short, long = (10, 30) if args.quick else (50, 150)
        t_short = train(data, folder / "short", "--max_train_steps", str(short))
        t_long = train(data, folder / "long", "--max_train_steps", str(long))
        steps_per_s = (long - short) / (t_long - t_short)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        train(data, folder / "timed", "--max_train_steps", "1000000", "--max_train_minutes", str(minutes))
        scores = held_out_scores(folder / "timed" / "vae", data)

    print(f"tiny VidTwin ({CONFIG.relative_to(REPO)}), embedded data set, CPU threads {torch.get_num_threads()}")
    print(f"{'training steps/s':<34}{steps_per_s:>10.2f}   (batch 4 clips of 16x32x32)")
    print(f"{'peak resident memory (MB)':<34}{peak_mb:>10,.0f}")
    print(f"{f'held-out PSNR after {minutes:g} min (dB)':<34}{scores['psnr']:>10.2f}   (target >= 25; {scores['clips']} clips)")
    print(f"{f'held-out SSIM after {minutes:g} min':<34}{scores['ssim']:>10.3f}")
    print(json.dumps({"steps_per_s": steps_per_s, "peak_rss_mb": peak_mb, "minutes": minutes, **scores}))


if __name__ == "__main__":
    main()
