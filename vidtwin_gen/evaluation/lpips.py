"""LPIPS (VGG16, v0.1) perceptual distance, written without torchvision.

Same network and arithmetic as richzhang/PerceptualSimilarity's `lpips.LPIPS(net="vgg")` (the copy that
taming-transformers, sgm and VidTok use as the perceptual loss):

    x in [-1, 1] -> (x - shift) / scale -> VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    -> unit-normalise each feature vector over channels -> squared difference of the two images
    -> 1x1 conv to one channel ("lin" layer) -> spatial mean -> sum over the five layers.

Weights come from two local files the user provides; nothing is downloaded:

- torchvision's `vgg16-397923af.pth` (keys `features.N.weight` / `features.N.bias`; the `classifier.*`
  keys are ignored), loaded as is because `self.features` keeps torchvision's layer indices;
- LPIPS's `vgg.pth` (keys `lin0.model.1.weight` ... `lin4.model.1.weight`, each (1, C, 1, 1)).

Either may be `.pth` (read with `torch.load(weights_only=True)`) or `.safetensors`.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

# torchvision's vgg16().features: 13 3x3 convs, each followed by a ReLU, and max-pools ("M"). The
# last pool (index 30) is never reached by LPIPS and is left out; that does not move any index.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in that Sequential of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
FEATURE_LAYERS = (3, 8, 15, 22, 29)
FEATURE_CHANNELS = (64, 128, 256, 512, 512)
# Maps [-1, 1] images to the ImageNet normalisation VGG was trained with (PerceptualSimilarity's ScalingLayer).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


def _normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weight file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict of tensors (expected a .pth or .safetensors state dict)")
    return state


def _take(
    state: dict[str, torch.Tensor],
    key_map: dict[str, str],
    expected: dict[str, torch.Tensor],
    path: str | Path,
    what: str,
) -> dict[str, torch.Tensor]:
    """Pick `key_map`'s file keys from `state`, renamed to module keys, checking presence and shapes."""
    missing = [file_key for file_key in key_map if file_key not in state]
    if missing:
        raise ValueError(
            f"{path} is not {what}: missing {len(missing)} of {len(key_map)} keys, e.g. {missing[:3]} "
            f"(found e.g. {sorted(state)[:3]})"
        )
    wrong = [
        f"{file_key}: file {tuple(state[file_key].shape)}, expected {tuple(expected[key].shape)}"
        for file_key, key in key_map.items()
        if state[file_key].shape != expected[key].shape
    ]
    if wrong:
        raise ValueError(f"{path} is not {what}: shape mismatch for {'; '.join(wrong[:3])}")
    return {key: state[file_key] for file_key, key in key_map.items()}


class LPIPS(nn.Module):
    """LPIPS(VGG16) distance between two image batches (B, 3, H, W) in [-1, 1] -> (B,).

    `LPIPS()` is randomly initialised (tests); use `LPIPS.from_pretrained(vgg_path, lin_path)` for the
    real metric. Runs in float32 even under autocast: the channel normalisation divides by a norm
    plus 1e-10, which bf16 does not resolve.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in FEATURE_CHANNELS)

    @classmethod
    def from_pretrained(cls, vgg_path: str | Path, lin_path: str | Path) -> "LPIPS":
        """Load torchvision's VGG16 weights and LPIPS's lin weights; the result is frozen and in eval mode."""
        model = cls()
        expected = model.state_dict()
        vgg_keys = {k: k for k in expected if k.startswith("features.")}
        lin_keys = {f"lin{i}.model.1.weight": f"lins.{i}.weight" for i in range(len(FEATURE_CHANNELS))}
        vgg_what = "torchvision's vgg16 state dict (vgg16-397923af.pth)"
        lin_what = "LPIPS's VGG lin-layer weights (vgg.pth)"
        state = _take(_read_state_dict(vgg_path), vgg_keys, expected, vgg_path, vgg_what)
        state |= _take(_read_state_dict(lin_path), lin_keys, expected, lin_path, lin_what)
        model.load_state_dict(state)
        return model.requires_grad_(False).eval()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.ndim != 4 or input.shape[1] != 3 or input.shape != target.shape:
            raise ValueError(
                f"LPIPS expects two image batches of the same shape (B, 3, H, W), got {tuple(input.shape)} "
                f"and {tuple(target.shape)}"
            )
        with torch.autocast(device_type=input.device.type, enabled=False):
            # One pass over both images: (2B, 3, H, W).
            x = (torch.cat([input, target]).float() - self.shift) / self.scale
            distance = x.new_zeros(input.shape[0])
            layer = 0
            for index, module in enumerate(self.features):
                x = module(x)
                if index == FEATURE_LAYERS[layer]:
                    feat_input, feat_target = _normalize_channels(x).chunk(2)
                    diff = (feat_input - feat_target) ** 2  # (B, C_l, H_l, W_l)
                    distance = distance + self.lins[layer](diff).mean(dim=(1, 2, 3))
                    layer += 1
                    if layer == len(FEATURE_LAYERS):
                        break
        return distance
