"""The factor probes read real clips right; eval-decoupling's table, its CLI, the sheet and decoupled-control scoring."""

import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.data.embedded import CLASSES, CONTENTS, EmbeddedClass, _render, _scene, motion_shows
from vidtwin_gen.evaluation.decoupling import (
    _decodes,
    answer_clips,
    choose_pairs,
    clip_statistics,
    evaluate_decoupling,
    load_embedded_clips,
    main,
    probes_for_data_root,
    score_decoupled_control,
    score_factors,
    statistics_class_probes,
    write_decoupling_sheet,
)

SIZE, FPS = (32, 32), 8.0


@pytest.fixture(scope="module")
def data_root(make_embedded):
    # Every class, 3 groups x 2 clips of 48 frames (a 16-frame clip at 8 fps spans 46): split 1 tests on group 1.
    return make_embedded(classes=[cls.name for cls in CLASSES], num_groups=3, clips_per_group=2, num_frames=48)


@pytest.fixture(scope="module")
def probes_and_clips(data_root):
    return probes_for_data_root(data_root, 16, SIZE, FPS)


def test_probes_read_the_factors_of_real_held_out_clips(probes_and_clips):
    probes, clips = probes_and_clips
    checks = probes.checks
    assert (checks["content"]["test_clips"], checks["content"]["train_clips"]) == (20, 80)
    assert checks["content"]["test_accuracy"] >= 0.95, checks
    assert checks["fast"]["test_accuracy"] >= 0.9, checks
    # The drift read-out (no fitting) against the truth the data set wrote down.
    assert checks["drift"]["pair_accuracy"] >= 0.95 and checks["drift"]["mean_error"] < 0.3 * checks["drift"]["mean_true_drift"]
    read = probes.read(clips.videos)
    assert np.mean(np.array(read["content"]) == np.array(clips.contents)) >= 0.95


def test_drift_read_out_follows_the_scene(probes_and_clips):
    probes, clips = probes_and_clips
    videos = clips.videos[:6]
    forward = probes.read(videos)["drift"]
    backward = probes.read(videos.flip(2))["drift"]  # time reversed: the scene drifts back
    still = probes.read(videos[:, :, :1].repeat(1, 1, 16, 1, 1))["drift"]
    assert np.allclose(backward, -forward, atol=0.03)
    assert np.abs(still).max() < 1e-3 and np.linalg.norm(forward, axis=1).min() > 0.05  # drifts are ~0.1-0.17


def test_a_wobbling_outline_does_not_read_as_a_turn():
    # An autoencoder unsure of a shape draws it a little turned one way, then the other: no spin, though each
    # step turns the outline more than a spin's step does. The fast statistics' order-3 turning (a triangle's).
    rng = np.random.default_rng(0)
    cls = EmbeddedClass("GreenTriangleSpin", *CONTENTS["GreenTriangle"], "spin")
    scene = _scene(rng, cls, 32, 32)
    still = {"drift_radius": 0.0, "drift_period": 7.0, "drift_direction": 1, "drift_phase": 0.0, "turns_per_s": 0.0}
    spin = _render(cls, scene, {**still, "turns_per_s": 0.3}, 16, FPS, 32, 32, 0.0, rng)
    wobble = np.concatenate([_render(cls, {**scene, "angle": scene["angle"] + turn}, still, 1, FPS, 32, 32, 0.0, rng)
                             for turn in 0.25 * (-1.0) ** np.arange(16)])
    videos = torch.from_numpy(np.stack([spin, wobble])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    spin_turning, wobble_turning = clip_statistics(videos)["fast"][:, 5]
    assert spin_turning > 0.5 and wobble_turning < 0.15 * spin_turning, (spin_turning, wobble_turning)


def test_score_factors_against_right_and_wrong_factors(probes_and_clips):
    probes, clips = probes_and_clips
    drift = probes.read(clips.videos)["drift"]
    right = score_factors(probes, clips.videos, clips.contents, clips.fast_motions, drift)
    assert right["all"] >= 0.9 and right["num_videos"] == 20
    rolled = lambda items: items[5:] + items[:5]  # noqa: E731 - other classes' factors (same class every 10 clips)
    wrong = score_factors(probes, clips.videos, rolled(clips.contents), rolled(clips.fast_motions), np.roll(drift, 5, 0))
    assert wrong["content"] <= 0.2 and wrong["all"] <= 0.1
    with pytest.raises(ValueError, match="content"):
        score_factors(probes, clips.videos, contents=["PinkElephant"] * 20)
    with pytest.raises(ValueError, match="at least one"):
        score_factors(probes, clips.videos)


def test_pairs_differ_in_every_factor_and_can_show_their_answer(probes_and_clips):
    probes, clips = probes_and_clips
    drift = probes.read(clips.videos)["drift"]
    every = choose_pairs(clips, drift, num_pairs=10_000, min_separation=0.1)
    contents, motions = clips.contents, clips.fast_motions
    expected = [(a, b) for a in range(20) for b in range(20) if contents[a] != contents[b]
                and motions[a] != motions[b] and np.linalg.norm(drift[a] - drift[b]) >= 0.1]
    left_out = [(a, b) for a, b in expected if contents[a] == "BlueCircle" and motions[b] == "spin"]
    assert left_out and every == [pair for pair in expected if pair not in left_out]
    assert all(motion_shows(contents[a], motions[b]) for a, b in every)
    some = choose_pairs(clips, drift, num_pairs=15, seed=3)
    assert len(some) == 15 and set(some) <= set(every) and some != choose_pairs(clips, drift, num_pairs=15, seed=4)


class _StubAutoencoder:
    """Latent = the clip itself, twice; a full decode returns the structure half (`reenact_gives="A"`) or the
    dynamics half ("B"): an autoencoder whose reenactment is A itself, or B itself."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, reenact_gives: str):
        self.reenact_gives = reenact_gives

    def eval(self):
        return self

    def encode(self, video):
        z = torch.cat([video.flatten(1), video.flatten(1)], 1)
        self.shape = video.shape[1:]
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z))

    def unpack_latents(self, z):
        return z.chunk(2, dim=1)

    def pack_latents(self, structure, dynamics):
        return torch.cat([structure, dynamics], 1)

    def decode(self, z, part=None):
        structure, dynamics = self.unpack_latents(z)
        half = dynamics if part == "dynamics" or (part is None and self.reenact_gives == "B") else structure
        return SimpleNamespace(sample=half.reshape(-1, *self.shape))


def test_the_answer_for_a_clip_with_itself_is_that_clip(probes_and_clips):
    # Rendered at the clip's frames and read back like the held-out clips: the same clip, to the codec's rounding.
    _, clips = probes_and_clips
    answers = answer_clips(clips, [(0, 0), (7, 7)])
    assert answers.shape == (2, 3, 16, *SIZE) and (answers - clips.videos[[0, 7]]).abs().mean() < 0.02


def test_table_tells_which_clip_each_factor_came_from(probes_and_clips):
    probes, clips = probes_and_clips
    copies_a = evaluate_decoupling(_StubAutoencoder("A"), probes, clips, num_pairs=40)
    assert copies_a["num_pairs"] == 40 and copies_a["psnr"] > 90  # its reconstruction is the clip itself
    row = copies_a["rows"]["reenactment"]
    assert row["content_A"] >= 0.9 and row["drift_A"] >= 0.9 and row["fast_A"] >= 0.9 and row["goal"] <= 0.1
    assert copies_a["rows"]["dynamics"]["fast_B"] >= 0.9  # the stub's dynamics-only decode is B
    # A perfect autoencoder reconstructs each pair's rendered answer as it is, and the answer reads as the goal.
    assert copies_a["rows"]["answer"]["goal"] >= 0.9 and copies_a["psnr_to_answer"]["reconstruction of the answer"] > 90
    assert copies_a["psnr_to_answer"]["reenactment"] == copies_a["psnr_to_answer"]["reconstruction of A"] < 30
    copies_b = evaluate_decoupling(_StubAutoencoder("B"), probes, clips, num_pairs=40)
    row = copies_b["rows"]["reenactment"]
    assert row["content_B"] >= 0.9 and row["drift_B"] >= 0.9 and row["fast_B"] >= 0.9 and row["goal"] <= 0.1
    # Per fast motion of B, what C shows: B's own when C is B; never B's when C is A (pairs differ in fast motion).
    for report, own in ((copies_b, True), (copies_a, False)):
        confusion = report["reenactment_fast_motion_by_B"]
        assert sum(sum(counts.values()) for counts in confusion.values()) == 40
        on_diagonal = sum(counts[motion] for motion, counts in confusion.items())
        assert on_diagonal >= 36 if own else on_diagonal <= 4


class _Reconstructs:
    """An 'autoencoder' whose reconstruction of a clip is `transform(clip)`."""

    sample_shape = (3, 16, *SIZE)

    def __init__(self, transform):
        self.transform = transform

    def parameters(self):
        return iter([torch.zeros(1)])

    def __call__(self, video):
        return SimpleNamespace(sample=self.transform(video))


def test_statistics_class_probes_read_the_classes_and_what_reconstructions_lose(data_root):
    names = [cls.name for cls in CLASSES]
    faithful = statistics_class_probes(data_root, _Reconstructs(lambda x: x), FPS)
    for kind, probe in faithful.items():
        assert probe.class_names == names and probe.metadata["clips"] in ("real", "vae reconstruction")
        assert probe.metadata["num_test"] == 20 and probe.metadata["test_accuracy"] >= 0.9, kind
    # An autoencoder that keeps only each clip's mean frame keeps the content and loses the fast motion: its
    # reconstructions can no longer be told apart within a content (two fast motions each).
    still = statistics_class_probes(data_root, _Reconstructs(lambda x: x.mean(2, keepdim=True).expand_as(x)), FPS)
    assert still["real"].metadata["test_accuracy"] >= 0.9 and still["reconstruction"].metadata["test_accuracy"] <= 0.75


def test_reenactment_is_the_models_reenact(vae_dir, data_root):
    vae = AutoencoderVidTwin.from_pretrained(vae_dir)
    clips = load_embedded_clips(data_root, "test", 8, SIZE, FPS)
    decodes = _decodes(vae, clips.videos[:4], [(0, 3), (2, 1)], batch_size=3)
    with torch.no_grad():
        expected = vae.reenact(clips.videos[[0, 2]], clips.videos[[3, 1]]).sample
    torch.testing.assert_close(decodes["reenactment"], expected, atol=1e-5, rtol=1e-4)
    assert decodes["structure"].shape == decodes["dynamics"].shape == (4, 3, 8, 32, 32)


def test_eval_decoupling_command_on_a_tiny_vae(vae_dir, data_root, tmp_path, capsys):
    argv = ["--vae", str(vae_dir), "--data-root", str(data_root), "--num-pairs", "12", "--json", str(tmp_path / "d.json"),
            "--sheet", str(tmp_path / "sheet.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decoupling over 12 pairs" in out and "reenactment S(A) + D(B)" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["num_pairs"] == 12 and report["num_clips"] == 20
    assert set(report["rows"]) == {"reconstruction", "structure", "dynamics", "reenactment", "answer"}
    assert set(report["psnr_to_answer"]) == {"reenactment", "reconstruction of A", "reconstruction of the answer"}
    for row in report["rows"].values():
        assert all(0 <= row[key] <= 1 for key in ("content_A", "content_B", "drift_A", "fast_A", "fast_B", "goal"))
        assert row["drift_A"] + row["drift_B"] == pytest.approx(1)
    assert PIL.Image.open(tmp_path / "sheet.png").width >= 8 * 32 * 4
    assert PIL.Image.open(tmp_path / "sheet.gif").n_frames == 8


def test_eval_decoupling_needs_the_embedded_sets_factors(vae_dir, tmp_path):
    with pytest.raises(ValueError, match="make-dataset"):
        main(["--vae", str(vae_dir), "--data-root", str(tmp_path)])


def test_sheet_and_gif(tmp_path):
    rng = np.random.default_rng(0)
    videos = {title: rng.random((5, 16, 16, 3)) for title in ("original A", "original B", "reenactment S(A)+D(B)")}
    png, gif = write_decoupling_sheet(tmp_path / "s.png", videos, ["line one", "line two"], scale=2)
    sheet = PIL.Image.open(png)
    assert sheet.width == 5 * 16 * 2 and sheet.height > 3 * 2 * 16 * 2  # each video and its differences, doubled
    animation = PIL.Image.open(gif)
    assert animation.n_frames == 5 and animation.width >= 3 * 16 * 2
    with pytest.raises(ValueError, match=".png"):
        write_decoupling_sheet(tmp_path / "s.jpg", videos, [])


def test_decoupled_control_scoring(probes_and_clips):
    probes, clips = probes_and_clips
    # "Generated" videos that are the held clip itself: its content and drift, its own fast motion.
    clip = clips.videos[0]
    frames = ((clip[None].permute(0, 2, 3, 4, 1) + 1) / 2).numpy().repeat(2, axis=0)  # as pipe(...).frames
    own = next(cls.name for cls in CLASSES if cls.content == clips.contents[0] and cls.motion == clips.fast_motions[0])
    other = next(cls.name for cls in CLASSES if cls.motion != clips.fast_motions[0])
    report = score_decoupled_control(probes, clip, frames, [own, other])
    assert (report["content"], report["drift"], report["fast"], report["all"]) == (1.0, 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="one per class name"):
        score_decoupled_control(probes, clip, frames, [own])
