"""Latent cache: contents equal direct encoding, statistics, restart without duplicates, skipped files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.data.latent_cache import encode_dataset, load_latent_cache, main
from vidtwin_gen.data.ucf101 import load_ucf101
from vidtwin_gen.data.video_io import load_clip


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderVidTwin.from_preset("tiny").eval()  # 8 frames of 32x32


@pytest.fixture(scope="module")
def vae_dir(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache(vae_dir, embedded_root, tmp_path_factory):
    """Split 1 test (6 videos), made through the CLI from a saved VAE."""
    output = tmp_path_factory.mktemp("cache")
    argv = ["--vae", str(vae_dir), "--data-root", str(embedded_root), "--split", "1", "--subset", "test",
            "--output-dir", str(output), "--batch-size", "4", "--device", "cpu", "--num-workers", "0", "--shard-size", "4"]
    assert main(argv) == 0
    return load_latent_cache(output)


def test_rows_equal_direct_encoding(cache, vae, embedded_root):
    source = load_ucf101(embedded_root, 1, "test")
    dataset = cache.dataset
    columns = dataset[:]
    assert len(dataset) == len(source) == 6
    assert columns["path"] == source[:]["path"] and columns["caption"] == source[:]["caption"]
    assert columns["label"].tolist() == source[:]["label"] and columns["clip_index"].tolist() == [0] * 6
    assert cache.class_names == source.features["label"].names
    assert dataset[0]["structure_mean"].shape == (4, 8, 2, 2) == vae.structure_latent_shape
    assert dataset[0]["dynamics_std"].shape == (4, 8, 4) == vae.dynamics_latent_shape

    # Row 4 is the centred 8-frame clip at 8 fps, centre-cropped to 32x32.
    clip = load_clip(source[4]["path"], 8, 32, target_fps=8.0, mode="center")[None]
    with torch.no_grad():
        encoded = vae.encode(clip)
    row = dataset[4]
    torch.testing.assert_close(row["structure_mean"], encoded.structure_dist.mean[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(row["structure_std"], encoded.structure_dist.std[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(row["dynamics_mean"], encoded.dynamics_dist.mean[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(row["dynamics_std"], encoded.dynamics_dist.std[0], rtol=1e-4, atol=1e-5)


def test_channel_statistics_and_vae_config(cache, vae):
    for part in ("structure", "dynamics"):
        means = cache.dataset[:][f"{part}_mean"].double()  # (N, C, ...)
        per_channel = means.transpose(0, 1).reshape(means.shape[1], -1)
        assert np.allclose(cache.stats[part]["mean"], per_channel.mean(1).numpy(), atol=1e-6)
        assert np.allclose(cache.stats[part]["std"], per_channel.std(1, unbiased=False).numpy(), atol=1e-6)
    assert cache.stats["num_clips"] == 6
    assert cache.vae_config["_class_name"] == "AutoencoderVidTwin"
    assert AutoencoderVidTwin.from_config(cache.vae_config).sample_shape == vae.sample_shape
    assert cache.manifest["complete"] and cache.manifest["num_skipped"] == 0
    assert cache.manifest["vae_path"] is not None


def test_interrupted_run_resumes_without_duplicates(vae, embedded_root, tmp_path, monkeypatch):
    output = tmp_path / "cache"
    arguments = {"split": 2, "subset": "train", "batch_size": 3, "shard_size": 5, "device": "cpu"}  # 12 clips: 3 shards
    calls = {"count": 0}
    original = vae.encode

    def encode_then_crash(video):
        calls["count"] += 1
        if calls["count"] > 2:  # shard 1 takes two calls; die inside shard 2
            raise KeyboardInterrupt("simulated kill")
        return original(video)

    monkeypatch.setattr(vae, "encode", encode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(vae, embedded_root, output, **arguments)
    assert [p.name for p in (output / "shards").iterdir() if p.name.startswith("shard-")] == ["shard-00000"]
    with pytest.raises(ValueError, match="incomplete"):
        load_latent_cache(output)

    def counting(video):
        calls["count"] += 1
        return original(video)

    calls["count"] = 0
    monkeypatch.setattr(vae, "encode", counting)
    encode_dataset(vae, embedded_root, output, **arguments)
    assert calls["count"] == 3  # shards 2 and 3 only: 5 + 2 clips in batches of 3
    result = load_latent_cache(output)
    expected = load_ucf101(embedded_root, 2, "train")[:]["path"]
    assert result.dataset[:]["path"] == expected  # every clip once, in order
    assert not (output / "shards").exists()

    calls["count"] = 0
    encode_dataset(vae, embedded_root, output, **arguments)  # complete: nothing to do
    assert calls["count"] == 0
    with pytest.raises(ValueError, match="subset"):
        encode_dataset(vae, embedded_root, output, **{**arguments, "subset": "test"})
    other_weights = AutoencoderVidTwin.from_preset("tiny")
    with pytest.raises(ValueError, match="vae_fingerprint"):
        encode_dataset(other_weights, embedded_root, output, **arguments)


def test_broken_videos_are_skipped_and_counted(vae, embedded_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(embedded_root, root)
    broken = sorted((root / "UCF-101").rglob("*_g01_*.avi"))[:2]
    broken[0].write_bytes(b"")
    broken[1].write_text("not a video")
    output = encode_dataset(vae, root, tmp_path / "cache", split=1, subset="test", clips_per_video=2, shard_size=4)
    result = load_latent_cache(output)
    assert result.manifest["num_skipped"] == 4  # two files, two clips each
    assert len(result.dataset) == 8
    columns = result.dataset[:]
    assert not {str(p.resolve()) for p in broken} & set(columns["path"])
    assert columns["clip_index"].tolist() == [0, 1] * 4
    first, second = result.dataset[0], result.dataset[1]
    assert first["path"] == second["path"] and not torch.equal(first["structure_mean"], second["structure_mean"])
    assert json.loads((Path(output) / "manifest.json").read_text())["num_rows"] == 8


def test_not_a_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="encode-dataset"):
        load_latent_cache(tmp_path)
