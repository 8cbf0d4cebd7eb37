"""Checkpoints in diffusers' example layout (`output_dir/checkpoint-STEP`), written atomically.

`accelerator.save_state` writes into a hidden temporary folder that is renamed once complete, so a run
killed at any moment leaves only whole checkpoints behind; rotation happens after a successful save.

Resuming must not run code from the checkpoint folder. Accelerate saves the prepared models as safetensors
and reads its other files (optimizer.bin, scheduler.bin, sampler.bin, random_states_N.pkl) with
`torch.load(weights_only=True)`, but it unpickles objects registered with `register_for_checkpointing`
(`custom_checkpoint_N.pkl`) with `weights_only=False`. So nothing is registered: the trainers' own state
(the EMA weights, the VAE loss's log-variance and, under FSDP, its optimizer) is written by `save_training_state` as
`training_state.safetensors` (tensors) + `training_state.json` (everything else), and a checkpoint that holds
a `custom_checkpoint_*.pkl` is refused before accelerate sees it.

Under FSDP accelerate writes the model and optimizer as whole state dicts (`pytorch_model_fsdp.bin`,
`optimizer.bin`, gathered on the main process and read with `torch.load(weights_only=True)`): the trainers
require FULL_STATE_DICT (run.check_fsdp_state_dict_type), because a sharded checkpoint's distributed-checkpoint
`.metadata` is read by torch with plain `pickle.load`, and `check_loadable` refuses one. The training state's DTensor shards
(the EMA over each process's shards) are gathered to whole tensors before the main process writes them; a resume
reads the whole tensors and keeps this process's shard of each (`load_training_state`).
"""

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_TENSORS, TRAINING_STATE_JSON = "training_state.safetensors", "training_state.json"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    match = _CHECKPOINT.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like checkpoint-1000)")
    return int(match.group(1))


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None,
                    training_state: dict | None = None) -> Path:
    """Save the full training state as `output_dir/checkpoint-STEP`; keep the newest `total_limit`.

    `training_state` (name -> tensor or object with `state_dict`) is what accelerate does not hold: it is
    written beside accelerate's files by `save_training_state`.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    # Every process must be done with the step before anything is written or deleted.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if training_state:
        whole = gather_training_state(training_state)  # a collective under FSDP: every process takes part
        if accelerator.is_main_process:
            save_training_state(partial, whole)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """`latest` -> the newest checkpoint in `output_dir` (None if there is none yet); a path -> that folder."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: {resume_from_checkpoint} is not a checkpoint folder")
    checkpoint_step(path)
    return path


def set_aside_newer_checkpoints(accelerator: Accelerator, output_dir: str | Path, step: int) -> None:
    """After resuming from `step`, move later checkpoints of the abandoned run to `abandoned-after-STEP/`.

    Left in place they would outrank the new run's checkpoints in rotation and in `latest`; moved, nothing
    is lost.
    """
    newer = [c for c in list_checkpoints(output_dir) if checkpoint_step(c) > step]
    if newer and accelerator.is_main_process:
        aside, count = Path(output_dir) / f"abandoned-after-{step}", 1
        while aside.exists():  # an earlier resume from the same step
            aside, count = Path(output_dir) / f"abandoned-after-{step}.{count}", count + 1
        aside.mkdir()
        for checkpoint in newer:
            checkpoint.rename(aside / checkpoint.name)
        logger.warning("resumed from step %d: moved %d later checkpoint(s) to %s", step, len(newer), aside)
    accelerator.wait_for_everyone()


def replace_directory(source: Path, destination: Path) -> None:
    """Move a fully written folder into place, replacing an older one (used for final exports)."""
    backup = destination.with_name(destination.name + ".old")
    shutil.rmtree(backup, ignore_errors=True)
    if destination.exists():
        destination.rename(backup)
    source.rename(destination)
    shutil.rmtree(backup, ignore_errors=True)


def _split_state(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON skeleton of a state dict; its tensors go to `tensors` under dotted names."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": {str(key): _split_state(item, f"{name}.{key}", tensors) for key, item in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_split_state(item, f"{name}.{index}", tensors) for index, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"training state {name!r}: cannot store a {type(value).__name__} without pickle")


def _join_state(skeleton: dict, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, content), = skeleton.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _join_state(item, tensors) for key, item in content.items()}
    if kind == "list":
        return [_join_state(item, tensors) for item in content]
    return content


def gather_dtensors(value: Any) -> Any:
    """`value` (a state dict) with every DTensor replaced by its full tensor (a collective: all processes call it)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor()
    if isinstance(value, dict):
        return {key: gather_dtensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [gather_dtensors(item) for item in value]
    return value


def gather_training_state(objects: dict) -> dict:
    """name -> state (a tensor, or the object's `state_dict()`) with FSDP's DTensor shards gathered to whole tensors.

    Every process must call it (under FSDP it communicates); without DTensors it only reads the states.
    """
    return {name: gather_dtensors(obj.detach() if isinstance(obj, torch.Tensor) else obj.state_dict())
            for name, obj in objects.items()}


def save_training_state(folder: str | Path, objects: dict) -> None:
    """Write `objects` (name -> tensor, object with `state_dict()`, or a state dict from `gather_training_state`)
    as safetensors + JSON into `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    states = {name: obj.detach() if isinstance(obj, torch.Tensor) else obj if isinstance(obj, dict) else obj.state_dict()
              for name, obj in objects.items()}
    skeleton = {name: _split_state(state, name, tensors) for name, state in states.items()}
    save_file(tensors, str(Path(folder) / TRAINING_STATE_TENSORS))
    (Path(folder) / TRAINING_STATE_JSON).write_text(json.dumps(skeleton))


def load_training_state(folder: str | Path, objects: dict) -> None:
    """Restore `objects` (as given to `save_training_state`) from `folder`: tensors are copied in place, other
    objects get `load_state_dict`. Reads no pickle."""
    folder = Path(folder)
    paths = [folder / TRAINING_STATE_TENSORS, folder / TRAINING_STATE_JSON]
    if not all(path.is_file() for path in paths):
        raise ValueError(f"checkpoint {folder} has no {TRAINING_STATE_TENSORS} / {TRAINING_STATE_JSON}: it was not "
                         "written by this version of the trainers; start a new run or resume from a newer checkpoint")
    tensors, skeleton = load_file(str(paths[0])), json.loads(paths[1].read_text())
    missing = sorted(set(objects) - set(skeleton))
    if missing:
        raise ValueError(f"checkpoint {folder} lacks the training state {missing} that this run needs (e.g. use_ema "
                         "was off when it was written): resume with the settings it was written with")
    for name, obj in objects.items():
        state = _join_state(skeleton[name], tensors)
        if isinstance(obj, torch.Tensor):
            with torch.no_grad():
                obj.copy_(state)
        else:
            if isinstance(obj, torch.optim.Optimizer):  # JSON turned its per-parameter state's int keys into strings
                state["state"] = {int(key): value for key, value in state["state"].items()}
            sharded = list(getattr(obj, "shadow_params", []))  # an EMA over FSDP shards (see run.py)
            obj.load_state_dict(state)
            if sharded:
                obj.shadow_params = [_shard_like(whole, like) for whole, like in zip(obj.shadow_params, sharded)]


def _shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` laid out as `like`: this process's shard when `like` is a DTensor (no communication), else itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return whole
    whole = whole.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def check_loadable(checkpoint: Path, process_index: int) -> None:
    """Refuse a checkpoint whose loading would run code, and name a file accelerate would silently skip.

    Accelerate unpickles `custom_checkpoint_*.pkl` with `weights_only=False` (it would run anything), and
    ignores a `random_states_N.pkl` it cannot read (the resumed run would then silently draw other numbers).
    """
    pickles = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise ValueError(
            f"checkpoint {checkpoint} holds {', '.join(pickles)}: accelerate would unpickle it with "
            "weights_only=False, which can run arbitrary code, so it is not loaded. This version keeps its own state "
            f"in {TRAINING_STATE_TENSORS}; resume from a checkpoint written by it (or delete the file if you wrote it)"
        )
    metadata = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.glob("*/.metadata"))
    if metadata:
        raise ValueError(
            f"checkpoint {checkpoint} holds sharded (distributed-checkpoint) state ({', '.join(metadata)}) whose "
            ".metadata torch reads with plain pickle.load, which can run arbitrary code, so it is not loaded; train "
            "with fsdp_state_dict_type: FULL_STATE_DICT (train_configs/accelerate/fsdp.yaml)"
        )
    random_states = checkpoint / f"random_states_{process_index}.pkl"
    if not random_states.is_file():  # written by fewer processes: accelerate leaves this one's stream as seeded
        logger.warning("checkpoint %s has no %s: this process continues with a fresh random stream",
                       checkpoint, random_states.name)
        return
    try:
        accelerate_load(random_states)  # weights_only=True, with numpy's RNG state allowed
    except Exception as error:
        raise ValueError(f"checkpoint {checkpoint}: {random_states.name} cannot be read as plain data "
                         f"({type(error).__name__}): the checkpoint is damaged or was tampered with") from error
