"""Encode clips with AutoencoderVidTwin and decode them whole, structure only, dynamics only, and swapped.

    python examples/reconstruct.py --vae runs/demo/vae --videos a.avi b.avi --output-dir out/reconstruct
"""

import argparse

import torch

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.data.video_io import load_clip
from vidtwin_gen.evaluation.metrics import psnr, to_unit_range
from vidtwin_gen.data.export import decoded_to_frames, export_videos

parser = argparse.ArgumentParser()
parser.add_argument("--vae", default="runs/demo/vae")
parser.add_argument("--videos", nargs=2, required=True, help="clip A (structure) and clip B (dynamics)")
parser.add_argument("--output-dir", default="out/reconstruct")
parser.add_argument("--fps", type=float, default=8.0)
args = parser.parse_args()

vae = AutoencoderVidTwin.from_pretrained(args.vae).eval()
_, frames, height, width = vae.sample_shape
clips = torch.stack([load_clip(path, frames, (height, width), target_fps=args.fps) for path in args.videos])

with torch.no_grad():
    encoded = vae.encode(clips)  # (B, 3, T, H, W) in [-1, 1]
    print("structure latent", tuple(encoded.structure_dist.mean.shape), "dynamics latent",
          tuple(encoded.dynamics_dist.mean.shape), f"= {100 * vae.compression_rate:.2f} % of the input")
    z = encoded.latent_dist.mode()
    outputs = {
        "reconstruction": vae.decode(z).sample,
        "structure_only": vae.decode(z, part="structure").sample,
        "dynamics_only": vae.decode(z, part="dynamics").sample,
        "swapped": vae.reenact(clips, clips.flip(0)).sample,  # structure of A with dynamics of B, and back
    }
print(f"PSNR {psnr(to_unit_range(outputs['reconstruction']), to_unit_range(clips)).mean():.2f} dB")
for name, video in outputs.items():
    for path in export_videos(decoded_to_frames(video), args.output_dir, [f"A_{name}", f"B_{name}"], args.fps):
        print(path)
