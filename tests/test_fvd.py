import json
from collections import Counter

import numpy as np
import pytest
import torch

from vidtwin_gen.data.video_io import write_video
from vidtwin_gen.evaluation.fvd import (
    PROTOCOLS,
    VideoClipSet,
    cached_features,
    extract_features,
    feature_statistics,
    frechet_distance,
    fvd_from_features,
    get_protocol,
    main,
    resize_for_i3d,
    sample_class_labels,
)
from vidtwin_gen.evaluation.i3d import load_i3d


def direct_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """Tr sqrt(S1 S2) through the symmetric form sqrt(S1)^(1/2) S2 sqrt(S1)^(1/2), with eigh only."""
    w, v = np.linalg.eigh(sigma1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def random_covariance(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def moving_video(t_frames: int, size: int, phase: float, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright square drifting over a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    frames = np.repeat(background[None], t_frames, axis=0)
    for t in range(t_frames):
        x = int(phase + 2 * t) % (size - 8)
        frames[t, 8:16, x : x + 8] = (220, 200 - 20 * (seed % 5), 40)
    return frames


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    # Diagonal (commuting) covariances: closed form |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed_form, rel=1e-10)
    # Full covariances against the symmetric eigen-decomposition form.
    sigma1, sigma2 = random_covariance(rng, 16), random_covariance(rng, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(direct_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8)
    # Same Gaussian: zero. Shift of the mean only: its squared norm.
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, sigma1, mu1 + 3, sigma1) == pytest.approx(9 * 16, rel=1e-8)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, sigma1, mu2[:3], sigma2[:3, :3])


def test_frechet_distance_from_samples_and_singular_covariances():
    rng = np.random.default_rng(1)
    dim = 8
    sigma1, sigma2 = random_covariance(rng, dim), random_covariance(rng, dim)
    mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
    a = rng.multivariate_normal(mu1, sigma1, size=20_000)
    b = rng.multivariate_normal(mu2, sigma2, size=20_000)
    mean, cov = feature_statistics(a)
    assert np.allclose(mean, a.mean(0)) and np.allclose(cov, np.cov(a.T))
    assert fvd_from_features(a, b) == pytest.approx(direct_frechet(mu1, sigma1, mu2, sigma2), rel=0.05)
    # Fewer samples than dimensions (as with FVD on a small set): singular covariances stay finite, and a
    # set against itself is ~0.
    few = rng.standard_normal((10, 64))
    assert fvd_from_features(few, few) == pytest.approx(0.0, abs=1e-4)
    assert np.isfinite(fvd_from_features(few, rng.standard_normal((10, 64))))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(few[:1])


def test_protocols():
    assert (PROTOCOLS["stylegan-v"].num_real, PROTOCOLS["stylegan-v"].num_generated) == (2048, 2048)
    assert (PROTOCOLS["10k"].num_real, PROTOCOLS["10k"].num_generated) == (10_000, 10_000)
    assert get_protocol("10k").num_frames == 16
    custom = get_protocol("stylegan-v", num_samples=64)
    assert (custom.name, custom.num_real, custom.num_generated) == ("custom", 64, 64)
    with pytest.raises(ValueError, match="unknown FVD protocol"):
        get_protocol("fid")


def test_resize_for_i3d():
    clip = torch.rand(3, 20, 48, 64) * 2 - 1
    out = resize_for_i3d(clip)
    assert out.shape == (3, 16, 224, 224) and out.min() >= -1 and out.max() <= 1
    constant = torch.full((3, 16, 30, 40), 0.25)
    assert torch.allclose(resize_for_i3d(constant), torch.full((3, 16, 224, 224), 0.25))
    with pytest.raises(ValueError, match="at least 16 frames"):
        resize_for_i3d(torch.zeros(3, 15, 32, 32))


def test_sample_class_labels_follow_data_frequencies():
    labels = [0] * 90 + [1] * 10
    drawn = sample_class_labels(labels, 4000, seed=3)
    assert drawn == sample_class_labels(labels, 4000, seed=3)
    assert Counter(drawn)[1] / 4000 == pytest.approx(0.1, abs=0.02)


@pytest.fixture(scope="module")
def i3d():
    return load_i3d()


@pytest.mark.slow
def test_fvd_against_itself_is_zero_and_grows_with_noise(i3d):
    clips = [torch.from_numpy(moving_video(16, 32, phase=5 * i, seed=i)).permute(3, 0, 1, 2).float() / 127.5 - 1 for i in range(4)]
    generator = torch.Generator().manual_seed(0)
    noisy = {s: [(c + s * torch.randn(c.shape, generator=generator)).clamp(-1, 1) for c in clips] for s in (0.1, 0.4)}
    real = extract_features(clips, i3d, batch_size=4)
    assert real.shape == (4, 400)
    fvd_self = fvd_from_features(real, real)
    fvd_small = fvd_from_features(real, extract_features(noisy[0.1], i3d, batch_size=4))
    fvd_large = fvd_from_features(real, extract_features(noisy[0.4], i3d, batch_size=4))
    assert abs(fvd_self) < 1e-3
    assert 1.0 < fvd_small < fvd_large


def test_video_clip_set_shares_and_skips(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"v{i}.avi"
        write_video(path, moving_video(40, 32, phase=i, seed=i), fps=25)  # two full 16-frame clips each
        paths.append(path)
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video" * 100)
    paths.append(broken)
    # 5 clips over 4 videos: shares 2, 1, 1, 1 in a seeded order; the broken file's share moves on.
    clip_set = VideoClipSet(paths, num_clips=5, num_frames=16, resolution=24, seed=0)
    clips = list(clip_set)
    assert len(clips) == 5 and all(c.shape == (3, 16, 24, 24) for c in clips)
    assert clip_set.num_skipped == 1
    # Asking for more than exists gives what exists (3 videos x 2 clips), not an error.
    many = VideoClipSet(paths, num_clips=10, num_frames=16, resolution=24, seed=1)
    assert len(list(many)) == 6 and many.num_skipped == 1
    # Fewer clips than videos: one clip each from distinct videos.
    assert len(list(VideoClipSet(paths[:3], num_clips=2, num_frames=16, resolution=24))) == 2


def test_cached_features_roundtrip(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float64).reshape(4, 3), {"num_skipped": 0}

    key = {"real_dir": "/data/a", "weights_sha256": "abc", "num_real": 4}
    first = cached_features(key, compute, tmp_path)
    second = cached_features(key, compute, tmp_path)
    assert len(calls) == 1 and first[2] is False and second[2] is True
    assert np.array_equal(first[0], second[0]) and second[1] == {"num_skipped": 0}
    (path,) = tmp_path.glob("*.npz")
    with np.load(path, allow_pickle=False) as data:
        assert np.array_equal(data["features"], first[0])
    cached_features({**key, "weights_sha256": "other"}, compute, tmp_path)
    assert len(calls) == 2
    cached_features(key, compute, None)
    assert len(calls) == 3


@pytest.mark.slow
def test_eval_fvd_cli_ucf_split(tmp_path, capsys, embedded_root):
    generated_dir = tmp_path / "generated"
    for i in range(2):
        write_video(generated_dir / f"g{i}.mp4", moving_video(18, 40, phase=3 * i + 1, seed=10 + i), fps=8)
    (generated_dir / "broken.mp4").write_bytes(b"\x00" * 64)
    # The tiny embedded set's split-1 test subset: 6 videos of 24 frames, one 16-frame clip each.
    args = ["--data-root", str(embedded_root), "--split", "1", "--subset", "test", "--generated-dir", str(generated_dir),
            "--num-samples", "3", "--resolution", "32", "--cache-dir", str(tmp_path / "cache"),
            "--output", str(tmp_path / "fvd.json")]

    assert main(args) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((tmp_path / "fvd.json").read_text())
    assert last_line == f"FVD {report['fvd']:.4f}" and np.isfinite(report["fvd"]) and report["fvd"] > 0
    assert (report["protocol"], report["protocol_num_real"], report["num_frames"]) == ("custom", 3, 16)
    assert (report["real"]["split"], report["real"]["subset"], report["real"]["num_videos"]) == (1, "test", 6)
    # 2 one-clip generated videos cannot give 3 clips: said so, not hidden.
    assert (report["num_real"], report["num_generated"], report["protocol_satisfied"]) == (3, 2, False)
    assert report["generated"]["num_skipped"] == 1 and report["real"]["cache"] == "miss"
    assert len(report["weights_sha256"]) == 64

    assert main(args) == 0  # real features now come from the cache
    again = json.loads((tmp_path / "fvd.json").read_text())
    assert again["real"]["cache"] == "hit" and again["fvd"] == pytest.approx(report["fvd"], rel=1e-6)


@pytest.mark.slow
def test_eval_fvd_cli_folder_against_itself(tmp_path, capsys):
    for i in range(2):
        write_video(tmp_path / "videos" / f"v{i}.avi", moving_video(16, 32, phase=4 * i, seed=i), fps=25)
    videos = str(tmp_path / "videos")
    assert main(["--real-dir", videos, "--generated-dir", videos, "--num-samples", "2", "--resolution", "32",
                 "--no-cache", "--output", str(tmp_path / "self.json")]) == 0
    report = json.loads((tmp_path / "self.json").read_text())
    assert report["protocol_satisfied"] and report["real"]["cache"] == "off"
    assert abs(report["fvd"]) < 1e-3
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"FVD {report['fvd']:.4f}"


def test_eval_fvd_cli_pipeline_needs_the_real_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--real-dir", str(tmp_path), "--pipeline", str(tmp_path)])
    assert "--pipeline needs --data-root" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_fvd_cli_pipeline(tmp_path, capsys, embedded_root):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny", num_frames=16)  # FVD needs 16-frame clips
    transformer = VidTwinTransformer3DModel.from_preset(
        "tiny", dynamics_latent_shape=vae.dynamics_latent_shape, num_classes=3
    )
    VidTwinPipeline(vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                    id2label={0: "RedSquareBounce", 1: "RedSquareSpin", 2: "BlueCircleBounce"}).save_pretrained(tmp_path / "pipe")
    args = ["--data-root", str(embedded_root), "--subset", "test", "--pipeline", str(tmp_path / "pipe"),
            "--num-samples", "3", "--num-inference-steps", "2", "--no-cache", "--output", str(tmp_path / "fvd.json"),
            "--class-probes", str(tmp_path / "probes")]
    assert main(args) == 0
    report = json.loads((tmp_path / "fvd.json").read_text())
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"FVD {report['fvd']:.4f}"
    assert np.isfinite(report["fvd"]) and report["fvd"] > 0
    assert (report["num_real"], report["num_generated"], report["protocol_satisfied"]) == (3, 3, True)
    assert report["generated"]["pipeline"].endswith("pipe") and report["resolution"] == 32  # the pipeline's size
    interval = report["fvd_interval"]
    assert interval["fvd"] == pytest.approx(report["fvd"]) and interval["low"] <= interval["high"]
    assert (interval["num_real"], interval["num_generated"]) == (3, 3)
    accuracy = report["sample_class_accuracy"]
    assert set(accuracy) == {"real", "reconstruction"}
    for section in accuracy.values():
        assert section["num_samples"] == 3 and 0 <= section["accuracy"] <= 1
        assert np.asarray(section["confusion_matrix"]).sum() == 3 and len(section["per_class"]) == 3
        assert 0 <= section["probe_test_accuracy"] <= 1 and section["probe_num_test"] == 6
    assert (tmp_path / "probes" / "real.safetensors").exists()  # --class-probes: fitted once, then loaded


def test_eval_fvd_checks_the_output_folder_before_loading_anything(tmp_path):
    from vidtwin_gen.data.output_paths import OutputPathError

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(OutputPathError, match="--output folder .*file"):
        main(["--real-dir", str(tmp_path / "missing"), "--generated-dir", str(tmp_path / "missing"),
                  "--i3d-weights", str(tmp_path / "missing.pkl"), "--output", str(not_a_folder / "fvd.json")])


def test_importing_fvd_does_not_import_the_pipeline():
    import subprocess
    import sys

    code = "import sys, vidtwin_gen.evaluation.fvd; print('vidtwin_gen.pipelines' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pipeline_clips_are_the_pipelines_own_videos():
    """The clips scored by FVD and the class probes are exactly what `pipe(...)` returns, also for a pipeline
    whose latent statistics are not 0 / 1 (its latents must be denormalised before the VAE decodes them)."""
    from test_pipeline import tiny_pipeline

    from vidtwin_gen.evaluation.fvd import pipeline_clips

    pipe = tiny_pipeline(structure_latent_mean=[0.5] * 4, structure_latent_std=[2.0] * 4)
    clips = torch.stack(list(pipeline_clips(pipe, [0, 2], batch_size=2, num_inference_steps=2, seed=3)))
    generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    frames = pipe(class_labels=[0, 2], num_inference_steps=2, guidance_scale=4.0, generator=generators,
                  output_type="pt").frames  # (B, T, 3, H, W) in [0, 1]
    expected = frames.permute(0, 2, 1, 3, 4) * 2 - 1
    assert clips.shape == expected.shape
    torch.testing.assert_close(clips, expected, atol=1e-5, rtol=0)
