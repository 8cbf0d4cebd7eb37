"""`accelerate launch -m vidtwin_gen.data.latent_cache`: two processes (gloo, CPU) give the one-process cache, and a
killed run continues per rank."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import kill_when_written

from vidtwin_gen.data.latent_cache import load_latent_cache, main
from vidtwin_gen.demo import free_port

pytestmark = pytest.mark.slow  # each launch starts two Python processes (~20 s on a loaded CPU)


def encode_args(vae_dir, data_root, output) -> list[str]:
    # Split 2 train: 12 clips in 4 shards of 3, so each of 2 processes has two shards.
    return ["--vae", str(vae_dir), "--data-root", str(data_root), "--split", "2", "--subset", "train",
            "--output-dir", str(output), "--batch-size", "2", "--num-workers", "0", "--shard-size", "3"]


def launch(arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
            "-m", "vidtwin_gen.data.latent_cache", *arguments]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


@pytest.fixture(scope="module")
def single(vae_dir, embedded_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "cache"
    assert main([*encode_args(vae_dir, embedded_root, output), "--device", "cpu"]) == 0
    return load_latent_cache(output)


def sorted_rows(cache) -> list[dict]:
    rows = [cache.dataset[i] for i in range(len(cache.dataset))]
    return sorted(rows, key=lambda row: (row["path"], int(row["clip_index"])))


def assert_same_cache(cache, reference) -> None:
    assert len(cache.dataset) == len(reference.dataset) == 12
    for row, expected in zip(sorted_rows(cache), sorted_rows(reference)):
        assert (row["path"], int(row["label"]), row["caption"]) == (expected["path"], int(expected["label"]), expected["caption"])
        for key in ("structure_mean", "structure_std", "dynamics_mean", "dynamics_std"):
            torch.testing.assert_close(row[key], expected[key], rtol=1e-5, atol=1e-6)
    for part in ("structure", "dynamics"):  # over all rows, not one process's share
        assert np.allclose(cache.stats[part]["mean"], reference.stats[part]["mean"], atol=1e-6)
        assert np.allclose(cache.stats[part]["std"], reference.stats[part]["std"], atol=1e-6)
    assert cache.stats["num_clips"] == 12
    assert cache.manifest["complete"] and cache.manifest["num_rows"] == 12


def test_two_processes_encode_the_same_cache(vae_dir, embedded_root, single, tmp_path):
    output = tmp_path / "cache"
    result = subprocess.run(launch(encode_args(vae_dir, embedded_root, output)), capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 clips" in result.stdout and result.stdout.count("latent cache") == 1  # the main process reports
    assert_same_cache(load_latent_cache(output), single)


def test_a_killed_run_continues_per_rank(vae_dir, embedded_root, single, tmp_path):
    output = tmp_path / "cache"
    # Rank 1 owns shards 1 and 3: kill everything as soon as its first shard is complete.
    kill_when_written(launch(encode_args(vae_dir, embedded_root, output)), output / "shards" / "shard-00001",
                      timeout=300, env=ENV)
    manifest = output / "manifest.json"
    assert manifest.exists() and not load_manifest_complete(manifest), "the run finished before it could be killed"
    with pytest.raises(ValueError, match="incomplete"):
        load_latent_cache(output)
    done = {p.name for p in (output / "shards").glob("shard-*")}
    assert "shard-00001" in done and len(done) < 4

    result = subprocess.run(launch(encode_args(vae_dir, embedded_root, output)), capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_cache(load_latent_cache(output), single)
    assert not (output / "shards").exists()


def load_manifest_complete(path) -> bool:
    return json.loads(path.read_text()).get("complete", False)
