"""2-D PatchGAN discriminator (pix2pix's NLayerDiscriminator), applied to video frames one by one.

Same layers, init and state-dict keys (`main.N.*`) as the copy in taming-transformers / sgm / VidTok
that VidTwin trains with (`disc_type: 2d`, BatchNorm, no ActNorm).
"""

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Frames (N, C, H, W) -> patch logits (N, 1, H', W'); one logit per overlapping patch.

    For the default 3 layers H' = H / 8 - 2 (32 -> 2, 64 -> 6, 224 -> 26). Video (B, C, T, H, W) is
    folded to frames (B*T, C, H, W) by the caller.

    Args:
        in_channels: image channels.
        channels: width of the first conv; doubled per layer up to 8x.
        num_layers: stride-2 convs after the first one is `num_layers - 1`, then one stride-1 conv.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev_mult, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            # No bias: BatchNorm's shift replaces it.
            layers += [
                nn.Conv2d(channels * prev_mult, channels * mult, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4:
            raise ValueError(
                f"PatchDiscriminator expects frames (N, C, H, W), got shape {tuple(frames.shape)}; "
                "fold video (B, C, T, H, W) to (B*T, C, H, W) first"
            )
        return self.main(frames)


def _init_weights(module: nn.Module) -> None:
    # pix2pix's init (DCGAN): conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0; conv
    # biases keep PyTorch's default.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
