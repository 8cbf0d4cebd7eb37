"""Convert an original VidTwin checkpoint (microsoft/VidTok, `vidtwin/`) into an `AutoencoderVidTwin` folder.

    vidtwin-gen convert --original-config vidtwin_structure_7_7_8_dynamics_7_8.yaml \
        --checkpoint vidtwin_structure_7_7_8_dynamics_7_8.ckpt --output-dir vidtwin-diffusers

The original config is the YAML the checkpoint was trained with (its `model:` section, `target` +
`params`) or a JSON file holding that same section. The checkpoint is a Lightning `.ckpt` (read with
`torch.load(weights_only=True)`; Lightning/OmegaConf metadata is read into inert placeholders, anything
else that a pickle asks to run is refused) or a safetensors file of the original state dict.

Reading and mapping live in `vidtwin_gen.models.original_checkpoint` (shared with
`AutoencoderVidTwin.from_single_file`); this module adds the output folder, written atomically: a
temporary sibling folder renamed into place, so a failure never leaves a half-written model behind.
Every failure is a ValueError with a one-line message naming the file.
"""

import argparse
import hashlib
import logging
import shutil
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

import torch

from .data.output_paths import ensure_writable_dir
from .models.autoencoder_vidtwin import AutoencoderVidTwin
from .models.original_checkpoint import (  # noqa: F401 - re-exported: the converter's public API
    CheckpointError,
    UnsafeCheckpointError,
    convert_state_dict,
    load_original_checkpoint,
    load_original_config,
    load_original_vidtwin,
    original_config_to_diffusers,
    rename_original_key,
)

logger = logging.getLogger(__name__)


def convert_vidtwin_checkpoint(
    original_config: str | Path | dict,
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderVidTwin:
    """Build an `AutoencoderVidTwin` from an original config + checkpoint; save it when `output_dir` is given."""
    if output_dir is not None:
        output_dir = Path(output_dir)
        # Checked before the (possibly long) load: a read-only or mistyped destination fails at once.
        ensure_writable_dir(output_dir.parent, "output folder's parent")
        if output_dir.exists():
            ensure_writable_dir(output_dir, "output folder")
    converted = load_original_vidtwin(original_config, checkpoint, dtype=dtype)
    by_prefix = Counter(
        "loss" if key.startswith("loss.") else ".".join(key.split(".")[:2]) for key in converted.dropped
    )
    logger.info("dropped %d unused original keys: %s", len(converted.dropped), dict(by_prefix))
    if output_dir is not None:
        notes = _provenance(converted.section, Path(checkpoint), by_prefix)
        _save_atomically(converted.model, output_dir, notes)
    return converted.model


def _save_atomically(model: AutoencoderVidTwin, output_dir: Path, notes: str) -> None:
    """save_pretrained into a temporary sibling folder, then rename it into place (replacing an older one)."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(temporary, model_card_notes=notes)
        backup = output_dir.with_name(f".{output_dir.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        if output_dir.exists():
            output_dir.rename(backup)
        temporary.rename(output_dir)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _provenance(section: dict, checkpoint: Path, dropped: Counter) -> str:
    """The model card paragraph that says where converted weights came from."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"""## Provenance

Converted with `vidtwin-gen convert` on {date.today().isoformat()} from the original VidTwin checkpoint
`{checkpoint.name}` (sha256 `{digest.hexdigest()}`), class `{section.get("target", "?")}`
(microsoft/VidTok, MIT licence). `AutoencoderVidTwin.from_single_file(checkpoint, original_config=...)` loads
the same weights directly.

Dropped original keys (unused by the original forward pass, or training-only): {dict(dropped) or "none"}.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtwin-gen convert", description=__doc__.split("\n")[0])
    parser.add_argument("--original-config", required=True, help="original YAML (model: target + params) or JSON")
    parser.add_argument("--checkpoint", required=True, help="original Lightning .ckpt or .safetensors state dict")
    parser.add_argument("--output-dir", required=True, help="folder for config.json + safetensors + README.md")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = convert_vidtwin_checkpoint(
        args.original_config, args.checkpoint, args.output_dir, dtype=getattr(torch, args.dtype)
    )
    print(f"wrote {args.output_dir} ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"latent {model.latent_size} numbers = {100 * model.compression_rate:.3f} % of the input)")
    return 0
