"""What does the quickstart autoencoder need for its two latents to decouple? Train a few configurations on the
embedded set and read each with `vidtwin-gen eval-decoupling` (see vidtwin_gen/evaluation/decoupling.py).

    vidtwin-gen make-dataset --output-dir data/embedded
    python benchmarks/study_decoupling.py --data-root data/embedded --output-dir runs/study_decoupling
    python benchmarks/study_decoupling.py ... --configs structure_2q --steps 200     # one config, a smoke run

Every configuration starts from train_configs/vae/quickstart.yaml and overrides a few keys. A configuration
whose run folder already holds a trained model is evaluated again without training, so an interrupted study
resumes. Each run is a separate `vidtwin-gen train-vae` process, one at a time (run the study alone: its wall
times are only comparable when nothing else shares the CPU). Prints a Markdown table and writes
OUT/study.json.

The levers (VIDTWIN.md sections 2-4): the structure path's temporal capacity is its number of Q-Former queries
n_q, which its decoder mixes into the 16 frames with a learned kernel-1 Conv1d over the query axis (n_q learned
time profiles, not a fixed interpolation: fewer queries follow a motion less well, but even 2 can follow a 1 Hz
one), or, with `structure_time_profiles: linear` (not the original's), interpolates linearly between n_q anchors
spread over the clip; the dynamics path keeps every frame but averages space away, with d_D channels per frame and
row/column (`dynamics_down_blocks` 0 keeps the full 4x4 grid's rows and columns, 1 halves them); KL weight. Not the
original's: train_vae's KL price per part (`dynamics_kl_scale`, `dynamics_static_kl_scale`) and the dynamics encoded
from a colour-shuffled clip (`dynamics_colour_shuffle`), moved by a few pixels (`dynamics_spatial_jitter`).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtwin_gen.demo import run_trainer  # noqa: E402
from vidtwin_gen.evaluation.decoupling import decoupling_for_vae  # noqa: E402
from vidtwin_gen.models.autoencoder_vidtwin import AutoencoderVidTwin  # noqa: E402
from vidtwin_gen.training import train_vae  # noqa: E402

BASE_CONFIG = ROOT / "train_configs" / "vae" / "quickstart.yaml"

# name -> (what it changes, train-vae overrides). The base is this round's quickstart; the rows of last round's
# study (the earlier embedded set, the narrow base) are in the README.
CONFIGS = {
    "quickstart": ("train_configs/vae/quickstart.yaml: n_q 8, d_S 4, d_D 8, dynamics down 0", []),
    "narrow_dynamics": ("last round's quickstart: d_D 4, dynamics down 1 (768 numbers)",
                        ["--model.dynamics_channels", "4", "--model.dynamics_down_blocks", "1"]),
    # 2 queries cannot follow the fast motions (>= 0.6 Hz over 2 s) but can hold a still object; a dearer dynamics
    # KL should then leave only what the structure cannot carry (the fast motion) in the dynamics.
    "structure_2q_dynkl20": ("n_q 2, the dynamics' KL weighted 20x",
                             ["--model.num_queries", "2", "--dynamics_kl_scale", "20"]),
    "structure_2q": ("n_q 2", ["--model.num_queries", "2"]),
    "structure_4q_kl1e-2": ("n_q 4, KL weight 1e-2", ["--model.num_queries", "4", "--kl_weight", "1e-2"]),
    "dynamics_d2_kl1e-2": ("n_q 2, d_D 2, KL weight 1e-2 (little room in the dynamics)",
                           ["--model.num_queries", "2", "--model.dynamics_channels", "2", "--kl_weight", "1e-2"]),
    "dynkl50": ("the dynamics' KL weighted 50x", ["--dynamics_kl_scale", "50"]),
    "dynkl100": ("the dynamics' KL weighted 100x", ["--dynamics_kl_scale", "100"]),
    # At 100x the object moves into the structure, but so does part of the fast motion (8 queries can follow it):
    # 2 queries cannot.
    "structure_2q_dynkl100": ("n_q 2, the dynamics' KL weighted 100x",
                              ["--model.num_queries", "2", "--dynamics_kl_scale", "100"]),
    # The per-part KL prices the fast motion like the object's look. The dynamics' average over the clip holds what
    # does not change (the look, the place); priced alone, it should move into the structure and leave the changes.
    "dynstatic100": ("the dynamics' average over time priced 100x", ["--dynamics_static_kl_scale", "100"]),
    "dynstatic1000": ("the dynamics' average over time priced 1000x", ["--dynamics_static_kl_scale", "1000"]),
    "dynstatic10000": ("the dynamics' average over time priced 10000x", ["--dynamics_static_kl_scale", "10000"]),
    # At 1000x the 8 queries take up the fast motion; 4 follow it less well.
    "structure_4q_dynstatic1000": ("n_q 4, the dynamics' average over time priced 1000x",
                                   ["--model.num_queries", "4", "--dynamics_static_kl_scale", "1000"]),
    # The dynamics encoded from a colour-shuffled clip cannot tell the decoder the object's colour: the structure
    # has to. Fewer queries follow the fast motion less well.
    "colour_shuffle": ("the dynamics encoded from the clip with shuffled colour channels",
                       ["--dynamics_colour_shuffle", "true"]),
    "structure_2q_colour_shuffle": ("n_q 2, the dynamics encoded from the clip with shuffled colour channels",
                                    ["--model.num_queries", "2", "--dynamics_colour_shuffle", "true"]),
    "structure_4q_colour_shuffle": ("n_q 4, the dynamics encoded from the clip with shuffled colour channels",
                                    ["--model.num_queries", "4", "--dynamics_colour_shuffle", "true"]),
    # The structure's KL 10x dearer (the dynamics' as before): following the fast motion costs the structure more.
    "colour_shuffle_structure_kl10": ("the dynamics encoded from the colour-shuffled clip; the structure's KL 10x",
                                      ["--dynamics_colour_shuffle", "true", "--kl_weight", "1e-2",
                                       "--dynamics_kl_scale", "0.1"]),
    # The structure now carries the colours alone: twice its channels (d_S 8; 2,048 latent numbers).
    "colour_shuffle_structure_d8": ("the dynamics encoded from the colour-shuffled clip; d_S 8",
                                    ["--dynamics_colour_shuffle", "true", "--model.structure_channels", "8"]),
    # With the colour gone from the dynamics, what they still carry of the object is its silhouette, which the
    # structure has too and which deforms a reenactment's object: price it (the dynamics' average over time, or all).
    "colour_shuffle_dynstatic100": ("the dynamics encoded from the colour-shuffled clip; their average over time priced 100x",
                                    ["--dynamics_colour_shuffle", "true", "--dynamics_static_kl_scale", "100"]),
    "colour_shuffle_dynkl10": ("the dynamics encoded from the colour-shuffled clip; their KL 10x",
                               ["--dynamics_colour_shuffle", "true", "--dynamics_kl_scale", "10"]),
    # With the colour gone, the dynamics still paint B's outline where B's object is; moved by a few pixels (half a
    # patch) they cannot tell the decoder where the outline is, so the structure keeps place and shape.
    "colour_shuffle_jitter4": ("the dynamics encoded from the colour-shuffled clip moved by up to 4 pixels",
                               ["--dynamics_colour_shuffle", "true", "--dynamics_spatial_jitter", "4"]),
    # With the jitter the structure has to hold the object's place; with fewer queries (fewer learned time profiles
    # for its 16 frames) it should follow a bounce less, leaving the bounce (relative motion, which the jitter keeps)
    # to the dynamics.
    "structure_4q_colour_shuffle_jitter4": (
        "n_q 4, the dynamics encoded from the colour-shuffled clip moved by up to 4 pixels",
        ["--model.num_queries", "4", "--dynamics_colour_shuffle", "true", "--dynamics_spatial_jitter", "4"]),
    # The learned Conv1d lets even 2-4 queries follow a bounce (above). Fixed linear interpolation between 3 anchors
    # (frames 1, 8.5, 16) bends with the drift's arc but cannot follow a 1-1.5 Hz motion, which must then go to
    # the dynamics.
    "structure_3q_linear_colour_shuffle": (
        "n_q 3 interpolated linearly over time (structure_time_profiles: linear), the dynamics encoded from the "
        "colour-shuffled clip",
        ["--model.num_queries", "3", "--model.structure_time_profiles", "linear", "--dynamics_colour_shuffle", "true"]),
    "structure_3q_linear_colour_shuffle_jitter4": (
        "n_q 3 interpolated linearly over time, the dynamics encoded from the colour-shuffled clip moved by up to 4 "
        "pixels",
        ["--model.num_queries", "3", "--model.structure_time_profiles", "linear", "--dynamics_colour_shuffle", "true",
         "--dynamics_spatial_jitter", "4"]),
    # Two anchors, the clip's first and last frames: the structure follows only a straight path (the 2 s arc of the
    # drift is nearly one).
    "structure_2q_linear_colour_shuffle_jitter4": (
        "n_q 2 interpolated linearly over time, the dynamics encoded from the colour-shuffled clip moved by up to 4 "
        "pixels",
        ["--model.num_queries", "2", "--model.structure_time_profiles", "linear", "--dynamics_colour_shuffle", "true",
         "--dynamics_spatial_jitter", "4"]),
    # Its reconstructions keep B's fast motion less often than the 3-anchor one's (75 against 83.5 %): twice the
    # dynamics' channels (d_D 16) to draw it.
    "structure_2q_linear_colour_shuffle_jitter4_dynamics_d16": (
        "n_q 2 interpolated linearly over time, the dynamics encoded from the colour-shuffled clip moved by up to 4 "
        "pixels; d_D 16",
        ["--model.num_queries", "2", "--model.structure_time_profiles", "linear", "--dynamics_colour_shuffle", "true",
         "--dynamics_spatial_jitter", "4", "--model.dynamics_channels", "16"]),
}


def train(name: str, overrides: list[str], data_root: str, out: Path, steps: int, seed: int,
          num_processes: int = 1) -> float | None:
    """Train one configuration into out/name unless it is there already; its wall time in seconds (None: reused).
    With `num_processes` > 1, as that many data-parallel CPU processes, as the demo trains (same global batch)."""
    if (out / name / "vae" / "config.json").exists():
        return None
    arguments = ["--data_root", data_root, "--output_dir", str(out / name), "--max_train_steps", str(steps), "--seed",
                 str(seed), "--resume_from_checkpoint", "latest", *overrides]
    start = time.monotonic()
    if num_processes > 1:
        run_trainer(train_vae, str(BASE_CONFIG), arguments, num_processes)
    else:
        subprocess.run([sys.executable, "-m", "vidtwin_gen.cli", "train-vae", "--config", str(BASE_CONFIG), *arguments],
                       check=True, cwd=ROOT)
    return round(time.monotonic() - start, 1)


def table(results: dict) -> str:
    rows = ["| configuration | steps | train wall (s) | PSNR (dB) | C: A's content | C: A's drift | C: B's fast motion "
            "| C: all three | structure-only: A's content / drift / fast | dynamics-only: B's fast motion |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        pct = lambda row, key: f"{100 * result['report']['rows'][row][key]:.0f}%"  # noqa: E731
        rows.append(f"| {name}: {result['changes']} | {result['steps']} | {result['train_seconds'] or 'reused'} | "
                    f"{result['report']['psnr']:.2f} | {pct('reenactment', 'content_A')} | {pct('reenactment', 'drift_A')} | "
                    f"{pct('reenactment', 'fast_B')} | {pct('reenactment', 'goal')} | {pct('structure', 'content_A')} / "
                    f"{pct('structure', 'drift_A')} / {pct('structure', 'fast_A')} | {pct('dynamics', 'fast_B')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="an embedded data set (vidtwin-gen make-dataset)")
    parser.add_argument("--output-dir", default="runs/study_decoupling")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=2000, help="max_train_steps of every configuration")
    parser.add_argument("--num-pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1,
                        help="data-parallel CPU processes per training run (the demo uses 2 on 2 cores: ~1.7x faster)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "study.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.configs:
        changes, overrides = CONFIGS[name]
        seconds = train(name, overrides, args.data_root, out, args.steps, args.seed, args.num_processes)
        vae = AutoencoderVidTwin.from_pretrained(out / name / "vae")
        report = decoupling_for_vae(vae, args.data_root, num_pairs=args.num_pairs, seed=args.seed,
                                    sheet=out / name / "decoupling.png")
        previous = results.get(name, {})
        results[name] = {"changes": changes, "overrides": overrides, "steps": args.steps if seconds else previous.get("steps", args.steps),
                         "train_seconds": seconds if seconds is not None else previous.get("train_seconds"),
                         "latent_size": vae.latent_size, "report": report}
        summary_path.write_text(json.dumps(results, indent=2) + "\n")
        print(table({name: results[name]}), flush=True)
    print(table({name: results[name] for name in args.configs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
