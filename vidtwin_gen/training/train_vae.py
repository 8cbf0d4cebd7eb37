"""Train the VidTwin autoencoder with Accelerate.

    accelerate launch -m vidtwin_gen.training.train_vae --config train_configs/vae/ucf101_128.yaml
    vidtwin-gen train-vae --config train_configs/vae/quickstart.yaml --max_train_steps 200   # one process

Objective (VIDTWIN.md section 5): L1 (+ LPIPS when local weights are given) with a learned scalar
log-variance, KL 1e-3, and a PatchGAN with hinge loss and an adaptive weight from `disc_start` on. The
optimisation defaults are the original's: Adam with coupled weight decay, no gradient clipping.
Checkpoints are `output_dir/checkpoint-STEP` (accelerator.save_state, plus the log-variance and EMA in
training_state.safetensors; written atomically, rotated); the final model lands in `output_dir/vae` (EMA
weights when `use_ema`). The loop's bookkeeping (epochs, logging, checkpoints, validation) is in `run.py`.

FSDP (accelerate's FSDP2, `--config_file train_configs/accelerate/fsdp.yaml`), the same loop:
- Two models, two `prepare` calls (FSDP2 shards one model per call): the autoencoder, its blocks (its
  `_no_split_modules`) sharded as units of their own, and the PatchGAN sharded as one unit
  (`run.prepare_as_one_unit`). Models and optimizers keep DDP's order, which accelerate's checkpoints pair by index.
- The log-variance is no model parameter, and FSDP2 admits only its model's parameters in a prepared optimizer: it
  gets its own Adam (same settings), stepped with the autoencoder's at that optimizer's learning rate and kept in the
  checkpoint's training state. Its gradient is averaged by hand, as under DDP; the gradient norm (and clipping)
  covers both. fp16 is refused (the log-variance would step on scaled gradients): use bf16.
- The adaptive GAN weight differentiates the two losses w.r.t. the decoder's last weight, which lives in the root
  unit: FSDP2 keeps the root gathered from its forward to its backward, so the gradient is taken w.r.t. the whole,
  unsharded weight, this process's gradient as under DDP (`decoder_last_weight`; a config that shards the head on
  its own is refused).
- The generator's pass through the PatchGAN gathers its weights (DTensor.full_tensor) and runs it outside FSDP's
  hooks with the weights detached (`vae_loss.frozen_call`), so no gradient reaches the PatchGAN; its own step runs
  through FSDP as usual. Its BatchNorm statistics are per process (they never enter a training-mode output).
- The EMA follows each process's shards; validation and the export run on a whole model gathered on the main
  process (`run.whole_model`: the EMA weights in a plain AutoencoderVidTwin); checkpoints are FULL_STATE_DICT.
  Checked on 2 CPU processes against DDP (GAN and EMA on) and for kill-and-resume: tests/test_distributed_fsdp_vae.py.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger

from ..data.export import decoded_to_frames, export_videos, frame_strip
from ..data.ucf101 import UCF101Clips, collate_clips
from ..data.video_io import CROPS, RESIZES
from ..evaluation.metrics import psnr, ssim, to_unit_range
from ..models.autoencoder_vidtwin import AutoencoderVidTwin
from .config import parse_config
from .run import Progress, RunConfig, TrainingBatches, check_finite, finish, log_images, resume, start_run
from .run import is_fsdp, make_ema, make_loader, make_lr_scheduler, make_optimizer, optimizer_step
from .run import prepare_as_one_unit
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
    dynamics_kl_scale: float = field(default=1.0, metadata={
        "help": "the dynamics latent's KL counts this many times (KL weight per part: kl_weight for the structure, "
                "kl_weight x dynamics_kl_scale for the dynamics); 1 is the original's single KL"})
    dynamics_static_kl_scale: float = field(default=0.0, metadata={
        "help": "price the dynamics' average over the clip's frames this many times more: its KL mean term (as if the "
                "average were the latent in every frame) is added to the KL with this factor, so what stays constant "
                "over the clip (an object's look and place) costs more in the dynamics than in the structure, while "
                "what changes from frame to frame (fast motion) does not; 0 (default) is the original's KL"})
    dynamics_colour_shuffle: bool = field(default=False, metadata={
        "help": "encode the dynamics from the clip with its RGB channels in a random order (per clip and step) and "
                "reconstruct the clip as it is: the dynamics cannot tell the decoder the colours, so the structure "
                "keeps the object's look and the dynamics only what survives the shuffle (motion, brightness); "
                "costs a second encoder pass. Not the original's (its dynamics carry colour); false (default): off"})
    dynamics_spatial_jitter: int = field(default=0, metadata={
        "help": "encode the dynamics from the clip moved by a random whole number of pixels, up to this many along "
                "each axis (per clip and step, the same for all its frames, wrapping around the edges; after the "
                "colour shuffle when both are on): the dynamics cannot tell the decoder where the object is to the "
                "pixel, so the structure keeps its place and outline, while motion survives the shift. Costs a "
                "second encoder pass (one for both options). Not the original's; 0 (default): off"})
    perceptual_weight: float = 0.05
    lpips_vgg_path: str | None = field(default=None, metadata={"help": "torchvision vgg16 state dict (.pth/.safetensors)"})
    lpips_lin_path: str | None = field(default=None, metadata={"help": "LPIPS vgg.pth linear layers"})
    disc_start: int = field(default=10000, metadata={"help": "step from which the PatchGAN loss is on"})
    disc_weight: float = 0.05
    crop: str = field(default="random", metadata={"help": "training crop: random | center (held-out clips: always center)"})
    resize: str = field(default="bilinear", metadata={"help": "short-side resize: bilinear (in YUV) | area (anti-aliased, in RGB)"})
    # optimisation: the original VidTwin's defaults (Adam with coupled weight decay, no clipping)
    optimizer: str = field(default="adam", metadata={"help": "adam (coupled weight decay, the original's default) | adamw"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip the gradient norm to this; null (the original): no clipping"})
    train_batch_size: int = field(default=4, metadata={"help": "clips per device and step"})
    learning_rate: float = 1.6e-4
    disc_learning_rate: float | None = field(default=None, metadata={"help": "defaults to learning_rate"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    lr_scheduler: str = field(default="cosine", metadata={"help": "a diffusers.optimization name, or inverse_sqrt | warmup_cosine (the original's)"})
    lr_warmup_steps: int = 5000
    use_ema: bool = False
    ema_decay: float = 0.999
    # validation
    num_validation_videos: int = field(default=2, metadata={"help": "clips written as videos at validation"})


def build_vae(config: TrainVAEConfig) -> AutoencoderVidTwin:
    if config.pretrained_model_name_or_path:
        vae = AutoencoderVidTwin.from_pretrained(config.pretrained_model_name_or_path)
    else:
        options = dict(config.model)
        vae = AutoencoderVidTwin.from_preset(options.pop("preset", "tiny"), **options)
    if config.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    return vae


def build_loss(config: TrainVAEConfig) -> VidTwinLoss:
    if not config.dynamics_kl_scale >= 0:
        raise ValueError(f"dynamics_kl_scale must be >= 0 (1: one KL weight for both parts), got {config.dynamics_kl_scale}")
    if not config.dynamics_static_kl_scale >= 0:
        raise ValueError(f"dynamics_static_kl_scale must be >= 0 (0: off), got {config.dynamics_static_kl_scale}")
    if config.dynamics_spatial_jitter < 0:
        raise ValueError(f"dynamics_spatial_jitter must be >= 0 pixels (0: off), got {config.dynamics_spatial_jitter}")
    return VidTwinLoss(
        disc_start=config.disc_start, kl_weight=config.kl_weight, perceptual_weight=config.perceptual_weight,
        disc_weight=config.disc_weight, lpips_vgg_path=config.lpips_vgg_path, lpips_lin_path=config.lpips_lin_path,
    )


def build_datasets(config: TrainVAEConfig, vae: AutoencoderVidTwin) -> tuple[UCF101Clips, UCF101Clips]:
    """Random training clips of the split's train list, centred held-out clips of its test list."""
    for key, value, allowed in (("crop", config.crop, CROPS), ("resize", config.resize, RESIZES)):
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    _, frames, height, width = vae.sample_shape
    clip_args = dict(num_frames=frames, size=(height, width), target_fps=config.target_fps, resize=config.resize)
    return (UCF101Clips(config.data_root, config.split, "train", **clip_args, train=True, seed=config.seed,
                        crop=config.crop),
            UCF101Clips(config.data_root, config.split, "test", **clip_args, train=False))


def held_out_clips(validation_set: UCF101Clips, config: TrainVAEConfig, accelerator) -> torch.Tensor | None:
    """The first `num_validation_clips` readable test clips (B, 3, T, H, W), on the main process; else None."""
    if not accelerator.is_main_process:
        return None
    items = [validation_set[i] for i in range(min(config.num_validation_clips, len(validation_set)))]
    videos = [item["video"] for item in items if item is not None]  # unreadable files are logged and skipped
    if not videos:
        logger.warning("no readable held-out clips in the split's test list: validation is off")
        return None
    return torch.stack(videos)


@torch.no_grad()
def validate(vae: AutoencoderVidTwin, clips: torch.Tensor | None, config: TrainVAEConfig, accelerator, step: int) -> dict | None:
    """PSNR/SSIM of reconstructions of the held-out clips; videos of the first few to the run folder/trackers."""
    if clips is None:
        return None
    vae.eval()
    decoded = {"reconstruction": [], "structure": [], "dynamics": []}
    for batch in clips.split(config.train_batch_size):
        z = vae.encode(batch.to(accelerator.device, vae.dtype)).latent_dist.mode()
        for name, part in (("reconstruction", None), ("structure", "structure"), ("dynamics", "dynamics")):
            decoded[name].append(vae.decode(z, part=part).sample.float().cpu())
    videos = {"original": clips, **{name: torch.cat(parts) for name, parts in decoded.items()}}
    reference = to_unit_range(clips)
    metrics = {
        "val/psnr": psnr(to_unit_range(videos["reconstruction"]), reference).mean().item(),
        "val/ssim": ssim(to_unit_range(videos["reconstruction"]), reference).mean().item(),
        "val/psnr_structure_only": psnr(to_unit_range(videos["structure"]), reference).mean().item(),
        "val/psnr_dynamics_only": psnr(to_unit_range(videos["dynamics"]), reference).mean().item(),
    }
    folder = Path(config.output_dir) / "validation" / f"step-{step}"
    shown = min(config.num_validation_videos, len(clips))
    frames = {name: decoded_to_frames(video[:shown]) for name, video in videos.items()}  # (shown, T, H, W, 3)
    for name, video_frames in frames.items():
        export_videos(video_frames, folder, [f"clip{i}_{name}" for i in range(shown)], config.target_fps)
    log_images(accelerator, {f"val/clip{i} {'|'.join(frames)}": frame_strip([f[i] for f in frames.values()])
                             for i in range(shown)}, step)
    vae.train()
    return metrics


def average_logvar_gradient(accelerator, logvar: torch.nn.Parameter) -> None:
    """The log-variance is in no prepared model, so DDP does not average its gradient: do it by hand."""
    if accelerator.sync_gradients and logvar.grad is not None and accelerator.num_processes > 1:
        logvar.grad = accelerator.reduce(logvar.grad, reduction="mean")


def decoder_last_weight(vae: AutoencoderVidTwin) -> torch.Tensor:
    """The decoder's last weight as the latest forward used it, for the adaptive GAN weight (`vae` unwrapped).

    Under FSDP2 that is the gathered, unsharded weight: the root module (which owns the head) stays unsharded from
    its forward to its backward, so its gradient here is this process's full gradient, as under DDP.
    """
    weight = vae.head.linear.weight
    if hasattr(weight, "full_tensor"):
        raise ValueError(
            "the decoder's last layer (vae.head) is sharded on its own and resharded after the forward, so the adaptive "
            "GAN weight cannot take its gradient: shard only the blocks (fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP "
            "without fsdp_transformer_layer_cls_to_wrap, as in train_configs/accelerate/fsdp.yaml)"
        )
    return weight


def generator_step(accelerator, vae, logvar: torch.nn.Parameter, optimizer, logvar_optimizer, lr_scheduler,
                   max_grad_norm: float | None) -> torch.Tensor | None:
    """Average the log-variance's gradient, clip the autoencoder's and its together, step; the norm (see optimizer_step).

    `logvar_optimizer` (FSDP only, else None) is the log-variance's own optimizer: same settings, stepped with the
    autoencoder's optimizer at its learning rate.
    """
    average_logvar_gradient(accelerator, logvar)
    if logvar_optimizer is not None:
        for group in logvar_optimizer.param_groups:
            group["lr"] = optimizer.param_groups[0]["lr"]  # the rate this update uses, before the scheduler steps
    grad_norm = optimizer_step(accelerator, [*vae.parameters(), logvar], optimizer, lr_scheduler, max_grad_norm)
    if logvar_optimizer is not None and accelerator.sync_gradients:
        logvar_optimizer.step()
        logvar_optimizer.zero_grad()
    return grad_norm


def discriminator_step(accelerator, loss_fn: VidTwinLoss, discriminator, optimizer, lr_scheduler, video: torch.Tensor,
                       reconstruction: torch.Tensor, step: int, max_grad_norm: float | None) -> dict:
    """One update of the PatchGAN on real clips vs (detached) reconstructions; its logs."""
    with accelerator.autocast():
        disc_loss, logs = loss_fn.discriminator_loss(video, reconstruction.detach(), step, discriminator=discriminator)
    accelerator.backward(disc_loss)
    logs["disc_grad_norm"] = optimizer_step(accelerator, discriminator.parameters(), optimizer, lr_scheduler, max_grad_norm)
    return logs


def dynamics_kl(joint, num_structure: int) -> torch.Tensor:
    """(B,) KL of the dynamics part of a packed joint posterior (B, N): its entries after the first `num_structure`."""
    mean, var, logvar = (x[:, num_structure:] for x in (joint.mean, joint.var, joint.logvar))
    return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=1)


def dynamics_static_kl(joint, num_structure: int, dynamics_shape: tuple[int, int, int]) -> torch.Tensor:
    """(B,) the KL's mean term for the dynamics' average over time: 0.5 * t * sum over channels and positions of
    (the posterior mean averaged over its t frames)^2, what `dynamics_kl`'s mean term is for a latent that holds
    that average in every frame. `dynamics_shape` is (d_D, t, w_D + h_D), the packed dynamics' layout."""
    mean = joint.mean[:, num_structure:].unflatten(1, dynamics_shape)  # (B, d_D, t, P)
    return 0.5 * mean.shape[2] * mean.mean(2).pow(2).sum((1, 2))


def shuffle_colours(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> the same clips, each with its colour channels in a random order of its own."""
    order = torch.stack([torch.randperm(video.shape[1], device=video.device) for _ in range(video.shape[0])])
    return video.gather(1, order[:, :, None, None, None].expand_as(video))


def shift_clips(video: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """(B, C, T, H, W) -> the same clips, each rolled over its frames' rows and columns by its own random offset
    in [-max_pixels, max_pixels] along each axis."""
    offsets = torch.randint(-max_pixels, max_pixels + 1, (video.shape[0], 2)).tolist()
    return torch.stack([clip.roll(offset, dims=(-2, -1)) for clip, offset in zip(video, offsets)])


def dynamics_clips(video: torch.Tensor, config: TrainVAEConfig) -> torch.Tensor | None:
    """What the dynamics are encoded from in training: `video` transformed as the config asks, or None (itself)."""
    if not (config.dynamics_colour_shuffle or config.dynamics_spatial_jitter):
        return None
    if config.dynamics_colour_shuffle:
        video = shuffle_colours(video)
    if config.dynamics_spatial_jitter:
        video = shift_clips(video, config.dynamics_spatial_jitter)
    return video


def train_step(accelerator, vae, discriminator, loss_fn: VidTwinLoss, generator_optimization: tuple,
               discriminator_optimization: tuple, video: torch.Tensor, step: int, config: TrainVAEConfig) -> dict:
    """One micro-batch `video` (B, 3, T, H, W) in [-1, 1] at optimizer step `step`: the autoencoder's update (and the
    PatchGAN's from `disc_start` on); its logs. The optimizations are those of `prepare_training`:
    (optimizer, logvar_optimizer, lr_scheduler) and (disc_optimizer, disc_lr_scheduler)."""
    optimizer, logvar_optimizer, lr_scheduler = generator_optimization
    with accelerator.accumulate(vae, discriminator):
        with accelerator.autocast():
            # Through the wrapper, so DDP syncs gradients.
            output = vae(video, sample_posterior=True, dynamics_sample=dynamics_clips(video, config))
            kl = output.latent_dist.kl()  # (B,): the structure's and the dynamics' KL summed
            model = accelerator.unwrap_model(vae)
            num_structure = math.prod(model.structure_latent_shape)
            if config.dynamics_kl_scale != 1.0:
                kl = kl + (config.dynamics_kl_scale - 1.0) * dynamics_kl(output.latent_dist, num_structure)
            if config.dynamics_static_kl_scale:
                kl = kl + config.dynamics_static_kl_scale * dynamics_static_kl(
                    output.latent_dist, num_structure, model.dynamics_latent_shape)
            loss, logs = loss_fn.generator_loss(video, output.sample, kl, step, decoder_last_weight(model))
        check_finite(loss, accelerator, step, config.output_dir)
        accelerator.backward(loss)
        logs["grad_norm"] = generator_step(accelerator, vae, loss_fn.logvar, optimizer, logvar_optimizer, lr_scheduler,
                                           config.max_grad_norm)
        if loss_fn.discriminator_active(step):
            logs |= discriminator_step(accelerator, loss_fn, discriminator, *discriminator_optimization, video,
                                       output.sample, step, config.max_grad_norm)
    return logs


def prepare_training(accelerator, config: TrainVAEConfig, vae: AutoencoderVidTwin, loss_fn: VidTwinLoss, loader) -> tuple:
    """The optimizers and schedulers, everything prepared: (vae, discriminator, loader, (optimizer, logvar_optimizer,
    lr_scheduler), (disc_optimizer, disc_lr_scheduler)); `logvar_optimizer` is None except under FSDP.

    Two `prepare` calls, one model each (FSDP2 shards one model per call; the PatchGAN as one unit, see
    run.prepare_as_one_unit); the same order of models and optimizers as one call, so DDP checkpoints keep their
    file names. Under FSDP2 a prepared optimizer may hold only its model's parameters: the log-variance then gets
    an optimizer of its own, kept in the checkpoint's training state.
    """
    fsdp = is_fsdp(accelerator)
    if fsdp and accelerator.mixed_precision == "fp16":
        raise ValueError("mixed_precision fp16 under FSDP: the log-variance's own optimizer would step on scaled "
                         "gradients; use mixed_precision bf16 (train_configs/accelerate/fsdp.yaml) or no")
    logvar_optimizer = make_optimizer([loss_fn.logvar], config) if fsdp else None
    optimizer = make_optimizer([*vae.parameters(), *([] if fsdp else [loss_fn.logvar])], config)
    disc_optimizer = make_optimizer(loss_fn.discriminator.parameters(), config, config.disc_learning_rate)
    lr_scheduler = make_lr_scheduler(optimizer, config, accelerator.num_processes)
    disc_lr_scheduler = make_lr_scheduler(disc_optimizer, config, accelerator.num_processes,
                                          num_training_steps=max(1, config.max_train_steps - config.disc_start))
    vae, optimizer, loader, lr_scheduler = accelerator.prepare(vae, optimizer, loader, lr_scheduler)
    discriminator, disc_optimizer, disc_lr_scheduler = prepare_as_one_unit(
        accelerator, loss_fn.discriminator, disc_optimizer, disc_lr_scheduler)
    return vae, discriminator, loader, (optimizer, logvar_optimizer, lr_scheduler), (disc_optimizer, disc_lr_scheduler)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(TrainVAEConfig, argv, __doc__)
    accelerator = start_run(config)
    vae = build_vae(config)
    loss_fn = build_loss(config).to(accelerator.device)
    train_set, validation_set = build_datasets(config, vae)
    loader = make_loader(train_set, config, collate_clips)
    vae, discriminator, loader, generator_optimization, discriminator_optimization = prepare_training(
        accelerator, config, vae, loss_fn, loader)
    _, logvar_optimizer, lr_scheduler = generator_optimization
    # Saved beside accelerate's files as safetensors + JSON (registered objects would be pickled).
    training_state = {"logvar": loss_fn.logvar}
    if logvar_optimizer is not None:
        training_state["logvar_optimizer"] = logvar_optimizer
    ema = make_ema(accelerator, vae, config)  # after prepare: under FSDP it follows this process's shards
    if ema is not None:
        training_state["ema"] = ema

    global_step, epochs, batches_to_skip = resume(accelerator, config, len(loader), training_state)
    clips = held_out_clips(validation_set, config, accelerator)
    # Validation and the export get a whole autoencoder (run.whole_model: the model itself, or a gathered copy).
    validation = lambda model, step: validate(model, clips, config, accelerator, step)  # noqa: E731
    batches = TrainingBatches(accelerator, loader, epochs, batches_to_skip)
    progress = Progress(accelerator, config, global_step, vae, ema, lr_scheduler, validation, "vidtwin-vae",
                        training_state)
    for batch in batches:
        logs = train_step(accelerator, vae, discriminator, loss_fn, generator_optimization, discriminator_optimization,
                          batch["video"], progress.global_step, config)
        if accelerator.sync_gradients and progress.update(logs):
            batches.stop()

    trained_on = f"{config.data_root}, split {config.split}, train subset"
    finish(accelerator, ema, vae, lambda model, folder: model.save_pretrained(folder, trained_on=trained_on),
           Path(config.output_dir) / "vae", batches.num_skipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
