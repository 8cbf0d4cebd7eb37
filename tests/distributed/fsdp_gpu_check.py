"""benchmarks/gpu_check.py's FSDP worker on CPU processes: the state is switched to FSDP2 first (see fsdp_pieces.py,
with fsdp.yaml's TRANSFORMER_BASED_WRAP), then the worker runs at --dry-run sizes. Run by tests/test_gpu_check.py."""

import importlib.util
import sys
from pathlib import Path

from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsdp_pieces import force_fsdp  # noqa: E402

if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    force_fsdp(Accelerator(), auto_wrap_policy="TRANSFORMER_BASED_WRAP")
    raise SystemExit(gpu_check.main(["--fsdp-worker", "--dry-run", *sys.argv[1:]]))
