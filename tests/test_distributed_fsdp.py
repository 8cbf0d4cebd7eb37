"""FSDP2 pieces of the trainers on 2 CPU processes (gloo), and the refusal of sharded (pickled-metadata) checkpoints.

Accelerate 1.15 never selects FSDP on CPU, so tests/distributed/fsdp_pieces.py switches its state to FSDP2 itself
(see there); a real FSDP training run (the trainers end to end) needs GPUs: benchmarks/gpu_check.py runs one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidtwin_gen.demo import free_port
from vidtwin_gen.training.checkpointing import check_loadable

SCRIPT = Path(__file__).resolve().parent / "distributed" / "fsdp_pieces.py"


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


TRAINER = Path(__file__).resolve().parent / "distributed" / "fsdp_train_dit.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


def two_processes(script: Path, arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
            "127.0.0.1", "--main_process_port", str(free_port()), str(script), *arguments]


@pytest.fixture(scope="module")
def dit_inputs(embedded_root, tmp_path_factory):
    import torch

    from vidtwin_gen import AutoencoderVidTwin
    from vidtwin_gen.data import encode_dataset

    root = tmp_path_factory.mktemp("fsdp_dit")
    torch.manual_seed(0)
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).save_pretrained(root / "vae")
    encode_dataset(root / "vae", embedded_root, root / "cache", batch_size=4)
    return root / "vae", root / "cache"


@pytest.mark.slow
def test_train_dit_under_fsdp2_samples_exports_and_resumes_bitwise(dit_inputs, tmp_path):
    import torch
    from test_train_dit import arguments

    from vidtwin_gen import VidTwinPipeline

    from helpers import kill_when_written

    vae, cache = dit_inputs
    args = dict(latent_cache=cache, train_batch_size=2, max_train_steps=4, use_ema=True, validation_steps=4,
                checkpointing_steps=2)
    reference = subprocess.run(two_processes(TRAINER, arguments(vae, tmp_path / "reference", **args)),
                               capture_output=True, text=True, timeout=300, env=ENV)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "reference" / "samples" / "step-4").glob("*.mp4"))  # sampled whole
    assert (tmp_path / "reference" / "checkpoint-4" / "pytorch_model_fsdp.bin").is_file()

    out = tmp_path / "killed"
    kill_when_written(two_processes(TRAINER, arguments(vae, out, **args)), out / "checkpoint-2", timeout=300, env=ENV)
    assert not (out / "pipeline").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(two_processes(TRAINER, arguments(vae, out, resume_from_checkpoint="latest", **args)),
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = VidTwinPipeline.from_pretrained(tmp_path / "reference" / "pipeline").transformer.state_dict()
    trained = VidTwinPipeline.from_pretrained(out / "pipeline").transformer.state_dict()
    for key in expected:
        assert torch.equal(expected[key], trained[key]), key
