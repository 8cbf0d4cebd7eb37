"""Latent DiT cost per 16x224^2 clip: VidTwin joint latents vs a 4x8x8 video VAE under Latte.

Side by side, in one run, at the same width and the same number of transformer blocks:

  ours       VidTwinTransformer3DModel on the paper VAE's latents: structure (4, 16, 7, 7) and dynamics
             (8, 16, 14); patch 1 everywhere (the "paper" preset, 1,008 tokens) and patch 2 over space
             (structure (1, 2, 2), dynamics (1, 2): 384 tokens).
  Latte      diffusers' LatteTransformer3DModel on a 16-channel 4x28x28 latent (a 4x8x8 VAE on 16x224^2),
             patch 2 (784 tokens, the usual setting) and patch 1 (3,136 tokens).

Both are text-conditioned with the same random text states (cross-attention in every block of ours,
in every spatial block of Latte). Latte's `num_layers` counts (spatial, temporal) block pairs, so by
default it gets depth // 2 of them: both models then run `depth` attention+MLP blocks (Latte-XL's
convention: 28 blocks = 14 spatial + 14 temporal). `--latte-layers` overrides that.

Figures per clip: tokens; forward GFLOPs (counted exactly on the meta device with
torch.utils.flop_counter, attention through SDPA's math path, so they do not depend on the machine:
sampling costs steps x forward, a training step about 3 x forward); forward+backward seconds of one
training step (divided by the batch size); seconds to sample one video with `--steps` Euler steps (no
guidance; guidance doubles both sides alike). Timings on a small or shared CPU are dominated by
overheads and noise: there, trust the FLOP ratios, and time on a quiet machine or a GPU.

    python benchmarks/bench_dit.py --flops-only                # paper size, FLOPs only: seconds on a CPU
    python benchmarks/bench_dit.py --quick                     # small width/depth, timed: a smoke run
    python benchmarks/bench_dit.py --device cuda --dtype bf16  # the paper size (1152 wide, 18 blocks), timed
"""

import argparse
import statistics
import time

import torch
from diffusers import LatteTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vidtwin_gen.models.transformer_vidtwin import VidTwinTransformer3DModel

VAE_CHANNELS, VAE_FRAMES, VAE_SIZE = 16, 4, 28  # 4x8x8 compression of 16x224^2


class Ours:
    def __init__(self, args, structure_patch, dynamics_patch):
        self.model = VidTwinTransformer3DModel.from_preset(
            "paper", hidden_size=args.width, num_layers=args.depth, num_attention_heads=args.heads,
            text_embed_dim=args.text_dim, structure_patch_size=structure_patch, dynamics_patch_size=dynamics_patch,
        )
        self.tokens = self.model.num_tokens
        self.blocks = args.depth
        self.text_length, self.text_dim = args.text_length, args.text_dim
        self.name = f"ours, patch {structure_patch}/{dynamics_patch}"

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

    def noise(self, batch_size, device, dtype):
        return [torch.randn(batch_size, VAE_CHANNELS, VAE_FRAMES, VAE_SIZE, VAE_SIZE, device=device, dtype=dtype)]

    def __call__(self, latents, timestep, states):
        return [self.model(latents[0], timestep, encoder_hidden_states=states).sample]


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


def measure(make, args, device, dtype) -> dict:
    # Sizes and FLOPs of one forward pass for one clip, on a meta-device copy (nothing is computed).
    with torch.device("meta"):
        candidate = make()
        latents = candidate.noise(1, "meta", torch.float32)
        states = torch.empty(1, candidate.text_length, candidate.text_dim)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            candidate(latents, torch.full((1,), 500.0), states)
    row = {
        "name": candidate.name, "tokens": candidate.tokens, "blocks": candidate.blocks,
        "params": sum(p.numel() for p in candidate.model.parameters()), "flops": counter.get_total_flops(),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_dit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--depth", type=int, default=18, help="attention+MLP blocks of our model")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--latte-layers", type=int, default=None,
                        help="Latte num_layers, each a spatial+temporal pair (default depth // 2: same block count)")
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
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.depth, args.heads, args.steps, args.repeats = 256, 4, 4, 5, 2
    if args.latte_layers is None:
        args.latte_layers = max(1, args.depth // 2)
    if args.width % args.heads or args.width % 16:
        parser.error("--width must be divisible by 16 and by --heads")
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    timing = "" if args.flops_only else (
        f" | batch {args.batch_size}, {args.steps} sampling steps | {device.type} {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"16x224^2 clips | width {args.width}, ours {args.depth} blocks, Latte {args.latte_layers} "
          f"spatial+temporal pairs{timing}")
    ours_p1 = measure(lambda: Ours(args, (1, 1, 1), (1, 1)), args, device, dtype)
    ours_p2 = measure(lambda: Ours(args, (1, 2, 2), (1, 2)), args, device, dtype)
    latte_p2 = measure(lambda: Latte(args, 2), args, device, dtype)
    latte_p1 = measure(lambda: Latte(args, 1), args, device, dtype)

    # (title, row key, scale, decimals); every column is 14 characters wide
    columns = [("tokens", "tokens", 1, 0), ("blocks", "blocks", 1, 0), ("params M", "params", 1e-6, 1),
               ("fwd GFLOP/clip", "flops", 1e-9, 1)]
    if not args.flops_only:
        columns += [("fwd+bwd s/clip", "train", 1, 4), ("sample s/video", "sample", 1, 3)]
        if device.type == "cuda":
            columns.append(("train GiB", "memory", 1, 2))
    print(f"{'model':28s}" + "".join(f" {title:>14s}" for title, *_ in columns))
    for row in (ours_p1, ours_p2, latte_p2, latte_p1):
        cells = [f" {row[key] * scale:14.{decimals}f}" for _, key, scale, decimals in columns]
        print(f"{row['name']:28s}" + "".join(cells))

    ratios = [("tokens", "tokens"), ("fwd FLOPs", "flops")]
    if not args.flops_only:
        ratios += [("fwd+bwd s", "train"), ("sampling s", "sample")]
    print(f"{'ratios, Latte / ours (above 1: ours is cheaper)':60s}" + "".join(f" {title:>14s}" for title, _ in ratios))
    for label, latte, ours in (
        ("same patch 1", latte_p1, ours_p1),
        ("same patch 2 over space", latte_p2, ours_p2),
        ("Latte patch 2 vs our paper preset", latte_p2, ours_p1),
    ):
        label = f"  {label} ({latte['tokens']} vs {ours['tokens']} tokens)"
        print(f"{label:60s}" + "".join(f" {latte[key] / ours[key]:14.2f}" for _, key in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
