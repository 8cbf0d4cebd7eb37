# Copyright 2026 The vidtwin-gen authors. MIT License.
"""VidTwin: a video autoencoder with decoupled structure and dynamics latents.

Wang et al., "VidTwin: Video VAE with Decoupled Structure and Dynamics", CVPR 2025 (arXiv 2412.17726).
Written from the paper and from reading the MIT-licensed reference code (microsoft/VidTok, folder
`vidtwin/`); `vidtwin_gen.convert` maps the released checkpoint onto this module.

Data flow, for one clip of T frames, H x W pixels, patch p (token grid t x h x w = T/p_t x H/p x W/p):

    video (B, 3, T, H, W)
      -> patch_embed, encoder (spatio-temporal transformer)       z   (B, D, t, h, w)
      -> structure_encoder (temporal Q-Former + strided convs)    z_S (B, d_S, n_q, h_S, w_S)
      -> dynamics_encoder  (strided convs + spatial averaging)    z_D (B, d_D, t, w_D + h_D)
    z_S -> structure_decoder -> u_S;  z_D -> dynamics_decoder -> u_D^w + u_D^h   each (B, D, t, h, w)
      -> decoder (spatio-temporal transformer) -> head -> video (B, 3, T, H, W), no output activation

The packed joint latent is `cat(z_S.flatten(1), z_D.flatten(1))`, shape (B, N).
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
# diffusers' pipeline loader finds a component's loading method by looking `ModelMixin` up in the module
# that defines the component: it must be importable from here by name.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from einops import rearrange

from .config_checks import check_float, check_int, check_sizes, halvings_to_one, raise_if_any
from .hub import VidTwinModelMixin

DECODE_PARTS = (None, "structure", "dynamics")

# Named configurations. "released" is microsoft/vidtwin's checkpoint
# (vidtwin_structure_7_7_8_dynamics_7_8), "paper" the 0.20 % model of the paper's headline
# numbers, "tiny" a CPU size equal to the reference fixture's configuration.
VIDTWIN_PRESETS = {
    "released": {},
    "paper": {"structure_channels": 4},
    "tiny": {
        "sample_size": 32,
        "num_frames": 8,
        "patch_size": 8,
        "hidden_size": 64,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "num_attention_heads": 4,
        "num_queries": 8,
        "query_dim": 32,
        "structure_channels": 4,
        "structure_base_channels": 32,
        "dynamics_channels": 4,
    },
}


def _halve(size: int, times: int) -> int:
    """Output size of `times` 3x3 convolutions with stride 2 and padding 1."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


def sincos_1d(dim: int, length: int) -> torch.Tensor:
    """(length, dim) fixed embedding laid out [sin(pos * w_k) ..., cos(pos * w_k) ...]."""
    return get_1d_sincos_pos_embed_from_grid(dim, torch.arange(length, dtype=torch.float64), output_type="pt")


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """(height * width, dim), tokens row-major; the first half of the channels encodes the column."""
    columns = sincos_1d(dim // 2, width).repeat(height, 1)
    rows = sincos_1d(dim // 2, height).repeat_interleave(width, dim=0)
    return torch.cat([columns, rows], dim=1)


class DiagonalGaussian(DiagonalGaussianDistribution):
    """A diagonal Gaussian over latents of any rank.

    diffusers' `kl()` sums over dims 1-3 only, which is wrong for VidTwin's 4-D and 5-D latents; this
    one sums over every non-batch axis, giving one KL per sample.
    """

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        dims = list(range(1, self.mean.ndim))
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )


@dataclass
class VidTwinEncoderOutput(BaseOutput):
    """
    Args:
        latent_dist: posterior over the packed joint latent, (B, N).
        structure_dist: posterior over z_S, (B, d_S, n_q, h_S, w_S).
        dynamics_dist: posterior over z_D, (B, d_D, t, w_D + h_D); the height-averaged branch (indexed
            by width) first, then the width-averaged one (indexed by height).
    """

    latent_dist: DiagonalGaussian
    structure_dist: DiagonalGaussian
    dynamics_dist: DiagonalGaussian


@dataclass
class VidTwinDecoderOutput(DecoderOutput):
    """`DecoderOutput` of `forward`, plus the posterior it decoded from (training needs its KL).

    Args:
        sample: the reconstruction (B, C, T, H, W).
        latent_dist: posterior over the packed joint latent, (B, N).
    """

    latent_dist: DiagonalGaussian | None = None


# ----------------------------------------------------------------------------------------------
# Spatio-temporal transformer (encoder and decoder backbone)
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        n, length, dim = x.shape  # (N, L, D)
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (N, heads, L, D / heads)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class SpatioTemporalBlock(nn.Module):
    """PixArt/STDiT-style block without a conditioning input.

    Spatial attention over the tokens of a frame, then causal temporal attention over the frames at
    each grid cell (applied to the residual stream itself, gated by the same gate), then an MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, temporal_causal: bool = True):
        super().__init__()
        self.temporal_causal = temporal_causal
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.attn_temporal = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # rows: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, temporal_pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        b, t, s, d = x.shape  # (B, t, h*w, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.scale_shift_table.unbind(0)

        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn(h.reshape(b * t, s, d)).view(b, t, s, d)

        # The temporal branch sees the raw stream: no norm, no modulation (the original's design).
        h = x if temporal_pos_embed is None else x + temporal_pos_embed[:, None]
        h = h.transpose(1, 2).reshape(b * s, t, d)
        x = x + gate_msa * self.attn_temporal(h, is_causal=self.temporal_causal).view(b, s, t, d).transpose(1, 2)

        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)


class SpatioTemporalTransformer(nn.Module):
    """A stack of `SpatioTemporalBlock`s on a (t, h, w) token grid with fixed sin-cos positions.

    The 2-D position embedding is added to every token on entry; the 1-D temporal one only to the
    temporal-attention input of the first block.
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, mlp_ratio: float, grid_size: tuple[int, int, int], temporal_causal: bool
    ):
        super().__init__()
        t, h, w = grid_size
        self.blocks = nn.ModuleList(
            [SpatioTemporalBlock(dim, num_heads, mlp_ratio, temporal_causal) for _ in range(depth)]
        )
        self.register_buffer("pos_embed", sincos_2d(dim, h, w).float(), persistent=False)  # (h*w, D)
        self.register_buffer("temporal_pos_embed", sincos_1d(dim, t).float(), persistent=False)  # (t, D)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t, h, w = x.shape  # (B, D, t, h, w)
        # Buffers are cast at use: from_pretrained(dtype=...) converts parameters only.
        x = x.flatten(3).permute(0, 2, 3, 1) + self.pos_embed.to(x.dtype)  # (B, t, h*w, D)
        for index, block in enumerate(self.blocks):
            temporal_pos_embed = self.temporal_pos_embed.to(x.dtype) if index == 0 else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, temporal_pos_embed)
            else:
                x = block(x, temporal_pos_embed)
        return x.permute(0, 3, 1, 2).reshape(b, d, t, h, w)


class PatchHead(nn.Module):
    """Modulated non-affine LayerNorm and a Linear to one patch of pixels per token."""

    def __init__(self, dim: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)  # rows: shift, scale
        self.linear = nn.Linear(dim, patch_volume * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift, scale = self.scale_shift_table.unbind(0)
        return self.linear(self.norm(x) * (1 + scale) + shift)


# ----------------------------------------------------------------------------------------------
# Structure path: temporal Q-Former + spatial downsampling
# ----------------------------------------------------------------------------------------------


class QFormerAttention(nn.Module):
    """BERT attention with its post-LN output: LayerNorm(x + Dropout(Linear(attention(x, context))))."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, dropout: float, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(context_dim, dim)
        self.value = nn.Linear(context_dim, dim)
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, use_dropout: bool = False) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (
            rearrange(proj(inp), "n l (heads d) -> n heads l d", heads=self.num_heads)
            for proj, inp in ((self.query, x), (self.key, context), (self.value, context))
        )
        p = self.dropout if use_dropout and self.training else 0.0
        out = rearrange(F.scaled_dot_product_attention(q, k, v, dropout_p=p), "n heads l d -> n l (heads d)")
        return self.norm(x + F.dropout(self.dense(out), p, p > 0))


class QFormerLayer(nn.Module):
    def __init__(
        self, dim, context_dim, num_heads, intermediate_size, dropout, eps, has_cross_attention: bool
    ):
        super().__init__()
        self.dropout = dropout
        self.self_attention = QFormerAttention(dim, dim, num_heads, dropout, eps)
        self.cross_attention = (
            QFormerAttention(dim, context_dim, num_heads, dropout, eps) if has_cross_attention else None
        )
        self.ffn_in = nn.Linear(dim, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, use_dropout: bool = False) -> torch.Tensor:
        x = self.self_attention(x, use_dropout=use_dropout)
        if self.cross_attention is not None:
            x = self.cross_attention(x, context, use_dropout=use_dropout)
        p = self.dropout if use_dropout and self.training else 0.0
        return self.ffn_norm(x + F.dropout(self.ffn_out(F.gelu(self.ffn_in(x))), p, p > 0))


class TemporalQFormer(nn.Module):
    """BLIP-2-style Q-Former: n_q learned queries cross-attend to the T frame tokens of one grid cell."""

    def __init__(
        self,
        num_queries: int,
        dim: int,
        context_dim: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        cross_attention_frequency: int,
        dropout: float,
        eps: float = 1e-12,
    ):
        super().__init__()
        self.dropout = dropout
        self.queries = nn.Parameter(torch.randn(num_queries, dim))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(
            [
                QFormerLayer(
                    dim, context_dim, num_heads, intermediate_size, dropout, eps,
                    has_cross_attention=index % cross_attention_frequency == 0,
                )
                for index in range(num_layers)
            ]
        )

    def forward(self, context: torch.Tensor, use_dropout: bool = False) -> torch.Tensor:
        """context (N, T, D) -> (N, n_q, d_q). Dropout acts only with `use_dropout` in train mode (see the model)."""
        x = self.norm(self.queries).expand(context.shape[0], -1, -1)
        p = self.dropout if use_dropout and self.training else 0.0
        x = F.dropout(x, p, p > 0)
        for layer in self.layers:
            x = layer(x, context, use_dropout)
        return x


class StructureEncoder(nn.Module):
    """Encoder tokens (B, D, t, h, w) -> structure moments (B, 2 d_S, n_q, h_S, w_S)."""

    def __init__(self, query_dim, base_channels, num_down_blocks, latent_channels, qformer: TemporalQFormer):
        super().__init__()
        self.qformer = qformer
        self.conv_in = nn.Conv2d(query_dim, base_channels, 3, padding=1)
        layers, channels = [], base_channels
        for _ in range(num_down_blocks):
            layers += [nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU()]
            channels *= 2
        self.down_blocks = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, use_dropout: bool = False) -> torch.Tensor:
        b, d, t, h, w = z.shape
        # Space folds into the batch: the Q-Former summarises time at each grid cell.
        queries = self.qformer(rearrange(z, "b d t h w -> (b h w) t d"), use_dropout)  # (B*h*w, n_q, d_q)
        n_q = queries.shape[1]
        x = rearrange(queries, "(b h w) q c -> (b q) c h w", b=b, h=h, w=w)
        moments = self.conv_out(self.down_blocks(self.conv_in(x)))  # (B*n_q, 2 d_S, h_S, w_S)
        return rearrange(moments, "(b q) c hs ws -> b c q hs ws", q=n_q)


STRUCTURE_TIME_PROFILES = ("learned", "linear")


class LinearTimeProfiles(nn.Module):
    """(N, n_q, D) -> (N, t, D): the n_q queries as anchors spread evenly over the t frames (the first and the last
    included), linearly interpolated between. A fixed stand-in for the original's learned kernel-1 Conv1d: the
    structure then follows no motion faster than the anchors' spacing, which leaves fast motion to the dynamics."""

    def __init__(self, num_queries: int, num_frames: int):
        super().__init__()
        if num_queries == 1:
            weight = torch.ones(num_frames, 1)
        else:
            anchors = torch.linspace(0, num_frames - 1, num_queries)
            spacing = (num_frames - 1) / (num_queries - 1)
            weight = (1 - (torch.arange(num_frames)[:, None] - anchors[None]).abs() / spacing).clamp(min=0)
        self.register_buffer("weight", weight, persistent=False)  # (t, n_q), from the config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tq,nqd->ntd", self.weight.to(x.dtype), x)


class StructureDecoder(nn.Module):
    """z_S (B, d_S, n_q, h_S, w_S) -> u_S (B, D, t, h, w)."""

    def __init__(self, latent_channels, base_channels, num_up_blocks, query_dim, num_queries, hidden_size, grid_size,
                 time_profiles: str = "learned"):
        super().__init__()
        self.grid_size = grid_size
        channels = base_channels * 2**num_up_blocks
        self.conv_in = nn.Sequential(nn.Conv2d(latent_channels, channels, 3, padding=1), nn.ReLU())
        layers = []
        for _ in range(num_up_blocks):
            layers += [
                nn.Conv2d(channels, channels // 2, 3, padding=1),
                nn.ReLU(),
                nn.Upsample(scale_factor=2, mode="nearest"),
            ]
            channels //= 2
        self.up_blocks = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(channels, query_dim, 3, padding=1)
        # On (N, n_q, d_q): the Linear acts on the last axis, the kernel-1 Conv1d treats the query axis
        # as channels and maps the n_q queries to the t frames (or, "linear", a fixed interpolation does).
        t = grid_size[0]
        to_time = nn.Conv1d(num_queries, t, 1) if time_profiles == "learned" else LinearTimeProfiles(num_queries, t)
        self.to_frames = nn.Sequential(nn.Linear(query_dim, hidden_size), nn.ReLU(), to_time, nn.ReLU())

    def forward(self, z_s: torch.Tensor) -> torch.Tensor:
        b, _, n_q = z_s.shape[:3]
        t, h, w = self.grid_size
        x = self.conv_out(self.up_blocks(self.conv_in(rearrange(z_s, "b c q hs ws -> (b q) c hs ws"))))
        # Upsampling an odd grid overshoots (7 -> 4 -> 8): crop the centre back to h x w.
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        x = x[..., top : top + h, left : left + w]
        x = self.to_frames(rearrange(x, "(b q) c h w -> (b h w) q c", b=b, q=n_q))  # (B*h*w, t, D)
        return rearrange(x, "(b h w) t d -> b d t h w", b=b, h=h, w=w)


# ----------------------------------------------------------------------------------------------
# Dynamics path: per-frame downsampling + averaging over one spatial axis
# ----------------------------------------------------------------------------------------------


class DynamicsEncoder(nn.Module):
    """Encoder tokens (B, D, t, h, w) -> dynamics moments (B, 2 d_D, t, w_D + h_D)."""

    def __init__(self, hidden_size, num_down_blocks, latent_channels):
        super().__init__()
        layers = []
        for _ in range(num_down_blocks):
            layers += [nn.Conv2d(hidden_size, hidden_size, 3, stride=2, padding=1), nn.ReLU()]
        self.down_blocks = nn.Sequential(*layers)
        # One head shared by both branches; it convolves the (time x position) plane.
        self.conv_out = nn.Conv2d(hidden_size, 2 * latent_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = self.down_blocks(rearrange(z, "b d t h w -> (b t) d h w"))
        x = rearrange(x, "(b t) d h w -> b d t h w", b=b)  # (B, D, t, h_D, w_D)
        indexed_by_width = self.conv_out(x.mean(dim=3))  # (B, 2 d_D, t, w_D)
        indexed_by_height = self.conv_out(x.mean(dim=4))  # (B, 2 d_D, t, h_D)
        return torch.cat([indexed_by_width, indexed_by_height], dim=-1)


class DynamicsDecoder(nn.Module):
    """z_D (B, d_D, t, w_D + h_D) -> (u_D^w, u_D^h), each broadcast to (B, D, t, h, w)."""

    def __init__(self, latent_channels, hidden_size, grid_size, reduced_size: tuple[int, int]):
        super().__init__()
        self.grid_size = grid_size
        self.reduced_size = reduced_size  # (h_D, w_D)
        _, h, w = grid_size
        self.embed = nn.Sequential(
            nn.Linear(latent_channels, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size), nn.ReLU()
        )
        # Back to full resolution along the position axis, shared by both branches (square grids only).
        if reduced_size != (h, w):
            self.upsample = nn.Sequential(nn.Linear(reduced_size[1], w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())
        else:
            self.upsample = nn.Identity()

    def forward(self, z_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = self.grid_size
        h_d, w_d = self.reduced_size
        x = self.embed(rearrange(z_d, "b c t p -> b t p c"))  # (B, t, w_D + h_D, D)
        by_width, by_height = rearrange(x, "b t p d -> b t d p").split([w_d, h_d], dim=-1)
        by_width, by_height = self.upsample(by_width), self.upsample(by_height)  # (B, t, D, w), (B, t, D, h)
        u_w = rearrange(by_width, "b t d w -> b d t 1 w").expand(-1, -1, -1, h, -1)
        u_h = rearrange(by_height, "b t d h -> b d t h 1").expand(-1, -1, -1, -1, w)
        return u_w, u_h


# ----------------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------------


def check_autoencoder_config(
    in_channels, sample_size, num_frames, patch_size, patch_size_t, hidden_size, num_encoder_layers,
    num_decoder_layers, num_attention_heads, mlp_ratio, num_queries, query_dim, qformer_num_layers,
    qformer_num_attention_heads, qformer_intermediate_size, qformer_cross_attention_frequency, qformer_dropout,
    structure_channels, structure_base_channels, structure_down_blocks, dynamics_channels, dynamics_down_blocks,
    structure_time_profiles="learned",
) -> tuple[int, int, int]:
    """Validate every size key of an `AutoencoderVidTwin` config, reporting all problems; returns the token grid
    (t, h, w)."""
    problems = []
    frame = (sample_size, sample_size) if isinstance(sample_size, int) and not isinstance(sample_size, bool) else sample_size
    frame_ok = check_sizes(problems, "sample_size", frame, 2, "(H, W) or one int", (16384, 16384))
    frames_ok = check_int(problems, "num_frames", num_frames, 1, 4096)
    grid = None
    if frame_ok and check_int(problems, "patch_size", patch_size, 1, min(frame)):
        height, width = frame
        if height % patch_size or width % patch_size:
            problems.append(f"sample_size {height}x{width} must be divisible by patch_size {patch_size}")
        elif frames_ok and check_int(problems, "patch_size_t", patch_size_t, 1, num_frames):
            if num_frames % patch_size_t:
                problems.append(f"num_frames {num_frames} must be divisible by patch_size_t {patch_size_t}")
            else:
                grid = (num_frames // patch_size_t, height // patch_size, width // patch_size)
    if check_int(problems, "num_attention_heads", num_attention_heads, 1, 1024) and check_int(
        problems, "hidden_size", hidden_size, 4, 65536
    ):
        if hidden_size % num_attention_heads or hidden_size % 4:
            problems.append(f"hidden_size {hidden_size} must be divisible by 4 and by num_attention_heads")
    if check_int(problems, "qformer_num_attention_heads", qformer_num_attention_heads, 1, 1024) and check_int(
        problems, "query_dim", query_dim, 1, 65536
    ):
        if query_dim % qformer_num_attention_heads:
            problems.append(f"query_dim {query_dim} must be divisible by qformer_num_attention_heads")
    for name, value, high in (
        ("in_channels", in_channels, 64), ("num_encoder_layers", num_encoder_layers, 1024),
        ("num_decoder_layers", num_decoder_layers, 1024), ("num_queries", num_queries, 4096),
        ("qformer_num_layers", qformer_num_layers, 1024), ("qformer_intermediate_size", qformer_intermediate_size, 1 << 20),
        ("qformer_cross_attention_frequency", qformer_cross_attention_frequency, 1024),
        ("structure_channels", structure_channels, 4096), ("structure_base_channels", structure_base_channels, 65536),
        ("dynamics_channels", dynamics_channels, 4096),
    ):
        check_int(problems, name, value, 1, high)
    check_float(problems, "mlp_ratio", mlp_ratio, 0.0, 64.0)
    if structure_time_profiles not in STRUCTURE_TIME_PROFILES:
        problems.append(f"structure_time_profiles={structure_time_profiles!r} must be one of {STRUCTURE_TIME_PROFILES}")
    if isinstance(qformer_dropout, bool) or not isinstance(qformer_dropout, (int, float)) or not 0 <= qformer_dropout < 1:
        problems.append(f"qformer_dropout={qformer_dropout!r} is out of range: allowed [0, 1)")
    if grid is not None:
        # Each down block halves the grid and doubles the channels: past a 1x1 grid it only adds memory.
        most = halvings_to_one(max(grid[1:]))
        check_int(problems, "structure_down_blocks", structure_down_blocks, 0, most)
        if check_int(problems, "dynamics_down_blocks", dynamics_down_blocks, 0, most):
            if dynamics_down_blocks > 0 and grid[1] != grid[2]:
                problems.append(
                    "dynamics_down_blocks > 0 needs a square token grid (its position MLP is shared by both "
                    f"axes), got {grid[1]}x{grid[2]}; use a square sample_size or dynamics_down_blocks=0"
                )
    raise_if_any(problems, "AutoencoderVidTwin")
    return grid


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class AutoencoderVidTwin(VidTwinModelMixin, AutoencoderMixin, ConfigMixin):
    r"""
    VidTwin video autoencoder with a structure latent z_S and a dynamics latent z_D.

    Defaults are the released checkpoint's configuration (`microsoft/vidtwin`,
    `vidtwin_structure_7_7_8_dynamics_7_8`); `from_preset` gives the others.

    Args:
        in_channels: video channels.
        sample_size: input height and width (int or (H, W)).
        num_frames: frames per clip T; longer clips need `enable_tiling()`.
        patch_size, patch_size_t: spatial and temporal patch of the patch embedding.
        hidden_size, num_encoder_layers, num_decoder_layers, num_attention_heads, mlp_ratio: backbone.
        temporal_causal: frame t attends to frames <= t in temporal attention (the released model: True).
        num_queries, query_dim: Q-Former queries n_q and their width d_q.
        qformer_num_layers, qformer_num_attention_heads, qformer_intermediate_size,
        qformer_cross_attention_frequency, qformer_dropout: Q-Former (BLIP-2 layout).
        structure_channels: d_S. structure_base_channels: channels after the Q-Former's conv_in.
        structure_down_blocks: stride-2 convolutions on the structure path (h -> h_S).
        dynamics_channels: d_D. dynamics_down_blocks: stride-2 convolutions on the dynamics path.
        structure_time_profiles: how the structure decoder maps the n_q queries to the frames: "learned" (the
            original's kernel-1 Conv1d, n_q learned time profiles) or "linear" (not the original's: the queries
            are anchors evenly spread over the clip, linearly interpolated, so the structure cannot follow a
            motion faster than their spacing; `LinearTimeProfiles`).

    Q-Former dropout: `qformer_dropout` (0.1, the original's training recipe) acts only inside `forward` of a
    model in train mode, the path training takes. `encode` and `decode` never drop anything, so their output
    does not depend on whether `eval()` was called (diffusers' `from_pretrained` returns eval mode anyway).
    Set `qformer_dropout=0.0` to train without it.

    Attention: the spatio-temporal backbone calls `scaled_dot_product_attention` directly on a fused qkv
    projection (the layout of the original weights, which `from_single_file` and `vidtwin-gen convert` map
    one to one), so diffusers' attention processors and `set_attention_backend` do not apply to the VAE; the
    DiT (`VidTwinTransformer3DModel`) supports them.

    Validation: `encode` refuses non-float videos and floats far outside [-1, 1]; `decode` refuses latents of
    the wrong size and bad `num_frames`. The checks that read values (NaN/Inf, range) cost one host sync in
    eager mode and are skipped under `torch.compile`, which then traces encode/decode without graph breaks.

    Offloading and casting: `encode`/`decode` carry `apply_forward_hook`, so `enable_model_cpu_offload()` moves
    the VAE to the accelerator when a pipeline calls them; `enable_group_offload` and
    `enable_layerwise_casting` (after casting the model to the compute dtype) work as on diffusers' VAEs.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SpatioTemporalBlock", "QFormerLayer"]
    _repeated_blocks = ["SpatioTemporalBlock"]
    # Kept in the compute dtype under `enable_layerwise_casting`: the patch embedding, the norms and the pixel
    # head (precision-critical, as in diffusers' defaults). Raw parameters (modulation tables, Q-Former
    # queries) are never cast by layerwise casting: they stay in the dtype the model was cast to.
    _skip_layerwise_casting_patterns = ["patch_embed", "norm", "^head"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_size: int | tuple[int, int] = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        patch_size_t: int = 1,
        hidden_size: int = 768,
        num_encoder_layers: int = 16,
        num_decoder_layers: int = 16,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        temporal_causal: bool = True,
        num_queries: int = 16,
        query_dim: int = 64,
        qformer_num_layers: int = 6,
        qformer_num_attention_heads: int = 8,
        qformer_intermediate_size: int = 768,
        qformer_cross_attention_frequency: int = 2,
        qformer_dropout: float = 0.1,
        structure_channels: int = 8,
        structure_base_channels: int = 128,
        structure_down_blocks: int = 1,
        dynamics_channels: int = 8,
        dynamics_down_blocks: int = 1,
        structure_time_profiles: str = "learned",
    ):
        super().__init__()
        grid_size = check_autoencoder_config(
            in_channels, sample_size, num_frames, patch_size, patch_size_t, hidden_size, num_encoder_layers,
            num_decoder_layers, num_attention_heads, mlp_ratio, num_queries, query_dim, qformer_num_layers,
            qformer_num_attention_heads, qformer_intermediate_size, qformer_cross_attention_frequency,
            qformer_dropout, structure_channels, structure_base_channels, structure_down_blocks,
            dynamics_channels, dynamics_down_blocks, structure_time_profiles,
        )
        self.grid_size = grid_size
        self.structure_grid = (_halve(grid_size[1], structure_down_blocks), _halve(grid_size[2], structure_down_blocks))
        self.dynamics_grid = (_halve(grid_size[1], dynamics_down_blocks), _halve(grid_size[2], dynamics_down_blocks))

        self.patch_embed = nn.Conv3d(
            in_channels, hidden_size, kernel_size=(patch_size_t, patch_size, patch_size),
            stride=(patch_size_t, patch_size, patch_size),
        )
        self.encoder = SpatioTemporalTransformer(
            hidden_size, num_encoder_layers, num_attention_heads, mlp_ratio, grid_size, temporal_causal
        )
        qformer = TemporalQFormer(
            num_queries, query_dim, hidden_size, qformer_num_layers, qformer_num_attention_heads,
            qformer_intermediate_size, qformer_cross_attention_frequency, qformer_dropout,
        )
        self.structure_encoder = StructureEncoder(
            query_dim, structure_base_channels, structure_down_blocks, structure_channels, qformer
        )
        self.dynamics_encoder = DynamicsEncoder(hidden_size, dynamics_down_blocks, dynamics_channels)
        self.structure_decoder = StructureDecoder(
            structure_channels, structure_base_channels, structure_down_blocks, query_dim, num_queries,
            hidden_size, grid_size, structure_time_profiles,
        )
        self.dynamics_decoder = DynamicsDecoder(dynamics_channels, hidden_size, grid_size, self.dynamics_grid)
        self.decoder = SpatioTemporalTransformer(
            hidden_size, num_decoder_layers, num_attention_heads, mlp_ratio, grid_size, temporal_causal
        )
        self.head = PatchHead(hidden_size, patch_size_t * patch_size * patch_size, in_channels)

        self.use_slicing = False
        self.use_tiling = False
        self._init_weights()

    def _init_weights(self):
        # The original's scheme: Xavier for the transformers' Linears and the patch embedding, zero
        # temporal-attention output projections, BERT's N(0, 0.02) inside the Q-Former; the head and
        # the conv/MLP latent heads keep PyTorch's defaults.
        for transformer in (self.encoder, self.decoder):
            for module in transformer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            for block in transformer.blocks:
                nn.init.zeros_(block.attn_temporal.proj.weight)
                nn.init.zeros_(block.attn_temporal.proj.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for module in self.structure_encoder.qformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AutoencoderVidTwin":
        """Build a randomly initialised model from a named configuration: one of `VIDTWIN_PRESETS`."""
        if name not in VIDTWIN_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(VIDTWIN_PRESETS)}")
        return cls(**{**VIDTWIN_PRESETS[name], **overrides})

    @classmethod
    def from_single_file(
        cls, pretrained_model_link_or_path: str | os.PathLike, original_config: str | os.PathLike | dict, **kwargs
    ) -> "AutoencoderVidTwin":
        """Load an original VidTwin checkpoint (microsoft/VidTok `vidtwin/`), diffusers' single-file idiom.

        Args:
            pretrained_model_link_or_path: a local Lightning `.ckpt`, torch state dict or `.safetensors` file of
                the original model. Nothing is downloaded, and pickles are read with `weights_only=True`
                (Lightning/OmegaConf metadata becomes inert placeholders; anything else is refused).
            original_config: the YAML the checkpoint was trained with (its `model:` section), a JSON file of
                that section, or the section as a dict.
            dtype: optional torch dtype of the returned model (default float32).

        Returns:
            the model in eval mode, equal to what `vidtwin-gen convert` writes for the same files.
        """
        # Imported here: original_checkpoint builds this class, so a module-level import would be circular.
        from .original_checkpoint import load_original_vidtwin

        unknown = set(kwargs) - {"dtype", "torch_dtype"}
        if unknown:
            raise TypeError(f"from_single_file got unsupported argument(s) {sorted(unknown)}: only dtype is supported")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype")) or torch.float32
        return load_original_vidtwin(original_config, pretrained_model_link_or_path, dtype=dtype).model

    def model_card_facts(self) -> dict:
        """What `save_pretrained`'s README.md states about this model (see `vidtwin_gen.models.hub`)."""
        c, t, h, w = self.sample_shape
        return {
            "title": "VidTwin autoencoder",
            "summary": "A video autoencoder with decoupled structure and dynamics latents (Wang et al., CVPR 2025), "
            "as the diffusers model `vidtwin_gen.AutoencoderVidTwin`.",
            "tags": ["video", "autoencoder", "vidtwin"],
            # Reconstruction, partial decoding and cross-reenactment all map videos to videos.
            "pipeline_tag": "video-to-video",
            "rows": [
                ("input", f"{t} frames x {h}x{w}, {c} channels, values in [-1, 1]"),
                ("structure latent z_S", f"{self.structure_latent_shape} (d_S, n_q, h_S, w_S)"),
                ("dynamics latent z_D", f"{self.dynamics_latent_shape} (d_D, t, w_D + h_D)"),
                ("latent numbers per clip", f"{self.latent_size:,}"),
                ("compression rate", f"{100 * self.compression_rate:.3f} % of the input"),
            ],
            "usage": f"""
import torch
from vidtwin_gen import AutoencoderVidTwin
vae = AutoencoderVidTwin.from_pretrained("path/to/this/folder")
video = torch.rand(1, {c}, {t}, {h}, {w}) * 2 - 1          # (B, C, T, H, W) in [-1, 1]
z = vae.encode(video).latent_dist.mode()                # (B, {self.latent_size}) packed z_S + z_D
recon = vae.decode(z).sample                            # (B, C, T, H, W)
""",
        }

    # ------------------------------------------------------------------ latent geometry

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        p, pt = self.config.patch_size, self.config.patch_size_t
        t, h, w = self.grid_size
        return (self.config.in_channels, t * pt, h * p, w * p)

    @property
    def structure_latent_shape(self) -> tuple[int, int, int, int]:
        """(d_S, n_q, h_S, w_S) of one T-frame chunk."""
        return (self.config.structure_channels, self.config.num_queries, *self.structure_grid)

    @property
    def dynamics_latent_shape(self) -> tuple[int, int, int]:
        """(d_D, t, w_D + h_D) of one T-frame chunk."""
        h_d, w_d = self.dynamics_grid
        return (self.config.dynamics_channels, self.grid_size[0], w_d + h_d)

    @property
    def latent_size(self) -> int:
        """Scalars in the packed joint latent of one T-frame chunk."""
        s, d = self.structure_latent_shape, self.dynamics_latent_shape
        return s[0] * s[1] * s[2] * s[3] + d[0] * d[1] * d[2]

    @property
    def compression_rate(self) -> float:
        """Latent scalars / input scalars (the paper's 0.20 % is 0.0020)."""
        c, t, h, w = self.sample_shape
        return self.latent_size / (c * t * h * w)

    def pack_latents(self, structure: torch.Tensor, dynamics: torch.Tensor) -> torch.Tensor:
        """(B, d_S, n_q*K, h_S, w_S) and (B, d_D, t*K, w_D + h_D) -> packed (B, N) for K chunks."""
        if structure.shape[0] != dynamics.shape[0]:
            raise ValueError(f"batch sizes differ: structure {tuple(structure.shape)}, dynamics {tuple(dynamics.shape)}")
        d_s, n_q, h_s, w_s = self.structure_latent_shape
        d_d, t, p = self.dynamics_latent_shape
        chunks = structure.shape[2] // n_q if structure.ndim == 5 else 0
        if (
            structure.ndim != 5
            or dynamics.ndim != 4
            or chunks < 1
            or tuple(structure.shape[1:]) != (d_s, chunks * n_q, h_s, w_s)
            or tuple(dynamics.shape[1:]) != (d_d, chunks * t, p)
        ):
            raise ValueError(
                f"expected structure (B, {d_s}, {n_q}*K, {h_s}, {w_s}) and dynamics (B, {d_d}, {t}*K, {p}) "
                f"with the same K, got {tuple(structure.shape)} and {tuple(dynamics.shape)}"
            )
        return torch.cat([structure.flatten(1), dynamics.flatten(1)], dim=1)

    def unpack_latents(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed (B, N) -> structure (B, d_S, n_q*K, h_S, w_S) and dynamics (B, d_D, t*K, w_D + h_D)."""
        if z.ndim != 2 or z.shape[1] == 0 or z.shape[1] % self.latent_size:
            raise ValueError(
                f"expected a packed latent of shape (B, {self.latent_size}) (or (B, K*{self.latent_size}) for "
                f"K tiled chunks), got {tuple(z.shape)}"
            )
        chunks = z.shape[1] // self.latent_size
        d_s, n_q, h_s, w_s = self.structure_latent_shape
        d_d, t, p = self.dynamics_latent_shape
        structure, dynamics = z.split([chunks * d_s * n_q * h_s * w_s, chunks * d_d * t * p], dim=1)
        return structure.reshape(-1, d_s, chunks * n_q, h_s, w_s), dynamics.reshape(-1, d_d, chunks * t, p)

    # ------------------------------------------------------------------ encode

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype inputs are cast to. Read from a raw parameter: under `enable_layerwise_casting` the
        Linear/Conv weights sit in the storage dtype, raw parameters in the dtype the model was cast to."""
        return self.head.scale_shift_table.dtype

    def _check_video(self, video: torch.Tensor) -> None:
        c, t, h, w = self.sample_shape
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor (B, {c}, T, {h}, {w}) in [-1, 1], got {type(video).__name__}")
        if not video.is_floating_point():
            raise TypeError(
                f"video must be a floating-point tensor with values in [-1, 1], got dtype {video.dtype}; for 0..255 "
                "pixels use video.float() / 127.5 - 1"
            )
        if video.ndim != 5:
            raise ValueError(f"expected a video of shape (B, {c}, T, {h}, {w}), got shape {tuple(video.shape)}")
        if video.shape[0] < 1:
            raise ValueError(f"expected at least one clip in the batch, got shape {tuple(video.shape)}")
        if video.shape[1] != c:
            raise ValueError(f"expected {c} channels at dim 1 of (B, C, T, H, W), got shape {tuple(video.shape)}")
        if tuple(video.shape[3:]) != (h, w):
            raise ValueError(
                f"expected frames of {h}x{w} (the config's sample_size), got {video.shape[3]}x{video.shape[4]}; "
                "resize/crop the clip first"
            )
        if self.use_tiling:
            if video.shape[2] < 1:
                raise ValueError("expected at least one frame")
        elif video.shape[2] != t:
            raise ValueError(
                f"expected {t} frames (the config's num_frames), got {video.shape[2]}; call enable_tiling() to "
                f"encode longer or shorter clips as {t}-frame chunks"
            )
        if torch.compiler.is_compiling():
            return  # reading values would be a host sync and a graph break
        peak = video.detach().abs().amax().item()  # one sync covers NaN/Inf and the range
        if not math.isfinite(peak):
            raise ValueError("the video contains NaN or Inf values")
        if peak > 1.5:
            raise ValueError(
                f"video values reach {peak:.4g} in magnitude, expected [-1, 1]: this looks like 0..255 pixels: "
                "scale to [-1, 1], e.g. video / 127.5 - 1"
            )

    def _encode_chunk(self, video: torch.Tensor, qformer_dropout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(self.patch_embed(video))  # (B, D, t, h, w)
        return self.structure_encoder(z, qformer_dropout), self.dynamics_encoder(z)

    def _encode_moments(self, video: torch.Tensor, qformer_dropout: bool) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.sample_shape[1]
        if not self.use_tiling:
            return self._encode_chunk(video, qformer_dropout)
        # Consecutive T-frame chunks; the last is padded by repeating its final frame.
        moments = []
        for start in range(0, video.shape[2], frames):
            chunk = video[:, :, start : start + frames]
            if chunk.shape[2] < frames:
                pad = chunk[:, :, -1:].expand(-1, -1, frames - chunk.shape[2], -1, -1)
                chunk = torch.cat([chunk, pad], dim=2)
            moments.append(self._encode_chunk(chunk, qformer_dropout))
        structure, dynamics = zip(*moments)
        return torch.cat(structure, dim=2), torch.cat(dynamics, dim=2)

    def _posterior(self, video: torch.Tensor, qformer_dropout: bool) -> VidTwinEncoderOutput:
        """The posteriors of a checked video; the Q-Former dropout acts only if asked and in train mode."""
        video = video.to(self.compute_dtype)
        if self.use_slicing and video.shape[0] > 1:
            moments = [self._encode_moments(clip, qformer_dropout) for clip in video.split(1)]
            structure = torch.cat([m[0] for m in moments])
            dynamics = torch.cat([m[1] for m in moments])
        else:
            structure, dynamics = self._encode_moments(video, qformer_dropout)
        return self._joint_posterior(structure, dynamics)

    @staticmethod
    def _joint_posterior(structure: torch.Tensor, dynamics: torch.Tensor) -> VidTwinEncoderOutput:
        """The posteriors of structure and dynamics moments (B, 2 d_S, ...), (B, 2 d_D, ...) and their packed joint."""
        structure_dist, dynamics_dist = DiagonalGaussian(structure), DiagonalGaussian(dynamics)
        joint = torch.cat(
            [structure_dist.mean.flatten(1), dynamics_dist.mean.flatten(1),
             structure_dist.logvar.flatten(1), dynamics_dist.logvar.flatten(1)],
            dim=1,
        )
        return VidTwinEncoderOutput(DiagonalGaussian(joint), structure_dist, dynamics_dist)

    @apply_forward_hook
    def encode(self, video: torch.Tensor, return_dict: bool = True) -> VidTwinEncoderOutput | tuple:
        """Encode a clip (deterministic in train and eval mode: no Q-Former dropout here).

        Args:
            video: (B, C, T, H, W), floating point in [-1, 1]; T must be the config's `num_frames` unless
                tiling is on.

        Returns:
            `VidTwinEncoderOutput` with `latent_dist` (B, N), `structure_dist` and `dynamics_dist`.
            Use `.mode()` (the posterior mean) for inference, `.sample()` for training.
        """
        self._check_video(video)
        output = self._posterior(video, qformer_dropout=False)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ decode

    def decoder_input(self, structure: torch.Tensor, dynamics: torch.Tensor, part: str | None = None) -> torch.Tensor:
        """The decoder's token grid (B, D, t, h, w) for one chunk: u_S + u_D^w + u_D^h, or one part of it."""
        if part not in DECODE_PARTS:
            raise ValueError(f"part must be one of {DECODE_PARTS}, got {part!r}")
        if part == "dynamics":
            u_w, u_h = self.dynamics_decoder(dynamics)
            return u_w + u_h
        u_s = self.structure_decoder(structure)
        if part == "structure":
            return u_s
        u_w, u_h = self.dynamics_decoder(dynamics)
        return u_s + u_w + u_h

    def _decode_chunk(self, structure: torch.Tensor, dynamics: torch.Tensor, part: str | None) -> torch.Tensor:
        tokens = self.decoder(self.decoder_input(structure, dynamics, part))  # (B, D, t, h, w)
        pixels = self.head(tokens.permute(0, 2, 3, 4, 1))  # (B, t, h, w, p_t*p*p*C)
        p, pt = self.config.patch_size, self.config.patch_size_t
        return rearrange(pixels, "b t h w (pt ph pw c) -> b c (t pt) (h ph) (w pw)", pt=pt, ph=p, pw=p)

    def _decode(self, z: torch.Tensor, part: str | None, num_frames: int | None, blend_num_frames: int = 0) -> torch.Tensor:
        structure, dynamics = self.unpack_latents(z)
        n_q, t = self.config.num_queries, self.grid_size[0]
        # Tiled latents hold K chunks; each decodes on its own, so memory stays that of one chunk.
        chunks = [self._decode_chunk(s, d, part) for s, d in zip(structure.split(n_q, dim=2), dynamics.split(t, dim=2))]
        if blend_num_frames:
            for k in range(1, len(chunks)):
                chunks[k - 1], chunks[k] = self.blend_seam(chunks[k - 1], chunks[k], blend_num_frames)
        video = torch.cat(chunks, dim=2)
        return video if num_frames is None else video[:, :, :num_frames]

    def _check_blend_num_frames(self, blend_num_frames: int) -> None:
        half = self.sample_shape[1] // 2
        if isinstance(blend_num_frames, bool) or not isinstance(blend_num_frames, int) or not 1 <= blend_num_frames <= half:
            raise ValueError(f"blend_num_frames must be an integer in [1, {half}] (half a chunk), got {blend_num_frames!r}")

    def blend_seam(self, before: torch.Tensor, after: torch.Tensor, blend_num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hide the seam between two consecutive decoded chunks `before`, `after` (B, C, T, H, W).

        Decoded chunk by chunk, each chunk's reconstruction error is independent of its neighbour's, so frames jump
        at the boundary even for the latents of a real clip (on the embedded set, ~3x the change between
        consecutive frames inside a chunk). The T frames straddling the seam (the last T/2 of `before`, the first
        T/2 of `after`) are encoded and decoded as one chunk, a reconstruction that is continuous across the seam,
        and crossfaded in over `blend_num_frames` frames (1 to T/2) on each side: weight 1 next to the seam,
        falling linearly to 0. Frames further from the seam are untouched, so the seams of a long video blend
        independently of each other. Returns the blended (before, after).
        """
        self._check_blend_num_frames(blend_num_frames)
        frames = self.sample_shape[1]
        half = frames // 2
        if before.shape != after.shape or tuple(before.shape[1:]) != self.sample_shape:
            raise ValueError(f"expected two decoded chunks of shape (B, {', '.join(map(str, self.sample_shape))}), got "
                             f"{tuple(before.shape)} and {tuple(after.shape)}")
        window = torch.cat([before[:, :, half:], after[:, :, :half]], dim=2)  # T frames, the seam after T - half
        structure, dynamics = self._encode_chunk(window)
        bridge = self._decode_chunk(DiagonalGaussian(structure).mode(), DiagonalGaussian(dynamics).mode(), None)
        distance = torch.arange(1, frames + 1, device=window.device, dtype=window.dtype)  # from the seam, 1 next to it
        weight = (1 - (distance - 1) / blend_num_frames).clamp(min=0)
        weight = torch.cat([weight[: frames - half].flip(0), weight[:half]]).view(1, 1, -1, 1, 1)
        blended = window + weight * (bridge - window)
        return (torch.cat([before[:, :, :half], blended[:, :, : frames - half]], dim=2),
                torch.cat([blended[:, :, frames - half :], after[:, :, half:]], dim=2))

    def _check_latent(self, z: torch.Tensor, part: str | None, num_frames: int | None) -> None:
        if part not in DECODE_PARTS:
            raise ValueError(f"part must be one of {DECODE_PARTS}, got {part!r}")
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor (B, {self.latent_size}), got {getattr(z, 'dtype', type(z))}")
        if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] == 0 or z.shape[1] % self.latent_size:
            raise ValueError(
                f"expected a packed latent of shape (B, {self.latent_size}) (or (B, K*{self.latent_size}) for "
                f"K tiled chunks) with B >= 1, got {tuple(z.shape)}; this VAE's latent_size is {self.latent_size}"
            )
        frames = z.shape[1] // self.latent_size * self.sample_shape[1]
        if num_frames is not None and (
            isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= frames
        ):
            raise ValueError(f"num_frames={num_frames!r} must be None or an integer in [1, {frames}] (the frames z holds)")
        if not torch.compiler.is_compiling() and not torch.isfinite(z).all():
            raise ValueError("the latent contains NaN or Inf values")

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, part: str | None = None, num_frames: int | None = None, return_dict: bool = True,
        blend_num_frames: int = 0,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode a packed joint latent.

        Args:
            z: (B, N) packed latent (`pack_latents`), or (B, K*N) from a tiled encode.
            part: None for the full reconstruction, "structure" or "dynamics" to decode one part alone.
            num_frames: trim the output to this many frames (the length of a tiled input clip), 1 to K*T.
            blend_num_frames: with K > 1 chunks, blend every seam over this many frames on each side (1 to T/2;
                see `blend_seam`); 0 (the default) decodes each chunk on its own.

        Returns:
            `DecoderOutput` whose `sample` is (B, C, T, H, W), unclamped.
        """
        self._check_latent(z, part, num_frames)
        if blend_num_frames != 0:
            self._check_blend_num_frames(blend_num_frames)
            if part is not None:
                raise ValueError("blend_num_frames re-encodes full reconstructions across seams; with part= pass 0")
        video = self._decode_batch(z.to(self.compute_dtype), part, num_frames, blend_num_frames)
        return DecoderOutput(sample=video) if return_dict else (video,)

    def _decode_batch(self, z: torch.Tensor, part: str | None, num_frames: int | None, blend_num_frames: int = 0) -> torch.Tensor:
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode(zi, part, num_frames, blend_num_frames) for zi in z.split(1)])
        return self._decode(z, part, num_frames, blend_num_frames)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        part: str | None = None,
        return_dict: bool = True,
        dynamics_sample: torch.Tensor | None = None,
    ) -> VidTwinDecoderOutput | tuple[torch.Tensor]:
        """Reconstruct `sample` (B, C, T, H, W); the posterior mean unless `sample_posterior`.

        With `dynamics_sample` (same shape), the dynamics are encoded from it instead, as in `reenact`; the returned
        `latent_dist` is then the joint of `sample`'s structure and `dynamics_sample`'s dynamics (training with a
        transformed clip there, e.g. `train_vae --dynamics_colour_shuffle`).

        Training goes through here (not `encode`/`decode`) so that a DDP wrapper sees the whole computation;
        it is also the only path where the Q-Former dropout acts (in train mode).
        """
        self._check_video(sample)
        if dynamics_sample is None:
            posterior = self._posterior(sample, qformer_dropout=True).latent_dist
        else:
            if dynamics_sample.shape != sample.shape:
                raise ValueError(f"dynamics_sample must have sample's shape {tuple(sample.shape)}, got "
                                 f"{tuple(dynamics_sample.shape)}")
            self._check_video(dynamics_sample)
            # One encoder pass over both clips (one batch: what a GPU runs best); the structure of the first
            # half, the dynamics of the second.
            both = self._posterior(torch.cat([sample, dynamics_sample]), qformer_dropout=True)
            b = sample.shape[0]
            posterior = self._joint_posterior(both.structure_dist.parameters[:b],
                                              both.dynamics_dist.parameters[b:]).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        # No input checks on z here: a diverging training run must reach its loss check, not stop at the latent.
        video = self._decode_batch(z, part, sample.shape[2])
        return VidTwinDecoderOutput(sample=video, latent_dist=posterior) if return_dict else (video,)

    def reenact(self, structure_video: torch.Tensor, dynamics_video: torch.Tensor) -> DecoderOutput:
        """Cross-reenactment: the structure of `structure_video` with the dynamics of `dynamics_video`.

        Both (B, C, T, H, W) with the same shape; posterior means are used.
        """
        if structure_video.shape != dynamics_video.shape:
            raise ValueError(
                "cross-reenactment needs clips of the same shape, got "
                f"{tuple(structure_video.shape)} and {tuple(dynamics_video.shape)}"
            )
        structure = self.encode(structure_video).structure_dist.mode()
        dynamics = self.encode(dynamics_video).dynamics_dist.mode()
        return self.decode(self.pack_latents(structure, dynamics), num_frames=structure_video.shape[2])
