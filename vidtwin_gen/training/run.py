"""What both training scripts share around their loops: their run settings, the run's start, resuming,
stopping, and the export."""

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel

from .checkpointing import (
    checkpoint_step,
    list_checkpoints,
    replace_directory,
    resolve_resume,
    set_aside_newer_checkpoints,
)
from .config import save_config


@dataclass
class RunConfig:
    """Settings of every training run; each trainer's config extends it with its data, model and optimiser keys."""

    output_dir: str = "runs"
    seed: int = 0
    max_train_steps: int = 1000
    max_train_minutes: float | None = field(default=None, metadata={"help": "also stop (checkpoint, validate, export) after this wall time"})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str | None = field(default=None, metadata={"help": "no | fp16 | bf16; default: accelerate's config"})
    dataloader_num_workers: int = 2
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    validation_steps: int = 500
    report_to: str | None = field(default="tensorboard", metadata={"help": "an Accelerate tracker, or none"})
    logging_steps: int = 10


def start_run(config: RunConfig) -> Accelerator:
    """The Accelerator, logging, the seed, and `output_dir` with the resolved config (`train_config.yaml`).

    The Accelerator comes first: nothing may touch accelerate's state before it exists. The seedable sampler
    makes the data order a function of (seed, epoch), which an exact resume needs.
    """
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to in (None, "none") else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Accelerate logs every file of every checkpoint at INFO; one line per checkpoint says enough.
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "train_config.yaml")
    return accelerator


def resume(accelerator: Accelerator, config: RunConfig, batches_per_epoch: int) -> tuple[int, range, int]:
    """Per-process random streams, then `resume_from_checkpoint` if there is one.

    Call it once everything is built and prepared. Returns (global_step, the epochs left to run, batches to
    skip at the start of the first of them).
    """
    # Same weights everywhere (seeded in `start_run`); from here on each process draws its own noise,
    # timesteps and dropout. A resume restores each process's own random state.
    set_seed(config.seed, device_specific=True)
    # Accelerate also steps at the end of an epoch whose batches do not fill a whole accumulation.
    updates_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    num_epochs = math.ceil(config.max_train_steps / updates_per_epoch)
    global_step = 0
    checkpoint = resolve_resume(config.output_dir, config.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        set_aside_newer_checkpoints(accelerator, config.output_dir, global_step)
    if global_step >= config.max_train_steps:  # finished: straight to the export
        return global_step, range(0), 0
    batches_to_skip = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    return global_step, range(global_step // updates_per_epoch, num_epochs), batches_to_skip


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module):
    """Within the block `model` holds the EMA weights (if there is an EMA); its own come back after."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def check_finite(loss: torch.Tensor, accelerator: Accelerator, step: int, output_dir: str | Path) -> None:
    """Stop before a non-finite loss reaches the weights, the same way on every process."""
    if math.isfinite(accelerator.reduce(loss.detach(), "mean").item()):
        return
    checkpoints = list_checkpoints(output_dir)
    last = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
    raise FloatingPointError(
        f"non-finite loss ({loss.item()}) at step {step}; stopped before it reached the weights. {last}; resume "
        "from it with a lower learning_rate, a longer lr_warmup_steps, or mixed_precision=no"
    )


def time_is_up(started: float, limit_minutes: float | None, accelerator: Accelerator) -> bool:
    """Whether `limit_minutes` of wall time have passed since `started`, agreed by all processes."""
    if limit_minutes is None:
        return False
    up = torch.tensor(float(time.monotonic() - started >= 60 * limit_minutes), device=accelerator.device)
    return accelerator.reduce(up, "max").item() > 0


def export(save: Callable[[Path], None], destination: Path) -> None:
    """`save(folder)` into a hidden folder beside `destination`, moved into place once complete."""
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save(partial)
    replace_directory(partial, destination)
