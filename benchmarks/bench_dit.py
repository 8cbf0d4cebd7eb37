"""Latent DiT cost per 16x224^2 clip: VidTwin joint latents under token-layout presets vs a 4x8x8 VAE under Latte.

Side by side, in one run, at the same width and the same number of transformer blocks:

  ours       VidTwinTransformer3DModel on the paper VAE's latents, structure (4, 16, 7, 7) and dynamics
             (8, 16, 14), under each token layout of LAYOUTS: a structure patch over (query, height, width)
             and a dynamics patch over (time, position). "1x1x1/1x1" (patch 1 everywhere, 1,008 tokens) is the
             model's default today.
  Latte      diffusers' LatteTransformer3DModel on a 16-channel 4x28x28 latent (a 4x8x8 VAE on 16x224^2),
             patch 2 (784 tokens, the usual setting) and patch 1 (3,136 tokens).

Both are text-conditioned with the same random text states (cross-attention in every block of ours,
in every spatial block of Latte). Latte's `num_layers` counts (spatial, temporal) block pairs, so by
default it gets depth // 2 of them: both models then run `depth` attention+MLP blocks (Latte-XL's
convention: 28 blocks = 14 spatial + 14 temporal). `--latte-layers` overrides that.

Figures per clip: tokens; forward GFLOPs (counted exactly on the meta device with
torch.utils.flop_counter, attention through SDPA's math path, so they do not depend on the machine:
a training step costs about 3 x forward); GFLOPs per video = steps x forward + one VAE decode (no
guidance: guidance doubles the forward term on both sides alike). The decodes are counted the same way:
ours is AutoencoderVidTwin.from_preset("paper"); Latte's yardstick is diffusers' AutoencoderKLWan at its
defaults (Wan 2.1's 16-channel causal 4x8x8 VAE), decoding the same 16x4x28x28 latent into 13 frames,
so its figure is a lower bound for 16. Timed (without --flops-only): forward+backward seconds of one
training step (divided by the batch size) and seconds to sample one video with `--steps` Euler steps,
plus, with --time-decode, the seconds of each VAE decode (random weights, full size). Timings on a small
or shared CPU are dominated by overheads and noise: there, trust the FLOP ratios, and time on a quiet
machine or a GPU.

    python benchmarks/bench_dit.py --flops-only                # paper size, FLOPs only: seconds on a CPU
    python benchmarks/bench_dit.py --quick                     # small width/depth, timed: a smoke run
    python benchmarks/bench_dit.py --quick --layouts 1x1x1/1x1,2x2x2/2x2   # some layouts only
    python benchmarks/bench_dit.py --device cuda --dtype bf16  # the paper size (1152 wide, 18 blocks), timed
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKLWan, LatteTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vidtwin_gen.models import AutoencoderVidTwin
from vidtwin_gen.models.transformer_vidtwin import VIDTWIN_TOKEN_LAYOUTS, VidTwinTransformer3DModel

VAE_CHANNELS, VAE_FRAMES, VAE_SIZE = 16, 4, 28  # 4x8x8 compression of 16x224^2

# Token layouts: the named presets of the model (tokens and GFLOPs at paper size in their comments).
LAYOUTS = VIDTWIN_TOKEN_LAYOUTS


class Ours:
    def __init__(self, args, layout):
        self.model = VidTwinTransformer3DModel.from_preset(
            "paper", layout=layout, hidden_size=args.width, num_layers=args.depth, num_attention_heads=args.heads,
            text_embed_dim=args.text_dim,
        )
        self.tokens = self.model.num_tokens
        self.blocks = args.depth
        self.text_length, self.text_dim = args.text_length, args.text_dim
        self.name = f"ours {layout}"
        self.vae = "ours"

    def noise(self, batch_size, device, dtype):
        return [torch.randn(batch_size, *shape, device=device, dtype=dtype)
                for shape in (self.model.structure_shape, self.model.dynamics_shape)]

    def __call__(self, latents, timestep, states):
        out = self.model(*latents, timestep, encoder_hidden_states=states)
        return [out.structure, out.dynamics]


class Latte:
    def __init__(self, args, patch):
        self.model = LatteTransformer3DModel(
            num_attention_heads=args.heads, attention_head_dim=args.width // args.heads,
            in_channels=VAE_CHANNELS, out_channels=VAE_CHANNELS, num_layers=args.latte_layers,
            cross_attention_dim=args.width, attention_bias=True, sample_size=VAE_SIZE, patch_size=patch,
            activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
            norm_eps=1e-6, caption_channels=args.text_dim, video_length=VAE_FRAMES,
        )
        self.tokens = VAE_FRAMES * (VAE_SIZE // patch) ** 2
        self.blocks = 2 * args.latte_layers
        self.text_length, self.text_dim = args.text_length, args.text_dim
        self.name = f"Latte, patch {patch}"
        self.vae = "latte"

    def noise(self, batch_size, device, dtype):
        return [torch.randn(batch_size, VAE_CHANNELS, VAE_FRAMES, VAE_SIZE, VAE_SIZE, device=device, dtype=dtype)]

    def __call__(self, latents, timestep, states):
        return [self.model(latents[0], timestep, encoder_hidden_states=states).sample]


class Decoder:
    """One VAE decode per video: ours (the paper VAE) or Latte's 4x8x8 yardstick (Wan 2.1's VAE)."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "ours":
            self.model, self.name = AutoencoderVidTwin.from_preset("paper"), "VAE decode, ours (paper)"
        else:
            self.model, self.name = AutoencoderKLWan(), "VAE decode, Wan 2.1 (4x8x8)"

    def latent(self, device, dtype):
        if self.kind == "ours":
            return torch.randn(1, self.model.latent_size, device=device, dtype=dtype)
        return torch.randn(1, VAE_CHANNELS, VAE_FRAMES, VAE_SIZE, VAE_SIZE, device=device, dtype=dtype)

    def __call__(self, z, checked=True):
        if self.kind == "ours" and not checked:
            # decode() first checks that z is finite, which meta tensors (no values) cannot answer.
            return self.model._decode(z, None, None)
        return self.model.decode(z).sample


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def count_flops(fn) -> int:
    """FLOPs of `fn()`, run under the meta device (nothing is computed) with SDPA's math path counted."""
    with torch.device("meta"), torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_decoder(kind, args, device, dtype) -> dict:
    with torch.device("meta"):
        decoder = Decoder(kind)
    row = {"name": decoder.name, "flops": count_flops(lambda: decoder(decoder.latent("meta", torch.float32), checked=False))}
    if args.time_decode and not args.flops_only:
        decoder = Decoder(kind)
        model = decoder.model.to(device, dtype).eval()
        z = decoder.latent(device, dtype)
        with torch.no_grad():
            row["decode"] = timed(lambda: decoder(z), device, 1)
        model.to("cpu")
    return row


def measure(make, args, device, dtype) -> dict:
    # Sizes and FLOPs of one forward pass for one clip, on a meta-device copy (nothing is computed).
    with torch.device("meta"):
        candidate = make()
    latents = candidate.noise(1, "meta", torch.float32)
    states = torch.empty(1, candidate.text_length, candidate.text_dim, device="meta")
    row = {
        "name": candidate.name, "tokens": candidate.tokens, "blocks": candidate.blocks, "vae": candidate.vae,
        "params": sum(p.numel() for p in candidate.model.parameters()),
        "flops": count_flops(lambda: candidate(latents, torch.full((1,), 500.0), states)),
    }
    if args.flops_only:
        return row

    candidate = make()
    model = candidate.model.to(device)
    if dtype != torch.float32:
        model.to(dtype)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    generator = torch.Generator(device).manual_seed(0)

    def text(batch_size):  # unpadded prompts: no attention mask (Latte's forward cannot take one per frame)
        return torch.randn(batch_size, args.text_length, args.text_dim, device=device, dtype=dtype, generator=generator)

    states = text(args.batch_size)
    latents = candidate.noise(args.batch_size, device, dtype)
    timestep = torch.rand(args.batch_size, device=device) * 1000

    def train_step():
        model.zero_grad(set_to_none=True)
        loss = sum(out.float().square().mean() for out in candidate(latents, timestep, states))
        loss.backward()

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds = timed(train_step, device, args.repeats) / args.batch_size
    train_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.zero_grad(set_to_none=True)

    one_states = text(1)

    @torch.no_grad()
    def sample():
        x = candidate.noise(1, device, dtype)
        for step in range(args.steps):  # rectified-flow Euler steps from sigma 1 to 0
            sigma = 1.0 - step / args.steps
            velocity = candidate(x, torch.full((1,), sigma * 1000, device=device), one_states)
            x = [xi - vi / args.steps for xi, vi in zip(x, velocity)]

    model.eval()
    sample_seconds = timed(sample, device, max(1, args.repeats // 2))
    model.to("cpu")
    row.update(train=train_seconds, sample=sample_seconds, memory=train_memory)
    return row


def print_table(rows, decoders, args, device) -> None:
    for row in rows:
        decoder = decoders[row["vae"]]
        row["video_flops"] = args.steps * row["flops"] + decoder["flops"]
        if "sample" in row:
            row["video"] = row["sample"] + decoder.get("decode", 0.0)
    yardstick = next(row for row in rows if row["name"] == "Latte, patch 2")
    for row in rows:
        row["fwd_ratio"] = yardstick["flops"] / row["flops"]
        row["video_ratio"] = yardstick["video_flops"] / row["video_flops"]
        if "video" in row:
            row["time_ratio"] = yardstick["video"] / row["video"]

    # (title, row key, scale, decimals); every column is 14 characters wide
    columns = [("tokens", "tokens", 1, 0), ("blocks", "blocks", 1, 0), ("params M", "params", 1e-6, 1),
               ("fwd GFLOP/clip", "flops", 1e-9, 1), ("GFLOP/video", "video_flops", 1e-9, 0),
               ("Latte2/x fwd", "fwd_ratio", 1, 2), ("Latte2/x video", "video_ratio", 1, 2)]
    if not args.flops_only:
        columns += [("fwd+bwd s/clip", "train", 1, 4), ("sample s/video", "video", 1, 3), ("Latte2/x time", "time_ratio", 1, 2)]
        if device.type == "cuda":
            columns.append(("train GiB", "memory", 1, 2))
    print(f"{'model':28s}" + "".join(f" {title:>14s}" for title, *_ in columns))
    for row in rows:
        cells = [f" {row[key] * scale:14.{decimals}f}" if row.get(key) is not None else f" {'-':>14s}"
                 for _, key, scale, decimals in columns]
        print(f"{row['name']:28s}" + "".join(cells))
    for decoder in decoders.values():
        timing = f", {decoder['decode']:.3f} s" if "decode" in decoder else ""
        print(f"  {decoder['name']}: {decoder['flops'] / 1e9:.1f} GFLOP per video{timing}")
    sampled = "sample s/video includes the VAE decode" if args.time_decode else "sample s/video is the denoiser only"
    print(f"GFLOP/video = {args.steps} steps x fwd + its VAE decode (full size, whatever the width); Latte2/x: Latte patch 2's figure / the row's "
          f"(above 1: the row is cheaper){'' if args.flops_only else '; ' + sampled}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_dit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--depth", type=int, default=18, help="attention+MLP blocks of our model")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--latte-layers", type=int, default=None,
                        help="Latte num_layers, each a spatial+temporal pair (default depth // 2: same block count)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated token layouts of ours (default: all of {', '.join(LAYOUTS)})")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per video")
    parser.add_argument("--batch-size", type=int, default=2, help="clips per training step")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps (sampling: half as many)")
    parser.add_argument("--text-dim", type=int, default=384, help="text-encoder width (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="width 256, depth 4, 4 heads, 5 steps, 2 repeats")
    parser.add_argument("--flops-only", action="store_true", help="count tokens, parameters and FLOPs; time nothing")
    parser.add_argument("--time-decode", action="store_true",
                        help="also time both full-size VAE decodes (a CPU takes tens of seconds for Wan's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.depth, args.heads, args.steps, args.repeats = 256, 4, 4, 5, 2
    if args.latte_layers is None:
        args.latte_layers = max(1, args.depth // 2)
    if args.width % args.heads or args.width % 16:
        parser.error("--width must be divisible by 16 and by --heads")
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown or not layouts:
        parser.error(f"--layouts: unknown {unknown}; choose from {', '.join(LAYOUTS)}")
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    timing = "" if args.flops_only else (
        f" | batch {args.batch_size} | {device.type} {args.dtype}, {torch.get_num_threads()} threads"
    )
    print(f"16x224^2 clips | width {args.width}, ours {args.depth} blocks, Latte {args.latte_layers} "
          f"spatial+temporal pairs | {args.steps} sampling steps{timing}")
    rows = [measure(lambda: Ours(args, layout), args, device, dtype) for layout in layouts]
    rows += [measure(lambda: Latte(args, patch), args, device, dtype) for patch in (2, 1)]
    decoders = {kind: measure_decoder(kind, args, device, dtype) for kind in ("ours", "latte")}
    print_table(rows, decoders, args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
