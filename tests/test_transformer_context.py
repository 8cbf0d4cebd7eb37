"""Tests for the long-video context of `VidTwinTransformer3DModel` (`num_context_chunks`): tiny sizes, CPU."""

import json

import pytest
import torch

from helpers import perturb_

from test_transformer_vidtwin import TEXT_DIM, latents, tiny

from vidtwin_gen.models.transformer_vidtwin import VidTwinTransformer3DModel


def context(model: VidTwinTransformer3DModel, batch_size: int, k: int, seed: int = 5):
    """(B, K, ...) clean latents of K previous chunks."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, k, *model.structure_shape, generator=generator),
            torch.randn(batch_size, k, *model.dynamics_shape, generator=generator))


def predict(model, structure, dynamics, labels, **kwargs):
    with torch.no_grad():
        return model(structure, dynamics, 400.0, class_labels=labels, **kwargs)


def test_without_context_the_model_is_todays_model(tmp_path):
    torch.manual_seed(0)
    plain = tiny(num_classes=3)
    torch.manual_seed(0)
    explicit = tiny(num_classes=3, num_context_chunks=0)
    torch.manual_seed(0)
    long = tiny(num_classes=3, num_context_chunks=2)
    # Same parameters (nothing new at 0) and, for the same seed, the same initial weights: the context embedding
    # is drawn after everything else.
    assert explicit.state_dict().keys() == plain.state_dict().keys()
    assert set(long.state_dict()) - set(plain.state_dict()) == {"context_chunk_embed"}
    for name, tensor in plain.state_dict().items():
        assert torch.equal(explicit.state_dict()[name], tensor), name
        assert torch.equal(long.state_dict()[name], tensor), name

    perturb_(long)
    plain.load_state_dict({k: v for k, v in long.state_dict().items() if k != "context_chunk_embed"})
    structure, dynamics = latents(plain, 2)
    labels = torch.tensor([0, 3])
    expected = predict(plain, structure, dynamics, labels)
    got = predict(long, structure, dynamics, labels)  # no context: the same computation
    assert expected.structure.abs().max() > 0
    assert torch.equal(got.structure, expected.structure) and torch.equal(got.dynamics, expected.dynamics)

    # A model saved before num_context_chunks existed (no key in its config.json) loads unchanged.
    plain.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    assert config.pop("num_context_chunks") == 0
    config_path.write_text(json.dumps(config))
    loaded = VidTwinTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.num_context_chunks == 0 and loaded.context_chunk_embed is None
    assert torch.equal(predict(loaded, structure, dynamics, labels).structure, expected.structure)


def test_context_changes_the_output_and_dropped_context_is_no_context():
    model = perturb_(tiny(num_classes=3, num_context_chunks=2)).eval()
    structure, dynamics = latents(model, 3)
    labels = torch.tensor([0, 1, 2])
    context_structure, context_dynamics = context(model, 3, 2)
    alone = predict(model, structure, dynamics, labels)
    with_context = predict(model, structure, dynamics, labels, context_structure=context_structure,
                           context_dynamics=context_dynamics)
    assert with_context.structure.shape == structure.shape and with_context.dynamics.shape == dynamics.shape
    assert (with_context.structure - alone.structure).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3
    assert (with_context.dynamics - alone.dynamics).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    # Other context, other output: the model reads the context's values, not only its presence.
    other = predict(model, structure, dynamics, labels, context_structure=context_structure.flip(0),
                    context_dynamics=context_dynamics.flip(0))
    assert (other.structure - with_context.structure).abs().max() > 1e-3

    # Per-sample mask: sample 1 has no context and gets exactly the no-context output; the others keep theirs.
    mask = torch.tensor([True, False, True])
    masked = predict(model, structure, dynamics, labels, context_structure=context_structure,
                     context_dynamics=context_dynamics, context_mask=mask)
    for field in ("structure", "dynamics"):
        torch.testing.assert_close(getattr(masked, field)[1], getattr(alone, field)[1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(getattr(masked, field)[mask], getattr(with_context, field)[mask], atol=1e-6, rtol=1e-5)
    # All present as a mask == no mask.
    all_present = predict(model, structure, dynamics, labels, context_structure=context_structure,
                          context_dynamics=context_dynamics, context_mask=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(all_present.structure, with_context.structure, atol=1e-6, rtol=1e-5)


def test_fewer_chunks_than_the_maximum_and_per_chunk_masks():
    model = perturb_(tiny(num_classes=3, num_context_chunks=3)).eval()
    structure, dynamics = latents(model, 2)
    labels = torch.tensor([0, 1])
    cs, cd = context(model, 2, 3)
    one = predict(model, structure, dynamics, labels, context_structure=cs[:, -1:], context_dynamics=cd[:, -1:])
    # The most recent chunk is "chunk -1" whatever K is: padding the history at the old end with masked slots
    # (what training does for a sample near the start of its video) is the same as passing fewer chunks.
    padded = predict(model, structure, dynamics, labels, context_structure=cs, context_dynamics=cd,
                     context_mask=torch.tensor([[False, False, True], [False, False, True]]))
    torch.testing.assert_close(padded.structure, one.structure, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(padded.dynamics, one.dynamics, atol=1e-6, rtol=1e-5)
    two = predict(model, structure, dynamics, labels, context_structure=cs[:, 1:], context_dynamics=cd[:, 1:])
    three = predict(model, structure, dynamics, labels, context_structure=cs, context_dynamics=cd)
    assert (two.structure - one.structure).abs().max() > 1e-3 and (three.structure - two.structure).abs().max() > 1e-3
    # The chunk position matters: the same latents as chunk -2 instead of chunk -1 give another output.
    shifted = predict(model, structure, dynamics, labels, context_structure=cs[:, 1:], context_dynamics=cd[:, 1:],
                      context_mask=torch.tensor([[True, False], [True, False]]))
    assert (shifted.structure - one.structure).abs().max() > 1e-3


def test_context_with_text_gradient_checkpointing_and_gradients():
    model = perturb_(tiny(text_embed_dim=TEXT_DIM, num_context_chunks=1))
    structure, dynamics = latents(model, 2)
    cs, cd = context(model, 2, 1)
    states = torch.randn(2, 5, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    kwargs = dict(encoder_hidden_states=states, context_structure=cs, context_dynamics=cd,
                  context_mask=torch.tensor([True, False]))

    def loss():
        out = model(structure, dynamics, 300.0, **kwargs)
        return out.structure.square().mean() + out.dynamics.square().mean()

    loss().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert reference["context_chunk_embed"].abs().sum() > 0  # the context reaches the loss
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing()
    loss().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name], msg=name)


def test_context_errors_name_the_fix():
    model = tiny(num_classes=3, num_context_chunks=2)
    structure, dynamics = latents(model, 2)
    labels = torch.tensor([0, 1])
    cs, cd = context(model, 2, 2)

    def call(**kwargs):
        return model(structure, dynamics, 1.0, class_labels=labels, **kwargs)

    with pytest.raises(ValueError, match="num_context_chunks=0"):
        tiny(num_classes=3)(structure, dynamics, 1.0, class_labels=labels, context_structure=cs, context_dynamics=cd)
    with pytest.raises(ValueError, match="K=3 context chunks.*num_context_chunks=2"):
        big_s, big_d = context(model, 2, 3)
        call(context_structure=big_s, context_dynamics=big_d)
    with pytest.raises(ValueError, match="together"):
        call(context_structure=cs)
    with pytest.raises(ValueError, match="context latents must be"):
        call(context_structure=cs[:, :, :, :4], context_dynamics=cd)
    with pytest.raises(ValueError, match="context latents must be"):
        call(context_structure=cs[0], context_dynamics=cd[0])  # a missing K axis
    with pytest.raises(ValueError, match="context latents must be"):
        call(context_structure=cs[:, :1], context_dynamics=cd)  # K differs between the parts
    with pytest.raises(ValueError, match="context_mask must be bool"):
        call(context_structure=cs, context_dynamics=cd, context_mask=torch.ones(2))
    with pytest.raises(ValueError, match="context_mask must be bool"):
        call(context_structure=cs, context_dynamics=cd, context_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="without context"):
        call(context_mask=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_context_chunks"):
        tiny(num_context_chunks=-1)


def test_preset_card_and_save_load_round_trip(tmp_path):
    model = perturb_(VidTwinTransformer3DModel.from_preset("tiny", layout="1x2x2/2x2", num_classes=3,
                                                          num_context_chunks=2)).eval()
    assert model.config.num_context_chunks == 2 and model.context_chunk_embed.shape == (2, 64)
    rows = dict(model.model_card_facts()["rows"])
    assert "up to 2 previous chunk" in rows["context (long videos)"]
    assert "no context" in dict(tiny().model_card_facts()["rows"])["context (long videos)"]
    model.save_pretrained(tmp_path)
    loaded = VidTwinTransformer3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_context_chunks == 2
    structure, dynamics = latents(model, 2)
    cs, cd = context(model, 2, 2)
    kwargs = dict(context_structure=cs, context_dynamics=cd, context_mask=torch.tensor([True, False]))
    labels = torch.tensor([2, 3])
    expected, got = predict(model, structure, dynamics, labels, **kwargs), predict(loaded, structure, dynamics, labels, **kwargs)
    assert torch.equal(expected.structure, got.structure) and torch.equal(expected.dynamics, got.dynamics)


def test_no_graph_breaks_with_or_without_context_and_attention_backends():
    model = perturb_(tiny(num_classes=3, num_context_chunks=2)).eval()
    structure, dynamics = latents(model, 2)
    cs, cd = context(model, 2, 2)
    labels = torch.tensor([0, 1])
    with_context = dict(context_structure=cs, context_dynamics=cd, context_mask=torch.tensor([True, False]))
    torch._dynamo.reset()
    with torch.no_grad():
        for name, kwargs in (("no context", {}), ("context", with_context)):
            explained = torch._dynamo.explain(model)(structure, dynamics, 400.0, class_labels=labels, **kwargs)
            assert explained.graph_break_count == 0 and explained.graph_count == 1, (name, explained.break_reasons)
        expected = model(structure, dynamics, 400.0, class_labels=labels, **with_context)
        # The key mask goes through diffusers' dispatch: the native backend and fused projections agree.
        model.set_attention_backend("native")
        native = model(structure, dynamics, 400.0, class_labels=labels, **with_context)
        model.reset_attention_backend()
        model.fuse_qkv_projections()
        fused = model(structure, dynamics, 400.0, class_labels=labels, **with_context)
        model.unfuse_qkv_projections()
    torch._dynamo.reset()
    for got in (native, fused):
        torch.testing.assert_close(got.structure, expected.structure, rtol=1e-5, atol=1e-5)
