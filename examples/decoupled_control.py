"""Decoupled control: keep a clip's structure and generate new dynamics for it, then move between two classes
in the dynamics only (the structure stays put).

    python examples/decoupled_control.py --pipeline runs/demo/pipeline --classes RedSquareSpin BlueCircleFlicker \
        --video runs/demo/data/UCF-101/YellowStripesBounce/v_YellowStripesBounce_g01_c01.avi --data-root runs/demo/data

With --data-root (an embedded data set), the kept-structure videos are scored with eval-decoupling's probes:
do they show the clip's content and drift, and each class's fast motion?
"""

import argparse

import torch

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.data.video_io import load_clip
from vidtwin_gen.data.export import export_videos

parser = argparse.ArgumentParser()
parser.add_argument("--pipeline", default="runs/demo/pipeline")
parser.add_argument("--video", required=True, help="the clip whose structure is kept")
parser.add_argument("--classes", nargs=2, required=True)
parser.add_argument("--output-dir", default="out/decoupled")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--data-root", help="an embedded data set: score the kept-structure videos with its factor probes")
args = parser.parse_args()

pipe = VidTwinPipeline.from_pretrained(args.pipeline)
_, frames, height, width = pipe.vae.sample_shape
clip = load_clip(args.video, frames, (height, width), target_fps=8)[None]  # (1, 3, T, H, W)
structure, dynamics = pipe.vae.unpack_latents(pipe.encode_video(clip))

# 1. The clip's structure with dynamics generated for each class.
videos = pipe(class_labels=args.classes, structure_latents=structure, num_inference_steps=args.steps,
              generator=[torch.Generator().manual_seed(i) for i in range(2)]).frames
export_videos(videos, args.output_dir, [f"kept_structure_{name}" for name in args.classes], fps=8)
if args.data_root:
    from vidtwin_gen.evaluation.decoupling import probes_for_data_root, score_decoupled_control

    probes, _ = probes_for_data_root(args.data_root, frames, (height, width), fps=8)
    score = score_decoupled_control(probes, clip, videos, args.classes)
    print(f"kept structure: the clip's content in {score['content']:.0%}, its drift in {score['drift']:.0%}, "
          f"the class's fast motion in {score['fast']:.0%}, all three in {score['all']:.0%} (clip read as {score['clip']})")

# 2. Two classes sampled from the same noise, then a path between them in the dynamics only.
noise = torch.randn(1, pipe.latent_size, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
start, end = pipe(class_labels=args.classes, latents=noise, num_inference_steps=args.steps, output_type="latent").frames.split(1)
path = pipe.interpolate(start, end, num_points=5, part="dynamics")
for file in export_videos(path, args.output_dir, [f"dynamics_path_{i}" for i in range(5)], fps=8):
    print(file)
