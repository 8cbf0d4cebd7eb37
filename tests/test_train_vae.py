"""train_vae: a full run, kill-and-resume equality, two-process DDP, broken videos, non-finite losses."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import kill_when_written

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.training.train_vae import main

MODEL = "{preset: tiny, sample_size: 32, num_frames: 8, patch_size: 8}"


def arguments(data_root: Path, output_dir: Path, **overrides) -> list[str]:
    options = {
        "data_root": data_root, "model": MODEL, "train_batch_size": 2, "max_train_steps": 6, "learning_rate": 1e-3,
        "lr_warmup_steps": 2, "disc_start": 3, "use_ema": True, "checkpointing_steps": 2, "validation_steps": 100,
        "num_validation_clips": 2, "num_validation_videos": 1, "dataloader_num_workers": 0, "report_to": "none",
        "output_dir": output_dir, **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoencoderVidTwin.from_pretrained(folder).state_dict()


def test_training_run_writes_checkpoints_validation_and_model(embedded_root, tmp_path):
    out = tmp_path / "run"
    assert main(arguments(embedded_root, out, checkpoints_total_limit=2, validation_steps=6)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # rotated
    assert not list(out.glob(".*partial"))
    assert (out / "train_config.yaml").exists()
    videos = sorted(p.name for p in (out / "validation" / "step-6").iterdir())
    assert videos == sorted(f"clip0_{kind}.{ext}" for kind in ("original", "reconstruction", "structure", "dynamics")
                            for ext in ("gif", "mp4"))
    trained = weights(out / "vae")
    torch.manual_seed(0)
    initial = AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(embedded_root, tmp_path):
    # The reference: an uninterrupted run. One DataLoader worker, so the worker path is covered too.
    args = dict(max_train_steps=14, dataloader_num_workers=1)
    assert main(arguments(embedded_root, tmp_path / "reference", **args)) == 0

    # The same run, killed with SIGKILL as soon as its first checkpoint is complete, then resumed.
    out = tmp_path / "killed"
    kill_when_written([sys.executable, "-m", "vidtwin_gen.training.train_vae", *arguments(embedded_root, out, **args)],
                      out / "checkpoint-2")
    assert not (out / "vae").exists(), "the run finished before it could be killed"
    assert (out / "checkpoint-2").exists()

    assert main(arguments(embedded_root, out, resume_from_checkpoint="latest", **args)) == 0
    reference, resumed = weights(tmp_path / "reference" / "vae"), weights(out / "vae")
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


@pytest.mark.slow
def test_two_process_ddp_on_cpu(embedded_root, tmp_path):
    out = tmp_path / "ddp"
    config = Path(__file__).resolve().parents[1] / "train_configs" / "accelerate" / "cpu_2proc.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "-m", "vidtwin_gen.training.train_vae", *arguments(embedded_root, out, max_train_steps=4)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "vae" / "config.json").exists()
    assert sorted((out / "checkpoint-4").glob("random_states_*.pkl")) == [
        out / "checkpoint-4" / "random_states_0.pkl", out / "checkpoint-4" / "random_states_1.pkl"
    ]


def test_broken_videos_are_skipped_and_counted(embedded_root, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(embedded_root, data)
    first_training_video = (data / "ucfTrainTestlist" / "trainlist01.txt").read_text().split()[0]
    victim = data / "UCF-101" / first_training_video
    victim.write_bytes(b"not a video")
    with caplog.at_level("WARNING"):
        assert main(arguments(data, tmp_path / "run", max_train_steps=12, checkpointing_steps=100)) == 0
    assert any("skipping unreadable video" in r.getMessage() and victim.name in r.getMessage() for r in caplog.records)
    assert any("skipped 1 unreadable video" in r.getMessage() for r in caplog.records)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(embedded_root, tmp_path):
    out = tmp_path / "run"
    # A huge learning rate sends the weights to inf after the first update.
    with pytest.raises(FloatingPointError, match="non-finite loss .* last good checkpoint is .*checkpoint-1"):
        main(arguments(embedded_root, out, learning_rate=1e30, lr_warmup_steps=0, checkpointing_steps=1,
                       max_train_steps=5, use_ema=False))
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints[0] == "checkpoint-1" and not (out / "vae").exists()
    saved = torch.load(out / "checkpoint-1" / "optimizer.bin", weights_only=True)
    assert saved["state"]  # a complete, loadable checkpoint


class _RunsCode:
    """Unpickling this touches a file: a stand-in for a hostile pickle in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_keeps_its_own_state_without_pickle_and_refuses_a_planted_one(embedded_root, tmp_path):
    out = tmp_path / "run"
    assert main(arguments(embedded_root, out, max_train_steps=2, checkpointing_steps=2)) == 0
    checkpoint = out / "checkpoint-2"
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    assert (checkpoint / "training_state.safetensors").is_file() and (checkpoint / "training_state.json").is_file()

    marker = tmp_path / "code-ran"
    for planted in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        tampered = tmp_path / f"tampered-{planted}"
        shutil.copytree(out, tampered)
        torch.save(_RunsCode(marker), tampered / "checkpoint-2" / planted)
        with pytest.raises(ValueError, match=planted.replace(".", r"\.")):
            main(arguments(embedded_root, tampered, max_train_steps=4, checkpointing_steps=2,
                           resume_from_checkpoint="latest"))
        assert not marker.exists(), f"resuming ran code from {planted}"


def test_an_unwritable_output_dir_fails_before_training(embedded_root, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match="output_dir .*file.* not a folder"):
        main(arguments(embedded_root, not_a_folder))


@pytest.mark.parametrize("max_grad_norm", ["null", "0.5"])
def test_gradient_norm_is_logged_with_and_without_clipping(embedded_root, tmp_path, monkeypatch, max_grad_norm):
    from accelerate import Accelerator

    logged = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, log_kwargs=None: logged.append(values))
    assert main(arguments(embedded_root, tmp_path / "run", max_train_steps=2, logging_steps=1, disc_start=1,
                          max_grad_norm=max_grad_norm, use_ema=False)) == 0
    steps = [values for values in logged if "loss" in values]
    assert len(steps) == 2
    for values in steps:
        assert values["grad_norm"] > 0 and torch.isfinite(torch.tensor(values["grad_norm"]))
    assert steps[1]["disc_grad_norm"] > 0  # the PatchGAN is on from step 1


def test_validation_images_reach_tensorboard(embedded_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(arguments(embedded_root, out, max_train_steps=1, report_to="tensorboard", use_ema=False)) == 0
    events = sorted((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["images"])
    assert tags == {"val/clip0 original|reconstruction|structure|dynamics"}


def test_crop_and_resize_options_and_mixed_precision_no(embedded_root, tmp_path):
    # `--mixed_precision no` once reached Accelerate as False ("Unknown mixed_precision mode: False").
    assert main(arguments(embedded_root, tmp_path / "run", max_train_steps=1, crop="center", resize="area",
                          use_ema=False, mixed_precision="no")) == 0
    with pytest.raises(ValueError, match="crop must be one of .*'middle'"):
        main(arguments(embedded_root, tmp_path / "bad", crop="middle"))


def test_an_optimizer_in_the_training_state_comes_back_whole(tmp_path):
    # Under FSDP the log-variance's Adam lives in training_state.{safetensors,json}: JSON turns its int keys to strings.
    from vidtwin_gen.training.checkpointing import load_training_state, save_training_state

    def adam(value: float):
        parameter = torch.nn.Parameter(torch.tensor(value))
        return parameter, torch.optim.Adam([parameter], lr=0.1, betas=(0.9, 0.99), weight_decay=1e-4)

    logvar, optimizer = adam(0.5)
    for _ in range(3):
        (logvar - 2.0).square().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_training_state(tmp_path, {"logvar": logvar, "logvar_optimizer": optimizer})
    restored, restored_optimizer = adam(0.0)
    load_training_state(tmp_path, {"logvar": restored, "logvar_optimizer": restored_optimizer})
    state, restored_state = optimizer.state[logvar], restored_optimizer.state[restored]
    assert restored_state and set(state) == set(restored_state)
    for key in state:
        assert torch.equal(state[key], restored_state[key]), key
    for parameter, opt in ((logvar, optimizer), (restored, restored_optimizer)):  # the next step is the same
        (parameter - 2.0).square().backward()
        opt.step()
    assert torch.equal(logvar, restored)


def test_dynamics_kl_scale_weights_the_dynamics_kl_alone(embedded_root, tmp_path):
    """A per-part KL weight: scaling the dynamics' KL changes training (2 steps, no GAN), and only through it."""
    args = dict(max_train_steps=2, disc_start=100, use_ema=False, checkpointing_steps=100)
    trained = {}
    for scale in (1.0, 1e4):
        assert main(arguments(embedded_root, tmp_path / str(scale), dynamics_kl_scale=scale, **args)) == 0
        trained[scale] = weights(tmp_path / str(scale) / "vae")
    changed = {key for key in trained[1.0] if not torch.equal(trained[1.0][key], trained[1e4][key])}
    assert any(key.startswith("dynamics") or "dynamics" in key for key in changed)
    with pytest.raises(ValueError, match="dynamics_kl_scale must be >= 0"):
        main(arguments(embedded_root, tmp_path / "negative", dynamics_kl_scale=-1, **args))


def test_dynamics_kl_is_the_dynamics_part_of_the_joint_kl():
    from vidtwin_gen.training.train_vae import dynamics_kl

    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8)
    encoded = vae.encode(torch.rand(2, 3, 8, 32, 32) * 2 - 1)
    num_structure = int(torch.tensor(vae.structure_latent_shape).prod())
    torch.testing.assert_close(dynamics_kl(encoded.latent_dist, num_structure), encoded.dynamics_dist.kl())
    torch.testing.assert_close(encoded.latent_dist.kl(), encoded.structure_dist.kl() + encoded.dynamics_dist.kl())


def test_dynamics_static_kl_prices_the_average_over_time_alone(embedded_root, tmp_path):
    from vidtwin_gen.training.train_vae import dynamics_kl, dynamics_static_kl

    vae = AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8)
    num_structure, shape = int(torch.tensor(vae.structure_latent_shape).prod()), vae.dynamics_latent_shape
    posterior = vae.encode(torch.rand(2, 3, 8, 32, 32) * 2 - 1).latent_dist
    structure, dynamics = vae.unpack_latents(posterior.mean)
    # A dynamics mean constant over time costs its whole mean term; one that averages to zero over time, nothing.
    still = dynamics.mean(2, keepdim=True).expand_as(dynamics)
    posterior.mean = vae.pack_latents(structure, still)
    mean_term = dynamics_kl(posterior, num_structure) - 0.5 * (posterior.var - 1.0 - posterior.logvar)[:, num_structure:].sum(1)
    torch.testing.assert_close(dynamics_static_kl(posterior, num_structure, shape), mean_term)
    posterior.mean = vae.pack_latents(structure, dynamics - still)
    torch.testing.assert_close(dynamics_static_kl(posterior, num_structure, shape), torch.zeros(2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dynamics_static_kl_scale must be >= 0"):
        main(arguments(embedded_root, tmp_path / "negative", dynamics_static_kl_scale=-1, max_train_steps=1))


def test_shuffle_colours_reorders_each_clips_channels_on_its_own():
    from vidtwin_gen.training.train_vae import shuffle_colours

    torch.manual_seed(0)
    video = torch.rand(32, 3, 2, 4, 4)
    shuffled = shuffle_colours(video)
    orders = set()
    for clip, result in zip(video, shuffled):
        order = tuple(next(c for c in range(3) if torch.equal(result[k], clip[c])) for k in range(3))
        assert sorted(order) == [0, 1, 2]
        orders.add(order)
    assert len(orders) > 1


def test_shift_clips_moves_each_clip_by_an_offset_of_its_own_within_the_limit():
    from vidtwin_gen.training.train_vae import shift_clips

    torch.manual_seed(0)
    video = torch.rand(32, 3, 4, 8, 8)
    offsets = set()
    for clip, result in zip(video, shift_clips(video, 2)):
        # One offset for the whole clip: all its frames and channels move together.
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(result, clip.roll((dy, dx), dims=(-2, -1)))]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5


def _transforms(max_pixels: int, colours: bool) -> list:
    """Every (channel order, (dy, dx) offset) the options allow."""
    from itertools import permutations

    orders = permutations(range(3)) if colours else [(0, 1, 2)]
    steps = range(-max_pixels, max_pixels + 1)
    return [(list(order), (dy, dx)) for order in orders for dy in steps for dx in steps]


@pytest.mark.parametrize("options, transforms", [
    ({}, None),
    ({"dynamics_colour_shuffle": "true"}, _transforms(0, colours=True)),
    ({"dynamics_spatial_jitter": 2}, _transforms(2, colours=False)),
    ({"dynamics_colour_shuffle": "true", "dynamics_spatial_jitter": 1}, _transforms(1, colours=True)),
])
def test_the_dynamics_options_feed_the_dynamics_a_transformed_clip(embedded_root, tmp_path, monkeypatch, options,
                                                                  transforms):
    from vidtwin_gen.models.autoencoder_vidtwin import AutoencoderVidTwin as Model

    seen = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda self, sample, *a, dynamics_sample=None, **k: (
        seen.append((sample, dynamics_sample)), forward(self, sample, *a, dynamics_sample=dynamics_sample, **k))[1])
    args = dict(max_train_steps=2, disc_start=100, use_ema=False)
    assert main(arguments(embedded_root, tmp_path / "run", **options, **args)) == 0
    assert len(seen) == 2
    if transforms is None:
        assert [dynamics_sample for _, dynamics_sample in seen] == [None, None]
        return
    for sample, dynamics_sample in seen:
        # Each dynamics clip is its clip with the colour channels in some order, moved by some offset.
        for clip, transformed in zip(sample, dynamics_sample):
            assert any(torch.equal(transformed, clip[order].roll(offset, dims=(-2, -1))) for order, offset in transforms)
    # ... and not all of them the identity (a chance of at most (1/6)^4 with 4 clips).
    assert not all(torch.equal(sample, dynamics_sample) for sample, dynamics_sample in seen)


def test_a_negative_dynamics_jitter_is_refused(embedded_root, tmp_path):
    with pytest.raises(ValueError, match="dynamics_spatial_jitter must be >= 0"):
        main(arguments(embedded_root, tmp_path / "negative", dynamics_spatial_jitter=-1, max_train_steps=1))
