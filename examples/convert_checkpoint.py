"""Convert the released VidTwin checkpoint and check the result on a clip.

    python examples/convert_checkpoint.py --original-config vidtwin_structure_7_7_8_dynamics_7_8.yaml \
        --checkpoint vidtwin_structure_7_7_8_dynamics_7_8.ckpt --output-dir vidtwin-diffusers

The `.ckpt` is read with torch.load(weights_only=True); a pickle that tries to run code is refused.
"""

import argparse

import torch

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.convert import convert_vidtwin_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--original-config", required=True, help="the original YAML (or its model section as JSON)")
parser.add_argument("--checkpoint", required=True, help=".ckpt (Lightning) or .safetensors")
parser.add_argument("--output-dir", required=True)
args = parser.parse_args()

convert_vidtwin_checkpoint(args.original_config, args.checkpoint, args.output_dir)
vae = AutoencoderVidTwin.from_pretrained(args.output_dir).eval()
c, t, h, w = vae.sample_shape
clip = torch.rand(1, c, t, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    z = vae.encode(clip).latent_dist.mode()
    print(f"{sum(p.numel() for p in vae.parameters()):,} parameters; latent {tuple(z.shape)} "
          f"({100 * vae.compression_rate:.3f} % of the input); reconstruction {tuple(vae.decode(z).sample.shape)}")
