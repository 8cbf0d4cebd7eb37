"""What both training scripts share around their loops: the run's start, resuming, stopping, and the export."""

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

from .checkpointing import checkpoint_step, list_checkpoints, replace_directory, resolve_resume
from .config import save_config


def start_run(config) -> Accelerator:
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


def resume(accelerator: Accelerator, config, updates_per_epoch: int) -> tuple[int, int, int]:
    """Load `resume_from_checkpoint` if there is one; returns (global_step, first_epoch, batches_to_skip)."""
    global_step = 0
    checkpoint = resolve_resume(config.output_dir, config.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
    batches_to_skip = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    return global_step, global_step // updates_per_epoch, batches_to_skip


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
