"""Latent cache: encode a data split once with the autoencoder, train the generator on the stored posteriors.

    vidtwin-gen encode-dataset --vae VAE_DIR --data-root DATA --split 1 --subset train --output-dir CACHE

The cache folder holds:

    data/               a `datasets` dataset, one row per clip (per chunk of a long-video cache, below):
                          structure_mean, structure_std  (d_S, n_q, h_S, w_S) float32   posterior of z_S
                          dynamics_mean, dynamics_std    (d_D, t, w_D + h_D) float32    posterior of z_D
                          label (ClassLabel), caption, path, clip_index
                          video_index, chunk_index, num_chunks   (long-video caches only; int32)
    latent_stats.json   per-channel mean/std of the posterior means of each part (channel axis 1), which the
                        generator uses to bring both parts to unit scale
    vae_config.json     the autoencoder's config: latent shapes, and which autoencoder decodes generated latents
    manifest.json       the settings the cache was made with, the VAE's weight fingerprint, counts

Clips have the VAE's frame count and size (`vae.sample_shape`); they are centred (one per video) or evenly
spread (`clips_per_video` > 1) and centre-cropped.

Long videos (`chunks_per_clip` N > 1, `--chunks-per-clip N`): each video gives as many consecutive T-frame
chunks at the frame interval as it holds, up to N, from its first frame (`ucf101.UCF101Chunks`); each chunk is
encoded on its own (chunks are what the autoencoder encodes independently) and is one row, with `video_index`
(the video's row in the split list), `chunk_index` (0 .. num_chunks - 1) and `num_chunks` (how many the
video gave). A video's rows are consecutive and in chunk order, so the chunks before row r are rows
r - chunk_index .. r - 1 (`ContextChunks` reads them). Videos too short for N chunks keep the whole chunks
they hold (one, padded, if shorter than a chunk): they still train first chunks. The manifest records
`chunks_per_clip` (a cache from before it existed is a single-chunk cache) and how many videos gave how many
chunks ("videos_by_num_chunks"); the statistics stay per channel over all rows. A single-chunk cache
(N = 1, the default) has exactly the columns it always had.

Work is done in shards (of videos), each written to a temporary folder and renamed when complete, so an
interrupted run continues where it stopped when rerun with the same arguments and never duplicates rows.
Unreadable videos are skipped, logged and counted (manifest "num_skipped").

Several processes share the work when launched with Accelerate (same arguments as `encode-dataset`):

    accelerate launch --num_processes 8 -m vidtwin_gen.data.latent_cache --vae VAE_DIR --data-root DATA --output-dir CACHE

Process r encodes the shards whose number is r modulo the process count, each on its own device, and writes them
itself; the shards are numbered as in a one-process run, so the rows (and their order) are the same, and a rerun
with any process count continues whatever shards are missing. Only after every process is done (a barrier) does
the main process concatenate the shards, compute the statistics over all rows, and mark the manifest complete.
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch.utils.data import DataLoader, Subset

from ..models import AutoencoderVidTwin
from .ucf101 import UCF101Chunks, UCF101Clips, collate_chunks, collate_clips

logger = logging.getLogger(__name__)

DATA_DIR, SHARDS_DIR = "data", "shards"
MANIFEST, STATS, VAE_CONFIG = "manifest.json", "latent_stats.json", "vae_config.json"
PARTS = ("structure", "dynamics")

# Settings that must match for a rerun to continue an existing cache.
_RESUME_KEYS = ("data_root", "split", "subset", "target_fps", "clips_per_video", "chunks_per_clip", "shard_size",
                "num_items", "sample_shape", "vae_fingerprint")
# Values of keys a manifest written before they existed implies.
_MANIFEST_DEFAULTS = {"chunks_per_clip": 1}
CHUNK_COLUMNS = ("video_index", "chunk_index", "num_chunks")


@dataclass
class LatentCache:
    """A finished latent cache. `dataset` is torch-formatted; `stats[part]` = {"mean": [...], "std": [...]}."""

    dataset: datasets.Dataset
    stats: dict
    vae_config: dict
    class_names: list[str]
    manifest: dict


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """Hash of the weights: a rerun with other weights must not extend a cache made with these."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in vae.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _features(vae, class_names: list[str], chunked: bool) -> datasets.Features:
    structure = datasets.Array4D(vae.structure_latent_shape, "float32")  # (d_S, n_q, h_S, w_S)
    dynamics = datasets.Array3D(vae.dynamics_latent_shape, "float32")  # (d_D, t, w_D + h_D)
    chunk_columns = {key: datasets.Value("int32") for key in CHUNK_COLUMNS} if chunked else {}
    return datasets.Features({
        "structure_mean": structure, "structure_std": structure, "dynamics_mean": dynamics, "dynamics_std": dynamics,
        "label": datasets.ClassLabel(names=class_names), "caption": datasets.Value("string"),
        "path": datasets.Value("string"), "clip_index": datasets.Value("int32"), **chunk_columns,
    })


def _row_columns(batch: dict) -> dict[str, list]:
    """The non-latent columns of a batch's rows: one per clip, or one per chunk of a `collate_chunks` batch."""
    if "num_chunks" not in batch:
        return {key: list(batch[key].tolist() if torch.is_tensor(batch[key]) else batch[key])
                for key in ("label", "caption", "path", "clip_index")}
    counts = batch["num_chunks"].tolist()
    per_chunk = lambda values: [v for v, c in zip(values, counts) for _ in range(c)]  # noqa: E731
    return {
        "label": per_chunk(batch["label"].tolist()), "caption": per_chunk(batch["caption"]),
        "path": per_chunk(batch["path"]), "clip_index": [0] * sum(counts),
        "video_index": per_chunk(batch["video_index"].tolist()),
        "chunk_index": [k for c in counts for k in range(c)], "num_chunks": per_chunk(counts),
    }


@torch.inference_mode()
def _encode_shard(vae, clips: UCF101Clips | UCF101Chunks, indices: list[int], batch_size: int, num_workers: int,
                  device: torch.device) -> tuple[dict, int]:
    """Rows of one shard (column -> list/array) and the number of unreadable videos in it."""
    chunked = isinstance(clips, UCF101Chunks)
    loader = DataLoader(Subset(clips, indices), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_chunks if chunked else collate_clips)
    columns = {key: [] for key in _features(vae, clips.class_names, chunked)}
    skipped = 0
    for batch in loader:
        skipped += batch["num_skipped"]
        if batch["video"] is None:
            continue
        # A batch of videos holds up to batch_size * chunks_per_clip chunks: at most batch_size per encoder call.
        for start in range(0, len(batch["video"]), batch_size):
            encoded = vae.encode(batch["video"][start : start + batch_size].to(device))  # video (B, 3, T, H, W)
            for part, dist in (("structure", encoded.structure_dist), ("dynamics", encoded.dynamics_dist)):
                columns[f"{part}_mean"].append(dist.mean.float().cpu().numpy())
                columns[f"{part}_std"].append(dist.std.float().cpu().numpy())
        for key, values in _row_columns(batch).items():
            columns[key] += values
    if columns["path"]:
        for key in ("structure_mean", "structure_std", "dynamics_mean", "dynamics_std"):
            columns[key] = np.concatenate(columns[key])  # (rows, C, ...)
    return columns, skipped


def _channel_stats(dataset: datasets.Dataset, column: str, chunk: int = 1024) -> dict:
    """Mean/std per channel (axis 1 of the batched latents) over every clip and position, in float64."""
    table = dataset.with_format("numpy", columns=[column])
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(table), chunk):
        x = table[start : start + chunk][column].astype(np.float64)  # (B, C, ...)
        x = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)  # (C, B * positions)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist()}


def _write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2))
    os.replace(temporary, path)


def _load_vae(vae, device) -> tuple:
    """(model on `device` in eval mode, its folder or None) from a model or a folder."""
    vae_path = None
    if isinstance(vae, (str, Path)):
        if not (Path(vae) / "config.json").is_file():
            raise FileNotFoundError(f"{vae} is not an AutoencoderVidTwin folder (no config.json); give a folder written "
                                    "by save_pretrained or `vidtwin-gen convert`")
        vae_path = str(Path(vae).resolve())
        vae = AutoencoderVidTwin.from_pretrained(vae_path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device) if device is not None else vae.device
    return vae.to(device).eval(), vae_path


def _start_manifest(output_dir: Path, manifest: dict) -> bool:
    """Write the manifest of a new or continued cache; True if the cache is already complete.

    A cache made with other settings is never continued (its rows would mix two encodings).
    """
    manifest_path = output_dir / MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        changed = [key for key in _RESUME_KEYS if previous.get(key, _MANIFEST_DEFAULTS.get(key)) != manifest[key]]
        if changed:
            raise ValueError(f"{output_dir} holds a latent cache made with other settings ({', '.join(changed)} differ); "
                             "rerun with the same arguments to continue it, or choose another --output-dir")
        if previous.get("complete"):
            return True
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)
    return False


def _encode_missing_shards(vae, clips: UCF101Clips | UCF101Chunks, shards_dir: Path, shard_size: int, batch_size: int,
                           num_workers: int, device: torch.device, process_index: int = 0, num_processes: int = 1) -> int:
    """Encode every shard of this process (number modulo `num_processes`) not yet on disk, each written to a
    temporary folder and renamed once complete; returns the number of shards of the whole cache."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    mine = lambda shard: shard % num_processes == process_index  # noqa: E731
    for stale in shards_dir.glob(".tmp-shard-*"):  # left by an interrupted run of this process
        if mine(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale)
    features = _features(vae, clips.class_names, isinstance(clips, UCF101Chunks))
    num_shards = -(-len(clips) // shard_size)
    for shard in range(num_shards):
        final = shards_dir / f"shard-{shard:05d}"
        if not mine(shard) or final.is_dir():
            continue
        indices = list(range(shard * shard_size, min(len(clips), (shard + 1) * shard_size)))
        columns, skipped = _encode_shard(vae, clips, indices, batch_size, num_workers, device)
        temporary = shards_dir / f".tmp-shard-{shard:05d}"
        temporary.mkdir()
        if columns["path"]:  # `datasets` cannot read back an empty saved dataset; a shard of only skips has none
            datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(temporary / DATA_DIR))
        _write_json(temporary / "shard.json", {"num_skipped": skipped, "num_rows": len(columns["path"])})
        os.replace(temporary, final)  # the shard exists only once it is complete
        logger.info("encoded shard %d/%d (%d rows, %d skipped)", shard + 1, num_shards, len(columns["path"]), skipped)
    return num_shards


def _assemble_shards(shards_dir: Path, num_shards: int, output_dir: Path, source: str) -> tuple[datasets.Dataset, int]:
    """Concatenate the shards into `output_dir/data` (replaced atomically); (the stored dataset, skipped videos)."""
    shards = [json.loads((shards_dir / f"shard-{shard:05d}" / "shard.json").read_text()) for shard in range(num_shards)]
    num_skipped = sum(shard["num_skipped"] for shard in shards)
    filled = [shards_dir / f"shard-{shard:05d}" / DATA_DIR for shard in range(num_shards) if shards[shard]["num_rows"]]
    if not filled:
        raise ValueError(f"none of the {source} could be decoded")
    assembled = datasets.concatenate_datasets([datasets.load_from_disk(str(path)) for path in filled])
    temporary = output_dir / (DATA_DIR + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    assembled.save_to_disk(str(temporary))
    shutil.rmtree(output_dir / DATA_DIR, ignore_errors=True)
    os.replace(temporary, output_dir / DATA_DIR)
    return datasets.load_from_disk(str(output_dir / DATA_DIR)), num_skipped


def _check_encode_arguments(batch_size: int, shard_size: int, clips_per_video: int, chunks_per_clip: int) -> None:
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    if isinstance(chunks_per_clip, bool) or not isinstance(chunks_per_clip, int) or chunks_per_clip < 1:
        raise ValueError(f"chunks_per_clip must be an integer >= 1, got {chunks_per_clip!r}")
    if chunks_per_clip > 1 and clips_per_video != 1:
        raise ValueError(f"chunks_per_clip={chunks_per_clip} reads each video's consecutive chunks from its start: "
                         f"it needs clips_per_video=1, got {clips_per_video}")


def _clips_to_encode(data_root, split: int, subset: str, sample_shape: tuple[int, int, int, int],
                     target_fps: float | None, clips_per_video: int,
                     chunks_per_clip: int) -> UCF101Clips | UCF101Chunks:
    """The split's clips (clips_per_video per video) or, for a long-video cache, each video's consecutive chunks."""
    _, num_frames, height, width = sample_shape
    if chunks_per_clip > 1:
        return UCF101Chunks(data_root, split, subset, num_frames=num_frames, size=(height, width),
                            target_fps=target_fps, max_chunks=chunks_per_clip)
    return UCF101Clips(data_root, split, subset, num_frames=num_frames, size=(height, width), target_fps=target_fps,
                       train=False, clips_per_video=clips_per_video)


def encode_dataset(
    vae,
    data_root,
    output_dir,
    split: int = 1,
    subset: str = "train",
    batch_size: int = 8,
    target_fps: float | None = 8.0,
    clips_per_video: int = 1,
    device=None,
    num_workers: int = 0,
    shard_size: int = 256,
    distributed: PartialState | None = None,
    chunks_per_clip: int = 1,
) -> Path:
    """Encode one split of a UCF-101-layout data set into a latent cache (see the module docstring).

    Args:
        vae: an `AutoencoderVidTwin`, or a folder `AutoencoderVidTwin.from_pretrained` reads.
        data_root: data set root (see `load_ucf101`).
        output_dir: cache folder; rerunning with the same arguments continues an interrupted run.
        split, subset: which official list to encode.
        batch_size: clips per encoder call.
        target_fps: clip frame rate (None: every source frame).
        clips_per_video: clips per video, evenly spread in time (1: the centred clip).
        device: where to encode (the model is moved there and put in eval mode); default the model's device, or
            CUDA if available for a model read from a folder.
        num_workers: DataLoader workers decoding videos.
        shard_size: clips (videos, with chunks_per_clip > 1) per shard, the unit of restart.
        distributed: Accelerate's `PartialState()` of a multi-process launch: this process encodes its share of
            the shards (see the module docstring); every process must call this function with the same arguments.
        chunks_per_clip: N > 1 makes a long-video cache: per video up to N consecutive T-frame chunks from its
            first frame, one row each (see the module docstring); needs clips_per_video=1. 1: one clip per row.

    Returns:
        `output_dir`, to give `load_latent_cache`.
    """
    _check_encode_arguments(batch_size, shard_size, clips_per_video, chunks_per_clip)
    vae, vae_path = _load_vae(vae, device)
    clips = _clips_to_encode(data_root, split, subset, vae.sample_shape, target_fps, clips_per_video, chunks_per_clip)
    output_dir = Path(output_dir)
    manifest = {
        "data_root": str(Path(data_root).resolve()), "split": split, "subset": subset, "target_fps": target_fps,
        "clips_per_video": clips_per_video, "chunks_per_clip": chunks_per_clip, "shard_size": shard_size,
        "num_items": len(clips),
        "sample_shape": list(vae.sample_shape), "vae_fingerprint": vae_fingerprint(vae), "vae_path": vae_path,
        "class_names": clips.class_names, "complete": False,
    }
    state = distributed if distributed is not None and distributed.num_processes > 1 else None
    complete = _start_manifest(output_dir, manifest) if state is None or state.is_main_process else None
    if state is not None:  # the others wait until the main process has checked (and written) the manifest
        state.wait_for_everyone()
        complete = json.loads((output_dir / MANIFEST).read_text()).get("complete", False)
    if complete:
        logger.info("latent cache %s is already complete", output_dir)
        return output_dir

    shards_dir = output_dir / SHARDS_DIR
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    num_shards = _encode_missing_shards(vae, clips, shards_dir, shard_size, batch_size, num_workers, vae.device,
                                        rank, world)
    if state is not None:  # the statistics need every row: wait for the other processes' shards
        state.wait_for_everyone()
        if not state.is_main_process:
            state.wait_for_everyone()  # until the main process has finished the cache
            return output_dir
    _finish_cache(vae, clips, manifest, shards_dir, num_shards, output_dir, f"{len(clips)} "
                  f"{'videos' if chunks_per_clip > 1 else 'clips'} of {data_root} split {split} {subset}")
    if state is not None:
        state.wait_for_everyone()
    return output_dir


def _finish_cache(vae, clips: UCF101Clips | UCF101Chunks, manifest: dict, shards_dir: Path, num_shards: int, output_dir: Path,
                  source: str) -> None:
    """Concatenate the shards, compute the statistics over all rows, write the config and mark the cache complete."""
    data_root = manifest["data_root"]
    stored, num_skipped = _assemble_shards(shards_dir, num_shards, output_dir, source)
    # The statistics come from what was stored, so they describe exactly the rows the generator reads.
    stats = {part: _channel_stats(stored, f"{part}_mean") for part in PARTS}
    stats["num_clips"] = len(stored)
    _write_json(output_dir / STATS, stats)
    _write_json(output_dir / VAE_CONFIG, json.loads(vae.to_json_string()))
    counts = {}
    if "num_chunks" in stored.column_names:
        first_chunks = stored.with_format("numpy", columns=["chunk_index", "num_chunks"])[:]
        per_video = first_chunks["num_chunks"][first_chunks["chunk_index"] == 0]
        counts = {"num_videos": len(per_video),
                  "videos_by_num_chunks": {str(c): int((per_video == c).sum()) for c in sorted(set(per_video.tolist()))}}
        if counts["videos_by_num_chunks"].get("1"):
            logger.warning("%d of %d videos are too short for 2 chunks at this frame interval: kept with one chunk "
                           "(they train first chunks only)", counts["videos_by_num_chunks"]["1"], len(per_video))
    _write_json(output_dir / MANIFEST, {**manifest, "complete": True, "num_rows": len(stored), "num_skipped": num_skipped,
                                        **counts})
    shutil.rmtree(shards_dir)
    if num_skipped:
        logger.warning("skipped %d unreadable videos of %d clips in %s", num_skipped, len(clips), data_root)
    logger.info("latent cache %s: %d clips, %d skipped", output_dir, len(stored), num_skipped)


def load_latent_cache(path) -> LatentCache:
    """Open a finished cache written by `encode_dataset`."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a latent cache (no {MANIFEST}); make one with `vidtwin-gen encode-dataset`")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise ValueError(f"latent cache {path} is incomplete; rerun the same `vidtwin-gen encode-dataset` command to finish it")
    dataset = datasets.load_from_disk(str(path / DATA_DIR)).with_format("torch")
    return LatentCache(
        dataset=dataset,
        stats=json.loads((path / STATS).read_text()),
        vae_config=json.loads((path / VAE_CONFIG).read_text()),
        class_names=list(manifest["class_names"]),
        manifest=manifest,
    )


def check_multi_chunk(dataset: datasets.Dataset, path) -> None:
    """Raise unless a cache's dataset holds a video with 2 or more chunks: what training with context needs."""
    if "num_chunks" not in dataset.column_names or int(
        dataset.with_format("numpy", columns=["num_chunks"])[:]["num_chunks"].max()
    ) < 2:
        raise ValueError(
            f"latent cache {path} holds no video with 2 or more consecutive chunks (a single-chunk cache, or videos too "
            "short for two chunks), and a long-video config (model.num_context_chunks > 0) trains on consecutive "
            "chunks: encode the data set with `vidtwin-gen encode-dataset --chunks-per-clip 3` (each video gives as "
            "many chunks as it holds at --target-fps), or train a config without num_context_chunks"
        )


class ContextChunks(torch.utils.data.Dataset):
    """The rows of a long-video cache, each with the rows of the chunks before it in its video: the training
    samples of a DiT with `num_context_chunks` C (chunk k given chunks k - C .. k - 1; a first chunk given none).

    Item: every column of the row of chunk k, plus
        context_structure_mean, context_structure_std   (C, d_S, n_q, h_S, w_S)
        context_dynamics_mean, context_dynamics_std     (C, d_D, t, w_D + h_D)
            the posteriors of chunks k - C .. k - 1, oldest first; zeros in the slots before the video's start
        context_present   (C,) bool, which slots hold a chunk (none for k = 0, the last k for k < C)
    `dataset` is `LatentCache.dataset` (torch format) of a cache made with `chunks_per_clip` > 1.
    """

    def __init__(self, dataset: datasets.Dataset, num_context_chunks: int):
        if num_context_chunks < 1:
            raise ValueError(f"num_context_chunks must be >= 1, got {num_context_chunks}")
        missing = [c for c in CHUNK_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the latent cache has no {missing} columns: it is a single-chunk cache; encode the data set "
                             "with `vidtwin-gen encode-dataset --chunks-per-clip N`")
        # The chunks before row r must be rows r - chunk_index .. r - 1, in order (how encode_dataset writes them).
        index = dataset.with_format("numpy", columns=["video_index", "chunk_index"])[:]
        video, chunk = index["video_index"], index["chunk_index"]
        later = np.flatnonzero(chunk > 0)
        if len(later) and (later.min() == 0 or (video[later - 1] != video[later]).any()
                           or (chunk[later - 1] != chunk[later] - 1).any()):
            raise ValueError("the latent cache's chunks are not stored consecutively per video; encode it again with "
                             "`vidtwin-gen encode-dataset --chunks-per-clip N`")
        self.dataset, self.num_context_chunks = dataset, num_context_chunks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The items at `indices` from two reads of the cache, their rows and then all their context rows: the
        DataLoader's batched fetch (row by row, 300 steps of the quickstart DiT at batch 8 took 22 s instead of 20)."""
        rows = self.dataset.__getitems__(list(indices))
        histories = [min(int(row["chunk_index"]), self.num_context_chunks) for row in rows]
        before = [i for index, history in zip(indices, histories) for i in range(index - history, index)]
        before = self.dataset[before] if before else {}  # every row's context rows, oldest first, row after row
        start = 0
        for row, history in zip(rows, histories):
            for part in PARTS:
                for statistic in ("mean", "std"):
                    column = f"{part}_{statistic}"
                    context = row[column].new_zeros(self.num_context_chunks, *row[column].shape)
                    if history:
                        context[self.num_context_chunks - history :] = before[column][start : start + history]
                    row[f"context_{column}"] = context
            row["context_present"] = torch.arange(self.num_context_chunks) >= self.num_context_chunks - history
            start += history
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtwin-gen encode-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", required=True, help="AutoencoderVidTwin folder (save_pretrained / convert output)")
    parser.add_argument("--data-root", required=True, help="UCF-101-layout root (UCF-101/ and ucfTrainTestlist/)")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--subset", default="train", choices=("train", "test"))
    parser.add_argument("--output-dir", required=True, help="cache folder; rerun the same command to continue")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target-fps", type=float, default=8.0, help="clip frame rate; 0 keeps every source frame")
    parser.add_argument("--clips-per-video", type=int, default=1)
    parser.add_argument("--chunks-per-clip", type=int, default=1,
                        help="long videos: up to this many consecutive T-frame chunks per video, one row each "
                             "(for DiT configs with model.num_context_chunks); 1: one clip per video")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding videos")
    parser.add_argument("--shard-size", type=int, default=256, help="clips per shard (the unit of restart)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    datasets.disable_progress_bars()  # one bar per shard save is noise; the log reports each shard
    # Under `accelerate launch` (several processes) each encodes its share on its own device.
    # PartialState reads ACCELERATE_USE_CPU only when asked (the Accelerator does it for the trainers).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    if state is not None and state.num_processes != int(os.environ["WORLD_SIZE"]):  # all would write the same shards
        parser.error(f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate sees {state.num_processes}: on CPU "
                     "set ACCELERATE_USE_CPU=1 (see `accelerate launch --help`)")
    device = args.device if args.device is not None or state is None else state.device
    try:
        output = encode_dataset(args.vae, args.data_root, args.output_dir, split=args.split, subset=args.subset,
                                batch_size=args.batch_size, target_fps=args.target_fps or None,
                                clips_per_video=args.clips_per_video, device=device, num_workers=args.num_workers,
                                shard_size=args.shard_size, distributed=state, chunks_per_clip=args.chunks_per_clip)
    except (ValueError, OSError) as error:  # bad settings, wrong data root, unreadable VAE folder
        parser.error(str(error))
    if state is not None and not state.is_main_process:
        return 0
    manifest = json.loads((output / MANIFEST).read_text())
    chunks = (f" ({manifest['num_videos']} videos; videos by number of chunks: {manifest['videos_by_num_chunks']})"
              if "num_videos" in manifest else "")
    print(f"latent cache {output}: {manifest['num_rows']} {'chunks' if chunks else 'clips'}{chunks}, "
          f"{manifest['num_skipped']} unreadable videos skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
