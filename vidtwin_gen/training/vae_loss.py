"""VidTwin's autoencoder objective: reconstruction NLL with a learned scale, KL, and a PatchGAN.

A port of VidTok's `GeneralLPIPSWithDiscriminator` (sgm / taming lineage) as configured by the
released VidTwin yaml (`dims: 3`, `disc_type: 2d`, `learn_logvar: true`, KL weight 1e-3, perceptual
and discriminator weights 0.05). Video (B, C, T, H, W) is folded to frames (B*T, C, H, W) first.

Generator step (`generator_loss`), with s the learned scalar log-variance:

    rec  = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)       per pixel, (B*T, C, H, W); LPIPS is
                                                                    one number per frame, broadcast
    nll  = sum over all B*T*C*H*W pixels of (rec / e^s + s) / (B*T) (`torch.sum(nll) / nll.shape[0]`
                                                                    with frames as the batch)
    kl   = sum over the batch of the per-sample KL / B              (each sample's KL sums all
                                                                    elements of the three latents)
    g    = -mean(D(x_rec))
    loss = nll + kl_weight * kl + d_weight * disc_factor * g

    d_weight = disc_weight * clamp(|grad_w nll| / (|grad_w g| + 1e-4), 0, 1e4), w the decoder's last weight;
    g and d_weight only from `disc_start` on, d_weight only in training mode (0 otherwise).

Because s is added once per pixel, nll = sum(rec) / (e^s * B*T) + s*C*H*W, minimised at
e^s = mean per-pixel rec: s tracks the log of the current reconstruction error.

Discriminator step (`discriminator_loss`): disc_factor * hinge, with
hinge = 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec)))), from `disc_start` on.
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from .discriminator import PatchDiscriminator
from ..evaluation.lpips import LPIPS

logger = logging.getLogger(__name__)

# The "perceptual loss is off" warning is logged once per process, however many losses are built.
_perceptual_off_warned = False


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))), the discriminator's hinge loss."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def _fold_time_into_batch(inputs: torch.Tensor, reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, T, H, W) videos -> float32 frames (B*T, C, H, W): the loss is computed in fp32 under autocast."""
    if inputs.ndim != 5 or inputs.shape != reconstructions.shape:
        raise ValueError(
            "inputs and reconstructions must be videos of the same shape (B, C, T, H, W), got "
            f"{tuple(inputs.shape)} and {tuple(reconstructions.shape)}"
        )
    inputs, reconstructions = (rearrange(x.float(), "b c t h w -> (b t) c h w") for x in (inputs, reconstructions))
    return inputs, reconstructions


class _WithoutHooks(nn.Module):
    """Runs `module.forward` itself, not `module(...)`: the hooks a wrapper put on the module (FSDP2's all-gather
    before the forward and reduce-scatter after the backward) do not fire. Its parameters are `module.*`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module.forward(*args)


def _whole(parameter: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2 shard (a DTensor; gathering is a collective), a plain tensor as it is."""
    return parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter


def frozen_call(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`module(inputs)` with its weights as constants: gradients reach `inputs`, never the weights.

    The unwrapped module runs outside any wrapper: no DDP gradient sync, no FSDP2 hooks on the module itself; weights
    sharded by FSDP2 (DTensors) are gathered to whole tensors first, so every process must call it. Its submodules
    must not be FSDP-wrapped on their own (train_vae shards the discriminator as one unit). Buffers (BatchNorm's
    running statistics) are the module's own and update as in a plain call.
    """
    params = {f"module.{name}": _whole(p.detach()) for name, p in module.named_parameters()}
    return functional_call(_WithoutHooks(module), params, (inputs,))


def _as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    # One host transfer for all logged values instead of one `.item()` sync each.
    return dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist()))


class VidTwinLoss(nn.Module):
    """The autoencoder's training objective (see the module docstring for the formulas).

    Holds the learned log-variance `logvar` (a scalar Parameter, init `logvar_init`), the
    discriminator `discriminator` and, when both weight files are given, the frozen LPIPS network
    `perceptual`. Without the files the perceptual term is off and a warning says so once.

    Training-loop contract:
    - `logvar` trains with the autoencoder: put it in the generator optimiser (under FSDP2, which
      admits only a model's own parameters in a prepared optimiser, in one of its own: see train_vae).
    - `discriminator` has its own optimiser and may be wrapped (e.g. `accelerator.prepare`); pass the
      wrapped module to `discriminator_loss`, which needs its gradient sync. Leave the attribute
      itself unwrapped (FSDP2 shards it in place, which is fine): `generator_loss` runs it through
      `frozen_call` with detached (under FSDP2: gathered) weights, so the generator step writes no
      gradient into the discriminator and never runs a DDP wrapper or FSDP2's hooks.
    - `logvar` is in no prepared model, so DDP does not average its gradient: average it before the
      generator optimiser steps (see `VidTwinLoss.generator_loss`). Gradient accumulation needs
      nothing else; each micro-batch gets its own adaptive weight, as in the original.
    - Skip the discriminator step while `discriminator_active(step)` is False; its loss is then a
      constant 0 that does not require grad.
    - Checkpoints: `logvar` is in no prepared model either, so `accelerator.save_state` does not see
      it: save it with the run yourself. `train_vae` lists it in the checkpoint's training state
      (`training_state.safetensors`, see `checkpointing.save_training_state`); the discriminator is a
      prepared model and is saved by accelerate.

    Args:
        disc_start: first global step with the GAN terms (the released VidTwin yaml uses 20001; the
            design card ~10k).
        kl_weight: weight of the KL term.
        perceptual_weight: weight of LPIPS inside the per-pixel reconstruction loss.
        disc_weight: factor on the adaptive weight.
        disc_factor: factor on both GAN losses once active.
        logvar_init: initial value of the learned log-variance s.
        lpips_vgg_path: torchvision's `vgg16-397923af.pth` (or a .safetensors of it).
        lpips_lin_path: LPIPS's `vgg.pth` lin-layer weights (or a .safetensors of it).
        disc_in_channels, disc_channels, disc_num_layers: PatchDiscriminator size.
    """

    def __init__(
        self,
        disc_start: int = 10_000,
        kl_weight: float = 1e-3,
        perceptual_weight: float = 0.05,
        disc_weight: float = 0.05,
        disc_factor: float = 1.0,
        logvar_init: float = 0.0,
        lpips_vgg_path: str | Path | None = None,
        lpips_lin_path: str | Path | None = None,
        disc_in_channels: int = 3,
        disc_channels: int = 64,
        disc_num_layers: int = 3,
    ):
        super().__init__()
        global _perceptual_off_warned
        settings = {
            "disc_start": disc_start,
            "kl_weight": kl_weight,
            "perceptual_weight": perceptual_weight,
            "disc_weight": disc_weight,
            "disc_factor": disc_factor,
        }
        negative = [f"{name}={value}" for name, value in settings.items() if value < 0]
        if negative:
            raise ValueError(f"loss weights and disc_start must be >= 0, got {', '.join(negative)}")
        if (lpips_vgg_path is None) != (lpips_lin_path is None):
            given = "lpips_vgg_path" if lpips_lin_path is None else "lpips_lin_path"
            raise ValueError(
                "the perceptual loss needs both lpips_vgg_path (torchvision's vgg16-397923af.pth) and "
                f"lpips_lin_path (LPIPS's vgg.pth); got only {given}"
            )
        self.disc_start = disc_start
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init)))
        self.discriminator = PatchDiscriminator(disc_in_channels, disc_channels, disc_num_layers)
        self.perceptual = None
        if perceptual_weight > 0 and lpips_vgg_path is not None:
            self.perceptual = LPIPS.from_pretrained(lpips_vgg_path, lpips_lin_path)
        elif perceptual_weight > 0 and not _perceptual_off_warned:
            logger.warning(
                "Perceptual loss (LPIPS-VGG16) is OFF: no weight files given, so the reconstruction loss is "
                "L1 only. To enable it, point lpips_vgg_path at torchvision's vgg16-397923af.pth and "
                "lpips_lin_path at LPIPS's vgg.pth (local files; nothing is downloaded)."
            )
            _perceptual_off_warned = True

    def discriminator_active(self, global_step: int) -> bool:
        """Whether the GAN terms are on at `global_step` (from `disc_start` on)."""
        return global_step >= self.disc_start

    def adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """disc_weight * clamp(|grad nll| / (|grad g| + 1e-4), 0, 1e4) at `last_layer_weight`, detached.

        Scales the GAN gradient to the reconstruction gradient where both enter the decoder. Under
        DDP these are this process's gradients (not averaged), as in the original. Under FSDP2 pass
        the weight the forward used (the gathered one: train_vae.decoder_last_weight, read after the
        forward); a sharded DTensor is not in the graph.
        """
        if last_layer_weight is None:
            raise ValueError(
                "the adaptive GAN weight needs the decoder's last weight: pass "
                "last_layer_weight=accelerator.unwrap_model(vae).head.linear.weight"
            )
        (nll_grad,) = torch.autograd.grad(nll_loss, last_layer_weight, retain_graph=True, allow_unused=True)
        (g_grad,) = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True, allow_unused=True)
        if nll_grad is None or g_grad is None:
            raise ValueError(
                "last_layer_weight did not produce the reconstructions; pass the weight of the decoder that "
                "made them (vae.head.linear.weight)"
            )
        ratio = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return ratio.clamp(0.0, 1e4).detach() * self.disc_weight

    def generator_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        kl: torch.Tensor,
        global_step: int,
        last_layer_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss for one batch.

        Args:
            inputs: videos (B, C, T, H, W) in [-1, 1].
            reconstructions: the autoencoder's output for them, same shape, still in the graph.
            kl: per-sample KL (B,), `vae.encode(x).latent_dist.kl()` (the three KLs summed).
            global_step: optimiser steps taken so far; decides whether the GAN term is on.
            last_layer_weight: `vae.head.linear.weight`, needed from `disc_start` on in training mode.

        Returns:
            loss: fp32 scalar; gradients reach the autoencoder and `self.logvar`, never the discriminator.
            logs: `loss`, `nll`, `rec_l1` (plain per-pixel mean |x - x_rec|), `p_loss` (mean LPIPS per
                frame, only when on), `kl` (batch mean), `logvar`, `d_weight`, `g_loss`.

        Under DDP average `logvar`'s gradient across processes before `optimizer_g.step()`, e.g.
        `if accelerator.sync_gradients: loss_fn.logvar.grad = accelerator.reduce(loss_fn.logvar.grad, "mean")`.
        """
        frames, frames_rec = _fold_time_into_batch(inputs, reconstructions)  # (B*T, C, H, W) each
        if kl.shape != (inputs.shape[0],):
            raise ValueError(
                f"kl must hold one KL per sample, shape ({inputs.shape[0]},), got {tuple(kl.shape)}; "
                "use vae.encode(x).latent_dist.kl()"
            )
        rec = torch.abs(frames - frames_rec)  # (B*T, C, H, W)
        logs = {"rec_l1": rec.mean()}
        if self.perceptual is not None:
            p_loss = self.perceptual(frames, frames_rec)  # (B*T,)
            rec = rec + self.perceptual_weight * p_loss[:, None, None, None]
            logs["p_loss"] = p_loss.mean()
        nll = rec / torch.exp(self.logvar) + self.logvar  # (B*T, C, H, W)
        nll_loss = torch.sum(nll) / nll.shape[0]
        kl_loss = torch.sum(kl.float()) / kl.shape[0]
        loss = nll_loss + self.kl_weight * kl_loss

        g_loss = d_weight = loss.new_zeros(())
        if self.discriminator_active(global_step):
            # Detached weights: the generator is pushed through D without D collecting gradients.
            logits_fake = frozen_call(self.discriminator, frames_rec)  # (B*T, 1, H', W')
            g_loss = -torch.mean(logits_fake.float())
            if self.training and torch.is_grad_enabled():
                d_weight = self.adaptive_weight(nll_loss, g_loss, last_layer_weight)
            loss = loss + d_weight * self.disc_factor * g_loss

        logs |= {"loss": loss, "nll": nll_loss, "kl": kl_loss, "logvar": self.logvar}
        logs |= {"d_weight": d_weight, "g_loss": g_loss}
        return loss, _as_floats(logs)

    def discriminator_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        global_step: int,
        discriminator: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's hinge loss for one batch (inputs and reconstructions are detached here).

        Args:
            inputs, reconstructions: videos (B, C, T, H, W), as for `generator_loss`.
            global_step: before `disc_start` the loss is a constant 0 (no forward, no gradient).
            discriminator: the module to run, e.g. the `accelerator.prepare`d `self.discriminator`;
                default `self.discriminator`.

        Returns:
            loss: fp32 scalar. logs: `d_loss`, `logits_real`, `logits_fake` (mean logits).
        """
        if not self.discriminator_active(global_step):
            return inputs.new_zeros((), dtype=torch.float32), {"d_loss": 0.0}
        discriminator = self.discriminator if discriminator is None else discriminator
        frames, frames_rec = _fold_time_into_batch(inputs.detach(), reconstructions.detach())
        # Real and fake in separate calls, as in the original: BatchNorm sees one kind at a time.
        logits_real = discriminator(frames).float()  # (B*T, 1, H', W')
        logits_fake = discriminator(frames_rec).float()
        d_loss = self.disc_factor * hinge_d_loss(logits_real, logits_fake)
        logs = {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d_loss, _as_floats(logs)
