# Copyright 2026 The vidtwin-gen authors. MIT License.
"""Reading an original VidTwin checkpoint (microsoft/VidTok, `vidtwin/`) safely, and mapping it onto ours.

Used by `AutoencoderVidTwin.from_single_file` and by `vidtwin-gen convert` (`vidtwin_gen.convert`), so both give
the same model. The original config is the YAML the checkpoint was trained with (its `model:` section,
`target` + `params`) or a JSON file holding that same section. The checkpoint is a Lightning `.ckpt` (read with
`torch.load(weights_only=True)`; Lightning/OmegaConf metadata is read into inert placeholders, anything else
that a pickle asks to run is refused) or a safetensors file of the original state dict. Every failure to read
a file is a `CheckpointError` (a ValueError) whose one-line message names the file.
"""

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from .autoencoder_vidtwin import AutoencoderVidTwin, sincos_1d, sincos_2d
from .hub import check_finite_weights


class CheckpointError(ValueError):
    """An original config or checkpoint file cannot be read or does not describe a VidTwin model."""


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
        raise CheckpointError(f"{len(unknown)} original keys have no counterpart: {', '.join(unknown[:20])}")
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
    if not path.is_file():
        raise CheckpointError(f"original config {path}: {'is not a file' if path.exists() else 'not found'}")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text()
        config = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise CheckpointError(f"original config {path}: cannot be read as {kind} ({reason})") from error
    if isinstance(config, dict) and "model" in config:
        config = config["model"]
    if not isinstance(config, dict) or "params" not in config:
        raise CheckpointError(f"{path}: expected the original config's `model:` section (with `target` and `params`)")
    return config


def _unknown(section: str, keys) -> None:
    if keys:
        raise CheckpointError(f"original config: unsupported key(s) in {section}: {', '.join(sorted(keys))}")


def original_config_to_diffusers(model_section: dict) -> dict:
    """Map the original `model` section to `AutoencoderVidTwin` keyword arguments, by meaning."""
    try:
        return _map_original_config(model_section)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        if isinstance(error, ValueError):
            raise
        what = f"missing key {error}" if isinstance(error, KeyError) else f"malformed section ({error})"
        raise CheckpointError(f"original config: {what}; expected the `model:` section the checkpoint was trained with") from error


def _map_original_config(model_section: dict) -> dict:
    params = dict(model_section["params"])
    for key, default in _FIXED.items():
        if params.pop(key, default) != default:
            raise CheckpointError(f"original config: {key} other than {default!r} is not supported")
    encoder = dict(params.pop("encoder_config")["params"])
    decoder = dict(params.pop("decoder_config")["params"])
    qformer = dict(params.pop("temporal_qformer_config")["params"])
    _unknown("encoder_config.params", set(encoder) - _BACKBONE_KEYS)
    _unknown("decoder_config.params", set(decoder) - _BACKBONE_KEYS)

    # The two transformers are mirror images: everything but the depth must agree.
    for key in ("in_channels", "input_size", "patch_size", "hidden_size", "num_heads", "mlp_ratio", "temporal_casual"):
        if encoder.get(key) != decoder.get(key):
            raise CheckpointError(f"original config: encoder and decoder differ in {key}: {encoder.get(key)} vs {decoder.get(key)}")
    frames, height, width = encoder["input_size"]
    patch_t, patch_h, patch_w = encoder["patch_size"]
    if patch_h != patch_w:
        raise CheckpointError(f"original config: non-square spatial patches {patch_h}x{patch_w} are not supported")
    if qformer.pop("encoder_hidden_size", encoder["hidden_size"]) != encoder["hidden_size"]:
        raise CheckpointError("original config: temporal_qformer encoder_hidden_size must equal the encoder hidden_size")
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


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint's pickle asks for code we refuse to run."""


class _Inert:
    """Placeholder for a pickled metadata object: it swallows constructor arguments and state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The original state dict from a Lightning `.ckpt`, a plain torch state dict file or safetensors.

    Raises `UnsafeCheckpointError` for a pickle that asks to run code and `CheckpointError` for anything else
    that is not a readable checkpoint (missing, empty, text, truncated, a foreign zip), the file named.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: {'is not a file' if path.exists() else 'not found'}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    try:
        checkpoint = load_file(path) if path.suffix == ".safetensors" else _load_pickled(path)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - torch/safetensors raise many types on a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = "safetensors" if path.suffix == ".safetensors" else "torch (.ckpt/.pt)"
        raise CheckpointError(f"checkpoint {path}: not a readable {kind} checkpoint ({type(error).__name__}: {reason})") from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"checkpoint {path}: expected a Lightning checkpoint with a `state_dict` or a state dict of tensors")
    return state_dict


def _load_pickled(path: Path):
    advice = (
        "refusing to unpickle it. If you trust the file, save its state_dict with safetensors in a separate "
        "environment and convert that file instead."
    )
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as handle:
        if not is_zip and handle.read(1) != b"\x80":  # every pickle torch writes starts with PROTO
            raise CheckpointError(
                f"checkpoint {path}: not a torch checkpoint (neither torch's zip format nor a pickle; a text or "
                "truncated file?); pass a Lightning .ckpt, a torch state dict or a .safetensors file"
            )
    # Only torch's zip format can be inspected before loading; a legacy pickle goes straight to the
    # weights-only loader, which refuses every global it does not know.
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if is_zip else []
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"checkpoint {path}: its pickle cannot be inspected ({error}); {advice}") from error
    refused = [name for name in unsafe if not name.startswith(_METADATA_MODULES)]
    if refused:
        raise UnsafeCheckpointError(f"checkpoint {path} asks to load {', '.join(refused)}, which no model checkpoint needs; {advice}")
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise UnsafeCheckpointError(f"checkpoint {path} could not be loaded with weights_only=True ({reason}); {advice}") from error


def _check_position_embeddings(original: dict[str, torch.Tensor], model: AutoencoderVidTwin) -> None:
    # The original stores its fixed sin-cos tables; they must match the grid the config implies.
    t, h, w = model.grid_size
    dim = model.config.hidden_size
    expected = {"pos_embed": sincos_2d(dim, h, w), "pos_embed_temporal": sincos_1d(dim, t)}
    for prefix in ("encoder", "decoder"):
        for name, table in expected.items():
            stored = original.get(f"{prefix}.{name}")
            if stored is not None and (stored.shape[1:] != table.shape or (stored[0].double() - table).abs().max() > 1e-5):
                raise CheckpointError(
                    f"{prefix}.{name} {tuple(stored.shape)} does not match the token grid {t}x{h}x{w} of the config"
                )




@dataclass
class OriginalVidTwin:
    """An original checkpoint mapped onto `AutoencoderVidTwin`: the model and what the mapping saw."""

    model: AutoencoderVidTwin
    section: dict  # the original config's `model:` section
    dropped: list[str]  # original keys the model does not use


def load_original_vidtwin(
    original_config: str | Path | dict, checkpoint: str | Path, dtype: torch.dtype = torch.float32
) -> OriginalVidTwin:
    """Build an `AutoencoderVidTwin` (eval mode) from an original config + checkpoint, checking every key,
    shape and the stored position tables, and refusing NaN/Inf weights."""
    section = original_config if isinstance(original_config, dict) else load_original_config(original_config)
    if not isinstance(section, dict) or "params" not in section:
        raise CheckpointError("original config: expected the `model:` section (with `target` and `params`)")
    kwargs = original_config_to_diffusers(section)
    original = load_original_checkpoint(checkpoint)
    # Unused keys (the training loss, the discriminator) may hold anything; the model's own must be finite.
    check_finite_weights({k: v for k, v in original.items() if not _UNUSED.match(k)}, f"checkpoint {checkpoint}")
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
        raise CheckpointError(
            f"checkpoint {checkpoint} and its config disagree:"
            + (f" missing from the checkpoint: {', '.join(missing)};" if missing else "")
            + (f" not in the model built from the config: {', '.join(unexpected)};" if unexpected else "")
            + (f" shape mismatches: {'; '.join(mismatched)}" if mismatched else "")
        )
    model.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype)
    return OriginalVidTwin(model.eval(), section, dropped)
