"""Encode+decode throughput and peak memory, eager and compiled: AutoencoderVidTwin vs diffusers' CogVideoX VAE.

    python benchmarks/bench_autoencoder.py            # batch 1, 16x224x224, fp32, CPU, eager + compiled
    python benchmarks/bench_autoencoder.py --quick    # 8x64x64 smoke run (seconds of timing, minutes of compiling)
    python benchmarks/bench_autoencoder.py --modes eager --models vidtwin-released cogvideox

Each (model, mode) runs in its own subprocess so that peak resident memory (ru_maxrss) is its own. "compiled" is
`torch.compile` (inductor; on CPU it needs a C++ compiler) of the whole round trip
`decode(encode(video).latent_dist.mode())`, timed after a warm-up call that compiles it. Weights are random:
speed and memory do not depend on them. Run it alone on the machine: other processes make CPU timings
meaningless (set OMP_WAIT_POLICY=PASSIVE if that is impossible, and say so next to the figures).

The last lines give the CogVideoX/ours time ratio (above 1: ours is faster) for each VidTwin model with both in
eager mode, both compiled, and CogVideoX eager against ours compiled; and how much compiling multiplies the
ratio (the goal for the released size is at least 1.5x).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

MODELS = ["vidtwin-tiny", "vidtwin-released", "cogvideox"]
MODES = ["eager", "compiled"]


def build(name: str, frames: int, size: int):
    if name == "cogvideox":
        from diffusers import AutoencoderKLCogVideoX

        return AutoencoderKLCogVideoX()  # its default config (CogVideoX-2b)
    from vidtwin_gen import AutoencoderVidTwin

    preset = "tiny" if name == "vidtwin-tiny" else "released"
    return AutoencoderVidTwin.from_preset(preset, sample_size=size, num_frames=frames, patch_size=16)


def worker(name: str, mode: str, frames: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build(name, frames, size).eval()
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def round_trip(clip: torch.Tensor) -> torch.Tensor:
        return model.decode(model.encode(clip).latent_dist.mode()).sample

    run = torch.compile(round_trip) if mode == "compiled" else round_trip
    times = []
    with torch.no_grad():
        latent = model.encode(video).latent_dist.mode()  # gives the latent size
        start = time.perf_counter()
        run(video)  # warm-up; compiles in compiled mode
        warmup = time.perf_counter() - start
        for _ in range(repeats):
            start = time.perf_counter()
            run(video)
            times.append(time.perf_counter() - start)
    return {
        "model": name,
        "mode": mode,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "latent_numbers": latent.numel(),
        "latent_pct": 100 * latent.numel() / video.numel(),
        "seconds_per_clip": min(times),
        "warmup_s": warmup,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_MB": rss_model,
    }


def print_ratios(results: dict[tuple[str, str], dict]) -> None:
    def seconds(name, mode):
        return results[(name, mode)]["seconds_per_clip"] if (name, mode) in results else None

    for ours in (name for name in MODELS if name.startswith("vidtwin")):
        ratios = {}
        for label, cog_mode, our_mode in (
            ("both eager", "eager", "eager"),
            ("both compiled", "compiled", "compiled"),
            ("CogVideoX eager / ours compiled", "eager", "compiled"),
        ):
            cog, mine = seconds("cogvideox", cog_mode), seconds(ours, our_mode)
            if cog and mine:
                ratios[label] = cog / mine
                print(f"CogVideoX/{ours} time ratio, {label}: {ratios[label]:.2f}x")
        if "both eager" in ratios and "CogVideoX eager / ours compiled" in ratios:
            gain = ratios["CogVideoX eager / ours compiled"] / ratios["both eager"]
            print(f"  compiling {ours} multiplies the eager ratio by {gain:.2f} (goal >= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8x64x64 clips, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="eager", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    frames, size, repeats = (8, 64, 1) if args.quick else (16, 224, args.repeats)
    if args.worker:
        print(json.dumps(worker(args.worker, args.mode, frames, size, repeats)))
        return

    print(f"batch 1, {frames}x{size}x{size}, fp32, CPU threads {torch.get_num_threads()}, best of {repeats}")
    header = (f"{'model':<18}{'mode':<10}{'params (M)':>11}{'latent numbers':>16}{'% of input':>12}{'s/clip':>9}"
              f"{'warm-up s':>11}{'peak RSS MB':>13}")
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.models:
        for mode in args.modes:
            command = [sys.executable, __file__, "--worker", name, "--mode", mode, "--repeats", str(repeats)]
            result = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines() or ["no output"]
                print(f"{name:<18}{mode:<10} failed: {lines[-1]}")
                continue
            r = json.loads(result.stdout.strip().splitlines()[-1])
            results[(name, mode)] = r
            print(
                f"{r['model']:<18}{r['mode']:<10}{r['params_M']:>11.1f}{r['latent_numbers']:>16,}{r['latent_pct']:>11.3f}%"
                f"{r['seconds_per_clip']:>9.2f}{r['warmup_s']:>11.1f}{r['peak_rss_MB']:>13,.0f}"
            )
    print_ratios(results)


if __name__ == "__main__":
    main()
