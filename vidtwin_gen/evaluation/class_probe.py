"""Sample class accuracy: a linear probe on I3D features, fitted on real clips, applied to generated samples.

A class-conditional generator should make samples of the class it was asked for. We measure that with a
classifier trained on real clips of the data set: a multinomial logistic regression (a linear probe) on the
same I3D Kinetics-400 logits FVD uses (`fvd.extract_features`), so one I3D pass over the samples gives both
figures. The probe is fitted on the train subset and checked on the test subset; that real-clip test
accuracy bounds what the samples can reach and is reported next to theirs.

Two probes answer two questions about the same samples:

- fitted on real clips: are the samples recognisable as real videos of their class? The autoencoder's blur
  counts against the generator here;
- fitted on the autoencoder's reconstructions of real clips (`vae=`): are the samples of their class among
  the videos this autoencoder can make? This isolates the generator from the autoencoder.

    probe = probe_for_data_root(root, i3d, size=(64, 64), fps=8)              # real clips
    probe_recon = probe_for_data_root(root, i3d, vae=vae, fps=8)               # VAE reconstructions
    fvd, features = fvd_from_generator(pipeline_clips(pipe, labels, ...), real_features, i3d, protocol)
    report = classification_report(probe.predict(features), labels, probe.class_names)
    print(format_classification_report(report))

The fit is plain and deterministic (no scikit-learn): features standardised with the train set's mean and
standard deviation, softmax regression with an L2 penalty on the weights (not the biases), full-batch L-BFGS
in float64 from zero weights.
"""

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.ucf101 import UCF101Clips
from .fvd import extract_features
from .i3d import InceptionI3d

logger = logging.getLogger(__name__)

PROBE_FORMAT = "vidtwin_gen.class_probe/1"


def _as_2d_float64(features, name: str = "features") -> torch.Tensor:
    features = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or Inf values")
    return features


@dataclass
class ClassProbe:
    """A fitted linear probe: logits = ((features - mean) / std) @ weight.T + bias.

    Attributes:
        mean, std: (D,) standardisation measured on the training features.
        weight: (K, D); bias: (K,).
        class_names: K names, in label order.
        metadata: JSON-serialisable provenance (what features, which data, the fit's accuracies).
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    class_names: list[str]
    metadata: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    def logits(self, features) -> torch.Tensor:
        """(N, D) features (numpy or torch) -> (N, K) float64 logits."""
        features = _as_2d_float64(features)
        if features.shape[1] != self.num_features:
            raise ValueError(
                f"features have {features.shape[1]} dimensions, the probe was fitted on {self.num_features}: "
                "extract them the same way (I3D logits from fvd.extract_features)"
            )
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, features) -> np.ndarray:
        """(N, D) features -> (N,) int64 predicted labels."""
        return self.logits(features).argmax(dim=1).numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (tensors, with class names and metadata as JSON in its header), atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"save the probe to a .safetensors file, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in ("mean", "std", "weight", "bias")}
        header = {"format": PROBE_FORMAT, "class_names": json.dumps(self.class_names), "metadata": json.dumps(self.metadata)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)  # a crash mid-write leaves no truncated probe behind
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClassProbe":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no class probe at {path}")
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != PROBE_FORMAT:
                raise ValueError(f"{path} is not a class probe (header format {header.get('format')!r}, expected {PROBE_FORMAT!r})")
            tensors = {name: f.get_tensor(name) for name in ("mean", "std", "weight", "bias")}
        return cls(**tensors, class_names=json.loads(header["class_names"]), metadata=json.loads(header["metadata"]))


def fit_class_probe(
    features,
    labels,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    l2: float = 1e-3,
    max_iter: int = 500,
    metadata: dict | None = None,
) -> ClassProbe:
    """Fit a multinomial logistic regression on (N, D) features and (N,) integer labels in [0, num_classes).

    Minimises mean cross-entropy + l2/2 * ||W||^2 on standardised features (constant features keep std 1) with
    full-batch L-BFGS (strong Wolfe line search) in float64 from zero weights: the same inputs give the same
    probe. `l2` keeps the weights finite when the classes are separable, as they often are with few clips per
    class; raise it for fewer clips than dimensions if the test accuracy lags the train accuracy.
    """
    features = _as_2d_float64(features)
    labels = torch.as_tensor(np.asarray(labels)).long()
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {features.shape[0]} (one per feature row), got {tuple(labels.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {int(labels.min())} to {int(labels.max())}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        logger.warning("no training features for classes %s: the probe will hardly ever predict them", [class_names[k] for k in missing])

    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = ClassProbe(mean, std, weight.detach(), bias.detach(), class_names, dict(metadata or {}))
    probe.metadata.update(
        num_train=int(features.shape[0]), l2=l2,
        train_accuracy=float((torch.from_numpy(probe.predict(features)) == labels).double().mean()),
    )
    return probe


def classification_report(predicted, labels, class_names: Sequence[str]) -> dict:
    """Overall and per-class accuracy and the confusion matrix of predicted vs true labels (both (N,) ints).

    Returns a JSON-serialisable dict: accuracy (correct / N), balanced_accuracy (mean per-class accuracy over
    classes that have samples), num_samples, num_correct, class_names, per_class {name: {accuracy (None
    without samples), num_samples, num_correct}}, confusion_matrix (K x K nested lists: row = true class,
    column = predicted class, counts).
    """
    predicted, labels = np.asarray(predicted).astype(np.int64), np.asarray(labels).astype(np.int64)
    num_classes = len(class_names)
    if predicted.shape != labels.shape or predicted.ndim != 1 or predicted.size == 0:
        raise ValueError(f"predicted and labels must be non-empty (N,) arrays of the same N, got {predicted.shape} and {labels.shape}")
    for name, values in (("predicted", predicted), ("labels", labels)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) for {num_classes} class names, got {values.min()}..{values.max()}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for k, name in enumerate(class_names):
        count, correct = int(confusion[k].sum()), int(confusion[k, k])
        per_class[name] = {"accuracy": correct / count if count else None, "num_samples": count, "num_correct": correct}
    present = [c["accuracy"] for c in per_class.values() if c["accuracy"] is not None]
    num_correct = int(np.trace(confusion))
    return {
        "accuracy": num_correct / labels.size,
        "balanced_accuracy": float(np.mean(present)),
        "num_samples": int(labels.size),
        "num_correct": num_correct,
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def format_classification_report(report: dict, title: str = "class accuracy") -> str:
    """A plain-text table of a `classification_report`: per-class accuracy and the confusion matrix."""
    names = report["class_names"]
    width = max(len("true \\ predicted"), *(len(n) + 3 for n in names))
    lines = [f"{title}: {report['accuracy']:.1%} ({report['num_correct']}/{report['num_samples']}), "
             f"balanced {report['balanced_accuracy']:.1%}"]
    corner = "true \\ predicted"
    lines.append(f"  {corner:{width}s} {'accuracy':>9s} " + " ".join(f"{k:>5d}" for k in range(len(names))))
    for k, (name, row) in enumerate(zip(names, report["confusion_matrix"])):
        accuracy = report["per_class"][name]["accuracy"]
        cell = f"{accuracy:9.1%}" if accuracy is not None else f"{'-':>9s}"
        lines.append(f"  {k:>2d} {name:{width - 3}s} {cell} " + " ".join(f"{n:5d}" for n in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- from a data root


def _video_indices(dataset: UCF101Clips, videos_per_class: int | None) -> list[int]:
    """All videos, or `videos_per_class` of each class spread evenly over its listing (its groups, in UCF-101's
    layout), so a small probe still sees each class's variety."""
    labels = np.asarray(dataset.dataset["label"])
    if videos_per_class is None:
        return list(range(len(labels)))
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class must be >= 1 (or None for all), got {videos_per_class}")
    chosen = []
    for label in np.unique(labels):
        videos = np.flatnonzero(labels == label)
        picks = np.unique(np.linspace(0, len(videos) - 1, min(videos_per_class, len(videos))).round().astype(int))
        chosen.extend(videos[picks].tolist())
    return sorted(chosen)


def _clips_of(dataset: UCF101Clips, counter: dict, videos_per_class: int | None = None) -> Iterator[tuple[torch.Tensor, int]]:
    per_video = dataset.clips_per_video
    for index in (v * per_video + c for v in _video_indices(dataset, videos_per_class) for c in range(per_video)):
        item = dataset[index]
        if item is None:  # unreadable video: logged by the dataset, counted here
            counter["num_skipped"] += 1
            continue
        yield item["video"], item["label"]


@torch.no_grad()
def reconstructed_clips(clips: Iterator[torch.Tensor], vae: torch.nn.Module, batch_size: int) -> Iterator[torch.Tensor]:
    """The autoencoder's reconstructions (posterior mean, clamped to [-1, 1]) of (3, T, H, W) clips."""
    device = next(vae.parameters()).device
    batch = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield from vae(torch.stack(batch).to(device)).sample.float().clamp(-1, 1).cpu()
            batch.clear()
    if batch:
        yield from vae(torch.stack(batch).to(device)).sample.float().clamp(-1, 1).cpu()


def data_root_features(
    data_root: str | os.PathLike,
    i3d: InceptionI3d,
    subset: str = "train",
    vae: torch.nn.Module | None = None,
    split: int = 1,
    num_frames: int = 16,
    size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    clips_per_video: int = 1,
    batch_size: int = 8,
    videos_per_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """I3D logits of the clips of one subset of a data root (UCF-101 layout or a metadata folder), or of `vae`'s
    reconstructions of them.

    Clips are `num_frames` long at `fps` (None: every frame), `clips_per_video` per video evenly spread (one
    centred by default), centre-cropped to `size` (default: the autoencoder's frame size with `vae`, else
    224); `videos_per_class` (default all) caps the videos of each class, spread over its listing: I3D costs
    ~100 GFLOPs a clip. Decode them as the generator's training data were (same fps and size) so that real and generated
    clips differ only in what the generator gets wrong. With `vae`, a clip longer than its `num_frames`
    needs `vae.enable_tiling()`.

    Returns (features (N, 400), labels (N,), class names, number of unreadable videos skipped).
    """
    if size is None:
        size = tuple(vae.sample_shape[2:]) if vae is not None else 224
    dataset = UCF101Clips(data_root, split, subset, num_frames, size, fps, train=False, clips_per_video=clips_per_video)
    counter, labels = {"num_skipped": 0}, []

    def clips() -> Iterator[torch.Tensor]:
        for video, label in _clips_of(dataset, counter, videos_per_class):
            labels.append(label)
            yield video

    source = clips() if vae is None else reconstructed_clips(clips(), vae, batch_size)
    what = "reconstructed" if vae is not None else "real"
    features = extract_features(source, i3d, num_frames=num_frames, batch_size=batch_size, desc=f"{subset} clips ({what})")
    return features, np.asarray(labels, dtype=np.int64), dataset.class_names, counter["num_skipped"]


def fit_probe_with_test(train, test, class_names: list[str], l2: float, metadata: dict) -> ClassProbe:
    """Fit on (train features, labels); record the accuracy on (test features, labels) in its metadata."""
    (train_x, train_y), (test_x, test_y) = train, test
    if len(train_x) < 2:
        raise ValueError(f"{metadata.get('data_root')} gave {len(train_x)} readable train clips; a probe needs at least 2")
    probe = fit_class_probe(train_x, train_y, len(class_names), class_names, l2=l2, metadata=metadata)
    if len(test_x):
        report = classification_report(probe.predict(test_x), test_y, class_names)
        probe.metadata.update(test_accuracy=report["accuracy"], num_test=report["num_samples"], test_report=report)
    else:
        logger.warning("%s has no readable test clips: the probe's real-clip accuracy is unknown", metadata.get("data_root"))
        probe.metadata.update(test_accuracy=None, num_test=0)
    return probe


def _probe_metadata(data_root, i3d, vae, split, num_frames, size, fps, clips_per_video, num_skipped) -> dict:
    return {
        "features": "I3D Kinetics-400 logits (fvd.extract_features)",
        "clips": "vae reconstruction" if vae is not None else "real",
        "data_root": str(Path(data_root).resolve()), "split": split, "num_frames": num_frames,
        "size": list(size) if isinstance(size, tuple) else size,
        "fps": fps, "clips_per_video": clips_per_video, "num_skipped": num_skipped,
        "i3d_weights_sha256": getattr(i3d, "weights_sha256", None),
    }


def probe_for_data_root(
    data_root: str | os.PathLike,
    i3d: InceptionI3d,
    vae: torch.nn.Module | None = None,
    split: int = 1,
    num_frames: int = 16,
    size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    clips_per_video: int = 1,
    batch_size: int = 8,
    l2: float = 1e-3,
) -> ClassProbe:
    """A probe fitted on the train subset of a data root's real clips (or of `vae`'s reconstructions of them),
    with its accuracy on the test subset (same kind of clips) in `probe.metadata["test_report"]`.

    Clip options as in `data_root_features`. `metadata` also records the clips ("real" or "vae
    reconstruction"), sizes, counts, unreadable videos skipped and the I3D weights' sha256.
    """
    if size is None:
        size = tuple(vae.sample_shape[2:]) if vae is not None else 224
    options = dict(vae=vae, split=split, num_frames=num_frames, size=size, fps=fps, clips_per_video=clips_per_video,
                   batch_size=batch_size)
    train_x, train_y, class_names, train_skipped = data_root_features(data_root, i3d, "train", **options)
    test_x, test_y, _, test_skipped = data_root_features(data_root, i3d, "test", **options)
    metadata = _probe_metadata(data_root, i3d, vae, split, num_frames, size, fps, clips_per_video, train_skipped + test_skipped)
    return fit_probe_with_test((train_x, train_y), (test_x, test_y), class_names, l2, metadata)


# ------------------------------------------------------------------------ a generator's two probes, reported


PROBE_KINDS = {
    "reconstruction": "probe fitted on the autoencoder's reconstructions of real clips (the generator alone)",
    "real": "probe fitted on real clips (the generator and the autoencoder's blur together)",
}


def generator_probes(
    data_root: str | os.PathLike,
    i3d: InceptionI3d,
    vae: torch.nn.Module,
    split: int = 1,
    num_frames: int = 16,
    fps: float | None = None,
    batch_size: int = 8,
    l2: float = 1e-3,
    videos_per_class: int | None = None,
) -> tuple[dict[str, ClassProbe], np.ndarray, np.ndarray]:
    """Both probes a class-conditional generator on `vae`'s latents is judged with, at the autoencoder's frame size:
    {"real": fitted on real train clips, "reconstruction": fitted on `vae`'s reconstructions of them}, each with
    its test-subset accuracy in its metadata. `videos_per_class` caps each subset's videos per class (default all).

    Returns (probes, real test clips' features (N, 400), their labels (N,)): those features are the held-out real
    set an FVD of the generator's samples can use without a second I3D pass.
    """
    size = tuple(vae.sample_shape[2:])
    options = dict(split=split, num_frames=num_frames, size=size, fps=fps, clips_per_video=1, batch_size=batch_size,
                   videos_per_class=videos_per_class)
    probes, real_test = {}, None
    for kind, source in (("real", None), ("reconstruction", vae)):
        train_x, train_y, class_names, train_skipped = data_root_features(data_root, i3d, "train", vae=source, **options)
        test_x, test_y, _, test_skipped = data_root_features(data_root, i3d, "test", vae=source, **options)
        metadata = _probe_metadata(data_root, i3d, source, split, num_frames, size, fps, 1, train_skipped + test_skipped)
        metadata["videos_per_class"] = videos_per_class
        probes[kind] = fit_probe_with_test((train_x, train_y), (test_x, test_y), class_names, l2, metadata)
        real_test = (test_x, test_y) if kind == "real" else real_test
    return probes, *real_test


def load_generator_probes(folder: str | os.PathLike) -> dict[str, ClassProbe]:
    """The probes `save_generator_probes` wrote to `folder` ({kind}.safetensors for each of PROBE_KINDS)."""
    return {kind: ClassProbe.load(Path(folder) / f"{kind}.safetensors") for kind in PROBE_KINDS}


def save_generator_probes(probes: dict[str, ClassProbe], folder: str | os.PathLike) -> None:
    for kind, probe in probes.items():
        probe.save(Path(folder) / f"{kind}.safetensors")


def sample_class_accuracies(probes: dict[str, ClassProbe], features, labels, label_names: Sequence[str] | None = None) -> dict:
    """Each probe's `classification_report` on the same generated samples (features (N, D), the (N,) labels they
    were generated for), with what the probe is and its accuracy on real test clips ("probe_test_accuracy",
    the ceiling for the samples' figure). `label_names`, the generator's class names in label order, must be the
    probes' classes (checked: a permuted label order would make every figure meaningless)."""
    section = {}
    for kind, probe in probes.items():
        if label_names is not None and list(label_names) != probe.class_names:
            raise ValueError(
                f"the generator's classes {list(label_names)} are not the {kind} probe's {probe.class_names} (in order): "
                "fit the probes on the data root the generator was trained on"
            )
        section[kind] = {
            **sample_class_accuracy(probe, features, labels),
            "probe": PROBE_KINDS.get(kind, kind),
            "probe_test_accuracy": probe.metadata.get("test_accuracy"),
            "probe_num_test": probe.metadata.get("num_test"),
        }
    return section


def format_sample_class_accuracies(section: dict, probe_name: str = "I3D probe") -> str:
    """Plain text for `sample_class_accuracies`: one table per probe, its test accuracy (on held-out clips of its
    own kind: real, or their reconstructions) in the title."""
    blocks = []
    for kind, report in section.items():
        ceiling = report.get("probe_test_accuracy")
        ceiling = f"{ceiling:.1%} on {report['probe_num_test']} test clips" if ceiling is not None else "unknown"
        blocks.append(format_classification_report(report, f"sample class accuracy vs {kind} ({probe_name}: {ceiling})"))
    return "\n".join(blocks)


def sample_class_accuracy(probe: ClassProbe, features, labels) -> dict:
    """`classification_report` of the probe's predictions on generated samples' features (N, D) against the
    (N,) class labels they were generated for."""
    return classification_report(probe.predict(features), labels, probe.class_names)
