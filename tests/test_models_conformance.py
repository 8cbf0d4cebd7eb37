"""diffusers conformance of both models, in the manner of diffusers' own model tests (ModelTesterMixin and
friends for AutoencoderKLCogVideoX / LatteTransformer3DModel): save/load with variants and shards, dtype
round trips, determinism, batch = one-by-one, layerwise casting, offloading, attention API, compile."""

import json

import pytest
import torch
from diffusers.hooks import HookRegistry
from diffusers.models.attention_processor import AttnProcessor
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from helpers import perturb_

from vidtwin_gen import AutoencoderVidTwin, VidTwinTransformer3DModel
from vidtwin_gen.models.hub import NonFiniteWeightsError
from vidtwin_gen.models.transformer_vidtwin import VidTwinAttention, VidTwinAttnProcessor

TEXT_DIM = 24
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading to an accelerator needs a CUDA device")


def vae(**overrides) -> AutoencoderVidTwin:
    torch.manual_seed(0)
    return perturb_(AutoencoderVidTwin.from_preset("tiny", **overrides)).eval()


def dit(**overrides) -> VidTwinTransformer3DModel:
    torch.manual_seed(0)
    return perturb_(VidTwinTransformer3DModel.from_preset("tiny", num_classes=3, text_embed_dim=TEXT_DIM, **overrides)).eval()


def video(model: AutoencoderVidTwin, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *model.sample_shape, generator=generator) * 2 - 1


def dit_inputs(model: VidTwinTransformer3DModel, batch: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[:, 3:] = 0
    return {
        "structure": torch.randn(batch, *model.structure_shape, generator=generator),
        "dynamics": torch.randn(batch, *model.dynamics_shape, generator=generator),
        "timestep": torch.linspace(10.0, 900.0, batch),
        "class_labels": torch.arange(batch) % 4,  # includes the null class 3
        "encoder_hidden_states": torch.randn(batch, 5, TEXT_DIM, generator=generator),
        "encoder_attention_mask": mask,
    }


def run_dit(model, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return torch.cat([out.structure.flatten(1), out.dynamics.flatten(1)], dim=1)


def run_vae(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = model.encode(x).latent_dist.mode()
    return z, model.decode(z).sample


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


# ---------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("which", ["vae", "dit"])
def test_variant_and_sharded_round_trips(tmp_path, which):
    model = vae() if which == "vae" else dit()
    cls = type(model)
    model.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").exists()
    with pytest.raises(OSError):  # diffusers: a variant folder does not load without `variant=`
        cls.from_pretrained(tmp_path / "fp16")
    loaded = cls.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float16)
    assert loaded.dtype == torch.float16 and not loaded.training
    upcast = cls.from_pretrained(tmp_path / "fp16", variant="fp16")  # diffusers loads into float32 by default
    assert upcast.dtype == torch.float32
    for (name, p), (_, q), (_, r) in zip(model.state_dict().items(), loaded.state_dict().items(), upcast.state_dict().items()):
        assert torch.equal(p, q) and torch.equal(p.float(), r), name

    model = model.float()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    sharded = cls.from_pretrained(tmp_path / "sharded")
    for (name, p), (_, q) in zip(model.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(p, q), name


def test_dtype_round_trips(tmp_path):
    model = dit()
    inputs = dit_inputs(model)
    with torch.no_grad():
        reference = run_dit(model, inputs)
        for dtype in (torch.bfloat16, torch.float16):
            low = dit().to(dtype)
            assert all(p.dtype == dtype for p in low.parameters())
            assert low.dtype == dtype
            assert relative_error(run_dit(low, inputs), reference) < 0.05
        back = dit().to(torch.float16).to(torch.float32)
        assert back.dtype == torch.float32 and relative_error(run_dit(back, inputs), reference) < 0.01
    model.save_pretrained(tmp_path)
    loaded = VidTwinTransformer3DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.part_embed.dtype == torch.bfloat16
    with torch.no_grad():
        assert run_dit(loaded, inputs).dtype == torch.bfloat16


@pytest.mark.parametrize("which", ["vae", "dit"])
def test_nan_weights_are_refused_on_load(tmp_path, which):
    model = vae() if which == "vae" else dit()
    model.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    name = sorted(weights)[len(weights) // 2]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, path)
    with pytest.raises(NonFiniteWeightsError, match=name.replace(".", r"\.")) as error:
        type(model).from_pretrained(tmp_path)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------- model cards


def test_model_cards_follow_hub_conventions(tmp_path):
    autoencoder = vae()
    autoencoder.save_pretrained(tmp_path / "vae", trained_on="the embedded toy set (18 clips)")
    card = ModelCard.load(tmp_path / "vae" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "video-to-video"
    assert {"video", "autoencoder", "vidtwin"} <= set(card.data.tags) and card.data.license == "mit"
    assert "the embedded toy set (18 clips)" in card.text
    assert f"{autoencoder.latent_size:,}" in card.text and "compression rate" in card.text
    assert "AutoencoderVidTwin.from_pretrained" in card.text and "```python" in card.text

    text_dit = dit()
    text_dit.save_pretrained(tmp_path / "dit")
    card = ModelCard.load(tmp_path / "dit" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-video"
    assert "not recorded" in card.text and f"{text_dit.num_tokens:,}" in card.text
    assert "VidTwinTransformer3DModel.from_pretrained" in card.text
    VidTwinTransformer3DModel.from_preset("tiny", num_classes=5).save_pretrained(tmp_path / "class")
    card = ModelCard.load(tmp_path / "class" / "README.md")
    assert card.data.pipeline_tag is None and "5 classes" in card.text
    # Only the main process writes (as diffusers' save_pretrained does for weights).
    autoencoder.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1" / "README.md").exists()


# ---------------------------------------------------------------------------------------------- determinism, batching


def test_vae_is_deterministic_whatever_the_mode():
    model = vae()
    x = video(model, batch=2)
    with torch.no_grad():
        z_eval, recon_eval = run_vae(model, x)
        model.train()  # forgetting eval() must not change encode/decode (Q-Former dropout lives in forward)
        z_train, recon_train = run_vae(model, x)
        assert torch.equal(z_eval, z_train) and torch.equal(recon_eval, recon_train)
        # Training's forward does use the dropout ...
        assert not torch.equal(model(x).sample, model.eval()(x).sample)
    # ... unless the config turns it off.
    plain = vae(qformer_dropout=0.0)
    with torch.no_grad():
        assert torch.equal(plain.train()(x).sample, plain.eval()(x).sample)


def test_vae_batch_equals_one_by_one():
    model = vae()
    x = video(model, batch=3)
    with torch.no_grad():
        z, recon = run_vae(model, x)
        singles = [run_vae(model, clip) for clip in x.split(1)]
        assert torch.equal(run_vae(model, x)[1], recon)  # determinism
    torch.testing.assert_close(z, torch.cat([s[0] for s in singles]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, torch.cat([s[1] for s in singles]), rtol=1e-5, atol=1e-5)
    assert recon.shape == x.shape and z.shape == (3, model.latent_size)


def test_dit_batch_equals_one_by_one():
    model = dit()
    inputs = dit_inputs(model, batch=3)
    with torch.no_grad():
        batched = run_dit(model, inputs)
        assert torch.equal(run_dit(model, inputs), batched)  # determinism
        singles = torch.cat([run_dit(model, {k: v[i : i + 1] for k, v in inputs.items()}) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- layerwise casting


def _assert_storage_dtypes(model, storage, compute):
    patterns = model._skip_layerwise_casting_patterns
    hooked = skipped = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Conv1d)):
            registry = getattr(module, "_diffusers_hook", None)
            is_hooked = isinstance(registry, HookRegistry) and registry.get_hook("layerwise_casting") is not None
            assert module.weight.dtype == (storage if is_hooked else compute), name
            assert is_hooked != any(p.strip("^") in name for p in patterns + ["pos_embed", "patch_embed", "norm"]), name
            hooked, skipped = hooked + is_hooked, skipped + (not is_hooked)
    assert hooked > 0 and skipped > 0


def test_layerwise_casting_dit():
    inputs = dit_inputs(dit())
    inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        reference = run_dit(dit().to(torch.bfloat16), inputs)
        model = dit().to(torch.bfloat16)
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        _assert_storage_dtypes(model, torch.float8_e4m3fn, torch.bfloat16)
        assert model.dtype == torch.bfloat16
        out = run_dit(model, inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert relative_error(out, reference) < 0.1
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), reference.float().flatten(), dim=0) > 0.99


def test_layerwise_casting_vae():
    x = video(vae()).bfloat16()
    with torch.no_grad():
        z_ref, recon_ref = run_vae(vae().to(torch.bfloat16), x)
        model = vae().to(torch.bfloat16)
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        _assert_storage_dtypes(model, torch.float8_e4m3fn, torch.bfloat16)
        z, recon = run_vae(model, x)
        # float32 input is cast to the compute dtype, not to the storage dtype
        assert model.encode(x.float()).latent_dist.mean.dtype == torch.bfloat16
    assert relative_error(z, z_ref) < 0.1 and relative_error(recon, recon_ref) < 0.1
    assert torch.nn.functional.cosine_similarity(recon.float().flatten(), recon_ref.float().flatten(), dim=0) > 0.99


# ---------------------------------------------------------------------------------------------- offloading


class _RecordingHook:
    """Stands in for accelerate's CpuOffload hook: `apply_forward_hook` must call its pre_forward."""

    def __init__(self):
        self.calls = 0

    def pre_forward(self, module):
        self.calls += 1


def test_encode_and_decode_trigger_offload_hooks():
    model = vae()
    model._hf_hook = _RecordingHook()
    with torch.no_grad():
        z = model.encode(video(model)).latent_dist.mode()
        assert model._hf_hook.calls == 1
        model.decode(z)
    assert model._hf_hook.calls == 2


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_on_cpu_gives_the_same_outputs(offload_type):
    # onload_device=cpu exercises the hooks and grouping; the transfer itself needs an accelerator (below).
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    autoencoder, transformer = vae(), dit()
    x, inputs = video(autoencoder), dit_inputs(transformer)
    with torch.no_grad():
        expected_vae, expected_dit = run_vae(autoencoder, x)[1], run_dit(transformer, inputs)
        for model in (autoencoder, transformer):
            model.enable_group_offload(onload_device=torch.device("cpu"), offload_type=offload_type, **options)
        assert torch.equal(run_vae(autoencoder, x)[1], expected_vae)
        assert torch.equal(run_dit(transformer, inputs), expected_dit)


@needs_cuda
def test_offloading_to_an_accelerator():
    from accelerate import cpu_offload_with_hook

    autoencoder, transformer = vae(), dit()
    x, inputs = video(autoencoder), dit_inputs(transformer)
    with torch.no_grad():
        expected_vae, expected_dit = run_vae(autoencoder, x)[1], run_dit(transformer, inputs)
        autoencoder, _ = cpu_offload_with_hook(autoencoder, execution_device="cuda")
        # decode (not forward) must move the VAE to the accelerator: that is what apply_forward_hook is for.
        recon = autoencoder.decode(autoencoder.encode(x.cuda()).latent_dist.mode()).sample
        assert recon.is_cuda
        torch.testing.assert_close(recon.cpu(), expected_vae, rtol=1e-3, atol=1e-3)
        transformer.enable_group_offload(onload_device=torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1)
        out = run_dit(transformer, {k: v.cuda() for k, v in inputs.items()})
        torch.testing.assert_close(out.cpu(), expected_dit, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------- attention API


def test_dit_attention_api():
    model = dit()
    inputs = dit_inputs(model)
    processors = model.attn_processors
    assert len(processors) == 2 * len(model.transformer_blocks)  # self- and cross-attention per block
    assert all(isinstance(p, VidTwinAttnProcessor) for p in processors.values())
    with torch.no_grad():
        expected = run_dit(model, inputs)
        model.set_attention_backend("native")
        assert all(p._attention_backend is not None for p in model.attn_processors.values())
        torch.testing.assert_close(run_dit(model, inputs), expected, rtol=1e-5, atol=1e-5)
        model.reset_attention_backend()

        model.fuse_qkv_projections()
        attn1, attn2 = model.transformer_blocks[0].attn1, model.transformer_blocks[0].attn2
        assert attn1.fused_projections and hasattr(attn1, "to_qkv") and hasattr(attn2, "to_kv")
        torch.testing.assert_close(run_dit(model, inputs), expected, rtol=1e-5, atol=1e-5)
        model.unfuse_qkv_projections()
        assert not hasattr(attn1, "to_qkv")

        # A processor per layer, by name (as LoRA / custom kernels set them), then back to the default.
        model.set_attn_processor({name: VidTwinAttnProcessor() for name in processors})
        torch.testing.assert_close(run_dit(model, inputs), expected, rtol=1e-5, atol=1e-5)
        model.set_default_attn_processor()
        assert all(type(p) is VidTwinAttnProcessor for p in model.attn_processors.values())
    with pytest.raises(ValueError, match="number of attention layers"):
        model.set_attn_processor({"only.one.processor": AttnProcessor()})
    assert isinstance(model.transformer_blocks[0].attn1, VidTwinAttention)
    assert "attn1.to_q.weight" in dict(model.transformer_blocks[0].named_parameters())  # diffusers' names


# ---------------------------------------------------------------------------------------------- compile


def _assert_one_graph(name, explained):
    assert explained.graph_break_count == 0, (name, explained.break_reasons)
    assert explained.graph_count == 1, name


def test_dit_forward_has_no_graph_breaks():
    transformer = dit()
    torch._dynamo.reset()
    with torch.no_grad():
        _assert_one_graph("dit", torch._dynamo.explain(transformer)(**dit_inputs(transformer)))
    torch._dynamo.reset()


def test_vae_encode_decode_have_no_graph_breaks():
    autoencoder = vae(qformer_num_layers=2)  # fewer layers to trace, same code paths
    x = video(autoencoder)
    torch._dynamo.reset()
    with torch.no_grad():
        z = autoencoder.encode(x).latent_dist.mode()
        _assert_one_graph("encode", torch._dynamo.explain(autoencoder.encode)(x))
        _assert_one_graph("decode", torch._dynamo.explain(autoencoder.decode)(z, part="structure", num_frames=5))
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_models_match_eager():
    transformer, autoencoder = dit(), vae()
    inputs, x = dit_inputs(transformer), video(autoencoder)
    torch._dynamo.reset()
    with torch.no_grad():
        expected_dit, (expected_z, expected_recon) = run_dit(transformer, inputs), run_vae(autoencoder, x)
        compiled = torch.compile(transformer, fullgraph=True)
        torch.testing.assert_close(run_dit(compiled, inputs), expected_dit, rtol=1e-4, atol=1e-4)
        encode, decode = torch.compile(autoencoder.encode, fullgraph=True), torch.compile(autoencoder.decode, fullgraph=True)
        z = encode(x).latent_dist.mode()
        torch.testing.assert_close(z, expected_z, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(decode(z).sample, expected_recon, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
