"""benchmarks/gpu_check.py: its CPU-testable parts (dry run at tiny size, FLOP counting, arguments, no-GPU exit, the
FSDP worker under FSDP2 forced on 2 CPU processes)."""

import json
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_flops_of_a_training_step_are_counted(gpu_check):
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    # Forward, gradient of the input and of the weight: three (4 x 16) @ (16 x 8) products of 2 * 4 * 16 * 8 FLOPs.
    assert gpu_check.count_flops(lambda: layer(x.requires_grad_()).sum().backward()) == 3 * 2 * 4 * 16 * 8


def test_dry_run_writes_every_row(gpu_check, tmp_path):
    output = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--json", str(output)]) == 0
    report = json.loads(output.read_text())
    checks = [row["check"] for row in report["results"]]
    assert checks == ["VAE encode+decode fp32", "VAE encode+decode bf16", "VAE train step (paper recipe) bf16",
                      "DiT train step (paper, 101 classes) bf16"]
    for row in report["results"]:
        assert row["samples_per_s"] > 0
    for row in report["results"][2:]:
        assert row["tflops_per_step"] > 0 and 0 < row["mfu"] < 1
    assert report["dry_run"] and report["peak_tflops_assumed"] == 989.0


def test_bad_arguments_and_no_gpu(gpu_check, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])
    assert "--steps" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_worker_runs_the_dit_and_the_vae_steps_on_two_cpu_processes(gpu_check):
    # The FSDP section needs FSDP, which accelerate never selects on CPU: the worker runs under forced FSDP2.
    import os
    import subprocess
    import sys

    from test_distributed_fsdp import free_port

    worker = Path(__file__).resolve().parent / "distributed" / "fsdp_gpu_check.py"
    # bf16 as in fsdp.yaml: FSDP2 gathers bf16 parameters (the PatchGAN's stay fp32 beside its BatchNorm statistics).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_ip",
               "127.0.0.1", "--main_process_port", str(free_port()), str(worker)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line.removeprefix("FSDP_RESULT ")) for line in result.stdout.splitlines()
            if line.startswith("FSDP_RESULT ")]
    assert [row["check"] for row in rows] == list(gpu_check.FSDP_CHECKS)
    for row in rows:
        assert row["samples_per_s"] > 0 and row["ema_checkpoint_round_trip"] and row["whole_model_gathered"], row
    assert rows[1]["gan_weight"] > 0  # the PatchGAN was on, with its adaptive weight

