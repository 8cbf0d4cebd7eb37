"""How many payload-damaged videos the reader catches, against what it let through before corruption detection.

One clean UCF-101-like video is written (MPEG-4/XVID .avi as `make-dataset` writes it, camera-like grain), then
`--variants` copies with `--flips` random bytes XOR-ed with a random non-zero value at random positions inside the
frame payloads of the AVI `movi` list. Each copy is read two ways:

- before: what the reader did before it checked FFmpeg's corruption flags: decode every frame, a file is caught
  only if FFmpeg raises or fewer frames decode than the header promises (beyond the truncation slack);
- after: the reader now, `iter_clips` over the whole file (every frame decoded and checked) and `load_clip` of
  the centred evaluation clip (decoding stops after the clip's last frame).

A file that is not caught is compared with the clean decode: "identical", "slightly off" (largest per-frame mean
absolute difference <= `--visible` of the range) or "visibly wrong" (above it); that last class is the silently
wrong one. Light: the default run takes about 20 s on one busy core.

    python benchmarks/bench_corrupt_videos.py                   # 30 variants each with 1, 3 and 10 flipped bytes
    python benchmarks/bench_corrupt_videos.py --variants 100 --flips 1
"""

import argparse
import io
import struct
import tempfile
from pathlib import Path

import av
import numpy as np

from vidtwin_gen.data import VideoDecodeError, iter_clips, load_clip, make_embedded_dataset
from vidtwin_gen.data.video_io import _frame_count_slack

NUM_FRAMES, WIDTH, HEIGHT = 70, 160, 120


def payload_ranges(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk's payload in the AVI movi list (chunk headers excluded)."""
    position, end, ranges = data.index(b"movi") + 4, data.index(b"idx1"), []
    while position < end:
        size = struct.unpack_from("<I", data, position + 4)[0]
        if size:
            ranges.append((position + 8, position + 8 + size))
        position += 8 + size + (size & 1)
    return ranges


def damage(data: bytes, ranges: list[tuple[int, int]], flips: int, rng: np.random.Generator) -> bytes:
    offsets = np.concatenate([np.arange(start, end) for start, end in ranges])
    damaged = bytearray(data)
    for position in rng.choice(offsets, size=flips, replace=False):
        damaged[position] ^= int(rng.integers(1, 256))
    return bytes(damaged)


def decode_all(data: bytes) -> tuple[list[np.ndarray], int, bool]:
    """Every frame as grey, the header's frame count, and whether FFmpeg raised (the old reader's only check)."""
    frames, raised = [], False
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="gray").astype(np.float32) / 255)
        except av.FFmpegError:
            raised = True
        return frames, stream.frames, raised


def classify(frames: list[np.ndarray], clean: list[np.ndarray], visible: float) -> tuple[str, float]:
    if len(frames) != len(clean):
        return "visibly wrong", 1.0
    difference = max(float(np.abs(a - b).mean()) for a, b in zip(frames, clean))
    if difference == 0:
        return "identical", 0.0
    return ("slightly off" if difference <= visible else "visibly wrong"), difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=30, help="damaged copies per flip count (default: %(default)s)")
    parser.add_argument("--flips", default="1,3,10", help="comma-separated numbers of damaged bytes (default: %(default)s)")
    parser.add_argument("--visible", type=float, default=0.01,
                        help="largest per-frame mean |difference| (0..1) still called slightly off (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = make_embedded_dataset(Path(folder) / "clean", classes=["RedSquareDrift"], num_groups=3, clips_per_group=1,
                                     num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, grain=3.0)
        source = sorted(Path(root).rglob("*.avi"))[0]
        data = source.read_bytes()
        clean, _, _ = decode_all(data)
        ranges = payload_ranges(data)
        print(f"clean video: {source.name}, {len(data)} bytes, {len(clean)} frames of {WIDTH}x{HEIGHT}, "
              f"{len(ranges)} payload chunks; silently wrong = accepted with a frame off by > {args.visible:g}\n")
        header = (f"{'flips':>5}  {'reader':<26} {'files':>5} {'caught':>6} {'identical':>9} {'slightly off':>12} "
                  f"{'visibly wrong':>13} {'max diff accepted':>17}")
        print(header + "\n" + "-" * len(header))
        rng = np.random.default_rng(args.seed)
        path = Path(folder) / "damaged.avi"
        for flips in (int(n) for n in args.flips.split(",")):
            rows = {name: {"caught": 0, "identical": 0, "slightly off": 0, "visibly wrong": 0, "max": 0.0}
                    for name in ("before (decode, raise only)", "after: iter_clips (file)", "after: load_clip (centre)")}
            for _ in range(args.variants):
                damaged = damage(data, ranges, flips, rng)
                path.write_bytes(damaged)
                frames, expected, raised = decode_all(damaged)
                verdict, difference = classify(frames, clean, args.visible)
                outcomes = {"before (decode, raise only)": raised or len(frames) < expected - _frame_count_slack(expected)}
                try:
                    list(iter_clips(path, 8, (HEIGHT, WIDTH)))
                    outcomes["after: iter_clips (file)"] = False
                except VideoDecodeError:
                    outcomes["after: iter_clips (file)"] = True
                try:
                    clip = load_clip(path, 8, (HEIGHT, WIDTH), target_fps=8.0)
                    reference = load_clip(source, 8, (HEIGHT, WIDTH), target_fps=8.0)
                    clip_difference = float((clip - reference).abs().mean(dim=(0, 2, 3)).max()) / 2  # [-1,1] -> [0,1]
                    outcomes["after: load_clip (centre)"] = False
                except VideoDecodeError:
                    outcomes["after: load_clip (centre)"] = True
                for name, caught in outcomes.items():
                    row = rows[name]
                    if caught:
                        row["caught"] += 1
                        continue
                    if name.startswith("after: load_clip"):  # the clip, not the file, is what this reader hands over
                        kind = ("identical" if clip_difference == 0 else
                                "slightly off" if clip_difference <= args.visible else "visibly wrong")
                        row[kind] += 1
                        row["max"] = max(row["max"], clip_difference)
                    else:
                        row[verdict] += 1
                        row["max"] = max(row["max"], difference)
            for name, row in rows.items():
                print(f"{flips:>5}  {name:<26} {args.variants:>5} {row['caught']:>6} {row['identical']:>9} "
                      f"{row['slightly off']:>12} {row['visibly wrong']:>13} {row['max']:>17.4f}")


if __name__ == "__main__":
    av.logging.set_level(None)  # FFmpeg's own error lines for every damaged frame would drown the table
    main()
