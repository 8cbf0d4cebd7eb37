"""Generate videos with a trained pipeline through diffusers' DiffusionPipeline.

    python examples/generate.py --pipeline runs/demo/pipeline --classes RedSquareSpin BlueCircleFlicker
"""

import argparse

import torch
from diffusers import DiffusionPipeline

from vidtwin_gen.data.export import export_videos

parser = argparse.ArgumentParser()
parser.add_argument("--pipeline", default="runs/demo/pipeline")
parser.add_argument("--classes", nargs="+", required=True, help="class names (or ids)")
parser.add_argument("--output-dir", default="out/generate")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
args = parser.parse_args()

# The folder names its class through a small loader file, hence trust_remote_code; the code that runs is
# the installed vidtwin_gen package.
pipe = DiffusionPipeline.from_pretrained(args.pipeline, trust_remote_code=True, dtype=getattr(torch, args.dtype))
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
generator = [torch.Generator().manual_seed(i) for i in range(len(args.classes))]
frames = pipe(class_labels=args.classes, num_inference_steps=args.steps, guidance_scale=4.0, generator=generator).frames
for path in export_videos(frames, args.output_dir, args.classes, fps=8):
    print(path)
