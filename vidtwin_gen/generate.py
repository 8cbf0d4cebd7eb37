"""`vidtwin-gen generate | interpolate | reconstruct | reenact`: sampling and the decoupled controls.

    vidtwin-gen generate --pipeline runs/demo/pipeline --class-label RedSquareBounce --num-videos 4 --output-dir out
    vidtwin-gen generate --pipeline DIR --class-label GreenTriangleSpin --keep-structure-of clip.avi --output-dir out
    vidtwin-gen generate --pipeline DIR --class-label RedSquareBounce --num-frames 64 --output-dir out
    vidtwin-gen generate --pipeline DIR --class-label RedSquareBounce --continue clip.avi --num-frames 64 --output-dir out
    vidtwin-gen generate --pipeline DIR --chunk-class-labels RedSquareBounce RedSquareBounce GreenTriangleSpin \
        GreenTriangleSpin --num-frames 64 --output-dir out
    vidtwin-gen generate --pipeline DIR --class-label GreenTriangleSpin --num-frames 64 --keep-structure-of clip.avi \
        --kept-per-chunk --output-dir out
    vidtwin-gen interpolate --pipeline DIR --videos a.avi b.avi --part dynamics --num-points 5 --output-dir out
    vidtwin-gen reconstruct --vae DIR --video clip.avi --output-dir out
    vidtwin-gen reenact --vae DIR --structure-video a.avi --dynamics-video b.avi --output-dir out

Every video is written as mp4 and gif through diffusers' export utilities.

Long videos (`generate --num-frames N`) are made chunk after chunk of the VAE's T frames, each chunk seeing the
ones before it (a long-video model, trained with a train_configs/dit/*_long.yaml config; `--context-chunks 0`
makes independent chunks with any model); the frames around every seam are blended (`--seam-blend-frames`). `--continue CLIP` continues a clip: its last frames are the first chunk's
context, and the files hold the N new frames (with `--with-input`, the clip's frames that were used come first).
"""

import argparse
import re
from collections import deque
from itertools import groupby
from pathlib import Path

import numpy as np
import torch

from . import VidTwinPipeline
from .data.export import decoded_to_frames, export_videos
from .data.output_paths import ensure_writable_dir
from .data.video_io import iter_clips, load_clip
from .models.autoencoder_vidtwin import AutoencoderVidTwin
from .pipelines import check_remote_code_shim

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "video"


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load_pipeline(args) -> VidTwinPipeline:
    # Loading through the class runs no code from the folder; the warning tells the user that the folder's
    # remote-code shim (run by `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`) is not ours.
    check_remote_code_shim(args.pipeline)
    pipe = VidTwinPipeline.from_pretrained(args.pipeline, dtype=DTYPES[args.dtype])
    return pipe.to(_device(args.device))


def _read_clips(vae: AutoencoderVidTwin, paths: list[str], fps: float | None) -> torch.Tensor:
    """(B, 3, T, H, W) centre clips of the files, at the VAE's frame count and size."""
    _, frames, height, width = vae.sample_shape
    return torch.stack([load_clip(path, frames, (height, width), target_fps=fps, mode="center") for path in paths])


def _common_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    if model == "pipeline":
        parser.add_argument("--pipeline", required=True, help="a saved VidTwinPipeline folder")
    else:
        parser.add_argument("--vae", required=True, help="an AutoencoderVidTwin folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of input clips and written videos")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def _generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidtwin-gen generate", description="Sample videos from a VidTwinPipeline.")
    _common_arguments(parser, "pipeline")
    condition = parser.add_mutually_exclusive_group(required=True)
    condition.add_argument("--class-label", nargs="+", help="class names or ids")
    condition.add_argument("--prompt", nargs="+", help="text prompts")
    condition.add_argument("--chunk-class-labels", nargs="+", metavar="CLASS",
                           help="one class per chunk of the VAE's T frames (ceil(num_frames / T) of them): the class "
                           "switches at chunk boundaries")
    condition.add_argument("--chunk-prompts", nargs="+", metavar="PROMPT", help="one prompt per chunk")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--num-videos", type=int, default=1, help="videos per class label / prompt")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, help="frames per video, any number (default: the VAE's T); more "
                        "than T are generated chunk after chunk")
    parser.add_argument("--context-chunks", type=int, help="previous chunks each chunk sees (default: the model's "
                        "num_context_chunks; 0: independent chunks)")
    parser.add_argument("--seam-blend-frames", type=int, help="frames blended on each side of a seam between "
                        "chunks (default: T/4; 0: every chunk decoded on its own)")
    parser.add_argument("--continue", dest="continue_video", metavar="VIDEO",
                        help="continue this clip: its last chunks (read at --fps) are the context of the first new one")
    parser.add_argument("--with-input", action="store_true",
                        help="with --continue: write the clip's frames that were read as context (its last "
                        "context_chunks x T frames at --fps) before the new ones")
    hold = parser.add_mutually_exclusive_group()
    hold.add_argument("--keep-structure-of", metavar="VIDEO", help="hold this clip's structure, generate new dynamics")
    hold.add_argument("--keep-dynamics-of", metavar="VIDEO", help="hold this clip's dynamics, generate a new structure")
    parser.add_argument("--kept-per-chunk", action="store_true",
                        help="hold the kept clip's part chunk by chunk (its first ceil(num_frames / T) chunks at --fps) "
                        "instead of its centre chunk in every chunk")
    return parser


def _kept_parts(pipe: VidTwinPipeline, args, num_chunks: int) -> dict:
    """structure_latents / dynamics_latents of --keep-structure-of / --keep-dynamics-of: the clip's centre chunk
    (held in every chunk), or with --kept-per-chunk its first `num_chunks` chunks (one per chunk)."""
    path = args.keep_structure_of or args.keep_dynamics_of
    if path is None:
        return {}
    if args.kept_per_chunk:
        _, frames, height, width = pipe.vae.sample_shape
        clips = list(iter_clips(path, frames, (height, width), target_fps=args.fps, max_clips=num_chunks))
        if len(clips) < num_chunks:
            raise ValueError(f"--kept-per-chunk: {path} holds {len(clips)} chunk(s) of {frames} frames at {args.fps:g} "
                             f"fps, and --num-frames {args.num_frames} needs {num_chunks}")
        chunks = pipe.encode_video(torch.stack(clips).to(pipe.vae.dtype)).split(1)
        latents = pipe.join_chunk_latents(list(chunks))
    else:
        latents = pipe.encode_video(_read_clips(pipe.vae, [path], args.fps).to(pipe.vae.dtype))
    structure, dynamics = pipe.vae.unpack_latents(latents)
    return {"structure_latents": structure} if args.keep_structure_of else {"dynamics_latents": dynamics}


def _last_frames(vae: AutoencoderVidTwin, path: str, count: int, fps: float) -> torch.Tensor:
    """(1, 3, F, H, W): the last `count` frames of a file at `fps` and the VAE's size (all of them if fewer)."""
    _, _, height, width = vae.sample_shape
    frames = deque(iter_clips(path, 1, (height, width), target_fps=fps), maxlen=count)  # memory: `count` frames
    return torch.cat(list(frames), dim=1)[None]


def main_generate(argv: list[str] | None = None) -> int:
    args = _generate_parser().parse_args(argv)
    ensure_writable_dir(args.output_dir, "--output-dir")  # before any model is loaded
    if args.with_input and not args.continue_video:
        raise ValueError("--with-input needs --continue VIDEO")
    if args.kept_per_chunk and not (args.keep_structure_of or args.keep_dynamics_of):
        raise ValueError("--kept-per-chunk needs --keep-structure-of or --keep-dynamics-of")

    pipe = _load_pipeline(args)
    chunk_frames = pipe.vae.sample_shape[1]
    args.num_frames = args.num_frames or chunk_frames
    num_chunks = -(-args.num_frames // chunk_frames)
    kept = _kept_parts(pipe, args, num_chunks)
    clip = None
    if args.continue_video:
        context = args.context_chunks if args.context_chunks is not None else pipe.num_context_chunks
        clip = _last_frames(pipe.vae, args.continue_video, max(context, 1) * chunk_frames, args.fps)
    per_chunk = args.chunk_class_labels or args.chunk_prompts
    conditions = [per_chunk] if per_chunk else (args.class_label or args.prompt)
    as_labels = lambda names: [int(c) if c.isdigit() else c for c in names]  # noqa: E731
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(conditions) * args.num_videos)]
    frames = pipe(
        class_labels=as_labels(args.class_label) if args.class_label else None,
        prompt=args.prompt,
        chunk_class_labels=as_labels(args.chunk_class_labels) if args.chunk_class_labels else None,
        chunk_prompts=args.chunk_prompts,
        negative_prompt=args.negative_prompt,
        num_videos_per_prompt=args.num_videos,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=generators,
        num_frames=args.num_frames,
        context_chunks=args.context_chunks,
        seam_blend_frames=args.seam_blend_frames,
        video=None if clip is None else clip.to(pipe.vae.dtype),
        **kept,
    ).frames
    if args.with_input:
        frames = np.concatenate([np.repeat(decoded_to_frames(clip), len(frames), axis=0), frames], axis=1)
    id2label = pipe.config.id2label or {}
    title = lambda c: _slug(id2label.get(str(c), str(c)))  # noqa: E731
    # Per-chunk conditions name the video by their runs: A A B -> A_then_B.
    stems = ["_then_".join(title(c) for c, _ in groupby(cs)) if per_chunk else title(cs) for cs in conditions]
    if args.continue_video:
        stems = [f"{_slug(Path(args.continue_video).stem)}_then_{stem}" for stem in stems]
    names = [f"{stem}_{i:02d}" for stem in stems for i in range(args.num_videos)]
    for path in export_videos(frames, args.output_dir, names, args.fps):
        print(path)
    return 0


def main_interpolate(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vidtwin-gen interpolate",
        description="Move from one video to another, per part: structure only, dynamics only, or both.",
    )
    _common_arguments(parser, "pipeline")
    ends = parser.add_mutually_exclusive_group(required=True)
    ends.add_argument("--videos", nargs=2, metavar=("START", "END"), help="two video files")
    ends.add_argument("--class-labels", nargs=2, metavar=("START", "END"), help="two classes, sampled with the same noise")
    parser.add_argument("--part", choices=["structure", "dynamics", "both"], default="both")
    parser.add_argument("--num-points", type=int, default=5)
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ensure_writable_dir(args.output_dir, "--output-dir")  # before any model is loaded

    pipe = _load_pipeline(args)
    if args.videos:
        start, end = pipe.encode_video(_read_clips(pipe.vae, args.videos, args.fps).to(pipe.vae.dtype)).split(1)
    else:
        labels = [int(c) if c.isdigit() else c for c in args.class_labels]
        noise = torch.randn(1, pipe.latent_size, generator=torch.Generator().manual_seed(args.seed)).repeat(2, 1)
        start, end = pipe(
            class_labels=labels, latents=noise, num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale, output_type="latent",
        ).frames.split(1)
    part = None if args.part == "both" else args.part
    frames = pipe.interpolate(start, end, num_points=args.num_points, part=part)
    names = [f"interpolate_{args.part}_{i:02d}" for i in range(args.num_points)]
    for path in export_videos(frames, args.output_dir, names, args.fps):
        print(path)
    return 0


def _load_vae(args) -> AutoencoderVidTwin:
    return AutoencoderVidTwin.from_pretrained(args.vae, dtype=DTYPES[args.dtype]).to(_device(args.device)).eval()


def main_reconstruct(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vidtwin-gen reconstruct",
        description="Encode and decode clips; also decode the structure and the dynamics alone.",
    )
    _common_arguments(parser, "vae")
    parser.add_argument("--video", nargs="+", required=True)
    parser.add_argument("--parts", nargs="+", choices=["full", "structure", "dynamics"], default=["full", "structure", "dynamics"])
    args = parser.parse_args(argv)
    ensure_writable_dir(args.output_dir, "--output-dir")  # before any model is loaded

    vae = _load_vae(args)
    clips = _read_clips(vae, args.video, args.fps).to(vae.device, vae.dtype)
    with torch.no_grad():
        z = vae.encode(clips).latent_dist.mode()
        for part in args.parts:
            decoded = vae.decode(z, part=None if part == "full" else part).sample
            names = [f"{Path(v).stem}_{part}" for v in args.video]
            for path in export_videos(decoded_to_frames(decoded), args.output_dir, names, args.fps):
                print(path)
    return 0


def main_reenact(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vidtwin-gen reenact", description="Decode the structure of one clip with the dynamics of another."
    )
    _common_arguments(parser, "vae")
    parser.add_argument("--structure-video", required=True)
    parser.add_argument("--dynamics-video", required=True)
    args = parser.parse_args(argv)
    ensure_writable_dir(args.output_dir, "--output-dir")  # before any model is loaded

    vae = _load_vae(args)
    clips = _read_clips(vae, [args.structure_video, args.dynamics_video], args.fps).to(vae.device, vae.dtype)
    with torch.no_grad():
        video = vae.reenact(clips[:1], clips[1:]).sample
    name = f"{Path(args.structure_video).stem}_structure__{Path(args.dynamics_video).stem}_dynamics"
    for path in export_videos(decoded_to_frames(video), args.output_dir, [name], args.fps):
        print(path)
    return 0

