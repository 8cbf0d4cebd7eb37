"""VidTwinLoss and PatchDiscriminator: arithmetic against hand computation, the learned log-variance,
the adaptive GAN weight, the hinge loss and the discriminator schedule. CPU, tiny tensors."""

import logging
import math

import pytest
import torch
from torch import nn

from vidtwin_gen.models.autoencoder_vidtwin import DiagonalGaussian
from vidtwin_gen.training import vae_loss
from vidtwin_gen.training.discriminator import PatchDiscriminator
from vidtwin_gen.training.vae_loss import VidTwinLoss, hinge_d_loss


@pytest.fixture(autouse=True)
def _quiet_perceptual_warning(monkeypatch):
    # Every test starts as a fresh process would; the warning test checks the once-only logic itself.
    monkeypatch.setattr(vae_loss, "_perceptual_off_warned", False)


def videos(seed, b=2, t=2, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, t, size, size, generator=g) * 2 - 1
    return x, x + 0.3 * torch.randn(x.shape, generator=g)


class TinyDecoder(nn.Module):
    """latent (B, 8) -> video (B, 3, T, H, W) through one Linear: its weight plays the decoder's last layer."""

    def __init__(self, t=2, size=32):
        super().__init__()
        self.shape = (3, t, size, size)
        self.linear = nn.Linear(8, 3 * t * size * size)

    def forward(self, z):
        return self.linear(z).view(-1, *self.shape)


class FirstChannel(nn.Module):
    """A parameter-free stand-in discriminator: logits = the first channel of each frame."""

    def forward(self, frames):
        return frames[:, :1]


def test_nll_and_kl_on_a_hand_computed_example():
    # KL of two samples through the autoencoder's posterior class: parameters are (mean, logvar)
    # stacked on dim 1. Sample 0: mean (1, 0), logvar (0, log 2); sample 1: the prior itself.
    params = torch.tensor([[[[[1.0, 0.0]]], [[[0.0, math.log(2)]]]], [[[[0.0, 0.0]]], [[[0.0, 0.0]]]]])
    kl = DiagonalGaussian(params).kl()
    kl0 = 0.5 * ((1 + 1 - 1 - 0) + (0 + 2 - 1 - math.log(2)))
    torch.testing.assert_close(kl, torch.tensor([kl0, 0.0]))

    # One 1x1 RGB frame per sample: |x - x_rec| = (0.5, 0.5, 1.0) and (0, 0, 0), summed 2.0 over 2 frames.
    x = torch.tensor([0.5, -0.5, 0.0, 0.2, 0.2, 0.2]).view(2, 3, 1, 1, 1)
    x_rec = torch.tensor([0.0, 0.0, 1.0, 0.2, 0.2, 0.2]).view(2, 3, 1, 1, 1)
    loss_fn = VidTwinLoss(disc_start=100)
    loss, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=0)
    # s = 0: nll = 2.0 / 2 frames; KL averaged over the 2 samples, weight 1e-3.
    assert logs["nll"] == pytest.approx(1.0)
    assert logs["kl"] == pytest.approx(kl0 / 2)
    assert logs["rec_l1"] == pytest.approx(2.0 / 6)
    assert loss.item() == pytest.approx(1.0 + 1e-3 * kl0 / 2)

    # s = log 2: every pixel's loss is halved and gains log 2: (2.0 / 2 + 6 log 2) / 2 frames.
    with torch.no_grad():
        loss_fn.logvar.fill_(math.log(2))
    _, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=0)
    assert logs["nll"] == pytest.approx((1.0 + 6 * math.log(2)) / 2)
    assert logs["logvar"] == pytest.approx(math.log(2))


def test_nll_closed_form_on_random_videos():
    x, x_rec = videos(0, b=2, t=3, size=4)
    kl = torch.tensor([10.0, 30.0])
    loss_fn = VidTwinLoss(disc_start=100, logvar_init=0.7)
    loss, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=0)
    # sum over pixels of (r / e^s + s), divided by B*T = 6 frames.
    expected_nll = (x - x_rec).abs().sum().item() / (math.exp(0.7) * 6) + 0.7 * 3 * 4 * 4
    assert logs["nll"] == pytest.approx(expected_nll, rel=1e-6)
    assert loss.item() == pytest.approx(expected_nll + 1e-3 * 20.0, rel=1e-6)
    assert logs["d_weight"] == 0.0 and logs["g_loss"] == 0.0
    assert "p_loss" not in logs


def test_learned_logvar_gradient_and_optimum():
    x, x_rec = videos(1, b=2, t=2, size=4)
    mean_residual = (x - x_rec).abs().mean().item()
    kl = torch.zeros(2)
    loss_fn = VidTwinLoss(disc_start=100)
    pixels_per_frame = 3 * 4 * 4

    loss, _ = loss_fn.generator_loss(x, x_rec, kl, global_step=0)
    loss.backward()
    # d/ds [sum(r) e^-s / N + s C H W] = C H W (1 - mean(r) e^-s), at s = 0.
    assert loss_fn.logvar.grad.item() == pytest.approx(pixels_per_frame * (1 - mean_residual), rel=1e-5)

    # Gradient descent on s alone settles at s = log(mean per-pixel residual).
    optimizer = torch.optim.SGD([loss_fn.logvar], lr=0.5 / pixels_per_frame)
    for _ in range(60):
        optimizer.zero_grad()
        loss_fn.generator_loss(x, x_rec, kl, global_step=0)[0].backward()
        optimizer.step()
    assert loss_fn.logvar.item() == pytest.approx(math.log(mean_residual), abs=1e-4)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    loss_fn = VidTwinLoss(disc_start=0).train()
    decoder = TinyDecoder()
    x, _ = videos(2)
    z = torch.randn(2, 8)
    x_rec = decoder(z)
    kl = torch.tensor([1.0, 2.0])
    loss, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=0, last_layer_weight=decoder.linear.weight)

    # The same quantities by hand.
    frames = x.permute(0, 2, 1, 3, 4).reshape(4, 3, 32, 32)
    frames_rec = x_rec.permute(0, 2, 1, 3, 4).reshape(4, 3, 32, 32)
    nll = (frames - frames_rec).abs().sum() / 4
    g = -loss_fn.discriminator(frames_rec).mean()  # train-mode BatchNorm: batch statistics, same output
    (nll_grad,) = torch.autograd.grad(nll, decoder.linear.weight, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g, decoder.linear.weight, retain_graph=True)
    d_weight = 0.05 * min(max(nll_grad.norm().item() / (g_grad.norm().item() + 1e-4), 0.0), 1e4)
    assert 0 < d_weight < 0.05 * 1e4  # not clamped here
    assert logs["d_weight"] == pytest.approx(d_weight, rel=1e-4)
    assert logs["g_loss"] == pytest.approx(g.item(), rel=1e-5)
    assert loss.item() == pytest.approx(nll.item() + 1e-3 * 1.5 + d_weight * g.item(), rel=1e-5)

    # The generator step trains the decoder and logvar, never the discriminator.
    loss.backward()
    assert decoder.linear.weight.grad is not None and loss_fn.logvar.grad is not None
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())


def test_adaptive_weight_clamp_and_errors():
    loss_fn = VidTwinLoss()
    w = nn.Parameter(torch.ones(3))
    weight = loss_fn.adaptive_weight((2 * w).sum(), (4 * w).sum(), w)
    assert not weight.requires_grad
    assert weight.item() == pytest.approx(0.05 * 2 * math.sqrt(3) / (4 * math.sqrt(3) + 1e-4))
    # A vanishing GAN gradient makes the ratio ~3.5e4: clamped to 1e4, times 0.05.
    assert loss_fn.adaptive_weight((2 * w).sum(), (1e-9 * w).sum(), w).item() == pytest.approx(500.0)

    with pytest.raises(ValueError, match="head.linear.weight"):
        loss_fn.adaptive_weight((2 * w).sum(), (4 * w).sum(), None)
    with pytest.raises(ValueError, match="did not produce"):
        loss_fn.adaptive_weight((2 * w).sum(), (4 * w).sum(), nn.Parameter(torch.ones(3)))


def test_hinge_loss_on_hand_made_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = (0, 0.5, 2), mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = (0, 1, 2), mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))


def test_discriminator_and_generator_gan_terms_on_a_stand_in_discriminator():
    loss_fn = VidTwinLoss(disc_start=0).eval()
    loss_fn.discriminator = FirstChannel()
    x = torch.full((1, 3, 2, 4, 4), 2.0)  # real logits 2 -> relu(1 - 2) = 0
    x_rec = torch.full((1, 3, 2, 4, 4), 0.5)  # fake logits 0.5 -> relu(1 + 0.5) = 1.5
    d_loss, logs = loss_fn.discriminator_loss(x, x_rec, global_step=0)
    assert d_loss.item() == pytest.approx(0.75)
    assert logs == pytest.approx({"d_loss": 0.75, "logits_real": 2.0, "logits_fake": 0.5})

    # An explicitly passed discriminator (e.g. the DDP-wrapped one) is the one that runs.
    squashed = nn.Sequential(FirstChannel(), nn.Tanh())
    d_loss, _ = loss_fn.discriminator_loss(x, x_rec, global_step=0, discriminator=squashed)
    assert d_loss.item() == pytest.approx(0.5 * ((1 - math.tanh(2)) + (1 + math.tanh(0.5))))

    # Eval mode: g = -mean(D(x_rec)) is reported, but the adaptive weight is 0 and no gradient is taken.
    loss, logs = loss_fn.generator_loss(x, x_rec, torch.zeros(1), global_step=0)
    assert logs["g_loss"] == pytest.approx(-0.5)
    assert logs["d_weight"] == 0.0
    assert loss.item() == pytest.approx(logs["nll"])


def test_discriminator_schedule():
    loss_fn = VidTwinLoss(disc_start=5).train()
    assert not loss_fn.discriminator_active(4) and loss_fn.discriminator_active(5)
    decoder = TinyDecoder()
    x, _ = videos(3)
    z, kl = torch.randn(2, 8), torch.zeros(2)
    bn = loss_fn.discriminator.main[3]
    running_mean = bn.running_mean.clone()

    # Before disc_start: zero D loss with no graph, no GAN term, no last layer needed, D never runs.
    d_loss, logs = loss_fn.discriminator_loss(x, decoder(z), global_step=4)
    assert d_loss.item() == 0.0 and not d_loss.requires_grad and logs == {"d_loss": 0.0}
    x_rec = decoder(z)
    loss, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=4)
    assert logs["g_loss"] == 0.0 and logs["d_weight"] == 0.0
    assert loss.item() == pytest.approx((x - x_rec).abs().sum().item() / 4, rel=1e-6)
    assert torch.equal(bn.running_mean, running_mean)

    # From disc_start on: the hinge loss trains D, and the generator gets a weighted GAN term.
    d_loss, logs = loss_fn.discriminator_loss(x, decoder(z), global_step=5)
    assert d_loss.requires_grad and logs["d_loss"] > 0
    d_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.discriminator.parameters())
    assert decoder.linear.weight.grad is None  # reconstructions are detached for D
    _, logs = loss_fn.generator_loss(x, decoder(z), kl, global_step=5, last_layer_weight=decoder.linear.weight)
    assert logs["d_weight"] > 0 and logs["g_loss"] != 0.0
    with pytest.raises(ValueError, match="last_layer_weight"):
        loss_fn.generator_loss(x, decoder(z), kl, global_step=5)


def test_bf16_autocast_computes_the_losses_in_float32():
    torch.manual_seed(0)
    loss_fn = VidTwinLoss(disc_start=0).train()
    decoder = TinyDecoder()
    x, _ = videos(4)
    z, kl = torch.randn(2, 8), torch.tensor([1.0, 2.0])
    loss_fp32, logs_fp32 = loss_fn.generator_loss(x, decoder(z), kl, 0, decoder.linear.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_rec = decoder(z)  # bf16 under autocast
        assert x_rec.dtype == torch.bfloat16
        loss, logs = loss_fn.generator_loss(x, x_rec, kl, 0, decoder.linear.weight)
        d_loss, _ = loss_fn.discriminator_loss(x, x_rec, 0)
    assert loss.dtype == torch.float32 and d_loss.dtype == torch.float32
    # Only the decoder output and D's convs are bf16; the sums stay close to the fp32 ones.
    assert logs["nll"] == pytest.approx(logs_fp32["nll"], rel=1e-2)
    assert logs["d_weight"] == pytest.approx(logs_fp32["d_weight"], rel=0.1)
    loss.backward()
    assert loss_fn.logvar.grad.dtype == torch.float32 and torch.isfinite(decoder.linear.weight.grad).all()


def test_perceptual_off_warning_is_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger=vae_loss.__name__):
        VidTwinLoss()
        VidTwinLoss()
        VidTwinLoss(perceptual_weight=0.0)
    warnings = [r for r in caplog.records if "LPIPS" in r.getMessage()]
    assert len(warnings) == 1
    assert "lpips_vgg_path" in warnings[0].getMessage() and "lpips_lin_path" in warnings[0].getMessage()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="both lpips_vgg_path"):
        VidTwinLoss(lpips_vgg_path="vgg16.pth")
    with pytest.raises(ValueError, match="kl_weight=-1"):
        VidTwinLoss(kl_weight=-1)
    loss_fn = VidTwinLoss()
    x, x_rec = videos(5, size=4)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        loss_fn.generator_loss(x[:, :, 0], x_rec[:, :, 0], torch.zeros(2), 0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        loss_fn.generator_loss(x, x_rec, torch.zeros(2, 1), 0)


@pytest.mark.parametrize("size, out", [(32, 2), (64, 6)])
def test_patch_discriminator_shape_and_init(size, out):
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    assert disc(torch.zeros(5, 3, size, size)).shape == (5, 1, out, out)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    assert [n.num_features for n in norms] == [128, 256, 512]
    big = convs[3].weight  # 512 x 256 x 4 x 4
    assert abs(big.mean().item()) < 1e-3 and big.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.equal(norms[2].bias, torch.zeros(512))
    assert norms[2].weight.mean().item() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match=r"\(B\*T, C, H, W\)"):
        disc(torch.zeros(1, 3, 2, size, size))
