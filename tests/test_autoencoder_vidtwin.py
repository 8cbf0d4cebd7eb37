"""AutoencoderVidTwin: shapes, causality, decoupled decoding, tiling, serialisation, validation."""

import pytest
import torch

from helpers import perturb_

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.models.autoencoder_vidtwin import LinearTimeProfiles


def tiny(**overrides) -> AutoencoderVidTwin:
    torch.manual_seed(0)
    return perturb_(AutoencoderVidTwin.from_preset("tiny", **overrides)).eval()


def video(model: AutoencoderVidTwin, batch: int = 1, frames: int | None = None, seed: int = 0) -> torch.Tensor:
    c, t, h, w = model.sample_shape
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, c, frames or t, h, w, generator=generator) * 2 - 1


@pytest.mark.parametrize(
    "overrides, structure_shape, dynamics_shape",
    [
        ({}, (4, 8, 2, 2), (4, 8, 4)),
        # 7x7 token grid: structure 7 -> 4 -> (decode) 8, centre-cropped back to 7.
        ({"sample_size": 56}, (4, 8, 4, 4), (4, 8, 8)),
        # two structure down-blocks: 7 -> 4 -> 2 -> 4 -> 8, crop offset 0.
        ({"sample_size": 56, "structure_down_blocks": 2}, (4, 8, 2, 2), (4, 8, 8)),
        # no dynamics downsampling, temporal patch 2, fewer queries than token frames.
        ({"dynamics_down_blocks": 0, "patch_size_t": 2, "num_queries": 3}, (4, 3, 2, 2), (4, 4, 8)),
        # rectangular frames are fine when the dynamics path keeps full resolution.
        ({"sample_size": (32, 48), "dynamics_down_blocks": 0}, (4, 8, 2, 3), (4, 8, 10)),
        ({"structure_channels": 2, "dynamics_channels": 3, "dynamics_down_blocks": 2}, (2, 8, 2, 2), (3, 8, 2)),
    ],
)
def test_shapes(overrides, structure_shape, dynamics_shape):
    model = tiny(**overrides)
    x = video(model, batch=2)
    with torch.no_grad():
        encoded = model.encode(x)
        recon = model(x).sample
    assert tuple(encoded.structure_dist.mean.shape) == (2, *structure_shape) == (2, *model.structure_latent_shape)
    assert tuple(encoded.dynamics_dist.mean.shape) == (2, *dynamics_shape) == (2, *model.dynamics_latent_shape)
    assert tuple(encoded.latent_dist.mean.shape) == (2, model.latent_size)
    assert recon.shape == x.shape
    assert torch.isfinite(recon).all()


def test_latent_sizes_of_presets():
    with torch.device("meta"):
        released = AutoencoderVidTwin.from_preset("released")
        paper = AutoencoderVidTwin.from_preset("paper")
    assert released.latent_size == 8064 and paper.latent_size == 4928
    assert released.compression_rate == pytest.approx(8064 / (3 * 16 * 224 * 224))
    assert paper.compression_rate == pytest.approx(0.00205, abs=1e-5)  # the paper's "0.20 %"


def test_released_parameter_count():
    # 312,701,490 in the original, less the encoder's final layer and the decoder's patch embedding
    # that it builds and never runs.
    with torch.device("meta"):
        model = AutoencoderVidTwin.from_preset("released")
    assert sum(p.numel() for p in model.parameters()) == 311_518_770


def test_encoder_is_causal_in_time():
    model = tiny()
    x = video(model)
    changed = x.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    with torch.no_grad():
        z = model.encoder(model.patch_embed(x))  # (B, D, t, h, w)
        z_changed = model.encoder(model.patch_embed(changed))
    torch.testing.assert_close(z[:, :, :5], z_changed[:, :, :5], rtol=0, atol=1e-6)
    assert (z[:, :, 5:] - z_changed[:, :, 5:]).abs().max() > 1e-2


def test_pack_unpack_inverse():
    model = tiny()
    with torch.no_grad():
        encoded = model.encode(video(model, batch=3))
    z = encoded.latent_dist.mode()
    structure, dynamics = model.unpack_latents(z)
    torch.testing.assert_close(structure, encoded.structure_dist.mode(), rtol=0, atol=0)
    torch.testing.assert_close(dynamics, encoded.dynamics_dist.mode(), rtol=0, atol=0)
    torch.testing.assert_close(model.pack_latents(structure, dynamics), z, rtol=0, atol=0)
    # The joint posterior is the concatenation of the parts, so its KL is the sum of theirs.
    kl_parts = encoded.structure_dist.kl() + encoded.dynamics_dist.kl()
    torch.testing.assert_close(encoded.latent_dist.kl(), kl_parts)
    with pytest.raises(ValueError, match="packed latent"):
        model.unpack_latents(z[:, :-1])
    with pytest.raises(ValueError, match="same K"):
        model.pack_latents(structure, dynamics[:, :, :-1])


def test_posterior_mean_in_eval_and_sample_when_asked():
    model = tiny()
    x = video(model)
    with torch.no_grad():
        assert torch.equal(model(x).sample, model(x).sample)
        sampled = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(1)).sample
    assert not torch.equal(sampled, model(x).sample)


def test_decoupled_decoding_and_reenactment():
    model = tiny()
    a, b = video(model, seed=1), video(model, seed=2)
    with torch.no_grad():
        za, zb = model.encode(a).latent_dist.mode(), model.encode(b).latent_dist.mode()
        (sa, da), (sb, db) = model.unpack_latents(za), model.unpack_latents(zb)
        structure_only = model.decode(za, part="structure").sample
        dynamics_only = model.decode(za, part="dynamics").sample
        full = model.decode(za).sample
        # Each partial decode depends on its own part only.
        torch.testing.assert_close(model.decode(model.pack_latents(sa, db), part="structure").sample, structure_only)
        torch.testing.assert_close(model.decode(model.pack_latents(sb, da), part="dynamics").sample, dynamics_only)
        swapped = model.reenact(a, b).sample
        torch.testing.assert_close(swapped, model.decode(model.pack_latents(sa, db)).sample)
    for other in (structure_only, dynamics_only, model.decode(zb).sample):
        assert (other - full).abs().max() > 1e-3
    assert (swapped - full).abs().max() > 1e-4 and (swapped - model.decode(zb).sample).abs().max() > 1e-4
    with pytest.raises(ValueError, match="part must be"):
        model.decode(za, part="motion")
    with pytest.raises(ValueError, match="same shape"):
        model.reenact(a, video(model, batch=2))


def test_forward_with_dynamics_sample_is_a_reenactment():
    model = tiny()
    a, b = video(model, batch=2, seed=1), video(model, batch=2, seed=2)
    with torch.no_grad():
        output = model(a, dynamics_sample=b)
        (sa, _), (_, db) = (model.unpack_latents(model.encode(x).latent_dist.mode()) for x in (a, b))
        torch.testing.assert_close(output.latent_dist.mode(), model.pack_latents(sa, db))
        torch.testing.assert_close(output.sample, model.reenact(a, b).sample)
    with pytest.raises(ValueError, match="dynamics_sample must have sample's shape"):
        model(a, dynamics_sample=b[:1])


def test_save_load_round_trip(tmp_path):
    model = tiny(sample_size=56)
    model.save_pretrained(tmp_path)
    loaded = AutoencoderVidTwin.from_pretrained(tmp_path).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name
    x = video(model)
    with torch.no_grad():
        assert torch.equal(model(x).sample, loaded(x).sample)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(tmp_path, dtype):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = AutoencoderVidTwin.from_pretrained(tmp_path, dtype=dtype).eval()
    assert loaded.dtype == dtype
    x = video(model)
    with torch.no_grad():
        recon = loaded(x).sample  # float32 input is cast to the model's dtype
        reference = model(x).sample
    assert recon.dtype == dtype and torch.isfinite(recon).all()
    assert (recon.float() - reference).abs().max() < 0.25


def test_gradients_reach_every_parameter():
    model = tiny().train()
    x = video(model, batch=2)
    out = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample
    kl = model.encode(x).latent_dist.kl().mean()
    ((out - x).abs().mean() + 1e-3 * kl).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_linear_time_profiles_interpolate_between_anchors_spread_over_the_clip():
    queries = torch.randn(5, 3, 4)  # (N, n_q, D)
    frames = LinearTimeProfiles(3, 16)(queries)  # anchors at frames 0, 7.5, 15
    torch.testing.assert_close(frames[:, 0], queries[:, 0])
    torch.testing.assert_close(frames[:, 15], queries[:, 2])
    torch.testing.assert_close(frames[:, 3], queries[:, 0] + 3 / 7.5 * (queries[:, 1] - queries[:, 0]))
    torch.testing.assert_close(frames[:, 10], queries[:, 1] + 2.5 / 7.5 * (queries[:, 2] - queries[:, 1]))
    torch.testing.assert_close(LinearTimeProfiles(1, 16)(queries[:, :1]), queries[:, :1].expand(5, 16, 4))


def test_linear_time_profiles_model_trains_saves_and_loads(tmp_path):
    # The interpolation is fixed: no parameter of its own, nothing in the checkpoint, the same decodes after loading.
    learned, linear = tiny(num_queries=3), tiny(num_queries=3, structure_time_profiles="linear")
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in linear.parameters()) == 3 * 8 + 8
    assert not any("structure_decoder.to_frames.2" in key for key in linear.state_dict())
    linear.save_pretrained(tmp_path)
    loaded = AutoencoderVidTwin.from_pretrained(tmp_path).eval()
    assert loaded.config.structure_time_profiles == "linear"
    x = video(linear)
    with torch.no_grad():
        assert torch.equal(linear(x).sample, loaded(x).sample)
    loaded.train()
    (loaded(x).sample - x).abs().mean().backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_gradient_checkpointing_matches():
    model = tiny().train()
    model.structure_encoder.qformer.dropout = 0.0
    for module in model.structure_encoder.qformer.modules():
        if hasattr(module, "dropout"):
            module.dropout = 0.0
    x = video(model)
    model(x).sample.square().mean().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
    model(x).sample.square().mean().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name], msg=name)


def test_slicing_matches_batch():
    model = tiny()
    x = video(model, batch=3)
    with torch.no_grad():
        reference = model(x).sample
        model.enable_slicing()
        sliced = model(x).sample
    torch.testing.assert_close(sliced, reference, rtol=1e-5, atol=1e-5)


def test_tiling_equals_chunk_by_chunk_encoding():
    model = tiny()
    frames = model.sample_shape[1]
    x = video(model, frames=2 * frames + 3)  # two full chunks and a partial one
    model.enable_tiling()
    chunk_lengths = []
    original = model._encode_chunk
    model._encode_chunk = lambda clip, *rest: chunk_lengths.append(clip.shape[2]) or original(clip, *rest)
    with torch.no_grad():
        encoded = model.encode(x)
        recon = model(x).sample
    assert chunk_lengths == [frames] * 6  # 3 chunks, each encoded by encode() and forward(); never longer
    model.disable_tiling()

    last = x[:, :, 2 * frames :]
    padded_last = torch.cat([last, last[:, :, -1:].expand(-1, -1, frames - 3, -1, -1)], dim=2)
    chunks = [x[:, :, :frames], x[:, :, frames : 2 * frames], padded_last]
    with torch.no_grad():
        per_chunk = [model.encode(chunk) for chunk in chunks]
        decoded = torch.cat([model.decode(e.latent_dist.mode()).sample for e in per_chunk], dim=2)
    expected_s = torch.cat([e.structure_dist.mean for e in per_chunk], dim=2)
    expected_d = torch.cat([e.dynamics_dist.mean for e in per_chunk], dim=2)
    torch.testing.assert_close(encoded.structure_dist.mean, expected_s)
    torch.testing.assert_close(encoded.dynamics_dist.mean, expected_d)
    assert encoded.latent_dist.mean.shape == (1, 3 * model.latent_size)
    assert recon.shape == x.shape  # decoded back to exactly the input length
    torch.testing.assert_close(recon, decoded[:, :, : x.shape[2]])


@pytest.mark.parametrize("blend", [1, 2, 4])
def test_seam_blending_crossfades_the_reconstruction_of_the_frames_around_the_seam(blend):
    model = tiny()
    frames, half = model.sample_shape[1], model.sample_shape[1] // 2
    before, after = video(model, seed=1), video(model, seed=2)
    with torch.no_grad():
        blended_before, blended_after = model.blend_seam(before, after, blend)
        window = torch.cat([before[:, :, half:], after[:, :, :half]], dim=2)
        bridge = model.decode(model.encode(window).latent_dist.mode()).sample
    joined, blended = torch.cat([before, after], dim=2), torch.cat([blended_before, blended_after], dim=2)
    # Weight 1 next to the seam, falling by 1/blend per frame; frames further away are untouched, exactly.
    for offset in range(-half, half):
        index, weight = frames + offset, max(0.0, 1 - (abs(offset + 0.5) - 0.5) / blend)
        expected = joined[:, :, index] + weight * (bridge[:, :, half + offset] - joined[:, :, index])
        torch.testing.assert_close(blended[:, :, index], expected, rtol=1e-5, atol=1e-5)
        if weight == 0:
            assert torch.equal(blended[:, :, index], joined[:, :, index])
    assert torch.equal(blended[:, :, : frames - half], joined[:, :, : frames - half])
    assert torch.equal(blended[:, :, frames + half :], joined[:, :, frames + half :])


def test_tiled_decode_blends_every_seam_on_its_own():
    model = tiny()
    frames = model.sample_shape[1]
    model.enable_tiling()
    with torch.no_grad():
        z = model.encode(video(model, frames=3 * frames)).latent_dist.mode()
        plain = model.decode(z).sample
        chunks = list(plain.split(frames, dim=2))
        for k in (1, 2):  # each seam's window lies outside the frames the other seam changes
            chunks[k - 1], chunks[k] = model.blend_seam(chunks[k - 1], chunks[k], 2)
        torch.testing.assert_close(model.decode(z, blend_num_frames=2).sample, torch.cat(chunks, dim=2))
        assert not torch.equal(model.decode(z, blend_num_frames=2).sample, plain)
        one_chunk = z[:, : model.latent_size]
        assert torch.equal(model.decode(one_chunk, blend_num_frames=2).sample, model.decode(one_chunk).sample)
        for bad in (frames // 2 + 1, -1, 1.5, True):
            with pytest.raises(ValueError, match=r"blend_num_frames must be an integer in \[1, 4\]"):
                model.decode(z, blend_num_frames=bad)
        with pytest.raises(ValueError, match="with part= pass 0"):
            model.decode(z, part="structure", blend_num_frames=2)
        with pytest.raises(ValueError, match="two decoded chunks"):
            model.blend_seam(plain[:, :, :frames], plain[:, :, : frames - 1], 2)


def test_bad_inputs_are_rejected():
    model = tiny()
    good = video(model)
    cases = {
        "shape \\(B, 3, T, 32, 32\\)": good[0],
        "3 channels": good[:, :2],
        "frames of 32x32": torch.zeros(1, 3, 8, 32, 40),
        "enable_tiling": good[:, :, :5],
        "NaN or Inf": good.clone().index_fill_(2, torch.tensor([3]), float("nan")),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            model.encode(bad)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.encode(good.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="packed latent"):
        model.decode(torch.zeros(1, model.latent_size + 1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.decode(torch.full((1, model.latent_size), float("nan")))


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        AutoencoderVidTwin.from_preset("tiny", sample_size=36)
    with pytest.raises(ValueError, match="square token grid"):
        AutoencoderVidTwin.from_preset("tiny", sample_size=(32, 48))
    with pytest.raises(ValueError, match="structure_time_profiles='cubic' must be one of"):
        AutoencoderVidTwin.from_preset("tiny", structure_time_profiles="cubic")
    with pytest.raises(ValueError, match="Unknown preset"):
        AutoencoderVidTwin.from_preset("huge")
