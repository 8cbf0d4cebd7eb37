"""Data loading speed: decoded training clips/s per DataLoader worker count, raw decoder frames/s, and the
latent-cache reader's samples/s for DiT training.

Two data sets are written to a temporary folder first:

- embedded: the embedded synthetic set as `vidtwin-gen make-dataset` writes it (160x120, 2.8 s at 25 fps);
- ucf-like: UCF-101's format, 320x240 MPEG-4/XVID .avi at 25 fps, ~7 s per video, with camera-like grain so the
  bitrate (~60 KB/s) and the decoding cost are close to UCF-101's.

Training clips are what the VAE trainer reads: 16 frames at 8 fps (every 3rd frame), random start and crop,
short side resized, as (3, 16, S, S) float tensors in [-1, 1]; batches of 8, `collate_clips`; one row per
clip size (16x224^2 is the paper's) and DataLoader worker count. The target is >= 40 clips/s of 16x128^2 with 2
workers on 2 cores (enough to keep a GPU training the VAE fed).

Latent-cache reading is what `train_dit` does with a cache: a DataLoader over the torch-formatted `datasets`
table (shuffle, drop_last, batch `--cache-batch-size`), then z = mean + std * noise per part. The cache is written
by `encode_dataset` from the embedded set with a small random autoencoder whose latents have the released model's
shapes at 16x224^2 (structure 8x16x7x7, dynamics 8x16x14), so rows are paper-sized; the encoded rows are repeated
to `--cache-rows` so that an epoch is long enough for worker start-up not to dominate.

    python benchmarks/bench_data.py                        # full tables
    python benchmarks/bench_data.py --workers 0 2 4 8      # other worker counts
    python benchmarks/bench_data.py --quick                # smoke run (a few seconds of measurement)
"""

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import av
import datasets
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, RandomSampler

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.data import (
    UCF101Clips,
    collate_clips,
    encode_dataset,
    list_videos,
    load_latent_cache,
    make_embedded_dataset,
)

# A CPU-sized autoencoder with the released model's latent shapes at 16x224^2: cache rows of the paper's size.
PAPER_LATENT_VAE = {"sample_size": 224, "num_frames": 16, "patch_size": 16, "num_queries": 16,
                    "structure_channels": 8, "dynamics_channels": 8}


def make_sets(folder: Path, quick: bool) -> dict[str, Path]:
    start = time.perf_counter()
    embedded = make_embedded_dataset(folder / "embedded", num_groups=3 if quick else 6, clips_per_group=1 if quick else 3)
    print(f"wrote the embedded set in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    ucf_like = make_embedded_dataset(
        folder / "ucf-like", classes=["RedSquareDrift", "BlueCircleBounce"] if quick else
        ["RedSquareDrift", "BlueCircleBounce", "GreenTriangleSpin", "YellowStripesFlicker"],
        num_groups=3, clips_per_group=1 if quick else 2, num_frames=175, width=320, height=240, grain=3.0,
    )
    print(f"wrote the UCF-like set in {time.perf_counter() - start:.1f} s")
    return {"embedded": embedded, "ucf-like": ucf_like}


def decoder_fps(root: Path, threads: bool) -> tuple[float, float]:
    """Frames/s of decoding every frame of every video: (decode only, decode + full-size RGB conversion)."""
    rates = []
    to_rgb = VideoReformatter()  # cached scaler context, as in video_io
    for convert in (False, True):
        frames, start = 0, time.perf_counter()
        for path in list_videos(root / "UCF-101"):
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO" if threads else "NONE"
                for frame in container.decode(stream):
                    if convert:
                        to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                    frames += 1
        rates.append(frames / (time.perf_counter() - start))
    return rates[0], rates[1]


def loader_clips_per_s(root: Path, size: int, workers: int, num_clips: int, batch_size: int = 8) -> float:
    """Clips/s after the first batch (worker start-up excluded)."""
    clips = UCF101Clips(root, split=1, subset="train", num_frames=16, size=size, target_fps=8.0, train=True)
    sampler = RandomSampler(clips, replacement=True, num_samples=num_clips + batch_size)
    loader = DataLoader(clips, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_clips)
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        assert batch["video"] is not None and batch["num_skipped"] == 0
        count += batch["video"].shape[0]
    return count / (time.perf_counter() - start)


def build_latent_cache(root: Path, folder: Path) -> Path:
    """A latent cache of `root`'s training split with paper-sized rows (see PAPER_LATENT_VAE)."""
    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny", **PAPER_LATENT_VAE)
    return encode_dataset(vae, root, folder / "latent-cache", batch_size=4, device="cpu")


def cache_samples_per_s(cache_dir: Path, workers: int, batch_size: int, num_samples: int, min_rows: int) -> float:
    """Samples/s of reading the cache as train_dit does, after the first batch (worker start-up excluded)."""
    cache = load_latent_cache(cache_dir)
    table = cache.dataset
    if len(table) < min_rows:
        table = datasets.concatenate_datasets([table] * math.ceil(min_rows / len(table))).with_format("torch")
    if len(table) < batch_size:
        raise ValueError(f"the cache has {len(table)} rows, fewer than --cache-batch-size {batch_size}")
    # As train_dit builds it for a latent cache: default collate, shuffle, drop_last.
    loader = DataLoader(table, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    count, start, first = 0, None, True
    while count < num_samples:
        for batch in loader:
            # train_dit's latents_of with sample_posterior: z = mean + std * noise for both parts.
            latents = [batch[f"{part}_mean"] + batch[f"{part}_std"] * torch.randn_like(batch[f"{part}_mean"])
                       for part in ("structure", "dynamics")]
            if first:
                first, start = False, time.perf_counter()
                continue
            count += latents[0].shape[0]
            if count >= num_samples:
                break
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets, workers 0 and 2, few clips")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader worker counts (default 0 1 2 4)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224],
                        help="clip sides S of 16xS^2 training clips (default 128 224; 224 is the paper's)")
    parser.add_argument("--clips", type=int, default=None, help="clips per measurement (default 240, quick 32)")
    parser.add_argument("--cache-batch-size", type=int, default=32, help="DiT batch size for the cache reader (default 32)")
    parser.add_argument("--cache-samples", type=int, default=None,
                        help="samples per cache measurement (default 20000, quick 512)")
    parser.add_argument("--cache-rows", type=int, default=None,
                        help="cache rows, encoded rows repeated up to this (default 4096, quick 256)")
    parser.add_argument("--skip-decoder", action="store_true", help="skip the raw decoder table")
    args = parser.parse_args()
    workers = args.workers or ([0, 2] if args.quick else [0, 1, 2, 4])
    num_clips = args.clips or (32 if args.quick else 240)
    cache_samples = args.cache_samples or (512 if args.quick else 20000)
    cache_rows = args.cache_rows or (256 if args.quick else 4096)
    torch.set_num_threads(1)  # the main process only collates; keep it from competing with the workers
    print(f"CPU cores visible: {os.cpu_count()}, torch {torch.__version__}, PyAV {av.__version__}")

    with tempfile.TemporaryDirectory() as folder:
        sets = make_sets(Path(folder), args.quick)
        if not args.skip_decoder:
            print("\nraw decoder (all frames of all videos, one process)")
            print(f"{'set':<10} {'threads':<8} {'decode frames/s':>16} {'+ rgb frames/s':>15}")
            for name, root in sets.items():
                for threads in (False, True):
                    decode, rgb = decoder_fps(root, threads)
                    print(f"{name:<10} {'auto' if threads else 'none':<8} {decode:>16.0f} {rgb:>15.0f}")

        print(f"\nDataLoader training clips (16 frames at 8 fps, random start/crop, batch 8, {num_clips} clips)")
        print(f"{'set':<10} {'clip':<10} {'workers':>7} {'clips/s':>9}")
        for name, root in sets.items():
            for size in args.sizes:
                for count in workers:
                    rate = loader_clips_per_s(root, size, count, num_clips)
                    print(f"{name:<10} {f'16x{size}^2':<10} {count:>7} {rate:>9.1f}", flush=True)

        start = time.perf_counter()
        datasets.disable_progress_bars()
        cache_dir = build_latent_cache(sets["embedded"], Path(folder))
        encoded = load_latent_cache(cache_dir)
        row_bytes = sum(encoded.dataset[0][f"{part}_{kind}"].numel() * 4 for part in ("structure", "dynamics")
                        for kind in ("mean", "std"))
        print(f"\nencoded {len(encoded.dataset)} clips into a latent cache in {time.perf_counter() - start:.1f} s "
              f"({row_bytes / 1024:.1f} KiB of latents a row)")
        print(f"latent-cache reader as train_dit reads it (batch {args.cache_batch_size}, {cache_rows} rows, "
              f"{cache_samples} samples)")
        print(f"{'workers':>7} {'samples/s':>10}")
        for count in workers:
            rate = cache_samples_per_s(cache_dir, count, args.cache_batch_size, cache_samples, cache_rows)
            print(f"{count:>7} {rate:>10.0f}", flush=True)
    print("\ntarget: >= 40 clips/s of 16x128^2 with 2 workers on 2 cores")


if __name__ == "__main__":
    main()
