"""Convert an original VidTwin checkpoint (microsoft/VidTok, `vidtwin/`) into an `AutoencoderVidTwin` folder."""

import re

import torch

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
