import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from vidtwin_gen.evaluation.metrics import lpips_video, psnr, ssim, to_unit_range


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM of two 2-D float64 images on [0, 1], written out with SciPy (skimage's arithmetic:
    Gaussian sigma 1.5 truncated at 3.5 sigma = 11 taps, population covariances, 5-pixel border cropped)."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(image):
        return gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[5:-5, 5:-5].mean())


def test_psnr_known_values():
    x = torch.zeros(1, 3, 2, 8, 8)
    y = x.clone()
    y[:, :, 0] = 0.1  # frame 0: MSE 0.01 -> 20 dB
    y[:, :, 1] = 0.01  # frame 1: MSE 1e-4 -> 40 dB
    # Per-frame PSNR then mean (30 dB), not the PSNR of the mean MSE (about 23 dB).
    assert psnr(x, y).item() == pytest.approx(30.0, abs=1e-4)
    assert psnr(x[:, :, :1], y[:, :, :1]).item() == pytest.approx(20.0, abs=1e-4)
    # data_range 2 scales the peak: +20*log10(2) dB.
    assert psnr(x, y, data_range=2.0).item() == pytest.approx(30.0 + 20 * math.log10(2), abs=1e-4)
    # Identical clips stay finite; one value per clip.
    batch = torch.rand(3, 3, 4, 8, 8)
    out = psnr(batch, batch)
    assert out.shape == (3,) and torch.isfinite(out).all() and (out >= 99).all()


def test_ssim_matches_scipy_reference():
    rng = np.random.default_rng(0)
    # Correlated pair: a smooth-ish image and a noisy copy, 2 channels x 2 frames of 24x31 (non-square).
    a = gaussian_filter(rng.random((2, 2, 24, 31)), sigma=(0, 0, 1, 1))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    expected = np.mean([reference_ssim(a[c, t], b[c, t]) for c in range(2) for t in range(2)])
    got = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None]).item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert 0.1 < expected < 0.95  # a meaningful, non-degenerate test case

    # Independent uniform noise: SSIM near 0, still matching the reference.
    c, d = rng.random((1, 1, 20, 20)), rng.random((1, 1, 20, 20))
    got = ssim(torch.from_numpy(c)[None], torch.from_numpy(d)[None]).item()
    assert got == pytest.approx(reference_ssim(c[0, 0], d[0, 0]), abs=1e-6)


def test_ssim_properties_and_shapes():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = [ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert noisy[0] > noisy[1] > noisy[2]
    # Images (B, C, H, W) are one-frame clips.
    assert ssim(x[:, :, 0], x[:, :, 0]).shape == (2,)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 1, 8, 8), torch.rand(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(1, 3, 2, 8, 8), torch.rand(1, 3, 2, 8, 9))


def test_to_unit_range_clamps():
    video = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert torch.equal(to_unit_range(video), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_lpips_video_is_framewise_mean():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 4, 16, 16) * 2 - 1, torch.rand(2, 3, 4, 16, 16) * 2 - 1

    def image_distance(a, b):  # (N, 3, H, W) -> (N,)
        return (a - b).abs().mean(dim=(1, 2, 3))

    expected = torch.stack(
        [torch.stack([image_distance(x[i, :, t][None], y[i, :, t][None])[0] for t in range(4)]).mean() for i in range(2)]
    )
    assert torch.allclose(lpips_video(image_distance, x, y), expected)


def test_lpips_video_with_in_house_lpips():
    from vidtwin_gen.evaluation.lpips import LPIPS

    torch.manual_seed(0)
    lpips = LPIPS().eval()
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        same = lpips_video(lpips, x, x)
        different = lpips_video(lpips, x, -x)
    assert same.shape == (1,) and same.item() == pytest.approx(0.0, abs=1e-6)
    assert different.item() != pytest.approx(0.0, abs=1e-6)
