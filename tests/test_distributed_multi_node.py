"""The shipped multi-node config runs: 2 machines x 1 process on localhost (gloo, CPU) train the same weights as 2
processes on one machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_vae import arguments, weights

from vidtwin_gen.demo import free_port

CONFIGS = Path(__file__).resolve().parents[1] / "train_configs" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
TIMEOUT = 600


def launcher(*options: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "--mixed_precision", "no",
            "--dynamo_backend", "no"]


@pytest.mark.slow
def test_two_machines_train_the_same_weights_as_two_processes_on_one(embedded_root, tmp_path):
    train = lambda out: ["-m", "vidtwin_gen.training.train_vae", *arguments(embedded_root, out, max_train_steps=3)]  # noqa: E731

    single = subprocess.run(launcher("--config_file", str(CONFIGS / "cpu_2proc.yaml"), "--main_process_port",
                                     str(free_port())) + train(tmp_path / "single"),
                            capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert single.returncode == 0, single.stderr[-3000:]

    # Node 0 and node 1 of the multi-node config, each one process, meeting on the loopback address.
    port = str(free_port())
    nodes = [subprocess.Popen(launcher("--config_file", str(CONFIGS / "multi_node.yaml"), "--num_machines", "2",
                                       "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
                                       "127.0.0.1", "--main_process_port", port) + train(tmp_path / "nodes"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, (_, stderr) in zip(nodes, results):
        assert node.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "nodes" / "checkpoint-3").glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # both ranks took part

    expected, trained = weights(tmp_path / "single" / "vae"), weights(tmp_path / "nodes" / "vae")
    assert expected.keys() == trained.keys()
    for key in expected:
        assert torch.equal(expected[key], trained[key]), key
