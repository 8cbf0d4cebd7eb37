"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import torch


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its init so that no path is trivially zero (zero-init projections, adaLN-Zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def kill_when_written(command: list[str], path: Path, timeout: float = 300, env: dict | None = None) -> None:
    """Run `command` and SIGKILL it as soon as `path` exists (or it exits, or `timeout` passes).

    The command runs in its own process group and the whole group is killed, so the workers of a launcher
    (`accelerate launch`) die with it.
    """
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def load_benchmark(name: str):
    """benchmarks/NAME.py imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
