"""`vidtwin-gen eval-recon`: PSNR, SSIM and (optionally) LPIPS of AutoencoderVidTwin reconstructions.

Two kinds of test set:

- a UCF-101-layout split (`--data-root --split --subset`): one clip per video, centred in time and space;
- a folder of videos (`--video-dir`, e.g. MCL-JCV): every consecutive clip of each video, centre-cropped
  (the video-tokenizer convention).

Clips have the autoencoder's frame count and size (`vae.sample_shape`) and are sampled at `--fps` (25 by
default, UCF-101's and MCL-JCV's native rate). Reconstructions use the posterior mean and are clamped to
[-1, 1]; PSNR and SSIM are computed on [0, 1] frames (see `metrics`), LPIPS on [-1, 1] frames.
"""

import argparse
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.output_paths import ensure_writable_dir
from ..data.ucf101 import load_video_index
from ..data.video_io import VideoDecodeError, iter_clips, list_videos, load_clip
from ..models import AutoencoderVidTwin
from .lpips import LPIPS
from .metrics import lpips_video, psnr, ssim, to_unit_range

logger = logging.getLogger(__name__)


class _SkipCounter:
    """Turns unreadable videos into a logged, counted skip instead of an error."""

    def __init__(self):
        self.num_skipped = 0

    def skip(self, error: VideoDecodeError) -> None:
        self.num_skipped += 1
        logger.warning("skipping unreadable video: %s", error)


def _ucf101_clips(
    paths: list[str], num_frames: int, size: tuple[int, int], fps: float | None, counter: _SkipCounter
) -> Iterator[torch.Tensor]:
    """One centred clip (3, T, H, W) per video."""
    for path in paths:
        try:
            yield load_clip(path, num_frames, size, fps, mode="center")
        except VideoDecodeError as error:
            counter.skip(error)


def _folder_clips(
    paths: list[str], num_frames: int, size: tuple[int, int], fps: float | None, counter: _SkipCounter
) -> Iterator[torch.Tensor]:
    """Every consecutive clip (3, T, H, W) of every video whose whole file decodes.

    A file's clips are held back until its last frame has decoded: a file found broken halfway is skipped whole,
    so the scores never mix clips of files counted as unreadable (a file's clips are few, the memory small).
    """
    for path in paths:
        try:
            clips = list(iter_clips(path, num_frames, size, fps))
        except VideoDecodeError as error:
            counter.skip(error)
            continue
        yield from clips


@torch.no_grad()
def evaluate_reconstruction(
    vae: torch.nn.Module,
    clips: Iterable[torch.Tensor],
    batch_size: int = 4,
    lpips: torch.nn.Module | None = None,
    max_clips: int | None = None,
) -> dict[str, list[float]]:
    """Per-clip scores of `vae`'s reconstructions of clips (3, T, H, W) in [-1, 1].

    Returns {"psnr": [...], "ssim": [...]} plus "lpips" when an LPIPS module is given, one entry per clip.
    """
    device = next(vae.parameters()).device
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []} | ({"lpips": []} if lpips is not None else {})
    batch: list[torch.Tensor] = []

    def flush() -> None:
        video = torch.stack(batch).to(device)  # (B, 3, T, H, W)
        reconstruction = vae(video).sample.float().clamp(-1, 1)
        real, fake = to_unit_range(video), to_unit_range(reconstruction)
        scores["psnr"] += psnr(real, fake).tolist()
        scores["ssim"] += ssim(real, fake).tolist()
        if lpips is not None:
            scores["lpips"] += lpips_video(lpips, video.float(), reconstruction).tolist()
        batch.clear()

    for clip in tqdm(clips, total=max_clips, desc="reconstructing", unit="clip", disable=None):
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
        if max_clips is not None and len(scores["psnr"]) + len(batch) >= max_clips:
            break
    if batch:
        flush()
    return scores


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidtwin-gen eval-recon", description="PSNR/SSIM (and LPIPS) of AutoencoderVidTwin reconstructions."
    )
    parser.add_argument("--vae", required=True, help="AutoencoderVidTwin folder (from_pretrained)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-root", help="UCF-101-layout folder; evaluates --split/--subset, one centred clip per video")
    data.add_argument("--video-dir", help="folder of videos (e.g. MCL-JCV); evaluates every consecutive clip")
    parser.add_argument("--split", type=int, default=1, help="UCF-101 split 1-3 (default: %(default)s)")
    parser.add_argument("--subset", default="test", choices=("train", "test"), help="UCF-101 subset (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate clips are sampled at (default: %(default)s)")
    parser.add_argument("--max-clips", type=int, help="evaluate at most this many clips (UCF-101: a seeded random subset of videos)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the --max-clips subset (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass (default: %(default)s)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--lpips-vgg", help="torchvision vgg16-397923af.pth (or .safetensors) for LPIPS")
    parser.add_argument("--lpips-lin", help="LPIPS v0.1 vgg.pth lin-layer weights for LPIPS")
    parser.add_argument("--output", default="eval_recon.json", help="report file (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if (args.lpips_vgg is None) != (args.lpips_lin is None):
        parser.error("LPIPS needs both --lpips-vgg and --lpips-lin")
    if args.batch_size < 1 or (args.max_clips is not None and args.max_clips < 1):
        parser.error("--batch-size and --max-clips must be positive")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ensure_writable_dir(Path(args.output).absolute().parent, "--output's folder")

    vae = AutoencoderVidTwin.from_pretrained(args.vae).to(device).eval()
    _, num_frames, height, width = vae.sample_shape
    lpips = None
    if args.lpips_vgg is not None:
        lpips = LPIPS.from_pretrained(args.lpips_vgg, args.lpips_lin).to(device)

    counter = _SkipCounter()
    if args.data_root is not None:
        paths = load_video_index(args.data_root, args.split, args.subset)["path"]
        if args.max_clips is not None and args.max_clips < len(paths):
            # A random subset: the split files are sorted by class, so their head would be a few classes only.
            chosen = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed))[: args.max_clips]
            paths = [paths[i] for i in sorted(chosen.tolist())]
        clips = _ucf101_clips(paths, num_frames, (height, width), args.fps, counter)
        source = {"data_root": str(Path(args.data_root).resolve()), "split": args.split, "subset": args.subset}
    else:
        paths = [str(p) for p in list_videos(args.video_dir)]
        clips = _folder_clips(paths, num_frames, (height, width), args.fps, counter)
        source = {"video_dir": str(Path(args.video_dir).resolve())}
    if not paths:
        raise ValueError(f"no videos found in {args.video_dir or args.data_root}")

    scores = evaluate_reconstruction(vae, clips, args.batch_size, lpips, args.max_clips)
    num_clips = len(scores["psnr"])
    if num_clips == 0:
        raise ValueError(f"none of the {len(paths)} videos could be read ({counter.num_skipped} unreadable)")
    summary = {name: float(np.mean(values)) for name, values in scores.items()}
    report = {
        "vae": str(Path(args.vae).resolve()),
        **source,
        "num_videos": len(paths),
        "num_clips": num_clips,
        "num_skipped": counter.num_skipped,
        "clip_shape": [3, num_frames, height, width],
        "fps": args.fps,
        **summary,
        "std": {name: float(np.std(values)) for name, values in scores.items()},
        "metrics": "PSNR per frame on [0,1] then mean; SSIM 11x11 Gaussian (sigma 1.5), valid region, per channel; "
        "reconstructions clamped to [-1,1]" + ("; LPIPS(VGG16 v0.1) per frame" if lpips is not None else ""),
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")

    names = list(summary)
    print(f"{'clips':>7}  " + "  ".join(f"{name.upper() + (' (dB)' if name == 'psnr' else ''):>10}" for name in names))
    print(f"{num_clips:>7}  " + "  ".join(f"{summary[name]:>10.4f}" for name in names))
    print(f"{num_clips} clips of {num_frames}x{height}x{width} from {len(paths)} videos "
          f"({counter.num_skipped} unreadable); report {args.output}")
    return 0
