"""`vidtwin-gen generate | interpolate | reconstruct | reenact`: sampling and the decoupled controls.

    vidtwin-gen generate --pipeline runs/demo/pipeline --class-label RedSquareBounce --num-videos 4 --output-dir out
    vidtwin-gen generate --pipeline DIR --class-label GreenTriangleSpin --keep-structure-of clip.avi --output-dir out
    vidtwin-gen interpolate --pipeline DIR --videos a.avi b.avi --part dynamics --num-points 5 --output-dir out
    vidtwin-gen reconstruct --vae DIR --video clip.avi --output-dir out
    vidtwin-gen reenact --vae DIR --structure-video a.avi --dynamics-video b.avi --output-dir out

Every video is written as mp4 and gif through diffusers' export utilities.
"""

import argparse
import re
from pathlib import Path

import torch

from . import VidTwinPipeline
from .data.export import decoded_to_frames, export_videos
from .data.output_paths import ensure_writable_dir
from .data.video_io import load_clip
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


def main_generate(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtwin-gen generate", description="Sample videos from a VidTwinPipeline.")
    _common_arguments(parser, "pipeline")
    condition = parser.add_mutually_exclusive_group(required=True)
    condition.add_argument("--class-label", nargs="+", help="class names or ids")
    condition.add_argument("--prompt", nargs="+", help="text prompts")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--num-videos", type=int, default=1, help="videos per class label / prompt")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    hold = parser.add_mutually_exclusive_group()
    hold.add_argument("--keep-structure-of", metavar="VIDEO", help="hold this clip's structure, generate new dynamics")
    hold.add_argument("--keep-dynamics-of", metavar="VIDEO", help="hold this clip's dynamics, generate a new structure")
    args = parser.parse_args(argv)
    ensure_writable_dir(args.output_dir, "--output-dir")  # before any model is loaded

    pipe = _load_pipeline(args)
    kept = {}
    if args.keep_structure_of or args.keep_dynamics_of:
        clip = _read_clips(pipe.vae, [args.keep_structure_of or args.keep_dynamics_of], args.fps)
        structure, dynamics = pipe.vae.unpack_latents(pipe.encode_video(clip.to(pipe.vae.dtype)))
        kept = {"structure_latents": structure} if args.keep_structure_of else {"dynamics_latents": dynamics}
    conditions = args.class_label or args.prompt
    labels = [int(c) if c.isdigit() else c for c in conditions] if args.class_label else None
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(conditions) * args.num_videos)]
    frames = pipe(
        class_labels=labels,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_videos_per_prompt=args.num_videos,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=generators,
        **kept,
    ).frames
    id2label = pipe.config.id2label or {}
    names = [f"{_slug(id2label.get(str(c), str(c)))}_{i:02d}" for c in conditions for i in range(args.num_videos)]
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

