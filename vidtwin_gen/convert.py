"""Convert an original VidTwin checkpoint (microsoft/VidTok, `vidtwin/`) into an `AutoencoderVidTwin` folder.

    vidtwin-gen convert --original-config vidtwin_structure_7_7_8_dynamics_7_8.yaml \
        --checkpoint vidtwin_structure_7_7_8_dynamics_7_8.ckpt --output-dir vidtwin-diffusers

The original config is the YAML the checkpoint was trained with (its `model:` section, `target` +
`params`) or a JSON file holding that same section. The checkpoint is a Lightning `.ckpt` (read with
`torch.load(weights_only=True)`; Lightning/OmegaConf metadata is read into inert placeholders, anything
else that a pickle asks to run is refused) or a safetensors file of the original state dict.
"""

import argparse
import hashlib
import json
import logging
import pickle
import re
import zipfile
from collections import Counter
from datetime import date
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from .models.autoencoder_vidtwin import AutoencoderVidTwin, sincos_1d, sincos_2d

logger = logging.getLogger(__name__)

# Original key pattern -> ours. Applied in order; the first match wins.
_RENAMES = [
    (r"^encoder\.x_embedder\.proj\.", "patch_embed."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.attn_temp\.", r"\1.blocks.\2.attn_temporal."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.mlp\.fc1\.", r"\1.blocks.\2.mlp.0."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.mlp\.fc2\.", r"\1.blocks.\2.mlp.2."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.(attn\.(qkv|proj)\.|scale_shift_table$)", r"\1.blocks.\2.\3"),
    (r"^decoder\.final_layer\.", "head."),
    (r"^temporal_qformer\.query_embeds$", "structure_encoder.qformer.queries"),
    (r"^temporal_qformer\.qformer\.layernorm\.", "structure_encoder.qformer.norm."),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.attention\.attention\.",
        r"structure_encoder.qformer.layers.\1.self_attention.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        r"structure_encoder.qformer.layers.\1.self_attention.dense.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
        r"structure_encoder.qformer.layers.\1.self_attention.norm.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.crossattention\.attention\.",
        r"structure_encoder.qformer.layers.\1.cross_attention.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.crossattention\.output\.dense\.",
        r"structure_encoder.qformer.layers.\1.cross_attention.dense.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.",
        r"structure_encoder.qformer.layers.\1.cross_attention.norm.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.",
        r"structure_encoder.qformer.layers.\1.ffn_in.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.output_query\.dense\.",
        r"structure_encoder.qformer.layers.\1.ffn_out.",
    ),
    (
        r"^temporal_qformer\.qformer\.encoder\.layer\.(\d+)\.output_query\.LayerNorm\.",
        r"structure_encoder.qformer.layers.\1.ffn_norm.",
    ),
    (r"^conv_in\.", "structure_encoder.conv_in."),
    (r"^content_downsample_blocks\.", "structure_encoder.down_blocks."),
    (r"^bottle_down\.", "structure_encoder.conv_out."),
    (r"^bottle_up\.", "structure_decoder.conv_in."),
    (r"^content_upsample_blocks\.", "structure_decoder.up_blocks."),
    (r"^conv_out\.", "structure_decoder.conv_out."),
    (r"^cont_emb\.", "structure_decoder.to_frames."),
    (r"^downsample_motion_module\.", "dynamics_encoder.down_blocks."),
    (r"^motion_head\.", "dynamics_encoder.conv_out."),
    (r"^motion_emb\.", "dynamics_decoder.embed."),
    (r"^up_motion\.", "dynamics_decoder.upsample."),
]

# Keys the original builds but never uses in its forward pass (or recomputes): dropped, and listed.
_UNUSED = re.compile(
    r"^(loss\.|encoder\.final_layer\.|decoder\.x_embedder\.|(encoder|decoder)\.pos_embed(_temporal)?$)"
)


def rename_original_key(key: str) -> str | None:
    """Our name for an original state-dict key, or None if the key is not part of the model."""
    for pattern, replacement in _RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def convert_state_dict(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an original state dict to ours. Returns (state dict, dropped keys); unknown keys raise."""
    converted, dropped, unknown = {}, [], []
    for key, tensor in original.items():
        if _UNUSED.match(key):
            dropped.append(key)
            continue
        new_key = rename_original_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise ValueError(f"{len(unknown)} original keys have no counterpart: {', '.join(unknown[:20])}")
    return converted, dropped


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

# `params` of the original class that only matter for training or logging.
_TRAINING_ONLY = {
    "input_key", "monitor", "ckpt_path", "ignore_keys", "loss_config", "regularizer_config",
    "lr_scheduler_config", "lr_scheduler_config_d", "lr_scheduler_config_g", "optimizer_config",
}
# Architecture switches whose non-default values this converter does not implement.
_FIXED = {"shuffle_content": False, "partial_content_motion": "all", "temporal_down_dim": 32}
_BACKBONE_KEYS = {"in_channels", "input_size", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
                  "temporal_casual", "enable_flashattn"}
# BLIP-2 Q-Former settings the original fixes unless its config says otherwise.
_QFORMER_DEFAULTS = {"num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 768,
                     "cross_attention_frequency": 2}


def load_original_config(path: str | Path) -> dict:
    """The original `model` section ({"target": ..., "params": ...}) from a YAML or JSON file."""
    path = Path(path)
    text = path.read_text()
    config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(config, dict) and "model" in config:
        config = config["model"]
    if not isinstance(config, dict) or "params" not in config:
        raise ValueError(f"{path}: expected the original config's `model:` section (with `target` and `params`)")
    return config


def _unknown(section: str, keys) -> None:
    if keys:
        raise ValueError(f"original config: unsupported key(s) in {section}: {', '.join(sorted(keys))}")


def original_config_to_diffusers(model_section: dict) -> dict:
    """Map the original `model` section to `AutoencoderVidTwin` keyword arguments, by meaning."""
    params = dict(model_section["params"])
    for key, default in _FIXED.items():
        if params.pop(key, default) != default:
            raise ValueError(f"original config: {key} other than {default!r} is not supported")
    encoder = dict(params.pop("encoder_config")["params"])
    decoder = dict(params.pop("decoder_config")["params"])
    qformer = dict(params.pop("temporal_qformer_config")["params"])
    _unknown("encoder_config.params", set(encoder) - _BACKBONE_KEYS)
    _unknown("decoder_config.params", set(decoder) - _BACKBONE_KEYS)

    # The two transformers are mirror images: everything but the depth must agree.
    for key in ("in_channels", "input_size", "patch_size", "hidden_size", "num_heads", "mlp_ratio", "temporal_casual"):
        if encoder.get(key) != decoder.get(key):
            raise ValueError(f"original config: encoder and decoder differ in {key}: {encoder.get(key)} vs {decoder.get(key)}")
    frames, height, width = encoder["input_size"]
    patch_t, patch_h, patch_w = encoder["patch_size"]
    if patch_h != patch_w:
        raise ValueError(f"original config: non-square spatial patches {patch_h}x{patch_w} are not supported")
    if qformer.pop("encoder_hidden_size", encoder["hidden_size"]) != encoder["hidden_size"]:
        raise ValueError("original config: temporal_qformer encoder_hidden_size must equal the encoder hidden_size")
    qformer_settings = {key: qformer.pop(key, default) for key, default in _QFORMER_DEFAULTS.items()}
    num_queries, query_dim = qformer.pop("num_query_tokens"), qformer.pop("query_hidden_size")
    _unknown("temporal_qformer_config.params", set(qformer))

    kwargs = {
        "in_channels": encoder["in_channels"],
        "sample_size": height if height == width else (height, width),
        "num_frames": frames,
        "patch_size": patch_h,
        "patch_size_t": patch_t,
        "hidden_size": encoder["hidden_size"],
        "num_encoder_layers": encoder["depth"],
        "num_decoder_layers": decoder["depth"],
        "num_attention_heads": encoder["num_heads"],
        "mlp_ratio": float(encoder.get("mlp_ratio", 4.0)),
        "temporal_causal": bool(encoder.get("temporal_casual", False)),
        "num_queries": num_queries,
        "query_dim": query_dim,
        "qformer_num_layers": qformer_settings["num_hidden_layers"],
        "qformer_num_attention_heads": qformer_settings["num_attention_heads"],
        "qformer_intermediate_size": qformer_settings["intermediate_size"],
        "qformer_cross_attention_frequency": qformer_settings["cross_attention_frequency"],
        "structure_channels": params.pop("expect_ch"),
        "structure_base_channels": params.pop("init_ch", None) or 128,
        "structure_down_blocks": params.pop("cont_num_blocks"),
        "dynamics_channels": params.pop("d_dim"),
    }
    downsample_motion = params.pop("downsample_motion")
    motion_blocks = params.pop("motion_num_blocks")
    kwargs["dynamics_down_blocks"] = motion_blocks if downsample_motion else 0
    _unknown("params", set(params) - _TRAINING_ONLY)
    return kwargs


# ----------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------

# Pickled metadata a Lightning checkpoint may carry next to its tensors (hyper-parameters as OmegaConf
# containers, paths, Namespaces). Such globals are loaded as inert placeholders, never imported.
_METADATA_MODULES = ("omegaconf.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "typing.", "pathlib.",
                     "argparse.Namespace", "enum.", "collections.defaultdict")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle asks for code we refuse to run."""


class _Inert:
    """Placeholder for a pickled metadata object: it swallows constructor arguments and state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The original state dict from a Lightning `.ckpt`, a plain torch state dict file or safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    advice = (
        "refusing to unpickle it. If you trust the file, save its state_dict with safetensors in a separate "
        "environment and convert that file instead."
    )
    # Only torch's zip format can be inspected before loading; a legacy pickle goes straight to the
    # weights-only loader, which refuses every global it does not know.
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipfile.is_zipfile(path) else []
    refused = [name for name in unsafe if not name.startswith(_METADATA_MODULES)]
    if refused:
        raise UnsafeCheckpointError(f"{path} asks to load {', '.join(refused)}, which no model checkpoint needs; {advice}")
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"{path} could not be loaded with weights_only=True ({error}); {advice}") from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: expected a Lightning checkpoint with a `state_dict` or a state dict of tensors")
    return state_dict


def _check_position_embeddings(original: dict[str, torch.Tensor], model: AutoencoderVidTwin) -> None:
    # The original stores its fixed sin-cos tables; they must match the grid the config implies.
    t, h, w = model.grid_size
    dim = model.config.hidden_size
    expected = {"pos_embed": sincos_2d(dim, h, w), "pos_embed_temporal": sincos_1d(dim, t)}
    for prefix in ("encoder", "decoder"):
        for name, table in expected.items():
            stored = original.get(f"{prefix}.{name}")
            if stored is not None and (stored.shape[1:] != table.shape or (stored[0].double() - table).abs().max() > 1e-5):
                raise ValueError(
                    f"{prefix}.{name} {tuple(stored.shape)} does not match the token grid {t}x{h}x{w} of the config"
                )


def convert_vidtwin_checkpoint(
    original_config: str | Path | dict,
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderVidTwin:
    """Build an `AutoencoderVidTwin` from an original config + checkpoint; save it when `output_dir` is given."""
    section = original_config if isinstance(original_config, dict) else load_original_config(original_config)
    kwargs = original_config_to_diffusers(section)
    original = load_original_checkpoint(checkpoint)
    model = AutoencoderVidTwin(**kwargs)
    _check_position_embeddings(original, model)

    state_dict, dropped = convert_state_dict(original)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs config {tuple(expected[key].shape)}"
        for key in sorted(set(state_dict) & set(expected))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            "checkpoint and config disagree:"
            + (f"\n  missing from the checkpoint: {', '.join(missing)}" if missing else "")
            + (f"\n  not in the model built from the config: {', '.join(unexpected)}" if unexpected else "")
            + (f"\n  shape mismatches: {'; '.join(mismatched)}" if mismatched else "")
        )
    model.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype)
    model.eval()
    by_prefix = Counter("loss" if key.startswith("loss.") else ".".join(key.split(".")[:2]) for key in dropped)
    logger.info("dropped %d unused original keys: %s", len(dropped), dict(by_prefix))

    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        (output_dir / "README.md").write_text(_model_card(model, section, Path(checkpoint), by_prefix))
    return model


def _model_card(model: AutoencoderVidTwin, section: dict, checkpoint: Path, dropped: Counter) -> str:
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    c, t, h, w = model.sample_shape
    parameters = sum(p.numel() for p in model.parameters())
    return f"""---
library_name: diffusers
license: mit
tags: [video, autoencoder, vidtwin]
---
# VidTwin autoencoder (converted)

Converted with `vidtwin-gen convert` on {date.today().isoformat()} from the original VidTwin checkpoint
`{checkpoint.name}` (sha256 `{digest.hexdigest()}`), class `{section.get("target", "?")}`
(microsoft/VidTok, MIT licence). Load it with:

```python
from vidtwin_gen import AutoencoderVidTwin
vae = AutoencoderVidTwin.from_pretrained("path/to/this/folder")
```

| | |
|---|---|
| input | {t} frames x {h}x{w}, {c} channels, values in [-1, 1] |
| structure latent z_S | {model.structure_latent_shape} (d_S, n_q, h_S, w_S) |
| dynamics latent z_D | {model.dynamics_latent_shape} (d_D, t, w_D + h_D) |
| latent numbers per clip | {model.latent_size:,} |
| compression rate | {100 * model.compression_rate:.3f} % of the input |
| parameters | {parameters:,} |

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
