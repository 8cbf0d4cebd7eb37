"""A GPU check (<= 8 minutes on one H100/H200): speed, memory and MFU of the models at paper size, and FSDP.

    python benchmarks/gpu_check.py [--vae RELEASED_VAE_DIR] [--json gpu_check.json]
    python benchmarks/gpu_check.py --dry-run        # CPU, tiny sizes: checks the script itself; figures mean nothing

1. The released autoencoder (`--vae`: a folder from `vidtwin-gen convert`; else the "released" preset with random
   weights, which has the same speed and memory): encode + decode of 16x224^2 clips, clips/s and peak memory in
   fp32, bf16 (autocast) and bf16 under torch.compile.
2. A training step of the paper VAE recipe (train_configs/vae/paper_224.yaml: preset "paper", Adam, L1 + KL with
   the learned log-variance, the PatchGAN on, its own step; no LPIPS), bf16 autocast.
3. A training step of the paper-size DiT (`VidTwinTransformer3DModel.from_preset("paper", num_classes=101)`,
   rectified-flow loss, AdamW), bf16 autocast.
   Both report samples/s, peak memory and MFU = (FLOPs of one step, counted by torch.utils.flop_counter on the
   model's own forward + backward) x steps/s / the assumed peak (--peak-tflops, default 989: H100/H200 SXM dense
   bf16). The optimizer's FLOPs are not counted.
4. FSDP: a few steps of the paper DiT and of the paper VAE recipe (train_vae's own prepare_training and train_step:
   the PatchGAN as a second sharded model, the adaptive weight, the log-variance's own optimizer) under
   `accelerate launch --num_processes 1` with train_configs/accelerate/fsdp.yaml (FSDP2), each with the trainers'
   EMA over shards, a checkpoint written and read back (run.py / checkpointing.py), and the whole-model gather
   used by validation and the export.

Prints a table and writes JSON (--json). Without CUDA it stops at once (exit 2), unless --dry-run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidtwin_gen.models import AutoencoderVidTwin, VidTwinTransformer3DModel  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default=None, help="released AutoencoderVidTwin folder (default: random weights)")
    parser.add_argument("--json", default="gpu_check.json", help="where to write the results")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 1 step each: checks the script")
    parser.add_argument("--vae-batch", type=int, default=4, help="clips per encode/decode call")
    parser.add_argument("--vae-train-batch", type=int, default=2, help="clips per VAE training step")
    parser.add_argument("--dit-batch", type=int, default=8, help="clips per DiT training step")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per measurement (after 2 warm-up)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="assumed peak for MFU (default: H100/H200 SXM dense bf16)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--no-fsdp", action="store_true", help="skip the FSDP steps")
    parser.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)  # run by the FSDP check
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.vae_batch, args.vae_train_batch, args.dit_batch) < 1:
        parser.error(f"--steps and the batch sizes must be >= 1, got {args.steps}, {args.vae_batch}, "
                     f"{args.vae_train_batch}, {args.dit_batch}")
    if args.dry_run:
        args.steps, args.vae_batch, args.vae_train_batch, args.dit_batch = 1, 1, 1, 2
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(step, steps: int, device: torch.device, warmup: int = 2) -> tuple[float, float | None]:
    """(seconds per call of `step()`, peak memory GiB) after `warmup` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps, peak_memory_gib(device)


def count_flops(step) -> int:
    """FLOPs of one call of `step()` (forward and backward of the models in it), by torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def check_autoencoder(args, device) -> list[dict]:
    """Encode + decode clips/s and peak memory: fp32, bf16, bf16 + torch.compile."""
    if args.vae:
        vae = AutoencoderVidTwin.from_pretrained(args.vae)
    else:
        vae = AutoencoderVidTwin.from_preset("tiny" if args.dry_run else "released")
    vae = vae.to(device).eval().requires_grad_(False)
    clips = torch.rand(args.vae_batch, *vae.sample_shape, device=device) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]
    rows = []
    variants = [("fp32", None, False), ("bf16", torch.bfloat16, False)]
    if not args.no_compile and not args.dry_run:
        variants.append(("bf16 + torch.compile", torch.bfloat16, True))
    for name, dtype, compiled in variants:
        encode, decode = vae.encode, vae.decode
        if compiled:
            encode, decode = torch.compile(vae.encode), torch.compile(vae.decode)

        @torch.no_grad()
        def round_trip():
            with autocast(device, dtype):
                decode(encode(clips).latent_dist.mode()).sample

        seconds, memory = timed(round_trip, args.steps, device, warmup=3 if compiled else 2)
        rows.append({"check": f"VAE encode+decode {name}", "samples_per_s": args.vae_batch / seconds,
                     "peak_memory_gib": memory, "batch": args.vae_batch})
    return rows


def training_row(name: str, step, batch: int, args, device) -> dict:
    flops = count_flops(step)
    seconds, memory = timed(step, args.steps, device)
    return {"check": name, "samples_per_s": batch / seconds, "peak_memory_gib": memory, "batch": batch,
            "tflops_per_step": flops / 1e12, "mfu": flops / seconds / (args.peak_tflops * 1e12)}


def check_vae_training(args, device) -> dict:
    """One step of the paper VAE recipe: generator (L1 + KL + GAN, adaptive weight) then discriminator."""
    from vidtwin_gen.training.vae_loss import VidTwinLoss

    vae = AutoencoderVidTwin.from_preset("tiny" if args.dry_run else "paper").to(device).train()
    loss_fn = VidTwinLoss(disc_start=0, kl_weight=1e-3, perceptual_weight=0.0, disc_weight=0.05).to(device)
    optimizer = torch.optim.Adam([*vae.parameters(), loss_fn.logvar], lr=1.6e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    disc_optimizer = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1.6e-4, betas=(0.9, 0.99))
    video = torch.rand(args.vae_train_batch, *vae.sample_shape, device=device) * 2 - 1

    def step():
        with autocast(device, torch.bfloat16):
            output = vae(video, sample_posterior=True)
            loss, _ = loss_fn.generator_loss(video, output.sample, output.latent_dist.kl(), 1, vae.head.linear.weight)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, torch.bfloat16):
            disc_loss, _ = loss_fn.discriminator_loss(video, output.sample.detach(), 1)
        disc_loss.backward()
        disc_optimizer.step()
        disc_optimizer.zero_grad(set_to_none=True)

    return training_row("VAE train step (paper recipe) bf16", step, args.vae_train_batch, args, device)


def paper_dit(dry_run: bool) -> VidTwinTransformer3DModel:
    return VidTwinTransformer3DModel.from_preset("tiny" if dry_run else "paper", num_classes=101)


def dit_step_inputs(model: VidTwinTransformer3DModel, batch: int, device) -> tuple:
    config = model.config
    structure = torch.randn(batch, *config.structure_latent_shape, device=device)
    dynamics = torch.randn(batch, *config.dynamics_latent_shape, device=device)
    sigma = torch.rand(batch, device=device)
    labels = torch.randint(0, 101, (batch,), device=device)
    return structure, dynamics, sigma, labels


def dit_loss(model, structure, dynamics, sigma, labels) -> torch.Tensor:
    """Rectified flow: predict noise - x0 from the interpolation at sigma."""
    s = sigma.view(-1, *[1] * (structure.ndim - 1))
    d = sigma.view(-1, *[1] * (dynamics.ndim - 1))
    noise_s, noise_d = torch.randn_like(structure), torch.randn_like(dynamics)
    prediction = model((1 - s) * structure + s * noise_s, (1 - d) * dynamics + d * noise_d, sigma * 1000,
                       class_labels=labels)
    return (F.mse_loss(prediction.structure.float(), (noise_s - structure).float())
            + F.mse_loss(prediction.dynamics.float(), (noise_d - dynamics).float()))


def check_dit_training(args, device) -> dict:
    model = paper_dit(args.dry_run).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = dit_step_inputs(model, args.dit_batch, device)

    def step():
        with autocast(device, torch.bfloat16):
            loss = dit_loss(model, *inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = training_row("DiT train step (paper, 101 classes) bf16", step, args.dit_batch, args, device)
    row["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return row


def fsdp_round_trip(accelerator, model, folder: str, step: int, training_state: dict) -> tuple[bool, bool]:
    """(the checkpoint's training state reads back equal, the whole-model gather gives a plain module): the
    trainers' checkpoint (run.py / checkpointing.py) and `run.whole_model` on the prepared, sharded `model`."""
    from vidtwin_gen.training.checkpointing import gather_training_state, load_training_state, save_checkpoint
    from vidtwin_gen.training.run import whole_model

    saved = save_checkpoint(accelerator, folder, step, None, training_state)
    before = flat_tensors(gather_training_state(training_state))
    accelerator.load_state(str(saved), load_kwargs={"weights_only": True})
    load_training_state(saved, training_state)
    after = flat_tensors(gather_training_state(training_state))
    round_trip = len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    with whole_model(accelerator, model, training_state.get("ema")) as whole:
        whole_ok = whole is not None and all(not hasattr(p, "full_tensor") for p in whole.parameters())
    return round_trip, whole_ok


def flat_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [tensor for item in items for tensor in flat_tensors(item)]


def fsdp_dit_steps(args, accelerator, folder: str) -> dict:
    """The paper DiT: steps with the EMA over shards, a checkpoint written and read back, the whole-model gather."""
    from vidtwin_gen.training.run import make_ema

    torch.manual_seed(0)
    model = paper_dit(args.dry_run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = make_ema(accelerator, model, SimpleNamespace(use_ema=True, ema_decay=0.999))
    inputs = dit_step_inputs(accelerator.unwrap_model(model), args.dit_batch, accelerator.device)

    def step():
        with accelerator.autocast():
            loss = dit_loss(model, *inputs)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    seconds, memory = timed(step, args.steps, accelerator.device)
    round_trip, whole_ok = fsdp_round_trip(accelerator, model, folder, args.steps, {"ema": ema})
    return {"check": "DiT FSDP2 train step (1 GPU) bf16", "samples_per_s": args.dit_batch / seconds,
            "peak_memory_gib": memory, "batch": args.dit_batch, "ema_checkpoint_round_trip": round_trip,
            "whole_model_gathered": whole_ok}


def fsdp_vae_steps(args, accelerator, folder: str) -> dict:
    """The paper VAE recipe as train_vae runs it under FSDP2 (its prepare_training and train_step: the PatchGAN on
    with the adaptive weight, the log-variance's own optimizer, the EMA over shards), then the checkpoint round trip
    and the whole-model gather."""
    from vidtwin_gen.training.run import make_ema
    from vidtwin_gen.training.train_vae import TrainVAEConfig, build_loss, prepare_training, train_step

    torch.manual_seed(0)
    config = TrainVAEConfig(output_dir=folder, model={"preset": "tiny" if args.dry_run else "paper"}, disc_start=0,
                            perceptual_weight=0.0, lr_warmup_steps=0, max_train_steps=args.steps + 2,
                            train_batch_size=args.vae_train_batch, use_ema=True)
    vae = AutoencoderVidTwin.from_preset(config.model["preset"])
    loss_fn = build_loss(config).to(accelerator.device)
    vae, discriminator, _, generator_optimization, discriminator_optimization = prepare_training(
        accelerator, config, vae, loss_fn, None)
    ema = make_ema(accelerator, vae, config)
    video = torch.rand(args.vae_train_batch, *vae.sample_shape, device=accelerator.device) * 2 - 1
    logs = {}

    def step():
        logs.update(train_step(accelerator, vae, discriminator, loss_fn, generator_optimization,
                               discriminator_optimization, video, 1, config))
        ema.step(vae.parameters())

    seconds, memory = timed(step, args.steps, accelerator.device)
    training_state = {"logvar": loss_fn.logvar, "logvar_optimizer": generator_optimization[1], "ema": ema}
    round_trip, whole_ok = fsdp_round_trip(accelerator, vae, folder, args.steps, training_state)
    return {"check": "VAE FSDP2 train step (paper recipe, 1 GPU) bf16", "samples_per_s": args.vae_train_batch / seconds,
            "peak_memory_gib": memory, "batch": args.vae_train_batch, "gan_weight": logs.get("d_weight"),
            "ema_checkpoint_round_trip": round_trip, "whole_model_gathered": whole_ok}


def fsdp_worker(args) -> None:
    """Run under `accelerate launch` with the FSDP config: the DiT's and the VAE's FSDP steps (one result line each)."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    from vidtwin_gen.training.run import is_fsdp

    accelerator = Accelerator()
    if not is_fsdp(accelerator):
        raise SystemExit(f"the FSDP check runs under the FSDP config; accelerate chose {accelerator.distributed_type}")
    plugin = accelerator.state.fsdp_plugin
    # Accelerate keeps the wrap classes of the first model it prepares in the plugin: each check starts afresh.
    wrap = {"auto_wrap_policy": plugin.auto_wrap_policy, "transformer_cls_names_to_wrap": plugin.transformer_cls_names_to_wrap}
    with tempfile.TemporaryDirectory() as folder:
        folder = broadcast_object_list([folder])[0]  # the main process's folder: every process writes checkpoints there
        for check in (fsdp_dit_steps, fsdp_vae_steps):
            for name, value in wrap.items():
                setattr(plugin, name, value)
            row = check(args, accelerator, str(Path(folder) / check.__name__))
            if accelerator.is_main_process:
                print("FSDP_RESULT " + json.dumps(row), flush=True)
            accelerator.free_memory()  # forget this check's models and optimizers (checkpoints pair them by index)
        accelerator.wait_for_everyone()


FSDP_CHECKS = ("DiT FSDP2 train step (1 GPU) bf16", "VAE FSDP2 train step (paper recipe, 1 GPU) bf16")


def check_fsdp(args) -> list[dict]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "train_configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
               __file__, "--fsdp-worker", "--steps", str(args.steps), "--dit-batch", str(args.dit_batch),
               "--vae-train-batch", str(args.vae_train_batch)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=420)
    rows = [json.loads(line.removeprefix("FSDP_RESULT ")) for line in result.stdout.splitlines()
            if line.startswith("FSDP_RESULT ")]
    done = {row["check"] for row in rows}
    return rows + [{"check": check, "error": result.stderr[-2000:]} for check in FSDP_CHECKS if check not in done]


def print_table(rows: list[dict]) -> None:
    header = f"{'check':<50} {'samples/s':>10} {'peak GiB':>9} {'TFLOP/step':>11} {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['check']:<50} FAILED: {row['error'].splitlines()[-1] if row['error'] else '?'}")
            continue
        memory = "-" if row.get("peak_memory_gib") is None else f"{row['peak_memory_gib']:.1f}"
        tflops = f"{row['tflops_per_step']:.2f}" if "tflops_per_step" in row else "-"
        mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "-"
        print(f"{row['check']:<50} {row['samples_per_s']:>10.2f} {memory:>9} {tflops:>11} {mfu:>6}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fsdp_worker:
        fsdp_worker(args)
        return 0
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); run it on a GPU machine, or use "
              "--dry-run to check the script on CPU at tiny size", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    rows = check_autoencoder(args, device)
    rows.append(check_vae_training(args, device))
    rows.append(check_dit_training(args, device))
    if not args.no_fsdp and not args.dry_run:  # accelerate never selects FSDP on CPU
        torch.cuda.empty_cache()
        rows.extend(check_fsdp(args))
    print_table(rows)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "peak_tflops_assumed": args.peak_tflops, "dry_run": args.dry_run,
              "seconds": time.perf_counter() - started, "results": rows}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
