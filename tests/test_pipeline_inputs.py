"""Bad arguments to VidTwinPipeline: each a ValueError/TypeError naming the argument and what is allowed, raised
before any work (issue 18's API cases)."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from test_pipeline import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def text_pipe():
    return tiny_pipeline(num_classes=0, text_embed_dim=16)


CLASS_CASES = {
    "zero steps": (dict(num_inference_steps=0), ValueError, "num_inference_steps must be an integer >= 1, got 0"),
    "float steps": (dict(num_inference_steps=2.5), TypeError, "num_inference_steps must be an integer >= 1, got float"),
    "bool label": (dict(class_labels=[True]), TypeError, "class_labels must be class names \\(str\\) or ids \\(int in "
                   "\\[0, 2\\]\\), got bool True"),
    "float label": (dict(class_labels=[1.0]), TypeError, "class_labels must be .* got float 1.0"),
    "no labels": (dict(class_labels=[]), ValueError, "class_labels is empty: pass at least one class name or id"),
    "bool tensor label": (dict(class_labels=torch.tensor([True])), TypeError, "got bool True"),
    "empty tensor": (dict(class_labels=torch.zeros(0, dtype=torch.long)), ValueError, "class_labels is empty"),
    "NaN guidance": (dict(guidance_scale=math.nan), ValueError, "guidance_scale must be a finite number >= 0 "
                     "\\(values <= 1 switch guidance off\\), got nan"),
    "negative guidance": (dict(guidance_scale=-3.0), ValueError, "guidance_scale must be a finite number >= 0"),
    "infinite guidance": (dict(guidance_scale=math.inf), ValueError, "guidance_scale must be a finite number"),
    "zero videos": (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt must be an integer >= 1, got 0"),
    "string seed": (dict(generator="seed"), TypeError, "generator must be a torch.Generator or a list of them .*got "
                    "str 'seed'"),
    "integer seed": (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    "list of seeds": (dict(generator=[0]), TypeError, "generator must be a torch.Generator"),
    "empty generator list": (dict(generator=[]), TypeError, "generator must be a torch.Generator"),
    "too few generators": (dict(class_labels=[0, 1], generator=[torch.Generator()]), ValueError,
                           "got 1 generators for 2 videos"),
    "batch 0 latents": (dict(latents=torch.zeros(0, 256)), ValueError, "latents must have shape \\(1, 256\\)"),
    "negative prompt": (dict(negative_prompt="x"), ValueError, "class-conditional only"),
    "unknown callback input": (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]),
                               ValueError, "callback_on_step_end_tensor_inputs: {'noise'} not in"),
}


@pytest.mark.parametrize("name", list(CLASS_CASES))
def test_bad_arguments_of_a_class_pipeline(pipe, name):
    kwargs, error, message = CLASS_CASES[name]
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            pipe(**{"class_labels": [0], "num_inference_steps": 2, **kwargs})
    finally:
        hook.remove()
    assert not calls  # refused before any denoising


def test_labels_as_tensors_and_numpy_integers(pipe):
    assert pipe.get_label_ids(torch.tensor([2, 0])) == pipe.get_label_ids([torch.tensor(2), np.int64(0)]) == [2, 0]


def test_ddim_with_zero_steps():
    pipe = tiny_pipeline(DDIMScheduler(prediction_type="sample", clip_sample=False))
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 0"):
        pipe(class_labels=[0], num_inference_steps=0)


EMBEDS = torch.randn(2, 5, 16)
TEXT_CASES = {
    "empty prompt list": (dict(prompt=[]), ValueError, "prompt must be a string or a non-empty list of strings, got \\[\\]"),
    "non-string prompt": (dict(prompt=[1]), ValueError, "prompt must be a string or a non-empty list of strings"),
    "neither": (dict(), ValueError, "pass prompt=... or prompt_embeds=... \\(one of them\\)"),
    "both": (dict(prompt="x", prompt_embeds=EMBEDS), ValueError, "one of them"),
    "batch 0 embeds": (dict(prompt_embeds=torch.zeros(0, 5, 16)), ValueError,
                       "prompt_embeds must be \\(B >= 1, L, 16\\) text-encoder states, got \\(0, 5, 16\\)"),
    "wrong width": (dict(prompt_embeds=torch.zeros(2, 5, 8)), ValueError, "prompt_embeds must be \\(B >= 1, L, 16\\)"),
    "wrong mask": (dict(prompt_embeds=EMBEDS, prompt_attention_mask=torch.ones(2, 4)), ValueError,
                   "the attention mask of prompt_embeds must be \\(B, L\\) = \\(2, 5\\), got \\(2, 4\\)"),
    "negative shape": (dict(prompt_embeds=EMBEDS, negative_prompt_embeds=torch.zeros(1, 5, 16)), ValueError,
                       "negative_prompt_embeds \\(1, 5, 16\\) must have the shape of prompt_embeds \\(2, 5, 16\\)"),
    "negative twice": (dict(prompt_embeds=EMBEDS, negative_prompt="x", negative_prompt_embeds=EMBEDS), ValueError,
                       "pass negative_prompt or negative_prompt_embeds, not both"),
    "text without encoder": (dict(prompt="x"), ValueError, "prompt needs the pipeline's text_encoder and tokenizer"),
    "class labels": (dict(class_labels=[0]), ValueError, "text-conditional only: pass prompt"),
}


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_bad_arguments_of_a_text_pipeline(text_pipe, name):
    kwargs, error, message = TEXT_CASES[name]
    with pytest.raises(error, match=message):
        text_pipe(num_inference_steps=2, **kwargs)


def test_a_text_pipeline_without_encoder_runs_from_embeddings(text_pipe):
    frames = text_pipe(prompt_embeds=EMBEDS, negative_prompt_embeds=torch.zeros_like(EMBEDS), num_inference_steps=2,
                       generator=[torch.Generator().manual_seed(i) for i in range(2)]).frames
    assert frames.shape == (2, 8, 32, 32, 3)


def test_interpolate_needs_two_points(pipe):
    start = torch.zeros(1, pipe.latent_size)
    with pytest.raises(ValueError, match="num_points must be an integer >= 2, got 1"):
        pipe.interpolate(start, start, num_points=1)
