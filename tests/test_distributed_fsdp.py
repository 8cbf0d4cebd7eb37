"""FSDP2 pieces of the trainers on 2 CPU processes (gloo), and the refusal of sharded (pickled-metadata) checkpoints.

Accelerate 1.15 never selects FSDP on CPU, so tests/distributed/fsdp_pieces.py switches its state to FSDP2 itself
(see there); a real FSDP training run (the trainers end to end) needs GPUs: benchmarks/gpu_check.py runs one.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vidtwin_gen.training.checkpointing import check_loadable

SCRIPT = Path(__file__).resolve().parent / "distributed" / "fsdp_pieces.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_ema_gather_whole_model_and_checkpoint_on_two_cpu_processes(tmp_path):
    result_path = tmp_path / "result.json"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
               "127.0.0.1", "--main_process_port", str(free_port()), str(SCRIPT), str(result_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result_path.read_text())
    assert report["num_processes"] == 2
    assert report["sharded"], "prepare did not shard the parameters into DTensors"
    assert report["weights_error"] == 0.0  # same data on both ranks: the sharded steps equal one process's
    assert report["ema_error"] == 0.0  # the EMA over shards, gathered by whole_model, equals the whole-model EMA
    assert report["plain"] and report["same_class"]  # whole_model: an unsharded VidTwinTransformer3DModel
    assert report["round_trip"] and report["reloaded_sharded"]  # training state gathered, written, re-sharded
    assert report["resumed"]  # accelerate's FULL_STATE_DICT checkpoint + our training state give the step back
    assert "pytorch_model_fsdp.bin" in report["files"] and "training_state.safetensors" in report["files"]
    assert not [name for name in report["files"] if name.startswith("custom_checkpoint")]


def test_a_sharded_checkpoint_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "pytorch_model_fsdp_0").mkdir(parents=True)
    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="FULL_STATE_DICT"):
        check_loadable(checkpoint, 0)
