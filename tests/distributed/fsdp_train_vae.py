"""`train_vae` under FSDP2 on CPU processes: the state is switched to FSDP first (see fsdp_pieces.py), with the
auto-wrap policy of train_configs/accelerate/fsdp.yaml (TRANSFORMER_BASED_WRAP over the model's `_no_split_modules`),
then the trainer runs unchanged (its own Accelerator joins the shared state). Run by tests/test_distributed_fsdp_vae.py."""

import sys
from pathlib import Path

from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsdp_pieces import force_fsdp  # noqa: E402

from vidtwin_gen.training.train_vae import main  # noqa: E402

if __name__ == "__main__":
    force_fsdp(Accelerator(), auto_wrap_policy="TRANSFORMER_BASED_WRAP")
    raise SystemExit(main(sys.argv[1:]))
