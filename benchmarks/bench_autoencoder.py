"""Encode+decode throughput and peak memory: AutoencoderVidTwin (tiny, released) vs diffusers' CogVideoX VAE.

    python benchmarks/bench_autoencoder.py            # batch 1, 16x224x224, fp32, CPU
    python benchmarks/bench_autoencoder.py --quick    # 8x64x64 smoke run

Each model runs in its own subprocess so that peak resident memory (ru_maxrss) is its own. Weights are
random: speed and memory do not depend on them.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

MODELS = ["vidtwin-tiny", "vidtwin-released", "cogvideox"]


def build(name: str, frames: int, size: int):
    if name == "cogvideox":
        from diffusers import AutoencoderKLCogVideoX

        return AutoencoderKLCogVideoX()  # its default config (CogVideoX-2b)
    from vidtwin_gen import AutoencoderVidTwin

    preset = "tiny" if name == "vidtwin-tiny" else "released"
    return AutoencoderVidTwin.from_preset(preset, sample_size=size, num_frames=frames, patch_size=16)


def worker(name: str, frames: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build(name, frames, size).eval()
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.no_grad():
        latent = model.encode(video).latent_dist.mode()  # warm-up, also gives the latent size
        model.decode(latent)
        for _ in range(repeats):
            start = time.perf_counter()
            model.decode(model.encode(video).latent_dist.mode())
            times.append(time.perf_counter() - start)
    return {
        "model": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "latent_numbers": latent.numel(),
        "latent_pct": 100 * latent.numel() / video.numel(),
        "seconds_per_clip": min(times),
        "clips_per_s": 1 / min(times),
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_MB": rss_model,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8x64x64 clips, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    frames, size, repeats = (8, 64, 1) if args.quick else (16, 224, args.repeats)
    if args.worker:
        print(json.dumps(worker(args.worker, frames, size, repeats)))
        return

    print(f"batch 1, {frames}x{size}x{size}, fp32, CPU threads {torch.get_num_threads()}, best of {repeats}")
    header = f"{'model':<18}{'params (M)':>11}{'latent numbers':>16}{'% of input':>12}{'s/clip':>9}{'clips/s':>9}{'peak RSS MB':>13}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        command = [sys.executable, __file__, "--worker", name, "--repeats", str(repeats)] + (["--quick"] if args.quick else [])
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name:<18} failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{r['model']:<18}{r['params_M']:>11.1f}{r['latent_numbers']:>16,}{r['latent_pct']:>11.3f}%"
            f"{r['seconds_per_clip']:>9.2f}{r['clips_per_s']:>9.3f}{r['peak_rss_MB']:>13,.0f}"
        )


if __name__ == "__main__":
    main()
