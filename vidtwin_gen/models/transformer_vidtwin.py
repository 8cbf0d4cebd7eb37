# Copyright 2026 The vidtwin-gen authors. MIT License.
"""VidTwin latent DiT: a diffusion transformer over VidTwin's structure and dynamics latents.

One clip's joint latent is two tensors (see `AutoencoderVidTwin`):

    structure z_S (B, d_S, n_q, h_S, w_S)    a short "video" of n_q query-frames
    dynamics  z_D (B, d_D, t, w_D + h_D)     per frame: w_D positions indexed by width, then h_D by height

Each part is patchified with its own patch size (grids that do not divide are zero-padded at the end
and cropped back on the way out). The dynamics tensor is cut into its width branch and its height
branch first, so no patch straddles the two. Three token sets come out:

    structure tokens   (B, N_S, D)   N_S = ceil(n_q / p_q) * ceil(h_S / p_h) * ceil(w_S / p_w)
    width tokens       (B, N_W, D)   N_W = ceil(t / p_t) * ceil(w_D / p_p)
    height tokens      (B, N_H, D)   N_H = ceil(t / p_t) * ceil(h_D / p_p)

Each token gets a fixed 3-D sin-cos position (structure: (query, row, column); the width branch a
one-row grid (frame, 0, column), the height branch a one-column grid (frame, row, 0), so a
dynamics column shares its column code with the structure grid) plus a learned part embedding
(structure / width / height). The concatenated sequence of N = N_S + N_W + N_H tokens runs through
DiT blocks: adaLN-Zero from timestep + class (+ pooled text) embedding, full self-attention,
optionally cross-attention to text-encoder states, MLP. A final adaLN and one zero-initialised
linear head per part map tokens back to patches.

Long videos (`num_context_chunks` C > 0): the model generates chunk k of a video given the clean latents of
the K <= C chunks before it. Each context chunk is tokenised exactly like the noisy chunk (same patchify,
input projections, positions and part embeddings) plus a learned chunk-position embedding ("chunk -1" for
the most recent, up to "chunk -C"), and its N tokens are appended to the sequence: (B, N + K * N, D). Every
block attends over the whole sequence, so the noisy tokens read the context at every depth (as in-context
conditioning of video DiTs, and unlike a cross-attention it needs no new weights besides the C embeddings);
only the first N tokens are turned back into latents. Samples without context (a first chunk, or context
dropout in training) have their context keys masked out of the self-attention, which gives the same output as
no context at all; masking rather than dropping their tokens keeps one batch of fixed shapes whatever the
draws (no data-dependent shapes or branches under torch.compile). A call without context adds no tokens and
no mask, so it is exactly the C = 0 model.

Tokens per 16x224^2 clip with the "paper" preset (paper VAE at 0.20 %, d_S = 4, patch 1 everywhere):
16*7*7 + 16*7 + 16*7 = 784 + 112 + 112 = 1,008 (a 4x8x8 VAE gives 4*28*28 = 3,136 latent positions,
784 tokens at patch 2). Forward cost per clip at width 1152, 18 blocks, with text cross-attention
(`benchmarks/bench_dit.py --flops-only`): 765 GFLOPs at patch 1; 274 GFLOPs with structure patch
(1, 2, 2) and dynamics patch (1, 2) (384 tokens). Latte on the 4x8x8 latent with as many blocks:
2,061 GFLOPs at patch 1, 501 at patch 2.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import (
    PixArtAlphaTextProjection,
    TimestepEmbedding,
    Timesteps,
    get_3d_sincos_pos_embed,
)
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
# diffusers' pipeline loader finds a component's loading method by looking `ModelMixin` up in the module
# that defines the component: it must be importable from here by name.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.utils import BaseOutput

from .config_checks import check_float, check_int, check_sizes, raise_if_any
from .hub import VidTwinModelMixin

# Named configurations. "paper": the paper's DiT size (18 layers, width 1152) on the paper VAE's
# latents (AutoencoderVidTwin.from_preset("paper"), d_S = 4); "released": the same on the released
# VAE's latents (d_S = 8); "tiny": a CPU size on AutoencoderVidTwin.from_preset("tiny")'s latents.
# Conditioning (num_classes, text_embed_dim) and latent statistics are passed as overrides.
VIDTWIN_TRANSFORMER_PRESETS = {
    "paper": {},
    "released": {"structure_latent_shape": (8, 16, 7, 7)},
    "tiny": {
        "structure_latent_shape": (4, 8, 2, 2),
        "dynamics_latent_shape": (4, 8, 4),
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 4,
    },
}

# Named token layouts: "S/D" -> the structure patch over (n_q, h_S, w_S) and the dynamics patch over (t, position)
# (each dynamics branch patched separately). Give one as `from_preset(name, layout="2x2x2/2x2")` or as `layout:`
# in a DiT training config's `model:`; a layout sets both patch sizes. Tokens per clip on the paper's latents
# (structure 16x7x7, dynamics 16 frames x (7 + 7) positions; 7 / 2 is zero-padded) and GFLOPs per forward of the
# paper-size DiT (benchmarks/bench_dit.py; Latte at patch 2 on a 4x8x8 VAE's latent of the same clip: 784 tokens,
# 501 GFLOPs) in the comments. benchmarks/bench_dit.py measures them all; the README gives the equal-compute study
# on the embedded set behind the choice of the training configs' layout.
VIDTWIN_TOKEN_LAYOUTS = {
    "1x1x1/1x1": {"structure_patch_size": (1, 1, 1), "dynamics_patch_size": (1, 1)},  # 1,008 tokens, 765 GFLOPs: the model default
    "1x2x2/1x2": {"structure_patch_size": (1, 2, 2), "dynamics_patch_size": (1, 2)},  # 384: patch 2 over space, as Latte
    "1x2x2/2x1": {"structure_patch_size": (1, 2, 2), "dynamics_patch_size": (2, 1)},  # 368, 262 GFLOPs
    "2x1x1/2x2": {"structure_patch_size": (2, 1, 1), "dynamics_patch_size": (2, 2)},  # 456
    "1x2x2/2x2": {"structure_patch_size": (1, 2, 2), "dynamics_patch_size": (2, 2)},  # 320
    "2x2x2/2x1": {"structure_patch_size": (2, 2, 2), "dynamics_patch_size": (2, 1)},  # 240
    "2x2x2/2x2": {"structure_patch_size": (2, 2, 2), "dynamics_patch_size": (2, 2)},  # 192, 136 GFLOPs
    # Each dynamics token one frame of 4 positions of a branch (a whole branch of the quickstart's latents, half of a
    # padded one at paper size): a change across the object, like a flicker, is made inside one token rather than
    # agreed between several (192 tokens, 136 GFLOPs, as 2x2x2/2x2; the DiT configs' layout).
    "2x2x2/1x4": {"structure_patch_size": (2, 2, 2), "dynamics_patch_size": (1, 4)},
    "4x1x1/4x1": {"structure_patch_size": (4, 1, 1), "dynamics_patch_size": (4, 1)},  # 252: full spatial detail
    "4x2x2/4x2": {"structure_patch_size": (4, 2, 2), "dynamics_patch_size": (4, 2)},  # 96, 69 GFLOPs
}

def patchify(x: torch.Tensor, patch_size: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, prod(ceil(S / p)), prod(p) * C), tokens row-major, channels fastest in a patch.

    Each axis of S is zero-padded at its end up to a multiple of its patch size.
    """
    b, c, *size = x.shape
    k = len(patch_size)
    grid = [math.ceil(s / p) for s, p in zip(size, patch_size)]
    padding = []
    for s, p, g in zip(reversed(size), reversed(patch_size), reversed(grid)):
        padding += [0, g * p - s]  # F.pad lists the last axis first
    x = F.pad(x, padding)
    x = x.reshape(b, c, *[n for g, p in zip(grid, patch_size) for n in (g, p)])  # (B, C, g1, p1, ..., gk, pk)
    grid_axes = [2 + 2 * i for i in range(k)]
    patch_axes = [3 + 2 * i for i in range(k)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)  # (B, g1, ..., gk, p1, ..., pk, C)
    return x.reshape(b, math.prod(grid), math.prod(patch_size) * c)


def unpatchify(tokens: torch.Tensor, patch_size: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, prod(p) * C) -> (B, C, *size), the padding cropped away."""
    b = tokens.shape[0]
    k = len(patch_size)
    grid = [math.ceil(s / p) for s, p in zip(size, patch_size)]
    c = tokens.shape[-1] // math.prod(patch_size)
    x = tokens.reshape(b, *grid, *patch_size, c)  # (B, g1, ..., gk, p1, ..., pk, C)
    x = x.permute(0, 2 * k + 1, *[n for i in range(k) for n in (1 + i, 1 + k + i)])  # (B, C, g1, p1, ...)
    x = x.reshape(b, c, *[g * p for g, p in zip(grid, patch_size)])
    return x[(slice(None), slice(None), *[slice(0, s) for s in size])]


def check_transformer_config(
    structure_latent_shape, dynamics_latent_shape, dynamics_branch_sizes, structure_patch_size, dynamics_patch_size,
    hidden_size, num_layers, num_attention_heads, mlp_ratio, num_classes, text_embed_dim, pooled_text_embed_dim,
    num_context_chunks=0,
) -> tuple[tuple[int, ...], ...]:
    """Validate the geometry and size keys of a `VidTwinTransformer3DModel` config, reporting every problem.

    Returns (structure_latent_shape, dynamics_latent_shape, dynamics_branch_sizes, structure_patch_size,
    dynamics_patch_size) as tuples, the branch sizes resolved (None: two equal halves).
    """
    problems = []
    shapes_ok = check_sizes(problems, "structure_latent_shape", structure_latent_shape, 4, "(d_S, n_q, h_S, w_S)")
    shapes_ok &= check_sizes(problems, "dynamics_latent_shape", dynamics_latent_shape, 3, "(d_D, t, w_D + h_D)")
    branches = None
    if shapes_ok:
        _, n_q, h_s, w_s = structure_latent_shape
        _, t, positions = dynamics_latent_shape
        if dynamics_branch_sizes is None and positions % 2:
            problems.append(
                f"dynamics_latent_shape has {positions} positions, which do not split into two equal branches; "
                "pass dynamics_branch_sizes=(w_D, h_D)"
            )
        elif dynamics_branch_sizes is None:
            branches = (positions // 2, positions // 2)
        elif check_sizes(problems, "dynamics_branch_sizes", dynamics_branch_sizes, 2, "(w_D, h_D)"):
            branches = tuple(dynamics_branch_sizes)
            if sum(branches) != positions:
                problems.append(f"dynamics_branch_sizes must be (w_D, h_D) with w_D + h_D = {positions}, got {branches}")
                branches = None
        # A patch larger than its axis would be all padding (and a huge input projection).
        check_sizes(problems, "structure_patch_size", structure_patch_size, 3, "over (n_q, h_S, w_S)", (n_q, h_s, w_s))
        if branches is not None:
            check_sizes(problems, "dynamics_patch_size", dynamics_patch_size, 2, "over (t, position)", (t, min(branches)))
    if check_int(problems, "num_attention_heads", num_attention_heads, 1, 1024) and check_int(
        problems, "hidden_size", hidden_size, 16, 65536
    ):
        if hidden_size % 16 or hidden_size % num_attention_heads:
            problems.append(
                f"hidden_size {hidden_size} must be divisible by 16 and by num_attention_heads {num_attention_heads}"
            )
    check_int(problems, "num_layers", num_layers, 1, 1024)
    check_float(problems, "mlp_ratio", mlp_ratio, 0.0, 64.0)
    check_int(problems, "num_classes", num_classes, 0, 10_000_000)
    check_int(problems, "num_context_chunks", num_context_chunks, 0, 64)
    for name, value in (("text_embed_dim", text_embed_dim), ("pooled_text_embed_dim", pooled_text_embed_dim)):
        if value is not None:
            check_int(problems, name, value, 1, 65536)
    raise_if_any(problems, "VidTwinTransformer3DModel")
    return (
        tuple(structure_latent_shape), tuple(dynamics_latent_shape), branches,
        tuple(structure_patch_size), tuple(dynamics_patch_size),
    )


def resolve_latent_statistics(structure_channels: int, dynamics_channels: int, *values) -> dict[str, list[float]]:
    """Per-channel latent mean/std lists from the config (None: 0 and 1), checked for length and sign."""
    stats = {}
    for (name, channels, default), value in zip(
        (
            ("structure_latent_mean", structure_channels, 0.0),
            ("structure_latent_std", structure_channels, 1.0),
            ("dynamics_latent_mean", dynamics_channels, 0.0),
            ("dynamics_latent_std", dynamics_channels, 1.0),
        ),
        values,
    ):
        value = [default] * channels if value is None else [float(v) for v in value]
        if len(value) != channels:
            raise ValueError(f"{name} needs one number per channel ({channels}), got {len(value)}")
        if not all(math.isfinite(v) for v in value) or (name.endswith("std") and min(value) <= 0):
            raise ValueError(f"{name} must be {'positive and ' if name.endswith('std') else ''}finite, got {value}")
        stats[name] = value
    return stats


@dataclass
class VidTwinTransformerOutput(BaseOutput):
    """
    Args:
        structure: (B, d_S, n_q, h_S, w_S), the prediction for the structure latent.
        dynamics: (B, d_D, t, w_D + h_D), the prediction for the dynamics latent.
    """

    structure: torch.Tensor
    dynamics: torch.Tensor


class VidTwinAttnProcessor:
    """Attention through diffusers' backend dispatch (`set_attention_backend`), with fused-QKV support.

    Inputs (B, N, D), optional context (B, L, D) and a key mask (B, 1, L): an additive bias (cross-attention)
    or a boolean "attend to this key" (self-attention over context chunks); output (B, N, D).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "VidTwinAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn.fused_projections and not attn.is_cross_attention:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        elif attn.fused_projections:
            query = attn.to_q(hidden_states)
            key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
        else:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # (B, L, heads, d)
        if attention_mask is not None:
            attention_mask = attention_mask[:, None]  # (B, 1, 1, L): broadcast over heads and queries
        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
            parallel_config=self._parallel_config if encoder_hidden_states is None else None,
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class VidTwinAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention with diffusers' parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`).

    Self-attention when `cross_attention` is False; `fuse_projections()` fuses q/k/v (self-attention) or
    k/v (cross-attention), as diffusers' own attention modules do.
    """

    _default_processor_cls = VidTwinAttnProcessor
    _available_processors = [VidTwinAttnProcessor]

    def __init__(self, dim: int, heads: int, cross_attention: bool = False, processor=None):
        super().__init__()
        self.heads = heads
        self.is_cross_attention = cross_attention
        self.use_bias = True
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.set_processor(processor or VidTwinAttnProcessor())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask)


class VidTwinTransformerBlock(nn.Module):
    """DiT block with adaLN-Zero, plus (for text conditioning) PixArt-style cross-attention.

    self-attention (modulated, gated) -> cross-attention to the text (plain residual) -> MLP (modulated, gated).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, cross_attention: bool):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)  # shift/scale/gate for attention and MLP from the conditioning
        self.attn1 = VidTwinAttention(dim, num_heads)
        if cross_attention:
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.attn2 = VidTwinAttention(dim, num_heads, cross_attention=True)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(
        self,
        hidden_states: torch.Tensor,
        conditioning: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_bias: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # hidden_states (B, N, D); conditioning (B, D); encoder_hidden_states (B, L, D); bias (B, 1, L);
        # attention_mask (B, 1, N) bool, False for keys no token may attend to (absent context chunks)
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=conditioning)
        hidden_states = hidden_states + gate_msa[:, None] * self.attn1(x, attention_mask=attention_mask)
        if self.attn2 is not None:
            hidden_states = hidden_states + self.attn2(
                self.norm2(hidden_states),
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_bias,
            )
        x = self.norm3(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return hidden_states + gate_mlp[:, None] * self.ff(x)


class VidTwinTransformer3DModel(VidTwinModelMixin, ConfigMixin, AttentionMixin):
    r"""
    Latent diffusion transformer over VidTwin's structure and dynamics latents.

    Both parts go in and come out at their latent shapes; the output is the prediction in whatever
    parameterisation the training uses (velocity eps - x0 for rectified flow, x0 or eps for DDPM).
    With the "paper" preset one 16x224^2 clip is 1,008 tokens (see the module docstring).

    Args:
        structure_latent_shape: (d_S, n_q, h_S, w_S), `AutoencoderVidTwin.structure_latent_shape`.
        dynamics_latent_shape: (d_D, t, w_D + h_D), `AutoencoderVidTwin.dynamics_latent_shape`.
        dynamics_branch_sizes: (w_D, h_D), how the last dynamics axis splits into the width-indexed and
            the height-indexed branch; None means two equal halves (a square token grid).
        structure_patch_size: patch over (n_q, h_S, w_S); axes that do not divide are zero-padded.
        dynamics_patch_size: patch over (t, position), applied to each branch separately.
        hidden_size, num_layers, num_attention_heads, mlp_ratio: transformer size. hidden_size must be
            divisible by 16 (3-D sin-cos positions) and by num_attention_heads.
        num_classes: class-conditional with this many classes (0: no class input). The embedding table has
            num_classes + 1 rows; the last, index `null_class_label`, is the learned "no class" for
            classifier-free guidance.
        text_embed_dim: width of the text encoder's hidden states for cross-attention (None: no text input).
        pooled_text_embed_dim: width of the pooled text embedding added to the adaLN conditioning; None means
            text_embed_dim.
        structure_latent_mean, structure_latent_std: per-channel statistics of z_S over the training latents
            (d_S numbers each; default 0 and 1), used by `normalize_latents`/`denormalize_latents`.
        dynamics_latent_mean, dynamics_latent_std: the same for z_D (d_D numbers each).
        num_context_chunks: how many previous chunks of a long video the model may be given as context (see the
            module docstring and `forward`); 0 (default) is a single-chunk model without context parameters.

    diffusers conventions: the attention layers are `AttentionModuleMixin` modules driven by
    `VidTwinAttnProcessor`, so `attn_processors`, `set_attn_processor`, `set_attention_backend("native" | ...)`
    and `fuse_qkv_projections` work as on diffusers' own transformers. `enable_layerwise_casting`,
    `enable_group_offload`, gradient checkpointing and `torch.compile` (no graph breaks; the class-label range
    check, which reads values, runs in eager mode only) are supported. For layerwise casting, cast the model
    to the compute dtype first (`from_pretrained(..., dtype=torch.bfloat16)`), as diffusers documents it.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VidTwinTransformerBlock"]
    _repeated_blocks = ["VidTwinTransformerBlock"]
    # Kept in the compute dtype under `enable_layerwise_casting` (Latte's list): norms and their adaLN
    # linears, the fixed positions, the output heads. `part_embed` is a raw parameter, never cast by it.
    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "proj_out"]

    @register_to_config
    def __init__(
        self,
        structure_latent_shape: tuple[int, int, int, int] = (4, 16, 7, 7),
        dynamics_latent_shape: tuple[int, int, int] = (8, 16, 14),
        dynamics_branch_sizes: tuple[int, int] | None = None,
        structure_patch_size: tuple[int, int, int] = (1, 1, 1),
        dynamics_patch_size: tuple[int, int] = (1, 1),
        hidden_size: int = 1152,
        num_layers: int = 18,
        num_attention_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        text_embed_dim: int | None = None,
        pooled_text_embed_dim: int | None = None,
        structure_latent_mean: list[float] | None = None,
        structure_latent_std: list[float] | None = None,
        dynamics_latent_mean: list[float] | None = None,
        dynamics_latent_std: list[float] | None = None,
        num_context_chunks: int = 0,
    ):
        super().__init__()
        geometry = check_transformer_config(
            structure_latent_shape, dynamics_latent_shape, dynamics_branch_sizes, structure_patch_size,
            dynamics_patch_size, hidden_size, num_layers, num_attention_heads, mlp_ratio, num_classes,
            text_embed_dim, pooled_text_embed_dim, num_context_chunks,
        )
        self.structure_shape, self.dynamics_shape, self.dynamics_branch_sizes = geometry[:3]
        self.structure_patch_size, self.dynamics_patch_size = geometry[3:]
        # Resolved values go back into the config so that a saved model states them explicitly.
        self.register_to_config(
            dynamics_branch_sizes=self.dynamics_branch_sizes,
            **resolve_latent_statistics(
                self.structure_shape[0], self.dynamics_shape[0], structure_latent_mean, structure_latent_std,
                dynamics_latent_mean, dynamics_latent_std,
            ),
        )
        self._build_tokens(hidden_size)
        # Learned "chunk -1" .. "chunk -C" embeddings of the context tokens, row j for the chunk j + 1 back.
        # None when C = 0, so a single-chunk model has exactly the parameters (and state dict) it always had.
        self.context_chunk_embed = nn.Parameter(torch.zeros(num_context_chunks, hidden_size)) if num_context_chunks else None
        self._build_conditioning(hidden_size, num_classes, text_embed_dim, pooled_text_embed_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                VidTwinTransformerBlock(hidden_size, num_attention_heads, mlp_ratio, text_embed_dim is not None)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.structure_proj_out = nn.Linear(hidden_size, math.prod(self.structure_patch_size) * self.structure_shape[0])
        self.dynamics_proj_out = nn.Linear(hidden_size, math.prod(self.dynamics_patch_size) * self.dynamics_shape[0])
        self.gradient_checkpointing = False
        self._init_weights()

    def _build_tokens(self, hidden_size: int) -> None:
        """Input projections, fixed 3-D positions and part embeddings of the three token sets."""
        d_s, n_q, h_s, w_s = self.structure_shape
        d_d, t, _ = self.dynamics_shape
        w_d, h_d = self.dynamics_branch_sizes
        p_s, p_d = self.structure_patch_size, self.dynamics_patch_size
        # Token grids after patchify, as (time-like, rows, columns).
        t_grid = math.ceil(t / p_d[0])
        grids = (
            tuple(math.ceil(s / p) for s, p in zip((n_q, h_s, w_s), p_s)),
            (t_grid, 1, math.ceil(w_d / p_d[1])),
            (t_grid, math.ceil(h_d / p_d[1]), 1),
        )
        self.token_counts = tuple(math.prod(g) for g in grids)  # (N_S, N_W, N_H)
        # A linear layer on flattened patches, as DiT's conv patch embedding.
        self.structure_embed = nn.Linear(math.prod(p_s) * d_s, hidden_size)
        self.dynamics_embed = nn.Linear(math.prod(p_d) * d_d, hidden_size)
        pos_embed = torch.cat(
            [get_3d_sincos_pos_embed(hidden_size, (g[2], g[1]), g[0]).reshape(-1, hidden_size) for g in grids]
        )
        self.register_buffer("pos_embed", pos_embed.float(), persistent=False)  # (N, D)
        self.part_embed = nn.Parameter(torch.zeros(3, hidden_size))
        part_ids = torch.cat([torch.full((n,), part) for part, n in enumerate(self.token_counts)])
        self.register_buffer("part_ids", part_ids, persistent=False)  # (N,)

    def _build_conditioning(self, hidden_size, num_classes, text_embed_dim, pooled_text_embed_dim) -> None:
        """Everything is summed into one (B, D) vector that drives every adaLN; text also feeds cross-attention."""
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)  # DiT's frequency embedding
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.class_embed = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None
        if text_embed_dim is not None:
            self.caption_projection = PixArtAlphaTextProjection(text_embed_dim, hidden_size)
            self.pooled_text_proj = PixArtAlphaTextProjection(
                pooled_text_embed_dim or text_embed_dim, hidden_size, act_fn="silu"
            )
        else:
            self.caption_projection = self.pooled_text_proj = None

    def _init_weights(self):
        # DiT's scheme: Xavier linears, N(0, 0.02) embeddings, adaLN modulation and output heads at zero,
        # so every block starts as the identity and the model's first prediction is exactly 0.
        # Cross-attention output projections start at zero too (PixArt-alpha).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.part_embed, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for projection in (self.caption_projection, self.pooled_text_proj):
            if projection is not None:
                nn.init.normal_(projection.linear_1.weight, std=0.02)
                nn.init.normal_(projection.linear_2.weight, std=0.02)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
            if block.attn2 is not None:
                nn.init.zeros_(block.attn2.to_out[0].weight)
                nn.init.zeros_(block.attn2.to_out[0].bias)
        for layer in (self.norm_out.linear, self.structure_proj_out, self.dynamics_proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.context_chunk_embed is not None:  # drawn last: every other weight is that of the C = 0 model
            nn.init.normal_(self.context_chunk_embed, std=0.02)

    @classmethod
    def from_preset(cls, name: str, layout: str | None = None, **overrides) -> "VidTwinTransformer3DModel":
        """Build a randomly initialised model from a named configuration: one of `VIDTWIN_TRANSFORMER_PRESETS`,
        with the patch sizes of a named token layout (one of `VIDTWIN_TOKEN_LAYOUTS`) when `layout` is given."""
        if name not in VIDTWIN_TRANSFORMER_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(VIDTWIN_TRANSFORMER_PRESETS)}")
        patches = {}
        if layout is not None:
            if layout not in VIDTWIN_TOKEN_LAYOUTS:
                raise ValueError(f"Unknown layout {layout!r}; choose one of {list(VIDTWIN_TOKEN_LAYOUTS)}")
            clashing = sorted(set(VIDTWIN_TOKEN_LAYOUTS[layout]) & set(overrides))
            if clashing:
                raise ValueError(f"layout={layout!r} sets {clashing}: give either the layout or the patch sizes, not both")
            patches = VIDTWIN_TOKEN_LAYOUTS[layout]
        return cls(**{**VIDTWIN_TRANSFORMER_PRESETS[name], **patches, **overrides})

    def set_default_attn_processor(self) -> None:
        """Back to the default processor (`VidTwinAttnProcessor`, backend chosen by `set_attention_backend`)."""
        self.set_attn_processor(VidTwinAttnProcessor())

    def model_card_facts(self) -> dict:
        """What `save_pretrained`'s README.md states about this model (see `vidtwin_gen.models.hub`)."""
        config = self.config
        if config.text_embed_dim is not None:
            conditioning = f"text (cross-attention to {config.text_embed_dim}-wide encoder states)"
        elif config.num_classes:
            conditioning = f"{config.num_classes} classes (+ null class {config.num_classes} for guidance)"
        else:
            conditioning = "none (unconditional)"
        return {
            "title": "VidTwin latent DiT",
            "summary": "A diffusion transformer over VidTwin's structure and dynamics latents "
            "(`vidtwin_gen.VidTwinTransformer3DModel`); pair it with the `AutoencoderVidTwin` whose latents it "
            "was trained on.",
            "tags": ["video", "vidtwin", "diffusion-transformer", "text-to-video" if config.text_embed_dim else "video-generation"],
            # The Hub has no task for class-conditional or unconditional video generation.
            "pipeline_tag": "text-to-video" if config.text_embed_dim is not None else None,
            "rows": [
                ("structure latent z_S", f"{self.structure_shape} (d_S, n_q, h_S, w_S)"),
                ("dynamics latent z_D", f"{self.dynamics_shape} (d_D, t, w_D + h_D)"),
                ("latent numbers per clip", f"{math.prod(self.structure_shape) + math.prod(self.dynamics_shape):,}"),
                ("tokens per clip", f"{self.num_tokens:,} (patch {self.structure_patch_size} / {self.dynamics_patch_size})"),
                ("width x layers x heads", f"{config.hidden_size} x {config.num_layers} x {config.num_attention_heads}"),
                ("conditioning", conditioning),
                ("context (long videos)", (
                    f"up to {config.num_context_chunks} previous chunk(s) as {self.num_tokens:,} extra tokens each; "
                    "generates chunk k given chunks k-1.. (none for a first chunk)"
                ) if config.num_context_chunks else "none (one chunk at a time, no context)"),
            ],
            "usage": """
from vidtwin_gen import VidTwinTransformer3DModel
transformer = VidTwinTransformer3DModel.from_pretrained("path/to/this/folder")
# usually loaded as part of a pipeline: vidtwin_gen.VidTwinPipeline.from_pretrained(pipeline_folder)
""",
        }

    # ------------------------------------------------------------------ tokens

    @property
    def num_tokens(self) -> int:
        """Length of the joint token sequence for one clip."""
        return sum(self.token_counts)

    @property
    def null_class_label(self) -> int:
        """The class index meaning "no class" (the learned unconditional embedding)."""
        if self.class_embed is None:
            raise ValueError("this model is not class-conditional (num_classes=0): it has no null class")
        return self.config.num_classes

    def patchify_latents(
        self, structure: torch.Tensor, dynamics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, d_S, n_q, h_S, w_S), (B, d_D, t, w_D + h_D) -> structure (B, N_S, p_S*d_S),
        width-branch (B, N_W, p_D*d_D) and height-branch (B, N_H, p_D*d_D) patch tokens."""
        by_width, by_height = dynamics.split(self.dynamics_branch_sizes, dim=-1)
        return (
            patchify(structure, self.structure_patch_size),
            patchify(by_width, self.dynamics_patch_size),
            patchify(by_height, self.dynamics_patch_size),
        )

    def unpatchify_latents(
        self, structure: torch.Tensor, by_width: torch.Tensor, by_height: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `patchify_latents`."""
        _, n_q, h_s, w_s = self.structure_shape
        t = self.dynamics_shape[1]
        w_d, h_d = self.dynamics_branch_sizes
        structure = unpatchify(structure, self.structure_patch_size, (n_q, h_s, w_s))
        dynamics = torch.cat(
            [
                unpatchify(by_width, self.dynamics_patch_size, (t, w_d)),
                unpatchify(by_height, self.dynamics_patch_size, (t, h_d)),
            ],
            dim=-1,
        )
        return structure, dynamics

    # ------------------------------------------------------------------ latent statistics

    def _check_channels(self, structure: torch.Tensor, dynamics: torch.Tensor) -> None:
        d_s, d_d = self.structure_shape[0], self.dynamics_shape[0]
        if structure.ndim != 5 or dynamics.ndim != 4 or structure.shape[1] != d_s or dynamics.shape[1] != d_d:
            raise ValueError(
                f"expected structure (B, {d_s}, n_q, h_S, w_S) and dynamics (B, {d_d}, t, w_D + h_D), got "
                f"{tuple(structure.shape)} and {tuple(dynamics.shape)}"
            )

    def _affine(self, x: torch.Tensor, part: str, inverse: bool) -> torch.Tensor:
        # Per-channel statistics broadcast over (B, C, ...); computed in float32, returned in x's dtype.
        shape = (-1,) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.config[f"{part}_latent_mean"], device=x.device).view(shape)
        std = torch.tensor(self.config[f"{part}_latent_std"], device=x.device).view(shape)
        out = x.float() * std + mean if inverse else (x.float() - mean) / std
        return out.to(x.dtype)

    def normalize_latents(
        self, structure: torch.Tensor, dynamics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE latents -> the model's unit-scale space: (z - mean) / std per channel, for each part.

        Per channel only, so the latents of a tiled encode (K chunks along n_q and t) work too.
        """
        self._check_channels(structure, dynamics)
        return self._affine(structure, "structure", False), self._affine(dynamics, "dynamics", False)

    def denormalize_latents(
        self, structure: torch.Tensor, dynamics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `normalize_latents`: z * std + mean per channel, back to the VAE's latent space."""
        self._check_channels(structure, dynamics)
        return self._affine(structure, "structure", True), self._affine(dynamics, "dynamics", True)

    # ------------------------------------------------------------------ conditioning

    def drop_conditions(
        self,
        prob: float,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
        null_encoder_hidden_states: torch.Tensor | None = None,
        null_encoder_attention_mask: torch.Tensor | None = None,
        null_pooled_text_embeds: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Replace each sample's condition by the null condition with probability `prob` (classifier-free
        guidance training).

        One draw per sample decides for all its conditions together: a dropped sample gets the null class
        (`null_class_label`) and the empty prompt's text states. The empty prompt is the text encoder's
        output for "" and is passed in as `null_*` tensors of batch size 1 and the same sequence length L.

        Returns:
            a dict with `class_labels`, `encoder_hidden_states`, `encoder_attention_mask` and
            `pooled_text_embeds`, ready to pass to `forward` as keyword arguments.
        """
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        present = [x for x in (class_labels, encoder_hidden_states) if x is not None]
        if not present:
            raise ValueError("pass class_labels and/or encoder_hidden_states to drop")
        batch_size, device = present[0].shape[0], present[0].device
        draw = torch.rand(batch_size, generator=generator, device=generator.device if generator else device)
        drop = draw.to(device) < prob  # (B,)

        if class_labels is not None:
            class_labels = torch.where(drop, self.null_class_label, class_labels)
        if encoder_hidden_states is not None:
            if null_encoder_hidden_states is None:
                raise ValueError(
                    "dropping text needs the empty prompt's encoding: pass null_encoder_hidden_states (1, L, D) "
                    "(and null_encoder_attention_mask / null_pooled_text_embeds alongside their batch tensors)"
                )
            if null_encoder_hidden_states.shape[1:] != encoder_hidden_states.shape[1:]:
                raise ValueError(
                    f"null_encoder_hidden_states {tuple(null_encoder_hidden_states.shape)} must be (1, L, D) with "
                    f"the batch's L and D {tuple(encoder_hidden_states.shape[1:])}; pad the empty prompt to L"
                )
            encoder_hidden_states = torch.where(drop[:, None, None], null_encoder_hidden_states, encoder_hidden_states)
            for name, value, null in (
                ("encoder_attention_mask", encoder_attention_mask, null_encoder_attention_mask),
                ("pooled_text_embeds", pooled_text_embeds, null_pooled_text_embeds),
            ):
                if (value is None) != (null is None):
                    raise ValueError(f"pass {name} and null_{name} together, or neither")
            if encoder_attention_mask is not None:
                encoder_attention_mask = torch.where(drop[:, None], null_encoder_attention_mask, encoder_attention_mask)
            if pooled_text_embeds is not None:
                pooled_text_embeds = torch.where(drop[:, None], null_pooled_text_embeds, pooled_text_embeds)
        return {
            "class_labels": class_labels,
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
            "pooled_text_embeds": pooled_text_embeds,
        }

    def _check_conditions(
        self,
        batch_size: int,
        timestep: torch.Tensor,
        class_labels: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        pooled_text_embeds: torch.Tensor | None,
    ) -> None:
        """Raise a ValueError naming the conditioning input that does not fit this model's config.

        Shapes and dtypes only (free under torch.compile); the class-label range needs the values and is
        checked in eager mode only.
        """
        if timestep.shape not in ((), (1,), (batch_size,)):
            raise ValueError(f"timestep must be a scalar or of shape ({batch_size},), got {tuple(timestep.shape)}")
        if self.class_embed is None and class_labels is not None:
            raise ValueError("this model has no class conditioning (num_classes=0); do not pass class_labels")
        if self.class_embed is not None:
            self._check_class_labels(batch_size, class_labels)
        if self.caption_projection is None:
            if encoder_hidden_states is not None or pooled_text_embeds is not None:
                raise ValueError("this model has no text conditioning (text_embed_dim=None); do not pass text inputs")
            return
        text_dim = self.config.text_embed_dim
        if encoder_hidden_states is None:
            raise ValueError(
                "this model is text-conditional: pass encoder_hidden_states (B, L, "
                f"{text_dim}), the empty prompt's encoding for unconditional samples"
            )
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[::2] != (batch_size, text_dim):  # (B, D)
            raise ValueError(
                f"encoder_hidden_states must be ({batch_size}, L, {text_dim}), got {tuple(encoder_hidden_states.shape)}"
            )
        length = encoder_hidden_states.shape[1]
        if encoder_attention_mask is not None and encoder_attention_mask.shape != (batch_size, length):
            raise ValueError(
                f"encoder_attention_mask must be ({batch_size}, {length}) (1 keep, 0 padding), "
                f"got {tuple(encoder_attention_mask.shape)}"
            )
        pooled_dim = self.config.pooled_text_embed_dim or text_dim
        if pooled_text_embeds is None and pooled_dim != text_dim:
            raise ValueError(
                f"pass pooled_text_embeds (B, {pooled_dim}); it cannot be derived from the {text_dim}-wide "
                "encoder_hidden_states"
            )
        if pooled_text_embeds is not None and pooled_text_embeds.shape != (batch_size, pooled_dim):
            raise ValueError(
                f"pooled_text_embeds must be ({batch_size}, {pooled_dim}), got {tuple(pooled_text_embeds.shape)}"
            )

    def _check_class_labels(self, batch_size: int, class_labels: torch.Tensor | None) -> None:
        if class_labels is None:
            raise ValueError(
                f"this model is class-conditional (num_classes={self.config.num_classes}): pass class_labels "
                f"(B,), using {self.null_class_label} (null_class_label) for unconditional samples"
            )
        if (
            class_labels.shape != (batch_size,)
            or class_labels.is_floating_point()
            or class_labels.is_complex()
            or class_labels.dtype == torch.bool
        ):
            raise ValueError(
                f"class_labels must be integers of shape ({batch_size},), got {class_labels.dtype} "
                f"{tuple(class_labels.shape)}"
            )
        # One host sync, skipped while compiling (a data-dependent branch would break the graph).
        if not torch.compiler.is_compiling() and ((class_labels < 0) | (class_labels > self.null_class_label)).any():
            raise ValueError(
                f"class_labels must be in [0, {self.config.num_classes - 1}] or {self.null_class_label} (null)"
            )

    def _conditioning(
        self,
        timestep: torch.Tensor,
        class_labels: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        pooled_text_embeds: torch.Tensor | None,
        batch_size: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> adaLN conditioning (B, D), projected text states (B, L, D), cross-attention bias (B, 1, L).

        Inputs are checked by `_check_conditions` first.
        """
        timestep = timestep.reshape(-1).expand(batch_size)
        conditioning = self.time_embed(self.time_proj(timestep).to(dtype))  # (B, D)
        if self.class_embed is not None:
            conditioning = conditioning + self.class_embed(class_labels)
        if self.caption_projection is None:
            return conditioning, None, None

        if pooled_text_embeds is None:
            # Masked mean of the token states: the sentence embedding of mean-pooling encoders (MiniLM).
            weights = (
                torch.ones_like(encoder_hidden_states[..., :1], dtype=torch.float32)
                if encoder_attention_mask is None
                else encoder_attention_mask.to(torch.float32)[..., None]
            )  # (B, L, 1)
            pooled_text_embeds = (encoder_hidden_states.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        conditioning = conditioning + self.pooled_text_proj(pooled_text_embeds.to(dtype))
        context = self.caption_projection(encoder_hidden_states.to(dtype))  # (B, L, D)
        bias = None
        if encoder_attention_mask is not None:
            # An additive bias rather than a boolean mask: a fully padded row then attends uniformly
            # instead of producing NaN.
            bias = ((1 - encoder_attention_mask.to(dtype)) * -10000.0)[:, None, :]  # (B, 1, L)
        return conditioning, context, bias

    # ------------------------------------------------------------------ forward

    def _check_latents(self, structure: torch.Tensor, dynamics: torch.Tensor) -> None:
        if (
            structure.ndim != 5
            or dynamics.ndim != 4
            or tuple(structure.shape[1:]) != self.structure_shape
            or tuple(dynamics.shape[1:]) != self.dynamics_shape
            or structure.shape[0] != dynamics.shape[0]
        ):
            raise ValueError(
                f"expected structure (B, {', '.join(map(str, self.structure_shape))}) and dynamics "
                f"(B, {', '.join(map(str, self.dynamics_shape))}) with the same B, got {tuple(structure.shape)} and "
                f"{tuple(dynamics.shape)}; the model's latent shapes come from its config"
            )

    def _check_context(
        self,
        batch_size: int,
        context_structure: torch.Tensor | None,
        context_dynamics: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> None:
        """Raise a ValueError naming the context input that does not fit this model (shapes only: compile-safe)."""
        if context_structure is None and context_dynamics is None:
            if context_mask is not None:
                raise ValueError("context_mask was given without context: pass context_structure and context_dynamics too")
            return
        limit = self.config.num_context_chunks
        if not limit:
            raise ValueError(
                "this model has no context (num_context_chunks=0): do not pass context_structure/context_dynamics, "
                "or use a model built with num_context_chunks >= 1 (a long-video training config)"
            )
        if context_structure is None or context_dynamics is None:
            raise ValueError("pass context_structure and context_dynamics together (the clean latents of the same chunks)")
        s_shape, d_shape = tuple(context_structure.shape), tuple(context_dynamics.shape)
        if (
            len(s_shape) != 6 or len(d_shape) != 5 or s_shape[2:] != self.structure_shape
            or d_shape[2:] != self.dynamics_shape or s_shape[:2] != d_shape[:2] or s_shape[0] != batch_size
        ):
            raise ValueError(
                f"context latents must be structure ({batch_size}, K, {', '.join(map(str, self.structure_shape))}) and "
                f"dynamics ({batch_size}, K, {', '.join(map(str, self.dynamics_shape))}): the clean normalised latents "
                f"of the K previous chunks, oldest first; got {s_shape} and {d_shape}"
            )
        if not 1 <= s_shape[1] <= limit:
            raise ValueError(
                f"got K={s_shape[1]} context chunks, this model takes 1 to num_context_chunks={limit}: pass the "
                f"{limit} most recent chunks (oldest first)"
            )
        if context_mask is not None and (
            context_mask.dtype != torch.bool or tuple(context_mask.shape) not in ((batch_size,), (batch_size, s_shape[1]))
        ):
            raise ValueError(
                f"context_mask must be bool of shape ({batch_size},) (False: this sample has no context) or "
                f"({batch_size}, {s_shape[1]}) (per chunk), got {context_mask.dtype} {tuple(context_mask.shape)}"
            )

    def _embed_tokens(self, structure: torch.Tensor, dynamics: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Latents (B', d_S, n_q, h_S, w_S), (B', d_D, t, w_D + h_D) -> tokens (B', N, D) with positions and parts."""
        structure_tokens, width_tokens, height_tokens = self.patchify_latents(structure.to(dtype), dynamics.to(dtype))
        hidden_states = torch.cat(
            [
                self.structure_embed(structure_tokens),
                self.dynamics_embed(width_tokens),
                self.dynamics_embed(height_tokens),
            ],
            dim=1,
        )  # (B', N, D)
        return hidden_states + (self.pos_embed + self.part_embed[self.part_ids]).to(dtype)

    def _embed_context(
        self,
        context_structure: torch.Tensor,
        context_dynamics: torch.Tensor,
        context_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> context tokens (B, K * N, D), oldest chunk first, and the self-attention key mask (B, 1, N + K * N)
        (None when every sample has all its context)."""
        batch_size, k = context_structure.shape[:2]
        tokens = self._embed_tokens(context_structure.flatten(0, 1), context_dynamics.flatten(0, 1), dtype)
        tokens = tokens.unflatten(0, (batch_size, k))  # (B, K, N, D)
        # Chunk i of K (oldest first) lies K - i chunks back: row K - 1 - i of the "chunk -j" table.
        chunk_embed = self.context_chunk_embed[:k].flip(0).to(dtype)  # (K, D)
        tokens = (tokens + chunk_embed[None, :, None]).flatten(1, 2)  # (B, K * N, D)
        if context_mask is None:
            return tokens, None
        present = context_mask.to(tokens.device)
        present = present[:, None].expand(batch_size, k) if present.ndim == 1 else present  # (B, K)
        keys = torch.cat(
            [present.new_ones(batch_size, self.num_tokens), present.repeat_interleave(self.num_tokens, dim=1)], dim=1
        )  # (B, N + K * N): the noisy chunk's own tokens are always visible
        return tokens, keys[:, None]

    def forward(
        self,
        structure: torch.Tensor,
        dynamics: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
        context_structure: torch.Tensor | None = None,
        context_dynamics: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> VidTwinTransformerOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            structure: noisy normalised structure latent (B, d_S, n_q, h_S, w_S).
            dynamics: noisy normalised dynamics latent (B, d_D, t, w_D + h_D).
            timestep: scalar or (B,), in [0, 1000] (rectified flow: sigma * 1000; DDPM: the integer step).
            class_labels: (B,) integers in [0, num_classes - 1], or `null_class_label` for "no class".
                Required exactly when num_classes > 0.
            encoder_hidden_states: (B, L, text_embed_dim) text-encoder states; required exactly when the
                model has text conditioning (use the empty prompt's encoding for unconditional samples).
            encoder_attention_mask: (B, L), 1 for tokens to attend to, 0 for padding.
            pooled_text_embeds: (B, pooled_text_embed_dim); if None, the masked mean of encoder_hidden_states.
            context_structure: (B, K, d_S, n_q, h_S, w_S), the clean normalised structure latents of the K chunks
                before this one, oldest first, 1 <= K <= num_context_chunks (the K most recent when more exist).
                None: no context (a first chunk; also the only choice for num_context_chunks=0).
            context_dynamics: (B, K, d_D, t, w_D + h_D), the same chunks' dynamics latents.
            context_mask: (B,) bool, False where a sample has no context (its context tokens are masked out of the
                attention, which gives the output of a call without context: context dropout in training), or
                (B, K) per chunk (a sample with a shorter history than K). None: all context present.
            return_dict: return a `VidTwinTransformerOutput` rather than a tuple.

        Returns:
            `VidTwinTransformerOutput` with `structure` and `dynamics` predictions of the input shapes.
        """
        self._check_latents(structure, dynamics)
        batch_size, device = structure.shape[0], structure.device
        timestep = torch.as_tensor(timestep, device=device)
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=device)
        self._check_conditions(
            batch_size, timestep, class_labels, encoder_hidden_states, encoder_attention_mask, pooled_text_embeds
        )
        self._check_context(batch_size, context_structure, context_dynamics, context_mask)
        # The compute dtype, read from a raw parameter: under `enable_layerwise_casting` the Linear weights
        # are stored in the (fp8) storage dtype, while raw parameters stay in the dtype the model was cast to.
        dtype = self.part_embed.dtype
        conditioning, context, context_bias = self._conditioning(
            timestep, class_labels, encoder_hidden_states, encoder_attention_mask, pooled_text_embeds, batch_size, dtype
        )

        hidden_states = self._embed_tokens(structure, dynamics, dtype)  # (B, N, D)
        key_mask = None
        if context_structure is not None:
            context_tokens, key_mask = self._embed_context(context_structure, context_dynamics, context_mask, dtype)
            hidden_states = torch.cat([hidden_states, context_tokens], dim=1)  # (B, N + K * N, D)

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, conditioning, context, context_bias, key_mask
                )
            else:
                hidden_states = block(hidden_states, conditioning, context, context_bias, key_mask)

        # Only the noisy chunk's tokens are predicted; the context tokens were read, not generated.
        hidden_states = self.norm_out(hidden_states[:, : self.num_tokens], conditioning)
        structure_tokens, width_tokens, height_tokens = hidden_states.split(self.token_counts, dim=1)
        structure, dynamics = self.unpatchify_latents(
            self.structure_proj_out(structure_tokens),
            self.dynamics_proj_out(width_tokens),
            self.dynamics_proj_out(height_tokens),
        )
        if not return_dict:
            return structure, dynamics
        return VidTwinTransformerOutput(structure=structure, dynamics=dynamics)
