"""Tests for the VidTwin latent DiT (`VidTwinTransformer3DModel`): tiny sizes, CPU, offline."""

import math

import pytest
import torch

from helpers import perturb_

from vidtwin_gen.models.autoencoder_vidtwin import AutoencoderVidTwin
from vidtwin_gen.models.transformer_vidtwin import (
    VIDTWIN_TRANSFORMER_PRESETS,
    VidTwinTransformer3DModel,
    patchify,
    unpatchify,
)

TEXT_DIM = 24


def tiny(**overrides) -> VidTwinTransformer3DModel:
    return VidTwinTransformer3DModel.from_preset("tiny", **overrides)


def latents(model: VidTwinTransformer3DModel, batch_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    structure = torch.randn(batch_size, *model.structure_shape, generator=generator)
    dynamics = torch.randn(batch_size, *model.dynamics_shape, generator=generator)
    return structure, dynamics


def text(batch_size: int, length: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(batch_size, length, TEXT_DIM, generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[:, length - 2 :] = 0  # the last two tokens are padding
    return states, mask


# ---------------------------------------------------------------------------------------------- patchify


@pytest.mark.parametrize(
    "shape, patch",
    [((2, 3, 7, 7), (2, 2)), ((2, 3, 5, 7, 7), (1, 2, 2)), ((1, 4, 16, 7, 7), (2, 3, 2)), ((2, 3, 6), (4,))],
)
def test_patchify_round_trip_and_layout(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = [math.ceil(s / p) for s, p in zip(shape[2:], patch)]
    assert tokens.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[1])
    assert torch.equal(unpatchify(tokens, patch, shape[2:]), x)
    # The first token is the first patch, channels fastest.
    first = x[(slice(None), slice(None), *[slice(0, p) for p in patch])]
    assert torch.equal(tokens[:, 0], first.movedim(1, -1).reshape(shape[0], -1))
    # The last token reaches into the padding, which holds zeros.
    padded = torch.zeros(shape[0], shape[1], *[g * p for g, p in zip(grid, patch)])
    padded[(slice(None), slice(None), *[slice(0, s) for s in shape[2:]])] = x
    last = padded[(slice(None), slice(None), *[slice(s - p, s) for s, p in zip(padded.shape[2:], patch)])]
    assert torch.equal(tokens[:, -1], last.movedim(1, -1).reshape(shape[0], -1))


@pytest.mark.parametrize(
    "structure_shape, dynamics_shape, branches, structure_patch, dynamics_patch, counts",
    [
        ((4, 16, 7, 7), (8, 16, 14), None, (1, 2, 2), (2, 2), (16 * 4 * 4, 8 * 4, 8 * 4)),
        ((4, 8, 2, 2), (4, 8, 4), None, (1, 1, 1), (1, 1), (32, 16, 16)),
        ((3, 5, 7, 5), (2, 7, 14), (5, 9), (2, 2, 3), (3, 2), (3 * 4 * 2, 3 * 3, 3 * 5)),
    ],
)
def test_model_patchify_round_trip(structure_shape, dynamics_shape, branches, structure_patch, dynamics_patch, counts):
    model = tiny(
        structure_latent_shape=structure_shape,
        dynamics_latent_shape=dynamics_shape,
        dynamics_branch_sizes=branches,
        structure_patch_size=structure_patch,
        dynamics_patch_size=dynamics_patch,
    )
    assert model.token_counts == counts and model.num_tokens == sum(counts)
    structure, dynamics = latents(model, 2)
    tokens = model.patchify_latents(structure, dynamics)
    assert [t.shape[1] for t in tokens] == list(counts)
    back_structure, back_dynamics = model.unpatchify_latents(*tokens)
    assert torch.equal(back_structure, structure) and torch.equal(back_dynamics, dynamics)

    # No patch straddles the width and the height branch.
    w_d = model.dynamics_branch_sizes[0]
    marked = torch.cat([torch.ones_like(dynamics[..., :w_d]), 2 * torch.ones_like(dynamics[..., w_d:])], dim=-1)
    _, by_width, by_height = model.patchify_latents(structure, marked)
    assert set(by_width.unique().tolist()) <= {0.0, 1.0} and set(by_height.unique().tolist()) <= {0.0, 2.0}


# ---------------------------------------------------------------------------------------------- presets


def test_presets():
    assert set(VIDTWIN_TRANSFORMER_PRESETS) == {"paper", "released", "tiny"}
    with torch.device("meta"):  # the paper size without allocating 435 M parameters
        paper = VidTwinTransformer3DModel.from_preset("paper")
    assert (paper.config.num_layers, paper.config.hidden_size, paper.config.num_attention_heads) == (18, 1152, 16)
    assert paper.token_counts == (16 * 7 * 7, 16 * 7, 16 * 7) and paper.num_tokens == 1008
    assert 400e6 < sum(p.numel() for p in paper.parameters()) < 470e6  # DiT-XL is 675 M at 28 layers

    vae_paper = AutoencoderVidTwin.from_preset("paper", num_encoder_layers=1, num_decoder_layers=1)
    assert paper.structure_shape == vae_paper.structure_latent_shape
    assert paper.dynamics_shape == vae_paper.dynamics_latent_shape
    vae_tiny = AutoencoderVidTwin.from_preset("tiny")
    model = tiny()
    assert model.structure_shape == vae_tiny.structure_latent_shape
    assert model.dynamics_shape == vae_tiny.dynamics_latent_shape
    with pytest.raises(ValueError, match="Unknown preset"):
        VidTwinTransformer3DModel.from_preset("huge")


# ---------------------------------------------------------------------------------------------- forward


def test_zero_init_output_shapes_and_timestep_forms():
    model = tiny(num_classes=3, text_embed_dim=TEXT_DIM).eval()
    structure, dynamics = latents(model, 2)
    states, mask = text(2)
    kwargs = dict(class_labels=torch.tensor([0, 3]), encoder_hidden_states=states, encoder_attention_mask=mask)
    block_changes = []
    hooks = [
        block.register_forward_hook(lambda module, args, output: block_changes.append((output - args[0]).abs().max()))
        for block in model.transformer_blocks
    ]
    out = model(structure, dynamics, torch.tensor([10.0, 900.0]), **kwargs)
    for hook in hooks:
        hook.remove()
    assert out.structure.shape == structure.shape and out.dynamics.shape == dynamics.shape
    # adaLN-Zero: every block starts as the identity (zero gates, zero cross-attention output) and the
    # output heads start at zero, so the first prediction is exactly zero.
    assert len(block_changes) == len(model.transformer_blocks) and max(block_changes) == 0
    assert torch.count_nonzero(out.structure) == 0 and torch.count_nonzero(out.dynamics) == 0

    perturb_(model)
    with torch.no_grad():
        scalar = model(structure, dynamics, 500, **kwargs)
        batched = model(structure, dynamics, torch.tensor([500, 500]), **kwargs)
        as_tuple = model(structure, dynamics, 500.0, return_dict=False, **kwargs)
    assert scalar.structure.abs().max() > 0
    torch.testing.assert_close(scalar.structure, batched.structure)
    torch.testing.assert_close(scalar.dynamics, as_tuple[1])


def test_class_conditioning_and_null_class():
    model = perturb_(tiny(num_classes=4)).eval()
    assert model.null_class_label == 4 and model.class_embed.num_embeddings == 5
    structure, dynamics = latents(model, 1)
    with torch.no_grad():
        outputs = [model(structure, dynamics, 400.0, class_labels=torch.tensor([y])).structure for y in range(5)]
    for i in range(5):
        for j in range(i):
            assert (outputs[i] - outputs[j]).abs().max() > 1e-4, f"classes {i} and {j} give the same output"
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny().null_class_label


def test_text_conditioning_respects_mask_and_pooling():
    model = perturb_(tiny(text_embed_dim=TEXT_DIM)).eval()
    structure, dynamics = latents(model, 2)
    states, mask = text(2)
    with torch.no_grad():
        base = model(structure, dynamics, 300.0, encoder_hidden_states=states, encoder_attention_mask=mask)
        # Padding tokens are invisible: changing them changes nothing.
        changed_padding = states.clone()
        changed_padding[:, -2:] += 5.0
        padded = model(structure, dynamics, 300.0, encoder_hidden_states=changed_padding, encoder_attention_mask=mask)
        # A real token does change the output.
        changed_token = states.clone()
        changed_token[:, 0] += 5.0
        real = model(structure, dynamics, 300.0, encoder_hidden_states=changed_token, encoder_attention_mask=mask)
        # The default pooled embedding is the masked mean of the states.
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        explicit = model(
            structure, dynamics, 300.0, encoder_hidden_states=states, encoder_attention_mask=mask,
            pooled_text_embeds=pooled,
        )
    torch.testing.assert_close(padded.structure, base.structure)
    torch.testing.assert_close(padded.dynamics, base.dynamics)
    assert (real.structure - base.structure).abs().max() > 1e-4
    torch.testing.assert_close(explicit.structure, base.structure)


def test_drop_conditions_rate_and_consistency():
    model = tiny(num_classes=10, text_embed_dim=TEXT_DIM)
    n, prob = 20000, 0.15
    labels = torch.arange(n) % 10
    states = torch.randn(n, 3, TEXT_DIM)
    mask = torch.ones(n, 3, dtype=torch.long)
    null_states, null_mask = torch.zeros(1, 3, TEXT_DIM), torch.tensor([[1, 0, 0]])
    dropped = model.drop_conditions(
        prob, class_labels=labels, encoder_hidden_states=states, encoder_attention_mask=mask,
        null_encoder_hidden_states=null_states, null_encoder_attention_mask=null_mask,
        generator=torch.Generator().manual_seed(0),
    )
    is_null = dropped["class_labels"] == model.null_class_label
    rate = is_null.float().mean().item()
    sigma = math.sqrt(prob * (1 - prob) / n)
    assert abs(rate - prob) < 4 * sigma, f"null rate {rate:.4f}, expected {prob} +- {4 * sigma:.4f}"
    # Kept samples are untouched; dropped ones carry the null class and the empty prompt together.
    assert torch.equal(dropped["class_labels"][~is_null], labels[~is_null])
    assert torch.equal(dropped["encoder_hidden_states"][~is_null], states[~is_null])
    assert torch.count_nonzero(dropped["encoder_hidden_states"][is_null]) == 0
    assert torch.equal(dropped["encoder_attention_mask"][is_null], null_mask.expand(int(is_null.sum()), -1))
    assert dropped["pooled_text_embeds"] is None
    # Reproducible with the same generator; all or nothing at the extremes.
    again = model.drop_conditions(prob, class_labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["class_labels"], dropped["class_labels"])
    assert torch.equal(model.drop_conditions(0.0, class_labels=labels)["class_labels"], labels)
    assert (model.drop_conditions(1.0, class_labels=labels)["class_labels"] == 10).all()
    with pytest.raises(ValueError, match="empty prompt"):
        model.drop_conditions(prob, encoder_hidden_states=states)
    with pytest.raises(ValueError, match="pad the empty prompt"):
        model.drop_conditions(
            prob, encoder_hidden_states=states, null_encoder_hidden_states=torch.zeros(1, 4, TEXT_DIM)
        )


# ---------------------------------------------------------------------------------------------- training


def _loss(model, structure, dynamics, labels, states, mask):
    out = model(structure, dynamics, torch.tensor([100.0, 500.0, 900.0, 999.0]), class_labels=labels,
                encoder_hidden_states=states, encoder_attention_mask=mask)
    return out.structure.square().mean() + out.dynamics.square().mean() + out.structure.mean() + out.dynamics.mean()


def test_gradients_at_init_and_after_leaving_it():
    model = tiny(num_classes=3, text_embed_dim=TEXT_DIM)
    structure, dynamics = latents(model, 4)
    states, mask = text(4)
    labels = torch.tensor([0, 1, 2, 3])  # 3 is the null class: every row of the table is used

    # At init the output heads are zero, so only they receive a gradient: every other parameter sits
    # behind a zero head or a zero adaLN gate (adaLN-Zero), and learns from the second step on.
    _loss(model, structure, dynamics, labels, states, mask).backward()
    heads = {f"{part}_proj_out.{kind}" for part in ("structure", "dynamics") for kind in ("weight", "bias")}
    for name, parameter in model.named_parameters():
        nonzero = parameter.grad is not None and parameter.grad.abs().max() > 0
        assert nonzero == (name in heads), f"{name}: gradient {'present' if nonzero else 'missing'} at init"

    model.zero_grad(set_to_none=True)
    perturb_(model)
    _loss(model, structure, dynamics, labels, states, mask).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_gradient_checkpointing_gives_the_same_gradients():
    model = perturb_(tiny(num_classes=3, text_embed_dim=TEXT_DIM))
    structure, dynamics = latents(model, 4)
    states, mask = text(4)
    labels = torch.tensor([0, 1, 2, 3])
    _loss(model, structure, dynamics, labels, states, mask).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    _loss(model, structure, dynamics, labels, states, mask).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name], msg=name)


def test_save_load_round_trip(tmp_path):
    model = perturb_(
        tiny(
            num_classes=3, text_embed_dim=TEXT_DIM, structure_patch_size=(2, 1, 1), dynamics_patch_size=(1, 2),
            structure_latent_mean=[0.1, -0.2, 0.3, 0.0], structure_latent_std=[1.5, 2.0, 0.5, 1.0],
        )
    ).eval()
    model.save_pretrained(tmp_path)
    loaded = VidTwinTransformer3DModel.from_pretrained(tmp_path).eval()
    def public(config):  # JSON turns tuples into lists
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    assert loaded.config.dynamics_latent_std == [1.0] * 4
    structure, dynamics = latents(model, 2)
    states, mask = text(2)
    kwargs = dict(class_labels=torch.tensor([1, 3]), encoder_hidden_states=states, encoder_attention_mask=mask)
    with torch.no_grad():
        expected, got = model(structure, dynamics, 250.0, **kwargs), loaded(structure, dynamics, 250.0, **kwargs)
    assert expected.structure.abs().max() > 0
    assert torch.equal(expected.structure, got.structure) and torch.equal(expected.dynamics, got.dynamics)


def test_bfloat16_forward():
    model = perturb_(tiny(num_classes=3, text_embed_dim=TEXT_DIM)).eval()
    structure, dynamics = latents(model, 2)
    states, mask = text(2)
    kwargs = dict(class_labels=torch.tensor([0, 2]), encoder_hidden_states=states, encoder_attention_mask=mask)
    with torch.no_grad():
        reference = model(structure, dynamics, 600.0, **kwargs)
        model.to(torch.bfloat16)
        half = model(structure.bfloat16(), dynamics.bfloat16(), 600.0, **kwargs)
    assert half.structure.dtype == torch.bfloat16 and half.dynamics.dtype == torch.bfloat16
    error = (half.structure.float() - reference.structure).abs().max() / reference.structure.abs().max()
    assert error < 0.05, f"bf16 output differs from fp32 by {error:.3f} of its range"


def test_tiny_model_overfits_a_handful_of_latents():
    """Rectified flow on 8 latents, one class each: the loss on fixed (noise, sigma) pairs must fall
    below 30 % of its starting value (it reaches ~14 %; an unconditional Gaussian fit stays near 75 %)."""
    torch.manual_seed(0)
    model = tiny(num_classes=8, structure_patch_size=(2, 2, 2), dynamics_patch_size=(2, 2))
    x_s, x_d = latents(model, 8)
    labels = torch.arange(8)
    generator = torch.Generator().manual_seed(1)

    def flow_matching_loss(noise_s, noise_d, sigma):
        s5, s4 = sigma.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        out = model((1 - s5) * x_s + s5 * noise_s, (1 - s4) * x_d + s4 * noise_d, sigma * 1000, class_labels=labels)
        errors = [out.structure - (noise_s - x_s), out.dynamics - (noise_d - x_d)]  # target: eps - x0
        return torch.cat([e.flatten(1) for e in errors], 1).square().mean()

    held = [(torch.randn(x_s.shape, generator=generator), torch.randn(x_d.shape, generator=generator),
             torch.rand(8, generator=generator)) for _ in range(4)]

    def evaluate():
        with torch.no_grad():
            return sum(flow_matching_loss(*batch).item() for batch in held) / len(held)

    initial = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = flow_matching_loss(
            torch.randn(x_s.shape, generator=generator), torch.randn(x_d.shape, generator=generator),
            torch.rand(8, generator=generator),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = evaluate()
    assert final < 0.3 * initial, f"loss went from {initial:.3f} to {final:.3f}"


# ---------------------------------------------------------------------------------------------- statistics, errors


def test_normalize_and_denormalize_latents():
    mean_s, std_s = [0.5, -1.0, 2.0, 0.0], [2.0, 0.5, 1.0, 4.0]
    mean_d, std_d = [1.0, 0.0, -3.0, 0.25], [0.1, 1.0, 3.0, 2.0]
    model = tiny(structure_latent_mean=mean_s, structure_latent_std=std_s,
                 dynamics_latent_mean=mean_d, dynamics_latent_std=std_d)
    structure, dynamics = latents(model, 2)
    norm_s, norm_d = model.normalize_latents(structure, dynamics)
    torch.testing.assert_close(norm_s[:, 1], (structure[:, 1] + 1.0) / 0.5)
    torch.testing.assert_close(norm_d[:, 2], (dynamics[:, 2] + 3.0) / 3.0)
    back_s, back_d = model.denormalize_latents(norm_s, norm_d)
    torch.testing.assert_close(back_s, structure)
    torch.testing.assert_close(back_d, dynamics)
    assert model.normalize_latents(structure.bfloat16(), dynamics.bfloat16())[0].dtype == torch.bfloat16
    # Defaults are the identity.
    plain_s, plain_d = tiny().normalize_latents(structure, dynamics)
    assert torch.equal(plain_s, structure) and torch.equal(plain_d, dynamics)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 72, "num_attention_heads": 4}, "divisible by 16"),
        ({"hidden_size": 64, "num_attention_heads": 3}, "divisible by 16 and by num_attention_heads"),
        ({"structure_latent_shape": (4, 8, 2)}, "structure_latent_shape"),
        ({"dynamics_latent_shape": (4, 8, 5)}, "dynamics_branch_sizes"),
        ({"dynamics_branch_sizes": (1, 2)}, "w_D \\+ h_D = 4"),
        ({"structure_patch_size": (2, 2)}, "structure_patch_size"),
        ({"dynamics_patch_size": (0, 1)}, "dynamics_patch_size"),
        ({"num_classes": -1}, "num_classes"),
        ({"structure_latent_std": [1.0, 1.0, 0.0, 1.0]}, "must be positive"),
        ({"dynamics_latent_mean": [0.0, 0.0]}, "one number per channel"),
    ],
)
def test_invalid_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_invalid_inputs():
    model = tiny(num_classes=3, text_embed_dim=TEXT_DIM)
    structure, dynamics = latents(model, 2)
    states, mask = text(2)
    good = dict(class_labels=torch.tensor([0, 1]), encoder_hidden_states=states, encoder_attention_mask=mask)

    def call(s=structure, d=dynamics, t=1.0, **changes):
        return model(s, d, t, **{**good, **changes})

    with pytest.raises(ValueError, match="expected structure"):
        call(s=structure[:, :, :4])
    with pytest.raises(ValueError, match="expected structure"):
        call(d=dynamics[:1])
    with pytest.raises(ValueError, match="timestep"):
        call(t=torch.ones(3))
    with pytest.raises(ValueError, match="pass class_labels"):
        call(class_labels=None)
    with pytest.raises(ValueError, match="class_labels must be in"):
        call(class_labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="class_labels must be integers"):
        call(class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        call(encoder_hidden_states=None)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        call(encoder_hidden_states=states[..., :8])
    with pytest.raises(ValueError, match="encoder_attention_mask must be"):
        call(encoder_attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match="pooled_text_embeds must be"):
        call(pooled_text_embeds=torch.zeros(2, 7))

    plain = tiny()
    with pytest.raises(ValueError, match="no class conditioning"):
        plain(structure, dynamics, 1.0, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no text conditioning"):
        plain(structure, dynamics, 1.0, encoder_hidden_states=states)
    with pytest.raises(ValueError, match="cannot be derived"):
        tiny(text_embed_dim=TEXT_DIM, pooled_text_embed_dim=16)(structure, dynamics, 1.0, encoder_hidden_states=states)
