"""Named token layouts: each sets both patch sizes, the token counts they promise at paper size, clear errors."""

import math

import pytest
import torch
from helpers import load_benchmark

from vidtwin_gen.models.transformer_vidtwin import VIDTWIN_TOKEN_LAYOUTS, VidTwinTransformer3DModel


def paper_tokens(structure_patch, dynamics_patch):
    """Tokens on the paper latents (structure 16x7x7, dynamics 16 frames x 7 positions per branch, 2 branches)."""
    structure = math.prod(math.ceil(s / p) for s, p in zip((16, 7, 7), structure_patch))
    return structure + 2 * math.prod(math.ceil(s / p) for s, p in zip((16, 7), dynamics_patch))


@pytest.mark.parametrize("name", list(VIDTWIN_TOKEN_LAYOUTS))
def test_each_layout_sets_both_patch_sizes(name):
    layout = VIDTWIN_TOKEN_LAYOUTS[name]
    structure, dynamics = name.split("/")
    assert layout["structure_patch_size"] == tuple(int(n) for n in structure.split("x"))
    assert layout["dynamics_patch_size"] == tuple(int(n) for n in dynamics.split("x"))
    with torch.device("meta"):
        model = VidTwinTransformer3DModel.from_preset("paper", layout=name, num_layers=1)
    assert model.config.structure_patch_size == layout["structure_patch_size"]
    assert model.config.dynamics_patch_size == layout["dynamics_patch_size"]
    assert model.num_tokens == paper_tokens(*layout.values())


def test_layout_figures_quoted_in_the_docs():
    with torch.device("meta"):
        counts = {name: VidTwinTransformer3DModel.from_preset("paper", layout=name, num_layers=1).num_tokens
                  for name in ("1x1x1/1x1", "1x2x2/2x1", "2x2x2/2x2", "2x2x2/1x4", "4x2x2/4x2")}
    assert counts == {"1x1x1/1x1": 1008, "1x2x2/2x1": 368, "2x2x2/2x2": 192, "2x2x2/1x4": 192, "4x2x2/4x2": 96}


def test_layout_errors_name_the_fix():
    with pytest.raises(ValueError, match="Unknown layout '3x3x3/3x3'.*2x2x2/2x2"):
        VidTwinTransformer3DModel.from_preset("tiny", layout="3x3x3/3x3")
    with pytest.raises(ValueError, match="either the layout or the patch sizes"):
        VidTwinTransformer3DModel.from_preset("tiny", layout="2x2x2/2x2", structure_patch_size=(1, 1, 1))
    tiny = VidTwinTransformer3DModel.from_preset("tiny", layout="2x2x2/2x2")
    assert tiny.config.structure_patch_size == (2, 2, 2)  # a layout is a preset's overrides, nothing more


@pytest.fixture(scope="module")
def study():
    """benchmarks/study_layouts.py as a module (its equal-compute bookkeeping; a whole study takes the demo's outputs)."""
    return load_benchmark("study_layouts")


def test_study_budget_counts_context_tokens(study):
    from vidtwin_gen import AutoencoderVidTwin

    vae = AutoencoderVidTwin.from_preset("tiny")
    config = {"model": {"preset": "tiny", "hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                        "structure_patch_size": [1, 1, 1], "num_context_chunks": 1}}
    fine = study.model_config(config, "1x1x1/1x1", {})
    assert "structure_patch_size" not in fine and fine["layout"] == "1x1x1/1x1"
    coarse = study.model_config(config, "2x2x2/2x2", {"model.num_layers": 2, "learning_rate": 2e-3})
    assert coarse["num_layers"] == 2 and "learning_rate" not in coarse
    chunk, sample = study.tokens_per_sample(fine, vae)
    assert sample == 2 * chunk  # the context chunk is part of the sequence a step pays for
    coarse_chunk, coarse_sample = study.tokens_per_sample(coarse, vae)
    assert coarse_chunk < chunk and coarse_sample == 2 * coarse_chunk
    single = study.model_config({"model": {**config["model"], "num_context_chunks": 0}}, "1x1x1/1x1", {})
    assert study.tokens_per_sample(single, vae) == (chunk, chunk)


def test_study_train_args_parse_and_name_the_fix(study):
    assert study.parse_train_args(["learning_rate=0.002", "model.num_layers=4", "use_ema=false"]) == {
        "learning_rate": 0.002, "model.num_layers": 4, "use_ema": False}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        study.parse_train_args(["learning_rate"])
