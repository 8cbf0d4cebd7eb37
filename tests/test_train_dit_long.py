"""train_dit with context chunks (long videos): samples (chunk k, chunks before it) from a multi-chunk cache,
context dropout, clear errors for the wrong cache, the long configs, and kill-and-resume equality."""

from pathlib import Path

import pytest
import torch
import yaml
from test_train_dit import arguments as single_chunk_arguments
from test_train_dit import uninterrupted_and_resumed

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.data import encode_dataset, load_latent_cache
from vidtwin_gen.data.latent_cache import ContextChunks
from vidtwin_gen.training.config import parse_config
from vidtwin_gen.training.train_dit import TrainDiTConfig, build_transformer, context_inputs, main

CONFIGS = Path(__file__).resolve().parents[1] / "train_configs" / "dit"
LONG_CONFIGS = ("quickstart_class_long", "quickstart_text_long", "ucf101_class_long", "ucf101_text_long")


@pytest.fixture(scope="module")
def vae_and_caches(embedded_root, tmp_path_factory):
    """A tiny autoencoder (8 frames of 32x32), a 3-chunks-per-video cache (24-frame videos at every frame) and a
    single-chunk cache of split 1 train (12 videos)."""
    root = tmp_path_factory.mktemp("dit_long")
    torch.manual_seed(0)
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).save_pretrained(root / "vae")
    encode_dataset(root / "vae", embedded_root, root / "chunks", batch_size=4, target_fps=None, chunks_per_clip=3)
    encode_dataset(root / "vae", embedded_root, root / "single", batch_size=4)
    return root / "vae", root / "chunks", root / "single"


LONG_MODEL = "{preset: tiny, num_context_chunks: 2}"


def arguments(vae: Path, output_dir: Path, **overrides) -> list[str]:
    return single_chunk_arguments(vae, output_dir, **{"model": LONG_MODEL, **overrides})


def test_a_long_run_trains_on_context_and_exports_a_pipeline(vae_and_caches, tmp_path, monkeypatch):
    vae, chunks, _ = vae_and_caches
    calls = []
    forward = VidTwinTransformer3DModel.forward

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not sampling
            calls.append((kwargs.get("context_structure"), kwargs.get("context_mask")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(VidTwinTransformer3DModel, "forward", spy)
    out = tmp_path / "run"
    assert main(arguments(vae, out, latent_cache=chunks, validation_steps=4, context_dropout_prob=0.0)) == 0
    assert len(calls) == 4
    for context, mask in calls:
        assert context.shape[:2] == (4, 2) and mask.shape == (4, 2) and mask.dtype == torch.bool
    masks = torch.cat([mask for _, mask in calls])
    # Without dropout the mask is what the videos hold: rows of first chunks have none, second chunks only chunk -1.
    assert {tuple(m) for m in masks.tolist()} <= {(False, False), (False, True), (True, True)}
    assert len({tuple(m) for m in masks.tolist()}) >= 2
    assert sorted(p.name for p in (out / "samples" / "step-4").glob("*.mp4"))  # validation: single chunks, as before
    pipe = VidTwinPipeline.from_pretrained(out / "pipeline")
    assert pipe.transformer.config.num_context_chunks == 2
    stats = load_latent_cache(chunks).stats  # per channel over every chunk
    assert pipe.transformer.config.structure_latent_mean == pytest.approx(stats["structure"]["mean"])


def test_context_inputs_are_normalised_and_dropped_per_sample(vae_and_caches):
    vae, chunks, _ = vae_and_caches
    cache = load_latent_cache(chunks)
    samples = ContextChunks(cache.dataset, 2)
    batch = torch.utils.data.default_collate([samples[i] for i in range(6)])  # two videos: chunks 0, 1, 2 each
    config = TrainDiTConfig(latent_cache=str(chunks), sample_posterior=False, context_dropout_prob=0.0,
                            model={"preset": "tiny", "num_context_chunks": 2})
    model = build_transformer(config, AutoencoderVidTwin.from_pretrained(vae), cache.class_names, cache.stats, None)
    inputs = context_inputs(batch, config, model)
    assert inputs["context_mask"].tolist() == [[False, False], [False, True], [True, True]] * 2
    expected = model.normalize_latents(batch["context_structure_mean"][2], batch["context_dynamics_mean"][2])
    torch.testing.assert_close(inputs["context_structure"][2], expected[0])
    torch.testing.assert_close(inputs["context_dynamics"][2], expected[1])
    config.context_dropout_prob = 1.0
    assert not context_inputs(batch, config, model)["context_mask"].any()
    config.context_dropout_prob, config.sample_posterior = 0.5, True
    torch.manual_seed(0)
    kept = torch.stack([context_inputs(batch, config, model)["context_mask"][2::3].all(1) for _ in range(200)])
    assert 0.4 < kept.float().mean() < 0.6  # whole samples dropped at the configured rate
    drawn = context_inputs(batch, config, model)["context_structure"][2]
    assert not torch.allclose(drawn, expected[0])  # drawn from the posterior, like the target


def test_wrong_data_for_a_long_config_is_named(vae_and_caches, embedded_root, tmp_path):
    vae, chunks, single = vae_and_caches
    with pytest.raises(ValueError, match="--chunks-per-clip"):
        main(arguments(vae, tmp_path / "a", latent_cache=single))
    with pytest.raises(ValueError, match="num_context_chunks=2 .* latent_cache"):
        main(arguments(vae, tmp_path / "b", data_root=embedded_root))
    with pytest.raises(ValueError, match="context_dropout_prob"):
        main(arguments(vae, tmp_path / "c", latent_cache=chunks, context_dropout_prob=1.5))
    # A model without context trains on a multi-chunk cache as on any cache: every chunk is a clip.
    assert main(arguments(vae, tmp_path / "d", latent_cache=chunks, model="{preset: tiny}", max_train_steps=1)) == 0


@pytest.mark.parametrize("name", LONG_CONFIGS)
def test_long_configs_are_their_single_chunk_configs_with_context(name):
    config = parse_config(TrainDiTConfig, ["--config", str(CONFIGS / f"{name}.yaml")])
    assert config.model["num_context_chunks"] >= 1 and 0.1 <= config.context_dropout_prob <= 0.4
    base = yaml.safe_load((CONFIGS / f"{name.removesuffix('_long')}.yaml").read_text())
    long = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    differing = {key for key in set(base) | set(long) if base.get(key) != long.get(key)}
    # Beyond the context, only the run's names and the cost of a longer sequence may differ.
    assert differing <= {"model", "context_dropout_prob", "output_dir", "latent_cache", "max_train_steps",
                         "train_batch_size", "gradient_checkpointing", "checkpointing_steps", "validation_steps"}, differing
    assert {k: v for k, v in long["model"].items() if k != "num_context_chunks"} == base["model"]


@pytest.mark.slow
def test_killed_long_run_resumes_to_the_same_weights(vae_and_caches, tmp_path):
    vae, chunks, _ = vae_and_caches
    args = dict(latent_cache=chunks, max_train_steps=30, train_batch_size=2, dataloader_num_workers=1,
                context_dropout_prob=0.3, model=LONG_MODEL)
    reference, resumed = uninterrupted_and_resumed(vae, tmp_path, args)
    assert "context_chunk_embed" in reference
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
