"""VidTwinPipeline against the contracts diffusers' PipelineTesterMixin / LattePipeline tests check: save/load with
and without optional components, dtypes, determinism, batch = one by one, prompt embeddings, callbacks,
output types, guidance, the latent space of "latent" output, the model card and the remote-code shim."""

import json

import numpy as np
import pytest
import torch
import yaml
from test_pipeline import CLASSES, STEPS, generate, tiny_pipeline, tiny_text_pipeline

from vidtwin_gen import VidTwinPipeline
from vidtwin_gen.pipelines.pipeline_vidtwin import check_remote_code_shim, remote_code_shim_matches

PROMPTS = ["a red square drifting", "a blue circle bouncing"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def text_pipe():
    return tiny_text_pipeline()


def seeds(n: int, start: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


def run_text(pipe, **kwargs):
    kwargs.setdefault("generator", seeds(len(kwargs.get("prompt") or kwargs["prompt_embeds"]) *
                                        kwargs.get("num_videos_per_prompt", 1)))
    return pipe(num_inference_steps=STEPS, output_type="latent", **kwargs).frames


# ------------------------------------------------------------------ components, save / load, dtypes


def test_components_and_save_load_local(pipe, tmp_path):
    assert set(pipe.components) == {"vae", "transformer", "scheduler", "text_encoder", "tokenizer"}
    rebuilt = VidTwinPipeline(**pipe.components, id2label=CLASSES)
    rebuilt.set_progress_bar_config(disable=True)
    expected = generate(pipe, [0, 2])
    np.testing.assert_array_equal(generate(rebuilt, [0, 2]), expected)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["prediction_type"] == "flow_prediction" and index["text_encoder"] == [None, None]
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    np.testing.assert_allclose(generate(loaded, [0, 2]), expected, atol=1e-6)


def test_load_in_bfloat16_and_to_dtype(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == loaded.vae.dtype == torch.bfloat16
    frames = generate(loaded, [0, 2])
    assert np.isfinite(frames).all() and np.abs(frames - generate(pipe, [0, 2])).mean() < 0.1
    loaded.to(dtype=torch.float32)
    assert loaded.transformer.dtype == loaded.vae.dtype == torch.float32


def test_save_load_variants_and_shards(pipe, tmp_path):
    expected = generate(pipe, [1])
    pipe.save_pretrained(tmp_path / "variant", variant="ema")
    files = {p.name for p in (tmp_path / "variant" / "transformer").iterdir()}
    assert "diffusion_pytorch_model.ema.safetensors" in files
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "variant", variant="ema")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(generate(loaded, [1]), expected, atol=1e-6)
    pipe.save_pretrained(tmp_path / "shards", max_shard_size="200KB")
    shards = sorted(p.name for p in (tmp_path / "shards" / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "shards" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "shards")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(generate(loaded, [1]), expected, atol=1e-6)


def test_bfloat16_round_trip(pipe, tmp_path):
    half = VidTwinPipeline(**pipe.components, id2label=CLASSES)
    half.save_pretrained(tmp_path / "fp32")
    half = VidTwinPipeline.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    expected = generate(half, [0])
    half.save_pretrained(tmp_path / "bf16")
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == loaded.vae.dtype == torch.bfloat16
    np.testing.assert_array_equal(generate(loaded, [0]), expected)


def test_save_without_the_optional_text_encoder_and_run_from_embeddings(text_pipe, tmp_path):
    embeds = text_pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True, negative_prompt="")
    expected = run_text(text_pipe, prompt=PROMPTS)
    bare = VidTwinPipeline(**{**text_pipe.components, "text_encoder": None, "tokenizer": None})
    bare.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "text_encoder").exists()
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    names = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    torch.testing.assert_close(run_text(loaded, **dict(zip(names, embeds))), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prompt needs the pipeline's text_encoder and tokenizer.*pass prompt_embeds"):
        loaded(prompt="a red square")
    with pytest.raises(ValueError, match="negative_prompt needs .*pass negative_prompt_embeds \\(or guidance_scale <= 1\\)"):
        run_text(loaded, prompt_embeds=embeds[0], prompt_attention_mask=embeds[1])
    unguided = run_text(loaded, prompt_embeds=embeds[0], prompt_attention_mask=embeds[1], guidance_scale=1.0)
    torch.testing.assert_close(unguided, run_text(text_pipe, prompt=PROMPTS, guidance_scale=1.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
@pytest.mark.parametrize("num_videos_per_prompt", [1, 2])
def test_encode_prompt_works_in_isolation(text_pipe, guidance_scale, num_videos_per_prompt):
    guided = guidance_scale > 1
    embeds = text_pipe.encode_prompt(PROMPTS, guided, "", num_videos_per_prompt)
    batch = len(PROMPTS) * num_videos_per_prompt
    assert embeds[0].shape == (batch, 32, 384) and embeds[1].shape == (batch, 32)
    assert (embeds[2] is not None) == guided and (embeds[3] is not None) == guided
    names = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    # Already repeated per video: __call__ takes them with num_videos_per_prompt=1 (as PixArt's tests do).
    from_embeds = run_text(text_pipe, **dict(zip(names, embeds)), guidance_scale=guidance_scale, generator=seeds(batch))
    from_text = run_text(text_pipe, prompt=PROMPTS, num_videos_per_prompt=num_videos_per_prompt,
                         guidance_scale=guidance_scale)
    torch.testing.assert_close(from_embeds, from_text, atol=1e-5, rtol=1e-5)


def test_embeddings_without_a_mask_attend_to_every_token(text_pipe):
    embeds, _, negative, _ = text_pipe.encode_prompt(["x"], True)
    full = torch.ones(1, 32, dtype=torch.long)
    torch.testing.assert_close(
        run_text(text_pipe, prompt_embeds=embeds, negative_prompt_embeds=negative),
        run_text(text_pipe, prompt_embeds=embeds, prompt_attention_mask=full, negative_prompt_embeds=negative,
                 negative_prompt_attention_mask=full),
    )


# ------------------------------------------------------------------ determinism, batching, guidance


def test_batch_of_prompts_equals_one_by_one(text_pipe):
    batch = run_text(text_pipe, prompt=PROMPTS, num_videos_per_prompt=2, generator=seeds(4))
    one_by_one = torch.cat([run_text(text_pipe, prompt=p, num_videos_per_prompt=2, generator=seeds(2, 2 * i))
                            for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(batch, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch, run_text(text_pipe, prompt=PROMPTS, num_videos_per_prompt=2, generator=seeds(4)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("labels", [[0], [0, 2]])
@pytest.mark.parametrize("num_videos_per_prompt", [1, 2])
def test_num_videos_per_prompt(pipe, labels, num_videos_per_prompt):
    frames = pipe(class_labels=labels, num_videos_per_prompt=num_videos_per_prompt, num_inference_steps=2).frames
    assert frames.shape == (len(labels) * num_videos_per_prompt, 8, 32, 32, 3)


def test_guidance_off_for_every_scale_up_to_one(pipe):
    off = generate(pipe, [0, 1], guidance_scale=1.0)
    np.testing.assert_array_equal(generate(pipe, [0, 1], guidance_scale=0.0), off)
    assert np.abs(generate(pipe, [0, 1], guidance_scale=7.0) - off).max() > 1e-3


# ------------------------------------------------------------------ outputs


def test_output_types_and_return_dict_agree(pipe):
    frames = generate(pipe, [0, 1])
    pt = generate(pipe, [0, 1], output_type="pt")
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), frames, atol=1e-6)
    pil = generate(pipe, [0, 1], output_type="pil")
    np.testing.assert_allclose(np.stack([np.stack([np.asarray(f) for f in video]) for video in pil]) / 255, frames,
                               atol=1 / 255 + 1e-6)
    latents = generate(pipe, [0, 1], output_type="latent")
    np.testing.assert_allclose(pipe.decode_latents(latents), frames, atol=1e-6)
    as_tuple = pipe(class_labels=[0, 1], num_inference_steps=STEPS, generator=seeds(2), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    np.testing.assert_array_equal(as_tuple[0], frames)


def test_latent_output_is_the_denoisers_normalised_space():
    # Non-trivial statistics, so that the normalised and the VAE space differ.
    pipe = tiny_pipeline(structure_latent_mean=[0.5, -0.3, 0.2, 0.1], structure_latent_std=[2.0, 0.5, 1.5, 3.0],
                         dynamics_latent_mean=[0.4] * 4, dynamics_latent_std=[0.25] * 4)
    seen = {}

    def keep_last(pipeline, step, timestep, tensors):
        seen["latents"] = tensors["latents"].clone()
        return {}

    latents = generate(pipe, [0, 1], output_type="latent", callback_on_step_end=keep_last)
    torch.testing.assert_close(latents, seen["latents"], rtol=0, atol=0)  # exactly what the denoiser produced
    in_vae_space = pipe.denormalize_latents(latents)
    assert (in_vae_space - latents).abs().max() > 0.1
    torch.testing.assert_close(pipe.normalize_latents(in_vae_space), latents, atol=1e-5, rtol=1e-5)
    # The documented one-liners decode it.
    frames = generate(pipe, [0, 1])
    np.testing.assert_allclose(pipe.decode_latents(latents), frames, atol=1e-6)
    with torch.no_grad():
        video = pipe.vae.decode(pipe.denormalize_latents(latents)).sample
    np.testing.assert_allclose(pipe.video_processor.postprocess_video(video, output_type="np"), frames, atol=1e-6)
    # encode_video, interpolate and reenact live in the same space.
    clips = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        encoded = pipe.encode_video(clips)
        torch.testing.assert_close(encoded, pipe.normalize_latents(pipe.vae.encode(clips).latent_dist.mode()))
    path = pipe.interpolate(*encoded.split(1), num_points=2, output_type="latent")
    torch.testing.assert_close(path, encoded, atol=1e-6, rtol=1e-6)
    reenacted = pipe.reenact(clips[:1], clips[1:], output_type="latent")
    torch.testing.assert_close(pipe.vae.unpack_latents(reenacted)[0], pipe.vae.unpack_latents(encoded[:1])[0])
    torch.testing.assert_close(pipe.vae.unpack_latents(reenacted)[1], pipe.vae.unpack_latents(encoded[1:])[1])


# ------------------------------------------------------------------ callbacks


def test_callback_receives_the_tensors_it_asks_for(pipe):
    for names in (["latents"], list(pipe._callback_tensor_inputs)):
        calls = []

        def callback(pipeline, step, timestep, tensors, names=names):
            assert list(tensors) == names
            calls.append({name: None if value is None else tuple(value.shape) for name, value in tensors.items()})
            return tensors

        generate(pipe, [0, 1], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names)
        assert len(calls) == STEPS
    # class pipeline: the guidance-doubled labels, no text
    assert calls[0] == {"latents": (2, 256), "class_labels": (4,), "prompt_embeds": None, "prompt_attention_mask": None}


def test_callback_can_switch_guidance_off_midway(text_pipe):
    batch_sizes = []
    hook = text_pipe.transformer.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))

    def stop_guiding(pipeline, step, timestep, tensors):  # as diffusers' test_callback_cfg
        if step == 0:
            pipeline._guidance_scale = 1.0
            return {name: value.chunk(2)[-1] for name, value in tensors.items() if name != "latents"}
        return {}

    try:
        latents = run_text(text_pipe, prompt=PROMPTS, callback_on_step_end=stop_guiding,
                           callback_on_step_end_tensor_inputs=["prompt_embeds", "prompt_attention_mask"])
    finally:
        hook.remove()
    assert batch_sizes == [4] + [2] * (STEPS - 1) and torch.isfinite(latents).all()


def test_interrupt_returns_the_latents_of_that_step(pipe):
    captured = {}

    def capture(pipeline, step, timestep, tensors):
        if step == 1:
            captured["latents"] = tensors["latents"].clone()
        return {}

    def interrupt(pipeline, step, timestep, tensors):
        if step == 1:
            pipeline._interrupt = True
        return {}

    generate(pipe, [0], output_type="latent", callback_on_step_end=capture)
    interrupted = generate(pipe, [0], output_type="latent", callback_on_step_end=interrupt)
    torch.testing.assert_close(interrupted, captured["latents"], rtol=0, atol=0)


# ------------------------------------------------------------------ model card and remote code


def card_metadata(folder) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_model_card(pipe, text_pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "class", trained_on="the embedded UCF-101-style set, train split 1")
    metadata, body = card_metadata(tmp_path / "class")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-video"
    assert {"vidtwin", "video-generation", "class-conditional"} <= set(metadata["tags"])
    for expected in ("RedSquareDrift, BlueCircleBounce, GreenTriangleSpin", f"Latent: {pipe.latent_size} numbers",
                     "8 frames of 32x32", "Training data: the embedded UCF-101-style set, train split 1",
                     "VidTwinPipeline.from_pretrained", "remote_code_shim_matches"):
        assert expected in body, expected
    bare_text = VidTwinPipeline(**{**text_pipe.components, "text_encoder": None, "tokenizer": None})
    bare_text.save_pretrained(tmp_path / "text")
    metadata, body = card_metadata(tmp_path / "text")
    assert "text-conditional" in metadata["tags"] and "Training data: not recorded" in body and 'prompt="' in body
    # A card the user edited survives a second save, with the metadata filled in.
    (tmp_path / "text" / "README.md").write_text("# my notes\n")
    bare_text.save_pretrained(tmp_path / "text")
    metadata, body = card_metadata(tmp_path / "text")
    assert body.strip() == "# my notes" and metadata["library_name"] == "diffusers"


def test_remote_code_shim_is_verifiable(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    assert remote_code_shim_matches(tmp_path / "pipe") and check_remote_code_shim(tmp_path / "pipe")
    shim = tmp_path / "pipe" / "pipeline_vidtwin.py"
    shim.write_text(shim.read_text() + "import os; os.system('echo pwned')\n")
    assert not remote_code_shim_matches(tmp_path / "pipe")
    with pytest.warns(UserWarning, match="pipeline_vidtwin.py is not the loader shim.*VidTwinPipeline.from_pretrained"):
        assert not check_remote_code_shim(tmp_path / "pipe")
    shim.unlink()
    assert not remote_code_shim_matches(tmp_path / "pipe")
    assert not remote_code_shim_matches(tmp_path / "nowhere")


def test_duplicate_class_names_are_refused_at_construction_and_load(pipe, tmp_path):
    with pytest.raises(ValueError, match="id2label gives the same name to several ids \\('Spin': ids \\[0, 2\\]\\)"):
        VidTwinPipeline(**pipe.components, id2label={0: "Spin", 1: "Drift", 2: "Spin"})
    pipe.save_pretrained(tmp_path / "pipe")
    index_path = tmp_path / "pipe" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"]["2"] = index["id2label"]["0"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="make every class name unique"):
        VidTwinPipeline.from_pretrained(tmp_path / "pipe")


# ------------------------------------------------------------------ compile


@pytest.mark.slow
def test_compiled_transformer_gives_the_eager_video():
    pipe = tiny_pipeline()
    eager = generate(pipe, [0, 2])
    pipe.transformer.compile()
    compiled = generate(pipe, [0, 2])
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
