"""Bad configs and bad inputs of both models: a ValueError/TypeError naming the key or argument, the value and
what is allowed, never a ZeroDivisionError, a negative dimension, a huge allocation or a silently wrong result."""

import pytest
import torch

from vidtwin_gen import AutoencoderVidTwin, VidTwinTransformer3DModel


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": 0}, r"patch_size=0 is out of range: allowed \[1, 32\]"),
        ({"patch_size": 64}, r"patch_size=64 is out of range: allowed \[1, 32\]"),
        ({"num_attention_heads": 0}, r"num_attention_heads=0 is out of range: allowed \[1, 1024\]"),
        ({"hidden_size": -64}, r"hidden_size=-64 is out of range: allowed \[4, 65536\]"),
        # 20 down blocks would allocate ~77 GB of conv weights; the 4x4 grid allows 2 halvings.
        ({"structure_down_blocks": 20}, r"structure_down_blocks=20 is out of range: allowed \[0, 2\]"),
        ({"structure_down_blocks": -1}, r"structure_down_blocks=-1 is out of range"),
        ({"dynamics_down_blocks": 9}, r"dynamics_down_blocks=9 is out of range: allowed \[0, 2\]"),
        ({"num_encoder_layers": -2}, r"num_encoder_layers=-2 is out of range: allowed \[1, 1024\]"),
        ({"num_decoder_layers": 0}, r"num_decoder_layers=0 is out of range"),
        ({"num_frames": 0}, r"num_frames=0 is out of range: allowed \[1, 4096\]"),
        ({"patch_size_t": 0}, r"patch_size_t=0 is out of range: allowed \[1, 8\]"),
        ({"sample_size": (0, 32)}, r"sample_size=\(0, 32\) must be 2 positive integers"),
        ({"sample_size": 32.5}, r"sample_size=32.5 must be 2 positive integers"),
        ({"in_channels": 0}, r"in_channels=0 is out of range"),
        ({"num_queries": True}, r"num_queries=True must be an integer"),
        ({"query_dim": 0}, r"query_dim=0 is out of range"),
        ({"qformer_num_attention_heads": 0}, r"qformer_num_attention_heads=0 is out of range"),
        ({"qformer_num_layers": -1}, r"qformer_num_layers=-1 is out of range"),
        ({"qformer_intermediate_size": 0}, r"qformer_intermediate_size=0 is out of range"),
        ({"qformer_cross_attention_frequency": 0}, r"qformer_cross_attention_frequency=0 is out of range"),
        ({"qformer_dropout": 1.5}, r"qformer_dropout=1.5 is out of range: allowed \[0, 1\)"),
        ({"structure_channels": 0}, r"structure_channels=0 is out of range"),
        ({"structure_base_channels": -8}, r"structure_base_channels=-8 is out of range"),
        ({"dynamics_channels": 0}, r"dynamics_channels=0 is out of range"),
        ({"mlp_ratio": 0}, r"mlp_ratio=0 is out of range: allowed \(0.0, 64.0\]"),
        ({"mlp_ratio": float("nan")}, r"mlp_ratio=nan must be a number"),
    ],
)
def test_autoencoder_config_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderVidTwin.from_preset("tiny", **overrides)


def test_autoencoder_config_reports_every_problem():
    with pytest.raises(ValueError) as error:
        AutoencoderVidTwin.from_preset("tiny", hidden_size=-64, num_encoder_layers=-2, qformer_num_layers=0)
    for key in ("hidden_size=-64", "num_encoder_layers=-2", "qformer_num_layers=0"):
        assert key in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 0}, r"num_attention_heads=0 is out of range: allowed \[1, 1024\]"),
        ({"hidden_size": -64}, r"hidden_size=-64 is out of range: allowed \[16, 65536\]"),
        ({"num_layers": -2}, r"num_layers=-2 is out of range: allowed \[1, 1024\]"),
        ({"mlp_ratio": -1.0}, r"mlp_ratio=-1.0 is out of range"),
        ({"text_embed_dim": 0}, r"text_embed_dim=0 is out of range"),
        ({"pooled_text_embed_dim": -3, "text_embed_dim": 8}, r"pooled_text_embed_dim=-3 is out of range"),
        ({"num_classes": 2.5}, r"num_classes=2.5 must be an integer"),
        ({"structure_latent_shape": (4, 0, 2, 2)}, r"structure_latent_shape=\(4, 0, 2, 2\) must be 4 positive integers"),
        ({"dynamics_latent_shape": (4, -8, 4)}, r"dynamics_latent_shape=\(4, -8, 4\) must be 3 positive integers"),
        ({"structure_patch_size": (0, 1, 1)}, r"structure_patch_size=\(0, 1, 1\) must be 3 positive"),
        # a patch larger than its axis is all padding, and a huge input projection
        ({"structure_patch_size": (1, 1000, 1000)}, r"structure_patch_size=\(1, 1000, 1000\) is out of range: each at most \(8, 2, 2\)"),
        ({"dynamics_patch_size": (1, 3)}, r"dynamics_patch_size=\(1, 3\) is out of range: each at most \(8, 2\)"),
        ({"dynamics_branch_sizes": (0, 4)}, r"dynamics_branch_sizes=\(0, 4\) must be 2 positive integers"),
        ({"structure_latent_mean": [0.0, float("nan"), 0.0, 0.0]}, r"structure_latent_mean must be finite"),
    ],
)
def test_transformer_config_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        VidTwinTransformer3DModel.from_preset("tiny", **overrides)


# ---------------------------------------------------------------------------------------------- VAE inputs


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderVidTwin.from_preset("tiny").eval()


def test_encode_refuses_non_float_videos(vae):
    shape = (1, *vae.sample_shape)
    for bad in (torch.zeros(shape, dtype=torch.uint8), torch.zeros(shape, dtype=torch.bool),
                torch.zeros(shape, dtype=torch.int64), torch.zeros(shape, dtype=torch.complex64)):
        with pytest.raises(TypeError, match=f"floating-point.*got dtype {bad.dtype}.*127.5"):
            vae.encode(bad)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        vae.encode(torch.zeros(shape).numpy())


def test_encode_refuses_values_far_outside_minus_one_one(vae):
    pixels = torch.rand(1, *vae.sample_shape) * 255
    with pytest.raises(ValueError, match=r"looks like 0..255 pixels: scale to \[-1, 1\]"):
        vae.encode(pixels)
    with pytest.raises(ValueError, match="looks like 0..255"):
        vae(pixels)  # the training path checks too
    slightly_over = torch.full((1, *vae.sample_shape), 1.2)  # augmentation overshoot is tolerated
    with torch.no_grad():
        assert torch.isfinite(vae.encode(slightly_over).latent_dist.mean).all()
    with pytest.raises(ValueError, match="at least one clip"):
        vae.encode(torch.zeros(0, *vae.sample_shape))


def test_decode_checks_latent_and_num_frames(vae):
    frames = vae.sample_shape[1]
    z = torch.zeros(1, vae.latent_size)
    for bad in (-3, 0, frames + 1, True, 2.5, "8"):
        with pytest.raises(ValueError, match=rf"num_frames={bad!r} must be None or an integer in \[1, {frames}\]"):
            vae.decode(z, num_frames=bad)
    with torch.no_grad():
        assert vae.decode(z, num_frames=5).sample.shape[2] == 5
        # a tiled latent of 2 chunks holds 2T frames
        assert vae.decode(torch.zeros(1, 2 * vae.latent_size), num_frames=frames + 3).sample.shape[2] == frames + 3
    with pytest.raises(ValueError, match=f"latent_size is {vae.latent_size}"):
        vae.decode(torch.zeros(1, 100))
    with pytest.raises(ValueError, match="packed latent"):
        vae.decode(torch.zeros(0, vae.latent_size))
    with pytest.raises(TypeError, match="floating-point"):
        vae.decode(torch.zeros(1, vae.latent_size, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- DiT inputs


def test_transformer_refuses_boolean_class_labels():
    model = VidTwinTransformer3DModel.from_preset("tiny", num_classes=3)
    structure, dynamics = torch.zeros(1, *model.structure_shape), torch.zeros(1, *model.dynamics_shape)
    with pytest.raises(ValueError, match="class_labels must be integers.*torch.bool"):
        model(structure, dynamics, 1.0, class_labels=torch.tensor([True]))
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 2\] or 3"):
        model(structure, dynamics, 1.0, class_labels=torch.tensor([-1]))
