"""Writing videos out: decoder output to frames, frames to mp4 + gif files, and frame strips for trackers.

The lowest layer that needs them: the trainers (validation videos), the CLI commands and the demo all write
videos through these, and none of them imports another for it.
"""

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import export_to_gif, export_to_video
from diffusers.video_processor import VideoProcessor

_video_processor = VideoProcessor(do_resize=False)


def decoded_to_frames(video: torch.Tensor) -> np.ndarray:
    """Decoder output (B, 3, T, H, W) in [-1, 1] (unclamped) -> frames (B, T, H, W, 3) in [0, 1] for export.

    diffusers' `VideoProcessor.postprocess_video`, as pipelines return `output_type="np"` frames.
    """
    return _video_processor.postprocess_video(video.detach().float().cpu(), output_type="np")


def export_videos(frames: np.ndarray, output_dir: str | Path, names: list[str], fps: float) -> list[Path]:
    """Write each video of `frames` (B, T, H, W, 3) in [0, 1] as `name.mp4` and `name.gif`; returns the mp4 paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for video, name in zip(frames, names):
        mp4 = output_dir / f"{name}.mp4"
        # macro_block_size=1: small demo frames (e.g. 32x32) are written at their size, not upscaled to 16k.
        export_to_video(list(video), str(mp4), fps=int(round(fps)), macro_block_size=1)
        export_to_gif([PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in video], str(mp4.with_suffix(".gif")), fps=int(round(fps)))
        paths.append(mp4)
    return paths


def frame_strip(videos: list[np.ndarray]) -> np.ndarray:
    """One image (rows*H, T*W, 3) in [0, 1] from videos (T, H, W, 3): a row per video, frames left to right."""
    return np.concatenate([np.concatenate(list(video), axis=1) for video in videos], axis=0)
