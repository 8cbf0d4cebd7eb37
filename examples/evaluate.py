"""Score an autoencoder (PSNR/SSIM on held-out clips) and a pipeline (FVD of samples against held-out clips).

    python examples/evaluate.py --pipeline runs/demo/pipeline --data-root runs/demo/data --num-clips 32

For published protocols use the CLI: `vidtwin-gen eval-recon` and `vidtwin-gen eval-fvd --protocol stylegan-v`.
"""

import argparse

import torch

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.data.ucf101 import UCF101Clips
from vidtwin_gen.evaluation.fvd import extract_features, fvd_from_features, pipeline_clips, sample_class_labels
from vidtwin_gen.evaluation.i3d import load_i3d
from vidtwin_gen.evaluation.reconstruction import evaluate_reconstruction

parser = argparse.ArgumentParser()
parser.add_argument("--pipeline", default="runs/demo/pipeline")
parser.add_argument("--data-root", default="runs/demo/data")
parser.add_argument("--num-clips", type=int, default=32)
parser.add_argument("--steps", type=int, default=25)
args = parser.parse_args()

pipe = VidTwinPipeline.from_pretrained(args.pipeline)
pipe.set_progress_bar_config(disable=True)
_, frames, height, width = pipe.vae.sample_shape
held_out = UCF101Clips(args.data_root, split=1, subset="test", num_frames=frames, size=(height, width), train=False)
items = [item for item in (held_out[i] for i in range(min(args.num_clips, len(held_out)))) if item is not None]
clips, labels = torch.stack([item["video"] for item in items]), [item["label"] for item in items]

scores = evaluate_reconstruction(pipe.vae, clips)  # per clip, from the posterior mean
print(f"reconstruction: PSNR {sum(scores['psnr']) / len(clips):.2f} dB, SSIM {sum(scores['ssim']) / len(clips):.3f} "
      f"on {len(clips)} held-out clips")

i3d = load_i3d()
real = extract_features(clips, i3d)
classes = sample_class_labels(labels, len(clips), seed=0)  # generated classes follow the held-out set
generated = extract_features(pipeline_clips(pipe, classes, num_inference_steps=args.steps), i3d, len(classes))
print(f"FVD {fvd_from_features(real, generated):.1f} ({len(generated)} generated vs {len(real)} real clips; "
      "a small custom protocol, not comparable with published figures)")
