"""Train the VidTwin autoencoder with Accelerate.

    accelerate launch -m vidtwin_gen.training.train_vae --config train_configs/vae/ucf101_128.yaml
    vidtwin-gen train-vae --config train_configs/vae/tiny.yaml --max_train_steps 200   # one process

Objective (VIDTWIN.md section 5): L1 (+ LPIPS when local weights are given) with a learned scalar
log-variance, KL 1e-3, and a PatchGAN with hinge loss and an adaptive weight from `disc_start` on. Checkpoints
are `output_dir/checkpoint-STEP` (accelerator.save_state, written atomically, rotated); the final model lands
in `output_dir/vae` (EMA weights when `use_ema`).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data.ucf101 import UCF101Clips, collate_clips
from ..evaluation.metrics import psnr, ssim, to_unit_range
from ..generate import export_videos, to_frames
from ..models.autoencoder_vidtwin import AutoencoderVidTwin
from .checkpointing import save_checkpoint
from .config import parse_config
from .run import RunConfig, check_finite, ema_weights, export, resume, start_run, time_is_up
from .vae_loss import VidTwinLoss

logger = get_logger(__name__)


@dataclass
class TrainVAEConfig(RunConfig):
    output_dir: str = "runs/vae"
    # data
    data_root: str = field(default="data/embedded", metadata={"help": "UCF-101 layout: UCF-101/ and ucfTrainTestlist/"})
    split: int = field(default=1, metadata={"help": "UCF-101 split 1-3; training uses its train list"})
    target_fps: float = field(default=8.0, metadata={"help": "clip frame rate; interval = round(source fps / this)"})
    num_validation_clips: int = field(default=8, metadata={"help": "held-out clips (test list) scored at validation"})
    # model
    pretrained_model_name_or_path: str | None = field(default=None, metadata={"help": "fine-tune a saved AutoencoderVidTwin"})
    model: dict = field(
        default_factory=lambda: {"preset": "tiny"},
        metadata={"help": "AutoencoderVidTwin.from_preset(preset, **other keys) when no pretrained model is given"},
    )
    gradient_checkpointing: bool = False
    # objective
    kl_weight: float = 1e-3
    perceptual_weight: float = 0.05
    lpips_vgg_path: str | None = field(default=None, metadata={"help": "torchvision vgg16 state dict (.pth/.safetensors)"})
    lpips_lin_path: str | None = field(default=None, metadata={"help": "LPIPS vgg.pth linear layers"})
    disc_start: int = field(default=10000, metadata={"help": "step from which the PatchGAN loss is on"})
    disc_weight: float = 0.05
    # optimisation
    train_batch_size: int = field(default=4, metadata={"help": "clips per device and step"})
    learning_rate: float = 1.6e-4
    disc_learning_rate: float | None = field(default=None, metadata={"help": "defaults to learning_rate"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    lr_scheduler: str = field(default="cosine", metadata={"help": "any diffusers.optimization scheduler name"})
    lr_warmup_steps: int = 5000
    use_ema: bool = False
    ema_decay: float = 0.999
    # validation
    num_validation_videos: int = field(default=2, metadata={"help": "clips written as videos at validation"})


def build_vae(config: TrainVAEConfig) -> AutoencoderVidTwin:
    if config.pretrained_model_name_or_path:
        return AutoencoderVidTwin.from_pretrained(config.pretrained_model_name_or_path)
    options = dict(config.model)
    return AutoencoderVidTwin.from_preset(options.pop("preset", "tiny"), **options)


class _ScalarState:
    """Puts one parameter that lives outside the prepared models (the loss's log-variance) into checkpoints."""

    def __init__(self, parameter: torch.nn.Parameter):
        self.parameter = parameter

    def state_dict(self) -> dict:
        return {"value": self.parameter.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.parameter.copy_(state["value"])


def frame_strip(videos: list[torch.Tensor]) -> torch.Tensor:
    """Rows of frames (3, rows*H, T*W) in [0, 1] from clips (3, T, H, W) in [-1, 1], for an image tracker."""
    return torch.cat([to_unit_range(v).permute(0, 2, 1, 3).flatten(2) for v in videos], dim=1)


@torch.no_grad()
def validate(vae: AutoencoderVidTwin, clips: torch.Tensor, config: TrainVAEConfig, step: int, accelerator) -> dict:
    """PSNR/SSIM of reconstructions of the held-out clips; videos of the first few to the run folder/tracker."""
    vae.eval()
    recon, structure, dynamics = [], [], []
    for batch in clips.split(config.train_batch_size):
        z = vae.encode(batch.to(accelerator.device, vae.dtype)).latent_dist.mode()
        recon.append(vae.decode(z).sample.float().cpu())
        structure.append(vae.decode(z, part="structure").sample.float().cpu())
        dynamics.append(vae.decode(z, part="dynamics").sample.float().cpu())
    recon, structure, dynamics = torch.cat(recon), torch.cat(structure), torch.cat(dynamics)
    reference = to_unit_range(clips)
    metrics = {
        "val/psnr": psnr(to_unit_range(recon), reference).mean().item(),
        "val/ssim": ssim(to_unit_range(recon), reference).mean().item(),
        "val/psnr_structure_only": psnr(to_unit_range(structure), reference).mean().item(),
        "val/psnr_dynamics_only": psnr(to_unit_range(dynamics), reference).mean().item(),
    }
    folder = Path(config.output_dir) / "validation" / f"step-{step}"
    shown = min(config.num_validation_videos, len(clips))
    for name, videos in (("original", clips), ("reconstruction", recon), ("structure", structure), ("dynamics", dynamics)):
        export_videos(to_frames(videos[:shown]), folder, [f"clip{i}_{name}" for i in range(shown)], config.target_fps)
    tracker = accelerator.get_tracker("tensorboard", unwrap=True) if config.report_to == "tensorboard" else None
    if tracker is not None:
        for i in range(shown):
            strip = frame_strip([clips[i], recon[i], structure[i], dynamics[i]])
            tracker.add_image(f"val/clip{i} original|reconstruction|structure|dynamics", strip, step)
    vae.train()
    return metrics


def main(argv: list[str] | None = None) -> int:
    config = parse_config(TrainVAEConfig, argv, __doc__)
    output_dir = Path(config.output_dir)
    accelerator = start_run(config)

    vae = build_vae(config)
    if config.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    loss_fn = VidTwinLoss(
        disc_start=config.disc_start, kl_weight=config.kl_weight, perceptual_weight=config.perceptual_weight,
        disc_weight=config.disc_weight, lpips_vgg_path=config.lpips_vgg_path, lpips_lin_path=config.lpips_lin_path,
    ).to(accelerator.device)
    ema = None
    if config.use_ema:
        ema = EMAModel(vae.parameters(), decay=config.ema_decay, model_cls=AutoencoderVidTwin, model_config=vae.config)

    _, frames, height, width = vae.sample_shape
    train_set = UCF101Clips(config.data_root, config.split, "train", frames, (height, width), config.target_fps,
                            train=True, seed=config.seed)
    validation_set = UCF101Clips(config.data_root, config.split, "test", frames, (height, width), config.target_fps,
                                 train=False)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.train_batch_size, shuffle=True, drop_last=True, collate_fn=collate_clips,
        num_workers=config.dataloader_num_workers, generator=torch.Generator().manual_seed(config.seed),
    )
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training clips are fewer than train_batch_size {config.train_batch_size}")

    adam = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    optimizer = torch.optim.AdamW([*vae.parameters(), loss_fn.logvar], lr=config.learning_rate, **adam)
    disc_optimizer = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=config.disc_learning_rate or config.learning_rate, **adam)
    # A prepared scheduler steps once per process per update, hence the factors (as in diffusers' examples).
    processes = accelerator.num_processes
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * processes,
                                 num_training_steps=config.max_train_steps * processes)
    disc_lr_scheduler = get_scheduler(config.lr_scheduler, disc_optimizer,
                                      num_warmup_steps=config.lr_warmup_steps * processes,
                                      num_training_steps=max(1, config.max_train_steps - config.disc_start) * processes)
    vae, discriminator, optimizer, disc_optimizer, loader, lr_scheduler, disc_lr_scheduler = accelerator.prepare(
        vae, loss_fn.discriminator, optimizer, disc_optimizer, loader, lr_scheduler, disc_lr_scheduler
    )
    accelerator.register_for_checkpointing(_ScalarState(loss_fn.logvar))
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    accelerator.init_trackers("vidtwin-vae", config={k: str(v) for k, v in vars(config).items()})

    global_step, epochs, batches_to_skip = resume(accelerator, config, len(loader))

    validation_clips = None
    if accelerator.is_main_process:
        items = [validation_set[i] for i in range(min(config.num_validation_clips, len(validation_set)))]
        videos = [item["video"] for item in items if item is not None]  # unreadable files are logged and skipped
        validation_clips = torch.stack(videos) if videos else None
        if validation_clips is None:
            logger.warning("no readable held-out clips in the split's test list: validation is off")
    last_layer = accelerator.unwrap_model(vae).head.linear.weight
    started, last_step = time.monotonic(), False
    progress = tqdm(range(config.max_train_steps), initial=global_step, desc="train vae",
                    disable=not accelerator.is_local_main_process)
    skipped_total = 0
    for epoch in epochs:
        train_set.set_epoch(epoch)
        loader.set_epoch(epoch)
        skipped = 0
        active = accelerator.skip_first_batches(loader, batches_to_skip) if epoch == epochs.start else loader
        for batch in active:
            skipped += batch["num_skipped"]
            # Every process must take the same steps: skip a batch only if it is empty on some process.
            empty = torch.tensor(float(batch["video"] is None), device=accelerator.device)
            if accelerator.reduce(empty, "sum").item() > 0:
                continue
            video = batch["video"]
            with accelerator.accumulate(vae, discriminator):
                with accelerator.autocast():
                    output = vae(video, sample_posterior=True)  # through the wrapper, so DDP syncs gradients
                    reconstruction = output.sample
                    loss, logs = loss_fn.generator_loss(
                        video, reconstruction, output.latent_dist.kl(), global_step, last_layer
                    )
                check_finite(loss, accelerator, global_step, output_dir)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # The log-variance is in no prepared model: average its gradient across processes by hand.
                    if loss_fn.logvar.grad is not None and processes > 1:
                        loss_fn.logvar.grad = accelerator.reduce(loss_fn.logvar.grad, reduction="mean")
                    accelerator.clip_grad_norm_([*vae.parameters(), loss_fn.logvar], config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                if loss_fn.discriminator_active(global_step):
                    with accelerator.autocast():
                        disc_loss, disc_logs = loss_fn.discriminator_loss(video, reconstruction.detach(), global_step,
                                                                          discriminator=discriminator)
                    accelerator.backward(disc_loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(discriminator.parameters(), config.max_grad_norm)
                    disc_optimizer.step()
                    disc_lr_scheduler.step()
                    disc_optimizer.zero_grad()
                    logs.update(disc_logs)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            if ema is not None:
                ema.step(vae.parameters())
            if global_step % config.logging_steps == 0 or global_step == 1:
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{logs['loss']:.4g}", l1=f"{logs['rec_l1']:.4g}")
                accelerator.log(logs, step=global_step)
            last_step = global_step >= config.max_train_steps or time_is_up(started, config.max_train_minutes, accelerator)
            if global_step % config.checkpointing_steps == 0 or last_step:
                save_checkpoint(accelerator, output_dir, global_step, config.checkpoints_total_limit)
            if global_step % config.validation_steps == 0 or last_step:
                if accelerator.is_main_process and validation_clips is not None:
                    unwrapped = accelerator.unwrap_model(vae)
                    with ema_weights(ema, unwrapped):
                        metrics = validate(unwrapped, validation_clips, config, global_step, accelerator)
                    accelerator.log(metrics, step=global_step)
                    logger.info("step %d: %s", global_step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
                accelerator.wait_for_everyone()
            if last_step:
                break
        skipped = int(accelerator.reduce(torch.tensor(skipped, device=accelerator.device), "sum").item())
        if skipped:
            logger.warning("epoch %d: skipped %d unreadable video(s)", epoch, skipped)
        skipped_total += skipped
        if last_step:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(vae)
        if ema is not None:
            ema.copy_to(final.parameters())
        export(final.save_pretrained, output_dir / "vae")
        logger.info("saved %s (%d unreadable video(s) skipped in total)", output_dir / "vae", skipped_total)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
