"""The pipeline's decoupled control, measured with eval-decoupling's factor probes on the embedded set.

For each held-out clip X, the structure of X is held while the pipeline generates dynamics for a class K whose
content and fast motion both differ from X's; the video should show X's content and X's drift (structure) and
K's fast motion (dynamics). Reported: how often each factor is the expected one, and all three at once. As a
reference, the same classes sampled freely (no structure held) show K's fast motion at the rate printed last.

    python benchmarks/bench_decoupled_control.py --pipeline runs/demo/pipeline --data-root runs/demo/data
"""

import argparse
import json

import numpy as np
import torch

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.data.embedded import CLASSES
from vidtwin_gen.evaluation.decoupling import can_reenact, probes_for_data_root, score_factors


def other_class(content: str, fast: str, class_names: list[str], index: int) -> str:
    """A class of the pipeline with another content and another fast motion than (content, fast), one that shows
    on `content` (no spin for a circle), in turn."""
    by_name = {cls.name: cls for cls in CLASSES}
    choices = [name for name in class_names if can_reenact(content, fast, by_name[name].content, by_name[name].motion)]
    return choices[index % len(choices)]


def as_clips(frames: torch.Tensor) -> torch.Tensor:
    """The pipeline's "pt" frames (B, T, 3, H, W) in [0, 1] -> clips (B, 3, T, H, W) in [-1, 1]."""
    return frames.permute(0, 2, 1, 3, 4) * 2 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="runs/demo/pipeline")
    parser.add_argument("--data-root", default="runs/demo/data")
    parser.add_argument("--num-clips", type=int, default=30, help="held-out clips X (default: %(default)s)")
    parser.add_argument("--num-inference-steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    pipe = VidTwinPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    _, frames, height, width = pipe.vae.sample_shape
    probes, test = probes_for_data_root(args.data_root, frames, (height, width), fps=8.0)
    picks = np.linspace(0, len(test.contents) - 1, min(args.num_clips, len(test.contents))).round().astype(int)
    class_names = [pipe.config.id2label[str(i)] for i in range(len(pipe.labels))]
    targets = [other_class(test.contents[i], test.fast_motions[i], class_names, n) for n, i in enumerate(picks)]
    by_name = {cls.name: cls for cls in CLASSES}
    settings = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}

    clips = test.videos[picks]
    structure, _ = pipe.vae.unpack_latents(pipe.encode_video(clips))
    generators = [torch.Generator().manual_seed(i) for i in range(len(picks))]
    held = pipe(class_labels=targets, structure_latents=structure, generator=generators, output_type="pt", **settings).frames
    generators = [torch.Generator().manual_seed(i) for i in range(len(picks))]
    free = pipe(class_labels=targets, generator=generators, output_type="pt", **settings).frames

    source_drift = probes.read(clips)["drift"]
    fast = [by_name[name].motion for name in targets]
    kept = score_factors(probes, as_clips(held), contents=[test.contents[i] for i in picks], fast_motions=fast,
                         drifts=source_drift)
    # Whose object is it? An autoencoder whose dynamics carry the object's appearance gives K's content instead.
    held_content_of_k = score_factors(probes, as_clips(held), contents=[by_name[name].content for name in targets])
    reference = score_factors(probes, as_clips(free), fast_motions=fast)
    print(f"structure of a held-out clip X held, dynamics generated for a class K of another content and fast motion "
          f"({len(picks)} videos, {args.num_inference_steps} steps, guidance {args.guidance_scale}):")
    print(f"  X's content {kept['content']:.0%}   X's drift {kept['drift']:.0%}   K's fast motion {kept['fast']:.0%}   "
          f"all three {kept['all']:.0%}   (K's content {held_content_of_k['content']:.0%})")
    print(f"  reference, K sampled freely: K's fast motion {reference['fast']:.0%}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"kept_structure": kept, "kept_structure_content_of_class": held_content_of_k["content"],
                       "free_samples": reference, "classes": targets,
                       "clips": [test.paths[i] for i in picks], **settings}, file, indent=2)


if __name__ == "__main__":
    main()
