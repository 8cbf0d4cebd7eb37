"""LPIPS(VGG16) without torchvision: weight loading, arithmetic against a from-scratch reference, properties.

No real VGG16/LPIPS weights exist offline here, so every test uses random weights written to temporary
files under the real files' key names.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidtwin_gen.evaluation.lpips import LPIPS
from vidtwin_gen.training.vae_loss import VidTwinLoss

# torchvision's vgg16().features, written out independently of the module: (index, in, out) per conv,
# grouped into the five blocks whose last ReLU LPIPS taps (relu1_2 ... relu5_3).
VGG16_BLOCKS = [
    [(0, 3, 64), (2, 64, 64)],
    [(5, 64, 128), (7, 128, 128)],
    [(10, 128, 256), (12, 256, 256), (14, 256, 256)],
    [(17, 256, 512), (19, 512, 512), (21, 512, 512)],
    [(24, 512, 512), (26, 512, 512), (28, 512, 512)],
]
LIN_CHANNELS = [64, 128, 256, 512, 512]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights under torchvision's / LPIPS's key names, as .pth and .safetensors."""
    g = torch.Generator().manual_seed(0)
    vgg = {}
    for block in VGG16_BLOCKS:
        for index, c_in, c_out in block:
            vgg[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * math.sqrt(2 / (9 * c_in))
            vgg[f"features.{index}.bias"] = 0.01 * torch.randn(c_out, generator=g)
    vgg["classifier.0.weight"] = torch.randn(4, 8, generator=g)  # torchvision's file also holds the classifier
    # Trained lin weights are non-negative (LPIPS clamps them), which makes the distance >= 0.
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(LIN_CHANNELS)}
    folder = tmp_path_factory.mktemp("lpips")
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(lin, folder / "vgg.pth")
    save_file(vgg, folder / "vgg16.safetensors")
    save_file(lin, folder / "vgg.safetensors")
    return vgg, lin, folder


@pytest.fixture(scope="module")
def lpips(weight_files):
    _, _, folder = weight_files
    return LPIPS.from_pretrained(folder / "vgg16-397923af.pth", folder / "vgg.pth")


def reference_lpips(vgg, lin, x, y):
    """LPIPS v0.1 from its definition, with plain functional ops."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(img):
        h, taps = (img - shift) / scale, []
        for b, block in enumerate(VGG16_BLOCKS):
            if b:
                h = F.max_pool2d(h, 2)
            for index, _, _ in block:
                h = F.relu(F.conv2d(h, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1))
            taps.append(h)
        return taps

    total = torch.zeros(x.shape[0])
    for i, (a, b) in enumerate(zip(features(x), features(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += F.conv2d((a - b) ** 2, lin[f"lin{i}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def images(seed, n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pth_and_safetensors_load_and_match_reference(weight_files, lpips):
    vgg, lin, folder = weight_files
    from_safetensors = LPIPS.from_pretrained(folder / "vgg16.safetensors", folder / "vgg.safetensors")
    x, y = images(1), images(2)
    with torch.no_grad():
        out = lpips(x, y)
        assert out.shape == (2,)
        torch.testing.assert_close(from_safetensors(x, y), out, rtol=0, atol=0)
        torch.testing.assert_close(out, reference_lpips(vgg, lin, x, y), rtol=1e-5, atol=1e-7)


def test_frozen_and_in_eval_mode(lpips):
    assert not lpips.training
    assert not any(p.requires_grad for p in lpips.parameters())


def test_metric_properties_and_input_gradient(lpips):
    x, y = images(3), images(4)
    with torch.no_grad():
        assert torch.equal(lpips(x, x), torch.zeros(2))
        d_xy, d_yx = lpips(x, y), lpips(y, x)
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)

    x = x.clone().requires_grad_(True)
    lpips(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_runs_in_float32_under_bf16_autocast(lpips):
    x, y = images(5), images(6)
    with torch.no_grad():
        expected = lpips(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lpips(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_bad_files_give_clear_errors(weight_files, tmp_path):
    vgg, lin, folder = weight_files
    vgg_path, lin_path = folder / "vgg16-397923af.pth", folder / "vgg.pth"

    torch.save({k: v for k, v in vgg.items() if k != "features.28.weight"}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing 1 of 26 keys.*features\.28\.weight"):
        LPIPS.from_pretrained(tmp_path / "missing.pth", lin_path)

    save_file(lin | {"lin0.model.1.weight": torch.rand(1, 32, 1, 1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch for lin0\.model\.1\.weight: file \(1, 32, 1, 1\)"):
        LPIPS.from_pretrained(vgg_path, tmp_path / "wrong.safetensors")

    with pytest.raises(ValueError, match="torchvision's vgg16"):
        LPIPS.from_pretrained(lin_path, vgg_path)  # files swapped

    torch.save({"state_dict": vgg}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match="not a plain state dict"):
        LPIPS.from_pretrained(tmp_path / "nested.pth", lin_path)

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        LPIPS.from_pretrained(tmp_path / "nowhere.pth", lin_path)


def test_rejects_non_image_input(lpips):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lpips(torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 2, 16, 16))


def test_vae_loss_adds_weighted_lpips_per_pixel(weight_files, lpips):
    _, _, folder = weight_files
    loss_fn = VidTwinLoss(lpips_vgg_path=folder / "vgg16.safetensors", lpips_lin_path=folder / "vgg.pth")
    assert loss_fn.perceptual is not None
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 2, 32, 32, generator=g) * 2 - 1  # (B, C, T, H, W)
    x_rec = (x + 0.2 * torch.randn(x.shape, generator=g)).requires_grad_(True)
    kl = torch.tensor([3.0, 5.0])
    loss, logs = loss_fn.generator_loss(x, x_rec, kl, global_step=0)

    frames = x.permute(0, 2, 1, 3, 4).reshape(4, 3, 32, 32)  # (B*T, C, H, W)
    frames_rec = x_rec.detach().permute(0, 2, 1, 3, 4).reshape(4, 3, 32, 32)
    with torch.no_grad():
        p = lpips(frames, frames_rec)  # (B*T,)
    # Each pixel carries |x - x_rec| + 0.05 * LPIPS of its frame; sum over pixels, / (B*T) frames.
    expected = ((frames - frames_rec).abs().sum() + 0.05 * p.sum() * 3 * 32 * 32) / 4 + 1e-3 * 4.0
    assert logs["p_loss"] == pytest.approx(p.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert x_rec.grad.abs().sum() > 0
