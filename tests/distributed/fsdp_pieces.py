"""Run by tests/test_distributed_fsdp.py under `accelerate launch` (2 CPU processes, gloo).

Accelerate 1.15 never selects FSDP on CPU (ACCELERATE_USE_CPU=1 gives MULTI_CPU, i.e. DDP), so this script switches
the shared state to FSDP2 after the Accelerator exists; `prepare` then shards with torch's fully_shard on gloo. It
checks the trainers' FSDP pieces against a plain single-process computation of the same steps: the EMA over
shards, the training-state gather and re-shard (checkpointing.py), run.whole_model, and a FULL_STATE_DICT checkpoint
written by checkpointing.save_checkpoint and resumed.
"""

import json
import os
import sys
import tempfile
from types import SimpleNamespace

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from diffusers.training_utils import EMAModel
from torch.distributed.tensor import DTensor

from vidtwin_gen.models import VidTwinTransformer3DModel
from pathlib import Path

from vidtwin_gen.training.checkpointing import (
    gather_training_state,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from vidtwin_gen.training.run import make_ema, whole_model


def build():
    torch.manual_seed(0)
    return VidTwinTransformer3DModel.from_preset("tiny", num_classes=3)


def batches(model, steps):
    generator = torch.Generator().manual_seed(1)
    config = model.config
    return [(torch.randn(2, *config.structure_latent_shape, generator=generator),
             torch.randn(2, *config.dynamics_latent_shape, generator=generator),
             torch.rand(2, generator=generator) * 1000, torch.randint(0, 3, (2,), generator=generator))
            for _ in range(steps)]


def train(model, optimizer, ema, data, backward):
    for structure, dynamics, t, labels in data:
        output = model(structure, dynamics, t, class_labels=labels)
        backward(output.structure.square().mean() + output.dynamics.square().mean())
        optimizer.step()
        optimizer.zero_grad()
        ema.step(model.parameters())


def force_fsdp(accelerator: Accelerator, auto_wrap_policy: str = "NO_WRAP") -> None:
    """Make the shared state FSDP2, as AcceleratorState does on GPUs: in its own state and in PartialState's, which
    every later `AcceleratorState()` copies back into its own. `auto_wrap_policy` as in an accelerate config; a
    mixed precision (`--mixed_precision bf16`) becomes FSDP2's parameter dtype, as accelerate sets it on GPUs."""
    accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy=auto_wrap_policy, state_dict_type="FULL_STATE_DICT")
    if accelerator.mixed_precision != "no":
        accelerator.state.fsdp_plugin.set_mixed_precision(accelerator.mixed_precision)


def main(result_path: str) -> None:
    accelerator = Accelerator()
    force_fsdp(accelerator)
    config = SimpleNamespace(use_ema=True, ema_decay=0.5)  # a fast EMA: it differs visibly from the weights

    # Reference: one process, whole model, the same data on both ranks (so the mean gradient is the same).
    reference = build()
    reference_ema = EMAModel(reference.parameters(), decay=config.ema_decay)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    data = batches(reference, 3)
    train(reference, reference_optimizer, reference_ema, data, lambda loss: loss.backward())

    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    ema = make_ema(accelerator, model, config)
    train(model, optimizer, ema, data, accelerator.backward)

    # The checkpoint round trip of the EMA: gathered to whole tensors, written by the main process, read back as shards.
    whole = gather_training_state({"ema": ema})
    with tempfile.TemporaryDirectory() as folder:
        shared = [folder]
        torch.distributed.broadcast_object_list(shared, src=0)
        if accelerator.is_main_process:
            save_training_state(shared[0], whole)
        accelerator.wait_for_everyone()
        before = [p.full_tensor() for p in ema.shadow_params]
        ema.shadow_params = [torch.zeros_like(p) for p in ema.shadow_params]
        load_training_state(shared[0], {"ema": ema})
        accelerator.wait_for_everyone()
    reloaded_sharded = all(isinstance(p, DTensor) for p in ema.shadow_params)
    round_trip = all(torch.equal(a, b.full_tensor()) for a, b in zip(before, ema.shadow_params))

    with whole_model(accelerator, model, ema) as gathered:
        if accelerator.is_main_process:
            names = [name for name, _ in reference.named_parameters()]
            ema_error = max((gathered.state_dict()[n] - e).abs().max().item()
                            for n, e in zip(names, reference_ema.shadow_params))
            plain = not any(isinstance(p, DTensor) for p in gathered.parameters())
            same_class = type(gathered) is VidTwinTransformer3DModel
    # accelerate's checkpoint of the sharded model and optimizer (SHARDED_STATE_DICT), through save_checkpoint:
    # train on, then resume from it and get the weights and EMA of the checkpoint back.
    saved = save_checkpoint(accelerator, Path(result_path).parent / "run", 3, None, {"ema": ema})
    at_checkpoint = [p.full_tensor() for p in [*model.parameters(), *ema.shadow_params]]
    train(model, optimizer, ema, batches(reference, 2), accelerator.backward)
    accelerator.load_state(str(saved), load_kwargs={"weights_only": True})
    load_training_state(saved, {"ema": ema})
    resumed = all(torch.equal(a, b.full_tensor()) for a, b in zip(at_checkpoint, [*model.parameters(), *ema.shadow_params]))
    files = sorted(p.name for p in saved.iterdir())

    weights_error = max((a - r).abs().max().item() for a, r in zip(at_checkpoint, reference.parameters()))
    if accelerator.is_main_process:
        with open(result_path, "w") as file:
            json.dump({"sharded": sharded, "reloaded_sharded": reloaded_sharded, "round_trip": round_trip,
                       "ema_error": ema_error, "weights_error": weights_error, "plain": plain,
                       "same_class": same_class, "resumed": resumed, "files": files, "num_processes": accelerator.num_processes}, file)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip the interpreter's teardown: about one run in twenty, a thread of torch's CPU collectives is destroyed
    # still joinable there and aborts the process ("terminate called without an active exception", rank 0
    # SIGABRT) after everything above has run. A failure before this line still exits non-zero.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
