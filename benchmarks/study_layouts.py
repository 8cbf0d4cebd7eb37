"""Token layouts at equal training compute on the embedded set: sample class accuracy and FVD per layout.

Trains the quickstart's class-conditional DiT (by default the demo's, `vidtwin_gen.demo.DIT_CONFIG`: the long-video
train_configs/dit/quickstart_class_long.yaml, one context chunk) once per token layout on a finished quickstart's
autoencoder and latent cache (the demo's multi-chunk cache), each run given the same training FLOPs: a budget of
token-steps (tokens per training sample x optimizer steps, at the config's batch size; at these widths a step's
cost is close to linear in tokens), so a layout with half the tokens trains twice as many steps. A sample of a
model with C context chunks costs (1 + C) x its layout's tokens per chunk: its context chunks are tokens of the
same sequence (a dropped context is masked, not removed, so it costs the same). The default budget is the
config's own: its max_train_steps x its layout's tokens per sample. Each layout's pipeline then makes
`--samples-per-class` first chunks (no context) of every class, as the demo's metrics do; reported: their class
accuracy under the demo's clip-statistics probes (`decoupling.statistics_class_probes`: one fitted on the
autoencoder's reconstructions of real train clips, one on the real clips; under `statistics`), the same under
I3D probes (`--probe-videos-per-class` videos per class; `3,all` adds a second pair fitted on every video, whose
figures go under `probes_all`), FVD against the first set's held-out clips with a bootstrap interval, training
wall time (meaningful only on an idle machine). `--num-processes 2` trains as the demo does on 2 cores.

    vidtwin-gen demo --output-dir runs/demo          # the autoencoder, latents and data this study reuses
    python benchmarks/study_layouts.py --demo-dir runs/demo --layouts 1x1x1/1x1,1x2x2/2x1,2x2x2/2x2,2x2x2/1x4 \
        --num-processes 2

A layout whose run folder (DEMO_DIR/study/LAYOUT[_TAG]) already holds a pipeline is not trained again (its
earlier training time is read back), so copying the demo's own OUT/pipeline to DEMO_DIR/study/1x1x1_1x1/pipeline
reuses the demo's training when the budget is the config's. Training overrides (any train-dit key, dotted keys
into `model`) go with `--train-arg KEY=VALUE` and a `--tag` that names the run folder:

    python benchmarks/study_layouts.py --demo-dir runs/demo --layouts 1x1x1/1x1 --tag lr2e-3 \
        --train-arg learning_rate=2e-3 --train-arg model.num_layers=4
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.demo import DIT_CONFIG, FPS, config_path, run_trainer
from vidtwin_gen.evaluation.class_probe import (
    PROBE_KINDS,
    generator_probes,
    load_generator_probes,
    sample_class_accuracies,
    save_generator_probes,
)
from vidtwin_gen.evaluation.decoupling import statistics_class_probes, statistics_features
from vidtwin_gen.evaluation.fvd import extract_features, format_fvd_interval, fvd_bootstrap, pipeline_clips
from vidtwin_gen.evaluation.i3d import load_i3d
from vidtwin_gen.models import AutoencoderVidTwin, VidTwinTransformer3DModel
from vidtwin_gen.training import train_dit
from vidtwin_gen.training.config import load_yaml


def probes_and_real_features(demo: Path, i3d, vae, videos_per_class: int | None):
    """Both probes and the held-out clips' features, computed once per demo folder and probe size and kept in it."""
    folder = demo / "study" / f"probes_{videos_per_class or 'all'}"
    if all((folder / f"{kind}.safetensors").exists() for kind in PROBE_KINDS) and (folder / "real_test.json").exists():
        return load_generator_probes(folder), json.loads((folder / "real_test.json").read_text())
    probes, real, _ = generator_probes(demo / "data", i3d, vae, fps=FPS, videos_per_class=videos_per_class)
    save_generator_probes(probes, folder)
    (folder / "real_test.json").write_text(json.dumps(real.tolist()))
    return probes, real.tolist()


def accuracy_row(probes: dict, generated: np.ndarray, labels: list[int], names: list[str]) -> dict:
    """Sample class accuracy under both probes of a pair, the probes' own test accuracy, per class vs reconstructions."""
    accuracy = sample_class_accuracies(probes, generated, labels, names)
    return {"accuracy_vs_reconstruction": accuracy["reconstruction"]["accuracy"],
            "accuracy_vs_real": accuracy["real"]["accuracy"],
            "probe_test_accuracy": {kind: probe.metadata["test_accuracy"] for kind, probe in probes.items()},
            "per_class_vs_reconstruction": {k: v["accuracy"] for k, v in accuracy["reconstruction"]["per_class"].items()}}


def tokens_per_sample(model: dict, vae: AutoencoderVidTwin) -> tuple[int, int]:
    """(tokens per chunk, tokens per training sample: the chunk and its context chunks) of `model` on `vae`'s latents."""
    with torch.device("meta"):  # the token count only
        h_d, w_d = vae.dynamics_grid
        transformer = VidTwinTransformer3DModel.from_preset(
            model["preset"], **{k: v for k, v in model.items() if k != "preset"},
            structure_latent_shape=vae.structure_latent_shape, dynamics_latent_shape=vae.dynamics_latent_shape,
            dynamics_branch_sizes=(w_d, h_d))
    return transformer.num_tokens, transformer.num_tokens * (1 + transformer.config.num_context_chunks)


def model_config(config: dict, layout: str | None, overrides: dict) -> dict:
    """The config's `model:` with `layout` in place of its patch sizes (None: the config's own) and dotted
    `model.KEY` overrides applied."""
    model = dict(config["model"])
    if layout is not None:
        model = {k: v for k, v in model.items() if k not in ("structure_patch_size", "dynamics_patch_size")}
        model["layout"] = layout
    model.update({key.removeprefix("model."): value for key, value in overrides.items() if key.startswith("model.")})
    return model


def parse_train_args(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--train-arg {pair!r}: expected KEY=VALUE, e.g. learning_rate=2e-3 or model.num_layers=4")
        overrides[key] = load_yaml(value)  # as train-dit reads a --key value
    return overrides


def train_layout(args, demo: Path, run: Path, model: dict, overrides: dict, steps: int) -> float | None:
    """Train one run unless its folder holds a pipeline already; its training seconds (read back when reused)."""
    timing = run / "train_seconds.json"
    if (run / "pipeline" / "model_index.json").exists():
        return json.loads(timing.read_text())["train_seconds"] if timing.exists() else None
    extra = [item for key, value in overrides.items() if not key.startswith("model.")
             for item in (f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value))]
    start = time.monotonic()
    run_trainer(train_dit, config_path(args.config),
                ["--vae", str(demo / "vae"), "--latent_cache", str(demo / "latents"), "--seed", str(args.seed),
                 "--output_dir", str(run), "--model", json.dumps(model), "--max_train_steps", str(steps),
                 "--report_to", "none", "--validation_steps", str(10**9), "--checkpointing_steps", str(10**9), *extra],
                args.num_processes)
    seconds = round(time.monotonic() - start, 1)
    timing.write_text(json.dumps({"train_seconds": seconds, "steps": steps}) + "\n")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--config", default=DIT_CONFIG, help="a train_configs/ DiT config (default: the demo's, %(default)s)")
    parser.add_argument("--layouts", default="1x1x1/1x1,1x2x2/2x1,2x2x2/2x2,2x2x2/1x4",
                        help="comma-separated VIDTWIN_TOKEN_LAYOUTS names; 'config' is the config's own layout")
    parser.add_argument("--budget", type=float,
                        help="token-steps per layout (default: the config's max_train_steps x its tokens per sample; for "
                        "quickstart_class_long, 1,800 x 64 = 115,200: 300 steps of 1x1x1/1x1's 384, 900 of 1x2x2/2x1's 128; the "
                        "layout study of its comment used 172,800, its former 450 steps of 1x1x1/1x1)")
    parser.add_argument("--steps", type=int, help="train every layout this many steps instead of an equal budget")
    parser.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a train-dit override for every run (repeatable; model.KEY for the model)")
    parser.add_argument("--tag", default="", help="suffix of the run folders (needed when --train-arg changes the runs)")
    parser.add_argument("--samples-per-class", type=int, default=6)
    parser.add_argument("--probe-videos-per-class", default="3",
                        help="train and test videos per class for the probes and FVD's real set (the demo's default: "
                        "%(default)s); a comma-separated list (e.g. 3,all) also scores the samples under each further pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="results JSON (default: DEMO_DIR/study/results[_TAG].json); rows are appended")
    parser.add_argument("--guidance-scale", type=float, help="sampling override (default: the config's)")
    parser.add_argument("--num-inference-steps", type=int, help="sampling override (default: the config's)")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="data-parallel CPU processes per training run (the demo uses 2 on 2 cores)")
    args = parser.parse_args()
    demo = Path(args.demo_dir)
    config = yaml.safe_load(Path(config_path(args.config)).read_text())
    overrides = parse_train_args(args.train_arg)
    for key in ("guidance_scale", "num_inference_steps"):  # sampling only: a trained layout is reused
        config[key] = getattr(args, key) if getattr(args, key) is not None else config[key]
    vae = AutoencoderVidTwin.from_pretrained(demo / "vae").eval()
    budget = args.budget or overrides.get("max_train_steps", config["max_train_steps"]) * tokens_per_sample(
        model_config(config, None, overrides), vae)[1]
    i3d = load_i3d()
    probe_sizes = [None if size.strip() == "all" else int(size) for size in args.probe_videos_per_class.split(",")]
    probe_sets = [probes_and_real_features(demo, i3d, vae, size) for size in probe_sizes]
    probes, real = probe_sets[0]
    statistics_probes = statistics_class_probes(demo / "data", vae, FPS)
    real = np.asarray(real)
    output = Path(args.output or demo / "study" / f"results{'_' + args.tag if args.tag else ''}.json")
    rows = json.loads(output.read_text()) if output.exists() else []
    for layout in [name.strip() for name in args.layouts.split(",")]:
        model = model_config(config, None if layout == "config" else layout, overrides)
        chunk_tokens, tokens = tokens_per_sample(model, vae)
        steps = args.steps or int(round(budget / tokens))
        run = demo / "study" / (model.get("layout", "config").replace("/", "_") + (f"_{args.tag}" if args.tag else ""))
        train_seconds = train_layout(args, demo, run, model, overrides, steps)
        pipe = VidTwinPipeline.from_pretrained(run / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        names = [pipe.config.id2label[str(k)] for k in range(len(pipe.labels))]
        labels = [k for k in range(len(names)) for _ in range(args.samples_per_class)]
        start = time.monotonic()
        clips = list(pipeline_clips(pipe, labels, 8, config["num_inference_steps"], config["guidance_scale"], args.seed + 1000))
        generated = extract_features(iter(clips), i3d, desc=f"I3D {layout}")
        sample_seconds = round(time.monotonic() - start, 1)
        fvd = fvd_bootstrap(real, generated, seed=args.seed)
        others = {f"probes_{size or 'all'}": accuracy_row(more, generated, labels, names)
                  for size, (more, _) in zip(probe_sizes[1:], probe_sets[1:])}
        rows.append({"layout": model.get("layout", layout), "tag": args.tag, "train_args": overrides,
                     "tokens_per_chunk": chunk_tokens, "tokens_per_sample": tokens, "budget_token_steps": budget,
                     "steps": steps, "train_seconds": train_seconds, "sample_and_i3d_seconds": sample_seconds,
                     "guidance_scale": config["guidance_scale"], "num_inference_steps": config["num_inference_steps"],
                     "samples_per_class": args.samples_per_class,
                     "statistics": accuracy_row(statistics_probes, statistics_features(torch.stack(clips)), labels, names),
                     **accuracy_row(probes, generated, labels, names), "fvd": fvd, **others})
        statistics = rows[-1]["statistics"]
        print(f"{rows[-1]['layout']:10s} {args.tag:10s} {tokens:4d} tokens/sample {steps:5d} steps "
              f"{train_seconds or float('nan'):6.0f} s  clip-statistics probe: acc vs recon "
              f"{statistics['accuracy_vs_reconstruction']:.1%} vs real {statistics['accuracy_vs_real']:.1%}  "
              f"I3D probe: acc vs recon {rows[-1]['accuracy_vs_reconstruction']:.1%}  "
              f"vs real {rows[-1]['accuracy_vs_real']:.1%}  {format_fvd_interval(fvd)}"
              + "".join(f"  [{key}: vs recon {row['accuracy_vs_reconstruction']:.1%}, vs real {row['accuracy_vs_real']:.1%}]"
                        for key, row in others.items()), flush=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(rows, indent=2) + "\n")
    for size, (more, _) in zip(probe_sizes, probe_sets):
        print(f"probe test accuracy ({size or 'all'} videos per class): "
              + ", ".join(f"{k} {p.metadata['test_accuracy']:.1%}" for k, p in more.items()))


if __name__ == "__main__":
    main()
