"""Long-video latent cache (`chunks_per_clip`): consecutive chunks per video, one row each; short videos,
restart, the single-chunk format, and the (chunk k, chunks before it) training samples."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.data.latent_cache import ContextChunks, check_multi_chunk, encode_dataset, load_latent_cache, main
from vidtwin_gen.data.ucf101 import load_ucf101
from vidtwin_gen.data.video_io import load_clip, write_video

CHUNK = 8  # frames per chunk of the tiny autoencoder (8 frames of 32x32)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderVidTwin.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def vae_folder(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def long_root(make_embedded):
    """Videos of 40 frames at 25 fps: at 12.5 fps (every 2nd frame) 20 frames, two whole 8-frame chunks."""
    return make_embedded(num_frames=40)


@pytest.fixture(scope="module")
def chunk_cache(vae_folder, long_root, tmp_path_factory):
    """Split 1 test (6 videos), up to 3 chunks per video at 12.5 fps, made through the CLI."""
    output = tmp_path_factory.mktemp("chunks") / "cache"
    argv = ["--vae", str(vae_folder), "--data-root", str(long_root), "--split", "1", "--subset", "test",
            "--output-dir", str(output), "--batch-size", "3", "--device", "cpu", "--num-workers", "0",
            "--shard-size", "4", "--target-fps", "12.5", "--chunks-per-clip", "3"]
    assert main(argv) == 0
    return load_latent_cache(output)


def test_chunk_rows_equal_direct_encoding_of_consecutive_chunks(chunk_cache, vae, long_root):
    dataset, manifest = chunk_cache.dataset, chunk_cache.manifest
    assert manifest["chunks_per_clip"] == 3 and manifest["num_videos"] == 6 and manifest["num_rows"] == 12
    assert manifest["videos_by_num_chunks"] == {"2": 6}  # 20 frames hold two 8-frame chunks, not three
    columns = dataset[:]
    paths = load_ucf101(long_root, 1, "test")[:]["path"]
    assert columns["path"] == [p for p in paths for _ in range(2)]
    assert columns["video_index"].tolist() == [v for v in range(6) for _ in range(2)]
    assert columns["chunk_index"].tolist() == [0, 1] * 6 and columns["num_chunks"].tolist() == [2] * 12
    for video in (0, 5):
        # 16 consecutive frames at 12.5 fps from the first frame, cut into two chunks, each encoded on its own.
        frames = load_clip(paths[video], 2 * CHUNK, (32, 32), target_fps=12.5, mode=0.0)  # (3, 16, H, W)
        with torch.no_grad():
            encoded = vae.encode(torch.stack(frames.split(CHUNK, dim=1)))
        for chunk in range(2):
            row = dataset[2 * video + chunk]
            torch.testing.assert_close(row["structure_mean"], encoded.structure_dist.mean[chunk], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(row["dynamics_std"], encoded.dynamics_dist.std[chunk], rtol=1e-4, atol=1e-5)
    # The statistics are per channel over every chunk's row.
    structure = columns["structure_mean"].double().transpose(0, 1).flatten(1)  # (C, rows * positions)
    assert np.allclose(chunk_cache.stats["structure"]["mean"], structure.mean(1).numpy(), atol=1e-6)
    assert np.allclose(chunk_cache.stats["structure"]["std"], structure.std(1, correction=0).numpy(), atol=1e-6)


def test_short_and_broken_videos_and_the_chunk_limit(vae, embedded_root, tmp_path):
    # 24-frame videos at every frame hold 3 chunks of 8; cap at 2, one video cut to 11 frames, one broken.
    root = tmp_path / "data"
    shutil.copytree(embedded_root, root)
    listed = load_ucf101(root, 1, "test")[:]["path"]
    short, broken = listed[1], listed[4]
    write_video(short, np.full((11, 48, 64, 3), 128, np.uint8), fps=25)
    with open(broken, "wb") as file:
        file.write(b"not a video")
    output = encode_dataset(vae, root, tmp_path / "cache", split=1, subset="test", target_fps=None, shard_size=4,
                            chunks_per_clip=2)
    result = load_latent_cache(output)
    assert result.manifest["num_skipped"] == 1 and result.manifest["videos_by_num_chunks"] == {"1": 1, "2": 4}
    columns = result.dataset[:]
    assert columns["video_index"].tolist() == [0, 0, 1, 2, 2, 3, 3, 5, 5]  # video 4 is the broken one
    assert columns["chunk_index"].tolist() == [0, 1, 0, 0, 1, 0, 1, 0, 1]
    assert columns["num_chunks"].tolist() == [2, 2, 1, 2, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="clips_per_video=1"):
        encode_dataset(vae, root, tmp_path / "other", split=1, subset="test", clips_per_video=2, chunks_per_clip=2)
    with pytest.raises(ValueError, match="chunks_per_clip must be"):
        encode_dataset(vae, root, tmp_path / "other", split=1, subset="test", chunks_per_clip=0)


def test_killed_chunk_run_resumes_to_the_same_rows(vae, long_root, chunk_cache, tmp_path, monkeypatch):
    output = tmp_path / "cache"
    arguments = dict(split=1, subset="test", batch_size=3, shard_size=4, target_fps=12.5, chunks_per_clip=3, device="cpu")
    original, calls = vae.encode, {"count": 0}

    def encode_then_crash(video):
        calls["count"] += 1
        if calls["count"] > 2:  # shard 0 (4 videos, 8 chunks) takes 3 calls of at most 3 chunks: die inside it
            raise KeyboardInterrupt("simulated kill")
        return original(video)

    monkeypatch.setattr(vae, "encode", encode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(vae, long_root, output, **arguments)
    assert not list((output / "shards").glob("shard-*"))
    monkeypatch.setattr(vae, "encode", original)
    with pytest.raises(ValueError, match="chunks_per_clip"):  # the same folder never mixes two chunkings
        encode_dataset(vae, long_root, output, **{**arguments, "chunks_per_clip": 2})
    result = load_latent_cache(encode_dataset(vae, long_root, output, **arguments))
    expected = chunk_cache.dataset[:]
    got = result.dataset[:]
    for key in ("path", "video_index", "chunk_index", "num_chunks"):
        assert list(got[key]) == list(expected[key]), key
    torch.testing.assert_close(got["structure_mean"], expected["structure_mean"])


def test_single_chunk_caches_keep_their_format(vae, embedded_root, tmp_path):
    output = encode_dataset(vae, embedded_root, tmp_path / "cache", split=1, subset="test", shard_size=4)
    cache = load_latent_cache(output)
    assert cache.manifest["chunks_per_clip"] == 1 and "num_videos" not in cache.manifest
    assert set(cache.dataset.column_names) == {"structure_mean", "structure_std", "dynamics_mean", "dynamics_std",
                                               "label", "caption", "path", "clip_index"}
    with pytest.raises(ValueError, match="--chunks-per-clip"):
        check_multi_chunk(cache.dataset, output)
    with pytest.raises(ValueError, match="single-chunk cache.*--chunks-per-clip"):
        ContextChunks(cache.dataset, 1)
    # A cache written before `chunks_per_clip` existed (no key in its manifest) is a single-chunk cache: the same
    # command continues it.
    manifest_path = output / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["chunks_per_clip"]
    manifest["complete"] = False
    manifest_path.write_text(json.dumps(manifest))
    encode_dataset(vae, embedded_root, output, split=1, subset="test", shard_size=4)
    assert len(load_latent_cache(output).dataset) == 6


def test_context_samples_hold_the_chunks_before_them(chunk_cache, vae, embedded_root, tmp_path):
    check_multi_chunk(chunk_cache.dataset, "the cache")  # two chunks per video: fine
    samples = ContextChunks(chunk_cache.dataset, 2)
    assert len(samples) == 12
    first, second = samples[2], samples[3]  # video 1: chunk 0, then chunk 1
    assert int(first["chunk_index"]) == 0 and first["context_present"].tolist() == [False, False]
    assert first["context_structure_mean"].shape == (2, *first["structure_mean"].shape)
    assert first["context_structure_mean"].abs().sum() == 0
    assert second["context_present"].tolist() == [False, True]  # only chunk -1 exists
    for key in ("structure_mean", "structure_std", "dynamics_mean", "dynamics_std"):
        assert torch.equal(second[f"context_{key}"][1], chunk_cache.dataset[2][key])
        assert second[f"context_{key}"][0].abs().sum() == 0
    batch = torch.utils.data.default_collate([samples[i] for i in range(4)])  # what the trainer's loader makes
    assert batch["context_dynamics_std"].shape[:2] == (4, 2) and batch["context_present"].dtype == torch.bool

    # Three chunks per video (24 frames at every frame): chunk 2 sees chunks 0 and 1, oldest first.
    output = encode_dataset(vae, embedded_root, tmp_path / "three", split=1, subset="test", target_fps=None,
                            shard_size=4, chunks_per_clip=3)
    three = load_latent_cache(output).dataset
    sample = ContextChunks(three, 2)[2]
    assert int(sample["chunk_index"]) == 2 and sample["context_present"].tolist() == [True, True]
    assert torch.equal(sample["context_structure_mean"][0], three[0]["structure_mean"])
    assert torch.equal(sample["context_structure_mean"][1], three[1]["structure_mean"])
    # The DataLoader's batched fetch reads a batch at once: each item as read alone, whatever the mix of histories.
    samples = ContextChunks(three, 2)
    order = [5, 0, 2, 4, 1, 3]
    for batched, alone in zip(samples.__getitems__(order), (samples[i] for i in order)):
        assert batched.keys() == alone.keys()
        for key, value in alone.items():
            assert torch.equal(batched[key], value) if torch.is_tensor(value) else batched[key] == value, key
    with pytest.raises(ValueError, match="not stored consecutively"):
        ContextChunks(three.select([0, 2, 1, 3, 4, 5]), 1)


@pytest.mark.slow
def test_two_processes_encode_the_same_chunk_cache(vae_folder, long_root, chunk_cache, tmp_path):
    from test_distributed_latent_cache import ENV, launch

    output = tmp_path / "cache"
    arguments = ["--vae", str(vae_folder), "--data-root", str(long_root), "--split", "1", "--subset", "test",
                 "--output-dir", str(output), "--batch-size", "3", "--num-workers", "0", "--shard-size", "2",
                 "--target-fps", "12.5", "--chunks-per-clip", "3"]
    result = subprocess.run(launch(arguments), capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    got, expected = load_latent_cache(output).dataset[:], chunk_cache.dataset[:]
    for key in ("path", "video_index", "chunk_index", "num_chunks"):
        assert list(got[key]) == list(expected[key]), key
    torch.testing.assert_close(got["structure_mean"], expected["structure_mean"], rtol=1e-5, atol=1e-6)
