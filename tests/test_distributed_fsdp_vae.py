"""train_vae under FSDP2 on 2 CPU processes (gloo): equal to DDP at the same global batch with the PatchGAN and
the EMA on, the export gathered whole, and a killed run resumed to the same weights.

Accelerate 1.15 never selects FSDP on CPU, so tests/distributed/fsdp_train_vae.py switches its state to FSDP2
(TRANSFORMER_BASED_WRAP over the autoencoder's `_no_split_modules`, as train_configs/accelerate/fsdp.yaml) and runs
the trainer unchanged.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from helpers import kill_when_written
from safetensors.torch import load_file
from test_distributed_fsdp import free_port
from test_train_vae import arguments

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.training.train_vae import TrainVAEConfig, decoder_last_weight, prepare_training

REPO = Path(__file__).resolve().parents[1]
FSDP_TRAINER = REPO / "tests" / "distributed" / "fsdp_train_vae.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
# The PatchGAN (with its adaptive weight) is on from the first update on; EMA, two checkpoints, validation at the end.
RUN = dict(max_train_steps=4, disc_start=1, use_ema=True, checkpointing_steps=2, validation_steps=4)
LAUNCH = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1"]


def fsdp_command(data_root: Path, out: Path, **overrides) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *LAUNCH,
            "--main_process_port", str(free_port()), str(FSDP_TRAINER), *arguments(data_root, out, **RUN, **overrides)]


def ddp_command(data_root: Path, out: Path) -> list[str]:
    config = REPO / "train_configs" / "accelerate" / "cpu_2proc.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *LAUNCH,
            "--main_process_port", str(free_port()), "-m", "vidtwin_gen.training.train_vae",
            *arguments(data_root, out, **RUN)]


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def fsdp_run(embedded_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp_vae") / "run"
    run(fsdp_command(embedded_root, out))
    return out


def key_bias(name: str, tensor: torch.Tensor) -> torch.Tensor | None:
    """The key third of an attention's qkv bias: its true gradient is 0 (softmax ignores a shift shared by all keys),
    so Adam turns rounding noise there into steps of up to the learning rate."""
    return tensor[tensor.shape[0] // 3: 2 * tensor.shape[0] // 3] if name.endswith("qkv.bias") else None


def assert_same_steps(fsdp: dict, ddp: dict, ddp_before: dict, lr_steps: float) -> None:
    """FSDP's weights equal DDP's to within 1 % of the steps DDP took since `ddp_before` (per tensor, in norm).

    Not elementwise: FSDP reduce-scatters the gradients where DDP all-reduces them, so they differ at rounding
    level, and Adam divides each element's gradient by its own running size, so an element whose gradient is at
    that level (a few in ten thousand of the PatchGAN's) moves by any amount up to the learning rate, and by how
    much depends on the CPU's kernels. A gradient reduced wrongly moves whole tensors and fails by far.
    """
    assert set(fsdp) == set(ddp)
    for name in fsdp:
        a, b, before = fsdp[name].double(), ddp[name].double(), ddp_before[name].double()
        keys = key_bias(name, a)
        if keys is not None:
            assert (keys - key_bias(name, b)).abs().max() <= lr_steps, name
            a, b, before = a.clone(), b.clone(), before.clone()
            for tensor in (a, b, before):
                key_bias(name, tensor).zero_()
        difference, steps = (a - b).norm().item(), (b - before).norm().item()
        assert difference <= 1e-2 * steps + 1e-5 * a.numel() ** 0.5, (name, difference, steps)


@pytest.mark.slow
def test_fsdp_equals_ddp_with_the_gan_on_and_exports_the_gathered_ema(fsdp_run, embedded_root, tmp_path):
    ddp = tmp_path / "ddp"
    run(ddp_command(embedded_root, ddp))
    checkpoint = fsdp_run / "checkpoint-4"
    files = sorted(p.name for p in checkpoint.iterdir())
    # Two models, two optimizers (whole state dicts); the log-variance and its own optimizer, the EMA: our state.
    for name in ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_1.bin", "optimizer.bin", "optimizer_1.bin",
                 "training_state.safetensors"):
        assert name in files
    assert not [name for name in files if name.startswith("custom_checkpoint")]
    state = load_file(checkpoint / "training_state.safetensors")
    assert any(key.startswith("logvar_optimizer.state.0.") for key in state)

    lr_steps = 1e-3 * RUN["max_train_steps"]  # the learning rate times the updates: Adam's largest possible drift
    ddp_weights = {step: load_file(ddp / step / "model.safetensors") for step in ("checkpoint-2", "checkpoint-4")}
    weights = torch.load(checkpoint / "pytorch_model_fsdp.bin", weights_only=True)
    assert_same_steps(weights, ddp_weights["checkpoint-4"], ddp_weights["checkpoint-2"], lr_steps)
    # The PatchGAN (weights and BatchNorm statistics), trained from the first update on.
    assert_same_steps(torch.load(checkpoint / "pytorch_model_fsdp_1.bin", weights_only=True),
                      *(load_file(ddp / step / "model_1.safetensors") for step in ("checkpoint-4", "checkpoint-2")),
                      lr_steps)
    ddp_state = load_file(ddp / "checkpoint-4" / "training_state.safetensors")
    torch.testing.assert_close(state["logvar"], ddp_state["logvar"], atol=1e-6, rtol=0)
    assert state["logvar"] != 0  # it trained

    # The export: the EMA of the shards gathered on the main process, a whole AutoencoderVidTwin.
    exported = AutoencoderVidTwin.from_pretrained(fsdp_run / "vae")
    names = [name for name, _ in exported.named_parameters()]
    for index, name in enumerate(names):  # EMAModel keeps parameters() order
        assert torch.equal(exported.state_dict()[name], state[f"ema.shadow_params.{index}"]), name
    assert any(not torch.equal(exported.state_dict()[name], weights[name]) for name in names)  # EMA, not raw
    assert_same_steps(exported.state_dict(), AutoencoderVidTwin.from_pretrained(ddp / "vae").state_dict(),
                      ddp_weights["checkpoint-2"], lr_steps)
    # Validation ran on the gathered whole model.
    assert sorted(p.name for p in (fsdp_run / "validation" / "step-4").glob("*.mp4")) == sorted(
        f"clip0_{kind}.mp4" for kind in ("original", "reconstruction", "structure", "dynamics"))


@pytest.mark.slow
def test_fsdp_killed_run_resumes_to_the_same_weights(fsdp_run, embedded_root, tmp_path):
    out = tmp_path / "killed"
    kill_when_written(fsdp_command(embedded_root, out), out / "checkpoint-2", timeout=600, env=ENV)
    assert not (out / "vae").exists(), "the run finished before it could be killed"
    run(fsdp_command(embedded_root, out, resume_from_checkpoint="latest"))
    expected, resumed = (AutoencoderVidTwin.from_pretrained(folder / "vae").state_dict() for folder in (fsdp_run, out))
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    for file in ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_1.bin"):  # raw weights, the PatchGAN
        expected, resumed = (torch.load(folder / "checkpoint-4" / file, weights_only=True) for folder in (fsdp_run, out))
        for name in expected:
            assert torch.equal(expected[name], resumed[name]), (file, name)


def test_fsdp_with_fp16_is_refused():
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, mixed_precision="fp16")
    with pytest.raises(ValueError, match="fp16 under FSDP.*bf16"):
        prepare_training(accelerator, TrainVAEConfig(), None, None, None)


def test_a_decoder_head_sharded_on_its_own_is_refused():
    class Shard:  # what an FSDP2 unit of its own leaves in the module between forward and backward: a DTensor
        def full_tensor(self):
            raise AssertionError("not gathered here")

    vae = SimpleNamespace(head=SimpleNamespace(linear=SimpleNamespace(weight=Shard())))
    with pytest.raises(ValueError, match="head.*sharded on its own.*TRANSFORMER_BASED_WRAP"):
        decoder_last_weight(vae)
    plain = torch.nn.Linear(2, 2).weight
    assert decoder_last_weight(SimpleNamespace(head=SimpleNamespace(linear=SimpleNamespace(weight=plain)))) is plain
