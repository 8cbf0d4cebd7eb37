"""Video data loading speed: decoded training clips/s through the DataLoader, and raw decoder frames/s.

Two data sets are written to a temporary folder first:

- embedded: the embedded synthetic set as `vidtwin-gen make-dataset` writes it (160x120, 2.8 s at 25 fps);
- ucf-like: UCF-101's format, 320x240 MPEG-4/XVID .avi at 25 fps, ~7 s per video, with camera-like grain so the
  bitrate (~60 KB/s) and the decoding cost are close to UCF-101's.

Training clips are what the VAE trainer reads: 16 frames at 8 fps (every 3rd frame), random start and crop,
short side resized, as (3, 16, S, S) float tensors in [-1, 1]; batches of 8, `collate_clips`. The target is
>= 40 clips/s of 16x128^2 with 2 workers on 2 cores (enough to keep a GPU training the VAE fed).

    python benchmarks/bench_data.py            # full table
    python benchmarks/bench_data.py --quick    # smoke run (a few seconds of measurement)
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, RandomSampler

from vidtwin_gen.data import UCF101Clips, collate_clips, list_videos, make_embedded_dataset


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets, 2 workers only, few clips")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader worker counts (default 0 1 2)")
    parser.add_argument("--clips", type=int, default=None, help="clips per measurement (default 240, quick 32)")
    args = parser.parse_args()
    workers = args.workers or ([2] if args.quick else [0, 1, 2])
    num_clips = args.clips or (32 if args.quick else 240)
    torch.set_num_threads(1)  # the main process only collates; keep it from competing with the workers
    print(f"CPU cores visible: {os.cpu_count()}, torch {torch.__version__}, PyAV {av.__version__}")

    with tempfile.TemporaryDirectory() as folder:
        sets = make_sets(Path(folder), args.quick)
        print("\nraw decoder (all frames of all videos, one process)")
        print(f"{'set':<10} {'threads':<8} {'decode frames/s':>16} {'+ rgb frames/s':>15}")
        for name, root in sets.items():
            for threads in (False, True):
                decode, rgb = decoder_fps(root, threads)
                print(f"{name:<10} {'auto' if threads else 'none':<8} {decode:>16.0f} {rgb:>15.0f}")

        print(f"\nDataLoader training clips (16 frames at 8 fps, random start/crop, batch 8, {num_clips} clips)")
        print(f"{'set':<10} {'clip':<10} {'workers':>7} {'clips/s':>9}")
        for name, root in sets.items():
            for size in (128, 224):
                for count in workers:
                    rate = loader_clips_per_s(root, size, count, num_clips)
                    print(f"{name:<10} {f'16x{size}^2':<10} {count:>7} {rate:>9.1f}")
    print("\ntarget: >= 40 clips/s of 16x128^2 with 2 workers on 2 cores")


if __name__ == "__main__":
    main()
