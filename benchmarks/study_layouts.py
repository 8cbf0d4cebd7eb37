"""Token layouts at equal training compute on the embedded set: sample class accuracy and FVD per layout.

Trains the quickstart's class-conditional DiT (train_configs/dit/quickstart_class.yaml) once per token layout
on a finished quickstart's autoencoder and latent cache, each run given the same training FLOPs: a budget of
token-steps (tokens per clip x optimizer steps, at the config's batch size; at these widths a step's cost is
close to linear in tokens), so a layout with half the tokens trains twice as many steps. Each layout's pipeline
then makes `--samples-per-class` samples of every class; reported: their class accuracy under a probe fitted on
the autoencoder's reconstructions of real train clips and under one fitted on the real clips, FVD against
the held-out clips with a bootstrap interval, training wall time (meaningful only on an idle machine).

    vidtwin-gen demo --output-dir runs/demo          # the autoencoder, latents and data this study reuses
    python benchmarks/study_layouts.py --demo-dir runs/demo --layouts 1x1x1/1x1,1x2x2/2x1,2x2x2/2x2
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.demo import FPS, config_path
from vidtwin_gen.evaluation.class_probe import (
    PROBE_KINDS,
    generator_probes,
    load_generator_probes,
    sample_class_accuracies,
    save_generator_probes,
)
from vidtwin_gen.evaluation.fvd import extract_features, format_fvd_interval, fvd_bootstrap, pipeline_clips
from vidtwin_gen.evaluation.i3d import load_i3d
from vidtwin_gen.models import AutoencoderVidTwin, VidTwinTransformer3DModel
from vidtwin_gen.training import train_dit


def probes_and_real_features(demo: Path, i3d, vae):
    """Both probes and the held-out clips' features, computed once per demo folder and kept in it."""
    folder = demo / "study" / "probes"
    if all((folder / f"{kind}.safetensors").exists() for kind in PROBE_KINDS) and (folder / "real_test.json").exists():
        return load_generator_probes(folder), json.loads((folder / "real_test.json").read_text())
    probes, real, _ = generator_probes(demo / "data", i3d, vae, fps=FPS)
    save_generator_probes(probes, folder)
    (folder / "real_test.json").write_text(json.dumps(real.tolist()))
    return probes, real.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--layouts", default="1x1x1/1x1,1x2x2/2x1,2x2x2/2x2")
    parser.add_argument("--budget", type=float, default=1200 * 96,
                        help="token-steps per layout (default: 115,200 = 1,800 steps of 1x2x2/2x1's 64 tokens on the "
                        "quickstart latents, 600 of 1x1x1/1x1's 192, 3,600 of 2x2x2/2x2's 32)")
    parser.add_argument("--samples-per-class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="results JSON (default: DEMO_DIR/study/results.json)")
    parser.add_argument("--guidance-scale", type=float, help="sampling override (default: the config's)")
    parser.add_argument("--num-inference-steps", type=int, help="sampling override (default: the config's)")
    args = parser.parse_args()
    demo = Path(args.demo_dir)
    config = yaml.safe_load(Path(config_path("dit/quickstart_class.yaml")).read_text())
    for key in ("guidance_scale", "num_inference_steps"):  # sampling only: a trained layout is reused
        config[key] = getattr(args, key) if getattr(args, key) is not None else config[key]
    vae = AutoencoderVidTwin.from_pretrained(demo / "vae").eval()
    i3d = load_i3d()
    probes, real = probes_and_real_features(demo, i3d, vae)
    real = np.asarray(real)
    rows = []
    for layout in [name.strip() for name in args.layouts.split(",")]:
        model = {k: v for k, v in config["model"].items() if k not in ("structure_patch_size", "dynamics_patch_size")}
        model["layout"] = layout
        run = demo / "study" / layout.replace("/", "_")
        with torch.device("meta"):  # the token count only
            h_d, w_d = vae.dynamics_grid
            tokens = VidTwinTransformer3DModel.from_preset(
                model["preset"], **{k: v for k, v in model.items() if k != "preset"},
                structure_latent_shape=vae.structure_latent_shape, dynamics_latent_shape=vae.dynamics_latent_shape,
                dynamics_branch_sizes=(w_d, h_d)).num_tokens
        steps = int(round(args.budget / tokens))
        start = time.monotonic()
        if not (run / "pipeline" / "model_index.json").exists():
            train_dit.main(["--config", config_path("dit/quickstart_class.yaml"), "--vae", str(demo / "vae"),
                            "--latent_cache", str(demo / "latents"), "--seed", str(args.seed), "--output_dir", str(run),
                            "--model", json.dumps(model), "--max_train_steps", str(steps), "--report_to", "none",
                            "--validation_steps", str(10**9), "--checkpointing_steps", str(10**9)])
        train_seconds = time.monotonic() - start
        pipe = VidTwinPipeline.from_pretrained(run / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        names = [pipe.config.id2label[str(k)] for k in range(len(pipe.labels))]
        labels = [k for k in range(len(names)) for _ in range(args.samples_per_class)]
        generated = extract_features(pipeline_clips(pipe, labels, 8, config["num_inference_steps"], config["guidance_scale"],
                                                    args.seed + 1000), i3d, desc=f"I3D {layout}")
        accuracy = sample_class_accuracies(probes, generated, labels, names)
        fvd = fvd_bootstrap(real, generated, seed=args.seed)
        rows.append({"layout": layout, "tokens": tokens, "steps": steps, "train_seconds": round(train_seconds, 1),
                     "guidance_scale": config["guidance_scale"], "num_inference_steps": config["num_inference_steps"],
                     "accuracy_vs_reconstruction": accuracy["reconstruction"]["accuracy"],
                     "accuracy_vs_real": accuracy["real"]["accuracy"], "fvd": fvd,
                     "per_class_vs_reconstruction": {k: v["accuracy"] for k, v in accuracy["reconstruction"]["per_class"].items()}})
        print(f"{layout:10s} {tokens:4d} tokens {steps:5d} steps {train_seconds:6.0f} s  "
              f"acc vs recon {rows[-1]['accuracy_vs_reconstruction']:.1%}  vs real {rows[-1]['accuracy_vs_real']:.1%}  "
              f"{format_fvd_interval(fvd)}", flush=True)
        Path(args.output or demo / "study" / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("probe test accuracy: " + ", ".join(f"{k} {p.metadata['test_accuracy']:.1%}" for k, p in probes.items()))


if __name__ == "__main__":
    main()
