"""train_dit: class/text conditioning, both objectives, cache or on-the-fly latents, kill-and-resume equality."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from helpers import kill_when_written

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.data import encode_dataset, load_latent_cache
from vidtwin_gen.training.train_dit import main


@pytest.fixture(scope="module")
def vae_and_cache(embedded_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).save_pretrained(root / "vae")
    encode_dataset(root / "vae", embedded_root, root / "cache", batch_size=4)
    return root / "vae", root / "cache"


def arguments(vae: Path, output_dir: Path, **overrides) -> list[str]:
    options = {
        "vae": vae, "model": "{preset: tiny}", "train_batch_size": 4, "max_train_steps": 4, "learning_rate": 1e-3,
        "lr_warmup_steps": 1, "checkpointing_steps": 2, "validation_steps": 100, "num_inference_steps": 2,
        "dataloader_num_workers": 0, "report_to": "none", "output_dir": output_dir, **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def test_class_conditional_run_exports_a_pipeline(vae_and_cache, tmp_path):
    vae, cache = vae_and_cache
    out = tmp_path / "run"
    assert main(arguments(vae, out, latent_cache=cache, validation_steps=4)) == 0
    assert sorted(p.name for p in (out / "samples" / "step-4").glob("*.mp4")) == [
        "00_RedSquareBounce.mp4", "01_RedSquareSpin.mp4", "02_BlueCircleBounce.mp4"
    ]
    pipe = VidTwinPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.labels == {"RedSquareBounce": 0, "RedSquareSpin": 1, "BlueCircleBounce": 2}
    stats = load_latent_cache(cache).stats
    assert pipe.transformer.config.structure_latent_mean == pytest.approx(stats["structure"]["mean"])
    frames = pipe(class_labels=["RedSquareSpin"], num_inference_steps=2, output_type="np").frames
    assert frames.shape == (1, 8, 32, 32, 3)


def test_text_conditioning_and_the_paper_objective(vae_and_cache, tmp_path):
    vae, cache = vae_and_cache
    out = tmp_path / "run"
    assert main(arguments(vae, out, latent_cache=cache, conditioning="text", objective="x0", max_train_steps=2)) == 0
    pipe = VidTwinPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "sample"
    assert pipe.is_text_conditional and not pipe.is_class_conditional
    assert pipe.transformer.config.text_embed_dim == pipe.text_encoder.config.hidden_size == 384
    frames = pipe(prompt="red square spin", num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 8, 3, 32, 32)


def test_on_the_fly_encoding_without_a_cache(vae_and_cache, embedded_root, tmp_path):
    vae, _ = vae_and_cache
    out = tmp_path / "run"
    assert main(arguments(vae, out, data_root=embedded_root, max_train_steps=2, train_batch_size=2)) == 0
    transformer = VidTwinTransformer3DModel.from_pretrained(out / "pipeline" / "transformer")
    # The normalisation statistics were estimated from the data, not left at 0 / 1.
    assert transformer.config.structure_latent_mean != [0.0] * 4


def test_bad_settings_are_named(vae_and_cache, tmp_path):
    vae, cache = vae_and_cache
    with pytest.raises(ValueError, match="latent_cache .* or data_root"):
        main(arguments(vae, tmp_path / "a"))
    with pytest.raises(ValueError, match="objective must be one of"):
        main(arguments(vae, tmp_path / "b", latent_cache=cache, objective="eps"))
    other = tmp_path / "other_vae"
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8, structure_channels=2).save_pretrained(other)
    with pytest.raises(ValueError, match="made with another autoencoder"):
        main(arguments(other, tmp_path / "c", latent_cache=cache))
    # Same config, other weights (e.g. the autoencoder before fine-tuning): the latents would not match either.
    torch.manual_seed(1)
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).save_pretrained(other)
    with pytest.raises(ValueError, match="made with another autoencoder"):
        main(arguments(other, tmp_path / "d", latent_cache=cache))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(vae_and_cache, tmp_path):
    vae, cache = vae_and_cache
    args = dict(latent_cache=cache, max_train_steps=30, train_batch_size=2, dataloader_num_workers=1)
    reference, resumed = uninterrupted_and_resumed(vae, tmp_path, args)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def uninterrupted_and_resumed(vae, tmp_path, args: dict) -> tuple[dict, dict]:
    """The transformer weights of an uninterrupted run, and of the same run SIGKILLed after its first checkpoint and
    resumed."""
    assert main(arguments(vae, tmp_path / "reference", **args)) == 0
    out = tmp_path / "killed"
    kill_when_written([sys.executable, "-m", "vidtwin_gen.training.train_dit", *arguments(vae, out, **args)],
                      out / "checkpoint-2")
    assert not (out / "pipeline").exists(), "the run finished before it could be killed"
    assert main(arguments(vae, out, resume_from_checkpoint="latest", **args)) == 0
    return tuple(VidTwinTransformer3DModel.from_pretrained(folder / "pipeline" / "transformer").state_dict()
                 for folder in (tmp_path / "reference", out))


def test_samples_reach_tensorboard_and_the_gradient_norm_is_logged(vae_and_cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    vae, cache = vae_and_cache
    out = tmp_path / "run"
    assert main(arguments(vae, out, latent_cache=cache, max_train_steps=2, validation_steps=2, logging_steps=1,
                          report_to="tensorboard", max_grad_norm="null")) == 0
    accumulator = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*"))))
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["samples RedSquareBounce | RedSquareSpin | BlueCircleBounce"]
    grad_norms = [event.value for event in accumulator.Scalars("grad_norm")]
    assert len(grad_norms) == 2 and all(value > 0 for value in grad_norms)
