"""Long videos: a context model's chunks against independently generated ones, on the same seeds.

A VidTwinPipeline makes `--num-frames` frames per video as consecutive chunks of the VAE's T frames. This script
generates `--samples-per-class` videos of every class twice: with the model's context (each chunk sees the clean
latents of the chunks before it) and as independent chunks (`context_chunks=0`, the naive concatenation), video i
seeded with seed + i in both, and prints side by side:

1. chunk seams: the mean absolute difference (pixels in [0, 1]) between the last frame of a chunk and the first
   of the next, against the mean difference between consecutive frames inside chunks, and their ratio (goal for
   the context model: <= 1.5), in the pipeline's output (seams blended, `seam_blend_frames`) with the largest mean
   step near a seam (a blend must not just move the jump), and for the same latents with every chunk decoded on
   its own; beside them the same measures on real clips and on their chunk-by-chunk reconstructions;
2. per-chunk sample class accuracy: each chunk's T frames through I3D and the two linear probes of
   `vidtwin_gen.evaluation.class_probe.generator_probes` (fitted on real train clips and on the autoencoder's
   reconstructions of them, T-frame clips at the VAE's size and `--fps`, as the demo's metrics), chunk 1 against
   chunk 4 (goal: a drop of at most 10 points);
3. FVD of the whole `--num-frames` videos against real clips of that length from the held-out split (split 1
   test list, centre clips at the VAE's size and `--fps`) with its bootstrap interval, beside the 16-frame FVD of
   the first 16 frames of the same videos and clips. I3D is fully convolutional in time (its logits are averaged
   over the time steps left after pooling), so a 64-frame clip goes in whole, as StyleGAN-V computes its
   128-frame FVD; each frame resized to 224x224 as for 16-frame FVD.

    python benchmarks/bench_long_video.py --pipeline runs/demo/pipeline --data-root runs/demo/data \
        --num-frames 64 --samples-per-class 6 --json long_video.json

Real clips shorter than `--num-frames` at `--fps` are padded by the reader with their last frame: the script
counts them ("real clips padded") so that a too-short real set is seen, not hidden.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.data.export import decoded_to_frames
from vidtwin_gen.data.ucf101 import UCF101Clips
from vidtwin_gen.evaluation.class_probe import generator_probes, sample_class_accuracies
from vidtwin_gen.evaluation.fvd import extract_features, format_fvd_interval, fvd_bootstrap
from vidtwin_gen.evaluation.i3d import load_i3d

FVD_SHORT_FRAMES = 16
VARIANTS = {"context": None, "independent chunks": 0}  # name -> context_chunks
NEAR_SEAM = 4  # steps on each side of a seam whose largest mean |diff| is reported


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="a saved VidTwinPipeline folder (class-conditional)")
    parser.add_argument("--data-root", required=True, help="the data root it was trained on (UCF-101 layout)")
    parser.add_argument("--num-frames", type=int, default=64)
    parser.add_argument("--samples-per-class", type=int, default=6)
    parser.add_argument("--probe-videos-per-class", type=int, default=3,
                        help="train and test videos per class the probes are fitted and checked on")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the real clips (the training rate)")
    parser.add_argument("--num-inference-steps", type=int, default=None,
                        help="default: the quickstart DiT config's (vidtwin_gen.demo.sampling_settings)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the quickstart DiT config's")
    parser.add_argument("--batch-size", type=int, default=4, help="videos generated at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def seam_statistics(frames: np.ndarray, chunk_frames: int, reach: int = NEAR_SEAM) -> dict:
    """Sums and counts of mean |frame difference| over (B, N, H, W, 3) videos: across chunk seams (frame kT-1 to
    kT), between consecutive frames inside chunks, and per step around a seam (the `reach` steps on each side,
    the seam's own included: a blend that only moved the jump would show there)."""
    steps = np.abs(np.diff(frames.astype(np.float64), axis=1)).mean(axis=(2, 3, 4))  # (B, N - 1): i -> i + 1
    ends = np.arange(1, frames.shape[1])  # the frame each step ends at
    at_seam = ends % chunk_frames == 0
    position = (ends + reach - 1) % chunk_frames  # 0 .. 2 reach - 1 near a seam: offsets -(reach - 1) .. reach
    seam = ends - position + reach - 1
    near = (position < 2 * reach) & (seam >= chunk_frames) & (seam < frames.shape[1])
    return {"seam_sum": float(steps[:, at_seam].sum()), "seam_count": int(at_seam.sum() * len(frames)),
            "inside_sum": float(steps[:, ~at_seam].sum()), "inside_count": int((~at_seam).sum() * len(frames)),
            "near_sums": [float(steps[:, near & (position == j)].sum()) for j in range(2 * reach)],
            "near_counts": [int((near & (position == j)).sum() * len(frames)) for j in range(2 * reach)]}


def add_statistics(total: dict | None, more: dict) -> dict:
    """`seam_statistics` of two sets of videos together."""
    if total is None:
        return more
    return {key: [a + b for a, b in zip(value, more[key])] if isinstance(value, list) else value + more[key]
            for key, value in total.items()}


def seam_ratio(statistics: dict) -> dict:
    """Mean seam and inside-chunk |diff| of `seam_statistics` sums, their ratio, and the largest mean step near a
    seam over the inside-chunk mean."""
    seam = statistics["seam_sum"] / max(statistics["seam_count"], 1)
    inside = statistics["inside_sum"] / max(statistics["inside_count"], 1)
    near = [total / count for total, count in zip(statistics["near_sums"], statistics["near_counts"]) if count]
    return {"seam_mean_abs_diff": seam, "inside_mean_abs_diff": inside, "seam_ratio": seam / inside if inside else None,
            "near_seam_max_ratio": max(near) / inside if inside and near else None}


@torch.no_grad()
def reference_seams(videos: list[torch.Tensor], vae, chunk_frames: int, blend_num_frames: int) -> dict:
    """The seam measure on the real clips (no seams: what steady motion gives) and on their reconstructions chunk
    by chunk, each chunk decoded on its own and with the seams blended as the pipeline blends them (what a
    chunk-by-chunk generator can look like through this autoencoder). `videos`: (3, N, H, W) in [-1, 1], N a
    multiple of `chunk_frames`."""
    real = decoded_to_frames(torch.stack(videos))  # (B, N, H, W, 3) in [0, 1]
    vae.enable_tiling()
    latents = [vae.encode(video[None].to(vae.device, vae.dtype)).latent_dist.mode() for video in videos]
    vae.disable_tiling()
    references = {"real clips": seam_ratio(seam_statistics(real, chunk_frames))}
    for name, blend in (("reconstructions, chunks decoded on their own", 0),
                        (f"reconstructions, seams blended ({blend_num_frames} frames a side)", blend_num_frames)):
        decoded = torch.cat([vae.decode(z, blend_num_frames=blend).sample.clamp(-1, 1).cpu() for z in latents])
        references[name] = seam_ratio(seam_statistics(decoded_to_frames(decoded), chunk_frames))
    return references


def generate_and_measure(pipe, labels: list[int], context_chunks, i3d, args, sampling: dict) -> dict:
    """Videos for `labels`, measured batch by batch (never all in memory): seam statistics of the pipeline's output
    (seams blended) and of the same latents with every chunk decoded on its own; I3D features of the output's
    chunks, of the whole videos and of their first 16 frames."""
    chunk_frames = pipe.vae.sample_shape[1]
    num_chunks = -(-args.num_frames // chunk_frames)
    seams = {"blended": None, "unblended": None}
    chunk_features, long_features, short_features = [[] for _ in range(num_chunks)], [], []
    start_time = time.monotonic()
    for start in range(0, len(labels), args.batch_size):
        batch = labels[start : start + args.batch_size]
        generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(batch))]
        latents = pipe(class_labels=batch, num_frames=args.num_frames, context_chunks=context_chunks,
                       generator=generators, output_type="latent", **sampling).frames
        frames = pipe.decode_latents(latents, num_frames=args.num_frames)  # what output_type="np" gives
        unblended = pipe.decode_latents(latents, num_frames=args.num_frames, seam_blend_frames=0)
        for name, video in (("blended", frames), ("unblended", unblended)):
            seams[name] = add_statistics(seams[name], seam_statistics(video, chunk_frames))
        clips = torch.from_numpy(frames).permute(0, 4, 1, 2, 3) * 2 - 1  # (B, 3, N, H, W) in [-1, 1]
        for k in range(num_chunks):
            chunk = clips[:, :, k * chunk_frames : (k + 1) * chunk_frames]
            if chunk.shape[2] == chunk_frames:  # a trimmed last chunk is too short for the probes' clips
                chunk_features[k].append(extract_features(chunk, i3d, num_frames=chunk_frames, desc=f"chunk {k + 1}"))
        long_features.append(extract_features(clips, i3d, num_frames=args.num_frames, desc="whole videos"))
        short_features.append(extract_features(clips, i3d, num_frames=FVD_SHORT_FRAMES, desc="first 16 frames"))
    return {"seams": seams, "chunk_features": [np.concatenate(f) for f in chunk_features if f],
            "long_features": np.concatenate(long_features), "short_features": np.concatenate(short_features),
            "seconds": time.monotonic() - start_time}


def real_features(data_root, vae, i3d, args) -> tuple[np.ndarray, np.ndarray, dict, list[torch.Tensor]]:
    """I3D features of the held-out split's centre clips of `--num-frames` frames, whole and first 16 frames; the clips."""
    _, _, height, width = vae.sample_shape
    clips = UCF101Clips(data_root, 1, "test", args.num_frames, (height, width), args.fps, train=False)
    items = [item for item in (clips[i] for i in range(len(clips))) if item is not None]
    videos = [item["video"] for item in items]  # (3, N, H, W) each
    # The reader pads a video shorter than the clip with its last frame: exact repeats at the end reveal it.
    padded = sum(bool(torch.equal(video[:, -1], video[:, -2])) for video in videos)
    protocol = {"split": "1/test", "clips": len(videos), "skipped": len(clips) - len(items), "padded": padded,
                "frames": args.num_frames, "size": [height, width], "fps": args.fps}
    return (extract_features(iter(videos), i3d, num_frames=args.num_frames, desc="real clips"),
            extract_features(iter(videos), i3d, num_frames=FVD_SHORT_FRAMES, desc="real first 16 frames"), protocol,
            videos)


def summarise(measured: dict, probes: dict, labels: list[int], class_names: list[str], real: tuple, seed: int) -> dict:
    accuracy = [{kind: report["accuracy"] for kind, report in
                 sample_class_accuracies(probes, features, labels, class_names).items()}
                for features in measured["chunk_features"]]
    seams = measured["seams"]
    return {
        **seam_ratio(seams["blended"]), "num_seams": seams["blended"]["seam_count"],
        "chunks_decoded_on_their_own": seam_ratio(seams["unblended"]), "class_accuracy_per_chunk": accuracy,
        "fvd_long": fvd_bootstrap(real[0], measured["long_features"], seed=seed),
        "fvd_16": fvd_bootstrap(real[1], measured["short_features"], seed=seed),
        "generation_seconds": round(measured["seconds"], 1),
    }


def format_table(results: dict, num_frames: int) -> str:
    names = list(results)
    rows = [("", names)]
    cell = lambda fmt, key: [fmt(results[n][key]) for n in names]  # noqa: E731
    ratio = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
    rows.append(("seam |diff| / inside |diff| (goal <= 1.5)", cell(ratio, "seam_ratio")))
    rows.append(("  seam mean |diff|", cell(lambda v: f"{v:.4f}", "seam_mean_abs_diff")))
    rows.append(("  inside-chunk mean |diff|", cell(lambda v: f"{v:.4f}", "inside_mean_abs_diff")))
    rows.append((f"  largest step within {NEAR_SEAM} of a seam / inside", cell(ratio, "near_seam_max_ratio")))
    rows.append(("seam ratio, chunks decoded on their own",
                 [ratio(results[n]["chunks_decoded_on_their_own"]["seam_ratio"]) for n in names]))
    chunks = len(results[names[0]]["class_accuracy_per_chunk"])
    last = min(4, chunks)
    for kind in results[names[0]]["class_accuracy_per_chunk"][0]:
        for k in sorted({0, last - 1}):
            rows.append((f"class accuracy chunk {k + 1} ({kind} probe)",
                         [f"{results[n]['class_accuracy_per_chunk'][k][kind]:.1%}" for n in names]))
    rows.append((f"FVD {num_frames} frames", cell(lambda v: f"{v['fvd']:.1f} [{v['low']:.1f}-{v['high']:.1f}]", "fvd_long")))
    rows.append(("FVD 16 frames", cell(lambda v: f"{v['fvd']:.1f} [{v['low']:.1f}-{v['high']:.1f}]", "fvd_16")))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}" + "".join(f"{value:>26}" for value in values) for label, values in rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num_inference_steps is None or args.guidance_scale is None:
        from vidtwin_gen.demo import sampling_settings

        defaults = sampling_settings()
        args.num_inference_steps = args.num_inference_steps or defaults["num_inference_steps"]
        args.guidance_scale = args.guidance_scale if args.guidance_scale is not None else defaults["guidance_scale"]
    pipe = VidTwinPipeline.from_pretrained(args.pipeline).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    chunk_frames = pipe.vae.sample_shape[1]
    class_names = [pipe.config.id2label[str(i)] for i in range(pipe.transformer.config.num_classes)]
    labels = [k for k in range(len(class_names)) for _ in range(args.samples_per_class)]
    i3d = load_i3d(device=args.device)
    probes, _, _ = generator_probes(args.data_root, i3d, pipe.vae, num_frames=chunk_frames, fps=args.fps,
                                    videos_per_class=args.probe_videos_per_class)
    real_long, real_short, real_protocol, real_videos = real_features(args.data_root, pipe.vae, i3d, args)
    whole_chunks = args.num_frames // chunk_frames * chunk_frames
    references = reference_seams([video[:, :whole_chunks] for video in real_videos], pipe.vae, chunk_frames,
                                 pipe.default_seam_blend_frames)
    sampling = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}
    results = {}
    for name, context_chunks in VARIANTS.items():
        label = f"context ({pipe.num_context_chunks} chunk(s))" if context_chunks is None else name
        measured = generate_and_measure(pipe, labels, context_chunks, i3d, args, sampling)
        results[label] = summarise(measured, probes, labels, class_names, (real_long, real_short), args.seed)
    protocol = {
        "num_frames": args.num_frames, "chunk_frames": chunk_frames, "chunks": -(-args.num_frames // chunk_frames),
        "samples_per_class": args.samples_per_class, "classes": class_names, "sampling": sampling, "seed": args.seed,
        "real": real_protocol, "i3d_weights_sha256": i3d.weights_sha256,
        "probes": {kind: {"test_accuracy": p.metadata.get("test_accuracy"), "num_test": p.metadata.get("num_test"),
                          "clip_frames": chunk_frames} for kind, p in probes.items()},
        "fvd": f"I3D logits of whole {args.num_frames}-frame clips (and of their first 16 frames), frames resized "
               "to 224x224; bootstrap interval over 100 resamples; a demo-sized protocol, not comparable with "
               "published FVD figures",
    }
    print(f"protocol: {json.dumps(protocol)}")
    print(format_table(results, args.num_frames))
    for name, reference in references.items():
        print(f"reference, {name}: seam |diff| / inside |diff| {reference['seam_ratio']:.2f}x "
              f"({reference['seam_mean_abs_diff']:.4f} / {reference['inside_mean_abs_diff']:.4f}), largest step "
              f"near a seam {reference['near_seam_max_ratio']:.2f}x")
    for name, result in results.items():
        print(f"{name}: FVD {args.num_frames} frames: {format_fvd_interval(result['fvd_long'])}")
    if args.json:
        path = Path(args.json)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"protocol": protocol, "results": results, "references": references}, indent=2) + "\n")
        os.replace(tmp, path)  # never a half-written report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
