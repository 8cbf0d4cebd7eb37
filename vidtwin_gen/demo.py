"""`vidtwin-gen demo`: the quickstart, end to end on the embedded data set, on a laptop-class CPU.

    vidtwin-gen demo --output-dir runs/demo

Stages (each skipped when its output already exists, so a rerun resumes where the last one stopped):

    data      the embedded data set in UCF-101 layout                         OUT/data
    vae       train a small autoencoder (train_configs/vae/quickstart.yaml)   OUT/vae       (run: OUT/runs/vae)
              with the decoupled split (DECOUPLED_SPLIT; --original-split: the config as it is)
    latents   encode the training split once, 4 consecutive chunks per video  OUT/latents
    dit       train a small class-conditional DiT that continues chunks        OUT/pipeline  (run: OUT/runs/dit)
              (dit/quickstart_class_long.yaml)
    samples   a video per class (mp4 + gif) and a contact sheet               OUT/samples, OUT/samples.png
    decouple  originals A and B | reconstruction | structure only | dynamics only | structure A + dynamics B,
              with frame differences and the measured decoupling (eval-decoupling's read-out over many pairs)
                                                                              OUT/decoupling.png, .gif, .json
    metrics   reconstruction PSNR/SSIM on held-out clips; a fixed number of samples per class: their class
              accuracy under linear probes on the clip statistics eval-decoupling reads (one fitted on real
              train clips, one on the VAE's reconstructions of them; with --i3d-probes also on I3D features),
              FVD against held-out clips with a bootstrap interval; wall time per stage   OUT/metrics.json
"""

import argparse
import importlib.resources
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
import yaml

from . import VidTwinPipeline
from .data.embedded import make_embedded_dataset
from .data.export import export_videos
from .data.latent_cache import encode_dataset
from .data.ucf101 import UCF101Clips
from .evaluation.class_probe import (data_root_features, format_sample_class_accuracies, generator_probes,
                                     sample_class_accuracies)
from .evaluation.decoupling import decoupling_for_vae, format_decoupling, statistics_class_probes, statistics_features
from .evaluation.fvd import extract_features, format_fvd_interval, fvd_bootstrap, pipeline_clips
from .evaluation.i3d import load_i3d
from .evaluation.reconstruction import evaluate_reconstruction
from .models.autoencoder_vidtwin import AutoencoderVidTwin
from .training import train_dit, train_vae
from .training.checkpointing import replace_directory

FPS = 8.0
# The generator continues chunks (long videos); its cache holds each embedded video's 4 consecutive 16-frame chunks.
DIT_CONFIG = "dit/quickstart_class_long.yaml"
CHUNKS_PER_VIDEO = 4
# On top of train_configs/vae/quickstart.yaml (the original's split), the autoencoder whose cross-reenactments
# decouple best at the quickstart's 1,600 steps (README, "Is it decoupled?"): the dynamics encoded from a
# colour-shuffled clip cannot carry the object's colour, and a structure of 3 anchors interpolated linearly over
# the clip cannot follow fast motion. Neither is the original's; --original-split drops them.
DECOUPLED_SPLIT = ["--dynamics_colour_shuffle", "true", "--model.num_queries", "3",
                   "--model.structure_time_profiles", "linear"]


def config_path(name: str) -> str:
    """A YAML of train_configs/, installed with the package as `vidtwin_gen.train_configs`."""
    return str(importlib.resources.files("vidtwin_gen.train_configs").joinpath(name))


def contact_sheet(rows: list[np.ndarray], labels: list[str], scale: int = 3) -> PIL.Image.Image:
    """One row per video (T, H, W, 3) in [0, 1], frames left to right, a label above each row."""
    label_height = 14
    tiles = []
    for frames, label in zip(rows, labels):
        strip = (np.concatenate(list(frames), axis=1) * 255).round().astype(np.uint8)  # (H, T*W, 3)
        strip = PIL.Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), PIL.Image.NEAREST)
        tile = PIL.Image.new("RGB", (strip.width, strip.height + label_height), "white")
        tile.paste(strip, (0, label_height))
        PIL.ImageDraw.Draw(tile).text((2, 1), label, fill="black")
        tiles.append(tile)
    sheet = PIL.Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), "white")
    top = 0
    for tile in tiles:
        sheet.paste(tile, (0, top))
        top += tile.height
    return sheet


def sampling_settings() -> dict:
    """The quickstart DiT config's sampling steps and guidance: the demo samples as its training validated."""
    config = yaml.safe_load(Path(config_path(DIT_CONFIG)).read_text())
    return {"num_inference_steps": config["num_inference_steps"], "guidance_scale": config["guidance_scale"]}


def held_out_clips(data: Path, vae: AutoencoderVidTwin, limit: int) -> tuple[torch.Tensor, list[int]]:
    """Centre clips of the split-1 test list at the VAE's size, and their labels."""
    _, frames, height, width = vae.sample_shape
    clips = UCF101Clips(data, 1, "test", frames, (height, width), FPS, train=False)
    items = [clips[i] for i in range(min(limit, len(clips)))]
    items = [item for item in items if item is not None]
    return torch.stack([item["video"] for item in items]), [item["label"] for item in items]


def default_num_processes() -> int:
    """2 data-parallel training processes on a CPU-only machine with 2 or more cores, else 1.

    The quickstart's models are small: their ops gain nothing from a second thread (the autoencoder's step is
    even faster on one thread than on two), while two processes of one thread each, with the same global batch,
    train ~1.7x faster than one process on 2 cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if cores >= 2 and not torch.cuda.is_available() else 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_trainer(trainer, config: str, arguments: list[str], num_processes: int) -> None:
    """`trainer.main(--config config, arguments)` in this process, or with `num_processes` > 1 under
    `accelerate launch` as that many data-parallel CPU processes (gloo), one thread each, each taking its share
    of the config's batch so that the global batch (and the recipe) stays the config's. The processes load their
    clips themselves (the quickstart's clips cost ~4 ms each): DataLoader workers forked from a process that already
    runs gloo's threads hung one of them within a few hundred steps (a lock held at fork time)."""
    arguments = ["--config", config, *arguments]
    if num_processes == 1:
        trainer.main(arguments)
        return
    batch = yaml.safe_load(Path(config).read_text())["train_batch_size"]
    if batch % num_processes:
        raise ValueError(f"{config}: train_batch_size {batch} does not split over {num_processes} processes; "
                         "pass --num-processes 1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "-m", trainer.__name__,
               *arguments, "--train_batch_size", str(batch // num_processes), "--dataloader_num_workers", "0"]
    # ACCELERATE_USE_CPU with a multi-process launch: gloo DDP on the CPU (see train_configs/accelerate/cpu_2proc.yaml).
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    if subprocess.run(command, env=env).returncode:
        raise RuntimeError(f"{trainer.__name__} failed in {num_processes} processes (its output is above); rerun "
                           "the demo to resume from its last checkpoint, or pass --num-processes 1")


def train_autoencoder(out: Path, data: Path, args) -> None:
    steps = ["--max_train_steps", str(args.vae_steps)] if args.vae_steps else []
    split = [] if args.original_split else DECOUPLED_SPLIT
    run_trainer(train_vae, config_path("vae/quickstart.yaml"),
                ["--data_root", str(data), "--seed", str(args.seed), "--output_dir", str(out / "runs" / "vae"),
                 "--resume_from_checkpoint", "latest", *steps, *split], args.num_processes)
    replace_directory(out / "runs" / "vae" / "vae", out / "vae")


def train_generator(out: Path, args) -> None:
    steps = ["--max_train_steps", str(args.dit_steps)] if args.dit_steps else []
    run_trainer(train_dit, config_path(DIT_CONFIG),
                ["--vae", str(out / "vae"), "--latent_cache", str(out / "latents"), "--seed", str(args.seed),
                 "--output_dir", str(out / "runs" / "dit"), "--resume_from_checkpoint", "latest", *steps],
                args.num_processes)
    replace_directory(out / "runs" / "dit" / "pipeline", out / "pipeline")


def write_samples(out: Path, pipe: VidTwinPipeline, class_names: list[str], args) -> None:
    """`videos_per_class` one-chunk samples per class (OUT/samples, OUT/samples.png) and, from a long-video model,
    one 64-frame sample per class made chunk after chunk (OUT/samples_long, OUT/samples_long.png: a row per chunk,
    so each seam is the step from the end of a row to the start of the next)."""
    labels = [name for name in class_names for _ in range(args.videos_per_class)]
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(labels))]
    frames = pipe(class_labels=labels, generator=generators, **sampling_settings()).frames
    names = [f"{name}_{i % args.videos_per_class:02d}" for i, name in enumerate(labels)]
    export_videos(frames, out / "samples", names, FPS)
    long_frames, chunk = 64, pipe.vae.sample_shape[1]
    if pipe.num_context_chunks:
        generators = [torch.Generator().manual_seed(args.seed + len(labels) + i) for i in range(len(class_names))]
        videos = pipe(class_labels=class_names, num_frames=long_frames, generator=generators, **sampling_settings()).frames
        export_videos(videos, out / "samples_long", [f"{name}_{long_frames}f" for name in class_names], FPS)
        starts = range(0, long_frames, chunk)
        contact_sheet([video[start : start + chunk] for video in videos for start in starts],
                      [f"{name} frames {start + 1}-{min(start + chunk, long_frames)}" for name in class_names
                       for start in starts]).save(out / "samples_long.png")
    else:
        print(f"[samples] no {long_frames}-frame samples: this generator has no context chunks (a long-video model "
              "comes from train_configs/dit/quickstart_class_long.yaml)")
    contact_sheet(list(frames), names).save(out / "samples.png")  # last: its presence marks the stage done


def write_decoupling(out: Path, data: Path, vae: AutoencoderVidTwin) -> None:
    """The sheet of one held-out pair (+ GIF, + a video per row) and `decoupling.json`: how often content, drift
    and fast motion land where they should over many pairs (written last: the stage's completion mark)."""
    report = decoupling_for_vae(vae, data, fps=FPS, sheet=out / "decoupling.png", videos_dir=out / "decoupling")
    (out / "decoupling.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_decoupling(report))


def write_metrics(out: Path, data: Path, pipe: VidTwinPipeline, class_names: list[str], times: dict, args) -> None:
    clips, _ = held_out_clips(data, pipe.vae, limit=10**9)
    scores = evaluate_reconstruction(pipe.vae, clips, batch_size=8)
    reconstruction = {"clips": len(clips), "split": "1/test", "psnr": float(np.mean(scores["psnr"])),
                      "ssim": float(np.mean(scores["ssim"]))}
    i3d = load_i3d()
    if args.i3d_probes:  # the real probe's test clips are the held-out clips at the VAE's size: FVD's real set too
        probes, real, _ = generator_probes(data, i3d, pipe.vae, fps=FPS, videos_per_class=args.probe_videos_per_class)
    else:
        real = data_root_features(data, i3d, "test", size=tuple(pipe.vae.sample_shape[2:]), fps=FPS,
                                  videos_per_class=args.probe_videos_per_class)[0]
    labels = [k for k in range(len(class_names)) for _ in range(args.samples_per_class)]
    pipe.set_progress_bar_config(disable=True)
    settings = sampling_settings()
    samples = list(pipeline_clips(pipe, labels, 8, seed=args.seed + 1000, **settings))
    generated = extract_features(iter(samples), i3d, desc="I3D generated clips")
    fvd = {**fvd_bootstrap(real, generated, seed=args.seed), "real": f"held-out clips (split 1 test list, {args.probe_videos_per_class} videos per class)",
           "generated": f"{args.samples_per_class} samples per class", "weights_sha256": i3d.weights_sha256,
           "note": "a demo-sized protocol: not comparable with published FVD figures (2,048 or 10,000 clips)"}
    statistics_probes = statistics_class_probes(data, pipe.vae, FPS)
    report = {"reconstruction": reconstruction,
              "sample_class_accuracy_statistics": sample_class_accuracies(
                  statistics_probes, statistics_features(torch.stack(samples)), labels, class_names)}
    if args.i3d_probes:
        report["sample_class_accuracy"] = sample_class_accuracies(probes, generated, labels, class_names)
    report.update({"fvd": fvd, "sampling": {**settings, "samples_per_class": args.samples_per_class},
                   "wall_time_seconds": times, "decoupling": json.loads((out / "decoupling.json").read_text())})
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_sample_class_accuracies(report["sample_class_accuracy_statistics"], "clip-statistics probe"))
    if args.i3d_probes:
        print(format_sample_class_accuracies(report["sample_class_accuracy"], "I3D probe"))


def accuracy_line(section: dict, probe_name: str) -> str:
    """One line of the summary: a `sample_class_accuracies` section's two figures and their probes' own."""
    recon, real = section["reconstruction"], section["real"]
    return (f"{recon['accuracy']:.1%} of {recon['num_samples']} samples against reconstructions, {real['accuracy']:.1%} "
            f"against real clips ({probe_name}; it reads {recon['probe_test_accuracy']:.1%} of held-out reconstructions, "
            f"{real['probe_test_accuracy']:.1%} of held-out clips)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidtwin-gen demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, help="override max_train_steps of train_configs/vae/quickstart.yaml")
    parser.add_argument("--original-split", action="store_true",
                        help="train the autoencoder as train_configs/vae/quickstart.yaml has it (the original's learned "
                        "time profiles over 8 queries, the dynamics encoded from the clip itself): ~0.6 dB more PSNR, "
                        "but its structure keeps the scene and its dynamics the object, so cross-reenactments do not "
                        "decouple (README: 'Is it decoupled?')")
    parser.add_argument("--dit-steps", type=int, help=f"override max_train_steps of train_configs/{DIT_CONFIG}")
    parser.add_argument("--samples-per-class", type=int, default=6,
                        help="samples of each class for class accuracy and FVD (default: %(default)s)")
    parser.add_argument("--probe-videos-per-class", type=int, default=3,
                        help="held-out videos per class of FVD's real set, and train videos per class of the I3D "
                        "probes; I3D is the metrics stage's main cost (default: %(default)s)")
    parser.add_argument("--i3d-probes", action="store_true",
                        help="also score the samples' class with linear probes on I3D features (real clips and "
                        "reconstructions: ~80 s more on 2 CPU cores); the clip-statistics probes read 32x32 clips "
                        "better and always run")
    parser.add_argument("--videos-per-class", type=int, default=2)
    parser.add_argument("--num-processes", type=int, default=default_num_processes(),
                        help="data-parallel processes for the two training stages (default: 2 on a CPU-only machine "
                        "with 2+ cores, where that is ~1.7x faster than one process; else 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        parser.error(f"--num-processes must be >= 1, got {args.num_processes}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "stage_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}

    def stage(name: str, done: bool, run) -> None:
        if done:
            print(f"[{name}] done already, skipped")
            return
        print(f"[{name}] ...")
        start = time.monotonic()
        run()
        times[name] = round(time.monotonic() - start, 1)
        times_path.write_text(json.dumps(times, indent=2))
        print(f"[{name}] {times[name]:.0f} s")

    data = out / "data"
    stage("data", (data / "embedded_dataset.json").exists(), lambda: make_embedded_dataset(data, seed=args.seed))
    stage("vae", (out / "vae" / "config.json").exists(), lambda: train_autoencoder(out, data, args))
    latents_manifest = out / "latents" / "manifest.json"
    stage("latents", latents_manifest.exists() and json.loads(latents_manifest.read_text()).get("complete", False),
          lambda: encode_dataset(out / "vae", data, out / "latents", chunks_per_clip=CHUNKS_PER_VIDEO,
                                 target_fps=FPS))
    stage("dit", (out / "pipeline" / "model_index.json").exists(), lambda: train_generator(out, args))

    pipe = VidTwinPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(desc="sampling")
    class_names = [pipe.config.id2label[str(i)] for i in range(len(pipe.labels))]
    stage("samples", (out / "samples.png").exists(), lambda: write_samples(out, pipe, class_names, args))
    stage("decouple", (out / "decoupling.json").exists(), lambda: write_decoupling(out, data, pipe.vae))
    stage("metrics", (out / "metrics.json").exists(), lambda: write_metrics(out, data, pipe, class_names, times, args))
    report = json.loads((out / "metrics.json").read_text())
    report["wall_time_seconds"] = {**times, "total": round(sum(times.values()), 1)}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")

    fvd = report["fvd"]
    i3d_line = (f"\n                       {accuracy_line(report['sample_class_accuracy'], 'I3D probe')}"
                if "sample_class_accuracy" in report else "")
    print(f"""
done in {report['wall_time_seconds']['total']:.0f} s of stage time. Results in {out}:
  pipeline         {out / 'pipeline'}   (DiffusionPipeline.from_pretrained(..., trust_remote_code=True))
  autoencoder      {out / 'vae'}
  samples          {out / 'samples'}  and the contact sheet {out / 'samples.png'}
  decoupling       {out / 'decoupling.png'}
  metrics          {out / 'metrics.json'}:
    reconstruction     PSNR {report['reconstruction']['psnr']:.2f} dB, SSIM {report['reconstruction']['ssim']:.3f} on {report['reconstruction']['clips']} held-out clips
    class accuracy     {accuracy_line(report['sample_class_accuracy_statistics'], 'clip-statistics probe')}{i3d_line}
    {format_fvd_interval(fvd)}
  training logs    {out / 'runs'}  (tensorboard --logdir {out / 'runs'})""")
    return 0
