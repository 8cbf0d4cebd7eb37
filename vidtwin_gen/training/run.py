"""The bookkeeping both training scripts share, so that each one's `main` shows only its own model and objective.

A trainer reads like DiT's `train.py`:

    accelerator = start_run(config)
    ... build the models, `loader = make_loader(...)`, `optimizer = make_optimizer(...)`,
    `lr_scheduler = make_lr_scheduler(...)`, `accelerator.prepare(...)`
    global_step, epochs, batches_to_skip = resume(accelerator, config, len(loader), training_state)
    batches = TrainingBatches(accelerator, loader, epochs, batches_to_skip)
    progress = Progress(accelerator, config, global_step, model, ema, lr_scheduler, validate, name, training_state)
                                               # validate(whole_model, step) on the main process
    for batch in batches:                      # epochs, resume skip, empty-batch vote, skip report
        with accelerator.accumulate(model):
            loss = ...                         # the stage's objective
            accelerator.backward(loss)
            optimizer_step(accelerator, parameters, optimizer, lr_scheduler, config.max_grad_norm)
        if accelerator.sync_gradients and progress.update(logs):   # EMA, logs, checkpoint, validation
            batches.stop()
    finish(accelerator, ema, model, save, destination, batches.num_skipped)   # save(whole_model, folder)

FSDP (accelerate's FSDP2, `train_configs/accelerate/fsdp.yaml`): the prepared model's parameters are DTensor
shards. The EMA is made after `prepare` (`make_ema(accelerator, model, config)`), so under FSDP it holds an EMA
of this process's shards only: its update is elementwise, so it needs no communication and 1/N of the memory of a
full copy. Whatever needs whole weights (validation, sampling, the export) goes through `whole_model`, which
swaps the EMA in on every process, gathers a full state dict (`accelerator.get_state_dict`, a collective) and
loads it into an unsharded copy on the main process; checkpoints gather the EMA the same way
(`checkpointing.save_checkpoint`) and a resume shards it again (`checkpointing.load_training_state`). Accelerate's
FSDP2 prepares one model per `prepare` call: a trainer's second model (the VAE's PatchGAN) goes through
`prepare_as_one_unit`, after the first.
"""

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data.output_paths import ensure_writable_dir
from .checkpointing import (
    check_loadable,
    checkpoint_step,
    gather_dtensors,
    list_checkpoints,
    load_training_state,
    replace_directory,
    resolve_resume,
    save_checkpoint,
    set_aside_newer_checkpoints,
)
from .config import save_config

logger = get_logger(__name__)


@dataclass
class RunConfig:
    """Settings of every training run; each trainer's config extends it with its data, model and optimiser keys."""

    output_dir: str = "runs"
    seed: int = 0
    max_train_steps: int = 1000
    max_train_minutes: float | None = field(default=None, metadata={"help": "also stop (checkpoint, validate, export) after this wall time"})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip the gradient norm to this; null: no clipping (the norm is logged either way)"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (decoupled weight decay) | adam (weight decay added to the gradient, torch.optim.Adam)"})
    lr_warmup_start_factor: float = field(default=0.0, metadata={"help": "warmup_cosine: lr at step 0, as a fraction of learning_rate"})
    lr_min_factor: float = field(default=0.0, metadata={"help": "warmup_cosine: final lr, as a fraction of learning_rate"})
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
    check_fsdp_state_dict_type(accelerator)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Accelerate logs every file of every checkpoint at INFO; one line per checkpoint says enough.
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_seed(config.seed)
    if accelerator.is_main_process:
        ensure_writable_dir(output_dir, "output_dir")  # fail now, not at the first checkpoint
        save_config(config, output_dir / "train_config.yaml")
    return accelerator


def make_loader(dataset, config: RunConfig, collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    """The training DataLoader: shuffled from `config.seed`, whole batches of `config.train_batch_size`."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True, collate_fn=collate_fn,
        num_workers=config.dataloader_num_workers, generator=torch.Generator().manual_seed(config.seed),
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training clips are fewer than train_batch_size {config.train_batch_size}")
    return loader


OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def make_optimizer(parameters: Iterable, config: RunConfig, learning_rate: float | None = None) -> torch.optim.Optimizer:
    """`config.optimizer` from the config's `adam_*` keys, at `learning_rate` (default `config.learning_rate`).

    `adam` is torch.optim.Adam: its weight decay is added to the gradient ("coupled", L2), the default of the
    original VidTwin code; `adamw` decays the weights directly (Loshchilov & Hutter).
    """
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {config.optimizer!r}")
    return OPTIMIZERS[config.optimizer](
        parameters, lr=learning_rate or config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """The original's `inverse_sqrt` (as in transformers): linear from 0 over the warm-up, then sqrt(warmup / step)."""
    if step < warmup_steps:
        return step / warmup_steps
    return math.sqrt(warmup_steps / step)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, start: float, minimum: float) -> float:
    """The original's `LambdaWarmUpCosineScheduler` as a fraction of the peak lr: linear from `start` to 1 over
    the warm-up, then a half cosine down to `minimum` at `total_steps` (and `minimum` after it)."""
    if step < warmup_steps:
        return start + (1 - start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return minimum + 0.5 * (1 - minimum) * (1 + math.cos(math.pi * progress))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, num_processes: int,
                      num_training_steps: int | None = None):
    """`config.lr_scheduler` over `num_training_steps` updates (default `max_train_steps`).

    Any diffusers.optimization name (note that its `*_with_warmup` schedules give lr 0 to the first update),
    or the original VidTwin's `inverse_sqrt` / `warmup_cosine` (LambdaLR). A prepared scheduler steps once per
    process per update, hence the factors (as in diffusers' examples).
    """
    num_training_steps = config.max_train_steps if num_training_steps is None else num_training_steps
    warmup, total = config.lr_warmup_steps * num_processes, num_training_steps * num_processes
    if config.lr_scheduler == "inverse_sqrt":
        if warmup < 1:
            raise ValueError(f"lr_scheduler inverse_sqrt needs lr_warmup_steps >= 1, got {config.lr_warmup_steps}")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(inverse_sqrt_factor, warmup_steps=warmup))
    if config.lr_scheduler == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
            warmup_cosine_factor, warmup_steps=warmup, total_steps=total, start=config.lr_warmup_start_factor,
            minimum=config.lr_min_factor))
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def check_fsdp_state_dict_type(accelerator: Accelerator) -> None:
    """Under FSDP, checkpoints must be FULL_STATE_DICT: accelerate reads those with torch.load(weights_only=True),
    whereas a sharded checkpoint's distributed-checkpoint `.metadata` is read with plain pickle.load."""
    if not is_fsdp(accelerator):
        return
    state_dict_type = accelerator.state.fsdp_plugin.state_dict_type
    if getattr(state_dict_type, "name", str(state_dict_type)) != "FULL_STATE_DICT":
        raise ValueError(
            f"fsdp_state_dict_type {getattr(state_dict_type, 'name', state_dict_type)}: resuming a sharded checkpoint "
            "would unpickle its .metadata with plain pickle (it can run code); set fsdp_state_dict_type: "
            "FULL_STATE_DICT in the accelerate config (train_configs/accelerate/fsdp.yaml does)"
        )


def prepare_as_one_unit(accelerator: Accelerator, model: torch.nn.Module, *objects) -> tuple:
    """`accelerator.prepare(model, *objects)` for a trainer's second, small model (with its optimizer, scheduler).

    Under FSDP2 the model is sharded as one unit, none of its layers on their own: accelerate prepares one model
    per `prepare` call and keeps the wrap policy it built for the first one (that model's `_no_split_modules`
    class names, which a model of another class lacks: "Could not find the transformer layer class"), and a
    model sharded as one unit can run outside FSDP's hooks with gathered weights (`vae_loss.frozen_call`, the
    VAE generator's pass through the PatchGAN). Its parameters also stay fp32 when they are gathered, and
    accelerate's autocast computes in the mixed precision, as under DDP: FSDP2's bf16 parameters would meet
    BatchNorm's fp32 running statistics ("expected scalar type BFloat16 but found Float"). Without FSDP it is plain
    `prepare`.
    """
    if not is_fsdp(accelerator):
        return accelerator.prepare(model, *objects)
    plugin = accelerator.state.fsdp_plugin
    settings = {name: getattr(plugin, name) for name in
                ("auto_wrap_policy", "activation_checkpointing", "mixed_precision_policy")}
    # No sub-units (so no per-layer activation checkpointing either): only the model itself is sharded.
    plugin.auto_wrap_policy, plugin.activation_checkpointing, plugin.mixed_precision_policy = None, False, None
    try:
        return accelerator.prepare(model, *objects)
    finally:
        for name, value in settings.items():
            setattr(plugin, name, value)


def model_class(model: torch.nn.Module) -> type:
    """The model's own class: FSDP2's `fully_shard` swaps in a subclass `FSDP<Class>` of (FSDPModule, Class)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def make_ema(accelerator: Accelerator, model: torch.nn.Module, config: RunConfig) -> EMAModel | None:
    """An EMA of the prepared `model`'s weights when `config.use_ema`, on the model's device.

    Made after `accelerator.prepare`: under FSDP it follows this process's shards (see the module docstring).
    """
    if not config.use_ema:
        return None
    unwrapped = accelerator.unwrap_model(model)
    ema = EMAModel(unwrapped.parameters(), decay=config.ema_decay, model_cls=model_class(unwrapped),
                   model_config=unwrapped.config)
    ema.to(accelerator.device)
    return ema


@contextlib.contextmanager
def whole_model(accelerator: Accelerator, model: torch.nn.Module, ema: EMAModel | None):
    """On the main process, the prepared `model` as one whole module holding its EMA weights (None elsewhere).

    Every process must enter it. Without FSDP that is the unwrapped model itself (its own weights come back
    after the block). Under FSDP a full state dict is gathered onto the main process, its parameters replaced by
    the gathered EMA shards, and an unsharded copy (on the main process's device) is built from it; the sharded
    model is not touched (EMAModel.store would move DTensors to the CPU).
    """
    unwrapped = accelerator.unwrap_model(model)
    if not is_fsdp(accelerator):
        if not accelerator.is_main_process:
            yield None
            return
        with ema_weights(ema, unwrapped):
            yield unwrapped
        return
    state = accelerator.get_state_dict(model)  # a collective: full tensors on the main process
    if ema is not None:  # EMAModel keeps `parameters()` order
        averaged = gather_dtensors(list(ema.shadow_params))  # a collective too
        state.update({name: value.cpu() for (name, _), value in zip(unwrapped.named_parameters(), averaged)})
    if not accelerator.is_main_process:
        yield None
        return
    copy = model_class(unwrapped).from_config(unwrapped.config)
    copy.load_state_dict(state)
    copy.to(accelerator.device).train(unwrapped.training)
    yield copy


def resume(accelerator: Accelerator, config: RunConfig, batches_per_epoch: int,
           training_state: dict | None = None) -> tuple[int, range, int]:
    """Per-process random streams, then `resume_from_checkpoint` if there is one.

    Call it once everything is built and prepared. `training_state` is what the trainer keeps outside
    accelerate (see `checkpointing.save_training_state`). Returns (global_step, the epochs left to run,
    batches to skip at the start of the first of them).
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
        check_loadable(checkpoint, accelerator.process_index)
        accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
        if training_state:
            load_training_state(checkpoint, training_state)
            for obj in training_state.values():
                if isinstance(obj, EMAModel):  # read onto the CPU; it must live beside the weights it follows
                    obj.to(accelerator.device)
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


class TrainingBatches:
    """The batches of the epochs left to run, for `for batch in batches:`.

    Owns the epoch bookkeeping: each epoch's data order (`set_epoch`), skipping the batches a resumed run
    has already seen, and clips decoded on the fly: a batch that is empty on any process (all its videos
    unreadable) is skipped by every process, so all take the same steps, and the unreadable videos are
    counted and reported once per epoch. `stop()` ends the iteration after the current batch.
    """

    def __init__(self, accelerator: Accelerator, loader, epochs: range, batches_to_skip: int):
        self.accelerator, self.loader, self.epochs, self.batches_to_skip = accelerator, loader, epochs, batches_to_skip
        self.num_skipped = 0  # unreadable videos, all processes and epochs
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[dict]:
        accelerator = self.accelerator
        for epoch in self.epochs:
            if hasattr(self.loader.dataset, "set_epoch"):
                self.loader.dataset.set_epoch(epoch)
            self.loader.set_epoch(epoch)
            skipped = 0
            first = epoch == self.epochs.start
            for batch in accelerator.skip_first_batches(self.loader, self.batches_to_skip) if first else self.loader:
                if "num_skipped" in batch:  # clips decoded on the fly (a latent cache has no unreadable rows)
                    skipped += batch["num_skipped"]
                    empty = torch.tensor(float(batch["video"] is None), device=accelerator.device)
                    if accelerator.reduce(empty, "sum").item() > 0:
                        continue
                yield batch
                if self._stopped:
                    break
            skipped = int(accelerator.reduce(torch.tensor(skipped, device=accelerator.device), "sum").item())
            if skipped:
                logger.warning("epoch %d: skipped %d unreadable video(s)", epoch, skipped)
            self.num_skipped += skipped
            if self._stopped:
                return


def optimizer_step(accelerator: Accelerator, parameters: Iterable[torch.nn.Parameter], optimizer, lr_scheduler,
                   max_grad_norm: float | None) -> torch.Tensor | None:
    """Clip to `max_grad_norm` (None: no clipping), step, schedule, zero.

    Returns the total gradient norm before clipping when gradients are synchronised (an update), else None.
    """
    grad_norm = None
    if accelerator.sync_gradients:
        # With an infinite bound the gradients are scaled by exactly 1: the norm is measured, nothing is clipped.
        bound = float("inf") if max_grad_norm is None else max_grad_norm
        grad_norm = accelerator.clip_grad_norm_(parameters, bound)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()
    return grad_norm


class Progress:
    """What happens after each optimizer update: the step count, the EMA, logs, the time limit, checkpoints,
    and validation under the EMA weights. `update` says when the run should stop.

    `validate(whole_model, step)` runs on the main process only, with a whole model holding the EMA weights
    (see `whole_model`); it returns metrics to log (or None). `model` is the prepared model (the one the
    optimizer updates); `training_state`
    goes into each checkpoint beside accelerate's files (see `checkpointing.save_training_state`).
    """

    def __init__(self, accelerator: Accelerator, config: RunConfig, global_step: int, model: torch.nn.Module,
                 ema: EMAModel | None, lr_scheduler, validate: Callable[[torch.nn.Module, int], dict | None], name: str,
                 training_state: dict | None = None):
        self.accelerator, self.config, self.global_step = accelerator, config, global_step
        self.model, self.ema = model, ema
        self.lr_scheduler, self.validate, self.training_state = lr_scheduler, validate, training_state
        self.started = time.monotonic()
        accelerator.init_trackers(name, config={k: str(v) for k, v in vars(config).items()})
        self.bar = tqdm(range(config.max_train_steps), initial=global_step, desc=name.replace("vidtwin-", "train "),
                        disable=not accelerator.is_local_main_process)

    def update(self, logs: dict) -> bool:
        """Book one update whose `logs` (floats or scalar tensors, read only when logged); True: stop now."""
        accelerator, config = self.accelerator, self.config
        self.global_step += 1
        step = self.global_step
        self.bar.update(1)
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        if step % config.logging_steps == 0 or step == 1:
            logs = {key: float(value) for key, value in logs.items() if value is not None}
            logs["lr"] = self.lr_scheduler.get_last_lr()[0]
            self.bar.set_postfix({key: f"{logs[key]:.4g}" for key in ("loss", "rec_l1") if key in logs})
            accelerator.log(logs, step=step)
        finished = step >= config.max_train_steps or time_is_up(self.started, config.max_train_minutes, accelerator)
        if step % config.checkpointing_steps == 0 or finished:
            save_checkpoint(accelerator, config.output_dir, step, config.checkpoints_total_limit, self.training_state)
        if step % config.validation_steps == 0 or finished:
            with whole_model(accelerator, self.model, self.ema) as model:
                metrics = self.validate(model, step) if accelerator.is_main_process else None
            if accelerator.is_main_process:
                if metrics:
                    accelerator.log(metrics, step=step)
                    logger.info("step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            accelerator.wait_for_everyone()
        return finished


def log_images(accelerator: Accelerator, images: dict[str, np.ndarray], step: int) -> None:
    """Images (H, W, 3) in [0, 1] to each tracker of `report_to` that takes images (tensorboard, wandb)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for tag, image in images.items():
                tracker.writer.add_image(tag, image, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image) for tag, image in images.items()}, step=step)
        # Other trackers take scalars only here: their images are the videos written to the run folder.


def finish(accelerator: Accelerator, ema: EMAModel | None, model: torch.nn.Module,
           save: Callable[[torch.nn.Module, Path], None], destination: Path, num_skipped: int) -> None:
    """Export the prepared `model` (its EMA weights when there is an EMA) with `save(whole_model, folder)`, atomically.

    """
    accelerator.wait_for_everyone()
    with whole_model(accelerator, model, ema) as whole:
        if accelerator.is_main_process:
            export(partial(save, whole), destination)
    if accelerator.is_main_process:
        logger.info("saved %s (%d unreadable video(s) skipped in total)", destination, num_skipped)
    # Every process tears its process group down together: one that left while the main process was still exporting
    # was seen to abort in gloo's teardown ("terminate called without an active exception"; once, in a CI run).
    accelerator.wait_for_everyone()
    accelerator.end_training()
