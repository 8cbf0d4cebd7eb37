"""Reconstruction metrics for video clips: PSNR, SSIM and (with local VGG weights) LPIPS.

All take clips (B, C, T, H, W) -- (B, C, H, W) images count as one frame -- and return one value per clip,
the mean over its frames, so a data set's figure is the mean over clips of per-frame scores (how image-codec
and video-tokenizer papers report them, and not the PSNR of the pooled MSE).

PSNR and SSIM read [0, 1] images (data range 1); map [-1, 1] model output with `to_unit_range` first.

SSIM is Wang et al. (2004) as their reference MATLAB code and `skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)` compute it: an 11x11 Gaussian
window with sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged over the *valid* region only (windows
entirely inside the image; the 5-pixel border is not scored). Same-padding would score windows that run over
zero padding, biasing SSIM at the border and making the figure depend on the padding mode.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

PSNR_MIN_MSE = 1e-10  # identical frames score 100 dB instead of inf, so a mean over clips stays finite


def _as_video(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"the two inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim == 4:
        x, y = x.unsqueeze(2), y.unsqueeze(2)
    if x.ndim != 5:
        raise ValueError(f"expected clips (B, C, T, H, W) or images (B, C, H, W), got shape {tuple(x.shape)}")
    return x, y


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamping values outside the range (decoder output is unclamped)."""
    return ((video.clamp(-1, 1) + 1) / 2).float()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR in dB averaged over frames: (B, C, T, H, W) x2 -> (B,)."""
    x, y = _as_video(x, y)
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 3, 4))  # (B, T)
    return (10 * torch.log10(data_range**2 / mse.clamp_min(PSNR_MIN_MSE))).mean(dim=1).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) in float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM (Wang et al.) per channel and frame, averaged: (B, C, T, H, W) x2 -> (B,). Frames >= window_size."""
    x, y = _as_video(x, y)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs frames of at least {window_size}x{window_size}, got {tuple(x.shape[-2:])}")
    window = gaussian_window(window_size, sigma).to(x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(images: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian, no padding: (N, 1, H, W) -> (N, 1, H - 10, W - 10).
        images = F.conv2d(images, window.view(1, 1, -1, 1))
        return F.conv2d(images, window.view(1, 1, 1, -1))

    scores = []
    # One clip at a time in float64: the variance is a difference of two means, where float32 loses digits.
    for a, b in zip(x, y):
        a = a.double().transpose(0, 1).reshape(-1, 1, *a.shape[-2:])  # (T*C, 1, H, W)
        b = b.double().transpose(0, 1).reshape(-1, 1, *b.shape[-2:])
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        scores.append(ssim_map.mean())
    return torch.stack(scores).float()


def lpips_video(lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Frame-wise LPIPS averaged over frames: clips (B, 3, T, H, W) in [-1, 1] -> (B,).

    `lpips` maps two image batches (N, 3, H, W) in [-1, 1] to (N,) distances, e.g.
    `vidtwin_gen.evaluation.lpips.LPIPS.from_pretrained(vgg_path, lin_path)`.
    """
    x, y = _as_video(x, y)
    b, c, t, h, w = x.shape
    frames_x = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
    frames_y = y.transpose(1, 2).reshape(b * t, c, h, w)
    return lpips(frames_x, frames_y).reshape(b, t).mean(dim=1)
