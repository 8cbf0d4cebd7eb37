"""Checkpoints in diffusers' example layout (`output_dir/checkpoint-STEP`), written atomically.

`accelerator.save_state` writes into a hidden temporary folder that is renamed once complete, so a run
killed at any moment leaves only whole checkpoints behind; rotation happens after a successful save.
"""

import logging
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


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


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """Save the full training state as `output_dir/checkpoint-STEP`; keep the newest `total_limit`."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    # Every process must be done with the step before anything is written or deleted.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
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
