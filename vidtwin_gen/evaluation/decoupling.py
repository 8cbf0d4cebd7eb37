"""Is structure structure and dynamics dynamics? Probes for the embedded set's factors, and the decoupling read-out.

    vidtwin-gen eval-decoupling --vae runs/demo/vae --data-root runs/demo/data --json decoupling.json

Every embedded clip has a content (shape + colour), a slow drift of the whole scene and a fast local motion of
the object (spin, bounce, flicker; see `data/embedded.py`). VidTwin's claim, made measurable: a
cross-reenactment C = decode(structure of A, dynamics of B) keeps A's content and A's slow drift and takes B's
fast motion; a structure-only decode keeps content and drift; a dynamics-only decode carries the fast motion.
Pairs whose answer no decode could show (A's plain circle with B's spin, `embedded.motion_shows`) are left out.

**The probes** read each factor off a clip from hand-made statistics, not from I3D features: the factors are
defined by colour, position and brightness over time, which such statistics measure directly, on 32x32 clips
whose I3D features (made for 224x224 people) mostly see the autoencoder's blur (issue 16 measured I3D class
centroids getting motion right about half the time). They are cheap (thousands of clips per second), so the
read-out scales to hundreds of pairs, and each number means something one can check by eye.

- the object is the set of saturated pixels (the background is nearly grey by construction);
- **content** (5 classes): the object's chromaticity, read by a linear probe (`class_probe.fit_class_probe`)
  fitted on real train clips. Colour and shape go together in this set, and colour survives the autoencoder's
  blur where shape does not: with area, texture contrast and silhouette symmetry added, the probe still read
  100 % of real held-out clips but only 39 % of the quickstart autoencoder's reconstructions of them (95 % on
  colour alone);
- **slow drift**: the whole frame's translation from frame to frame (one least-squares optical-flow step over
  the background pixels, Lucas-Kanade with a single global motion), summed over the clip: a 2-vector in frame
  heights. No fitting; "C has A's drift" when C's drift is nearer A's than B's;
- **fast motion** (spin / bounce / flicker): the object's brightness and saturation swing, its up-down
  oscillation relative to the drifting background, and how steadily its silhouette's orientation moments turn,
  read by a linear probe fitted on real train clips. The turning is the moments' frame-to-frame phase steps
  averaged with their sign: a spin turns one way all clip long, while a blurred outline that wobbles (an
  autoencoder's, where its shape is unsure) steps back and forth and averages out. The mean *size* of the
  moments' change, the statistic before this one, read such a wobble as spin: B's bounce on A's triangle (a
  combination the set never shows) read as spin even in the autoencoder's reconstruction of the answer below.

**The answer.** The set is rendered from its factors, so the clip a reenactment should be can be rendered too:
A's scene and drift with B's fast motion (`embedded.render_reenactment_answer`). The autoencoder's reconstruction
of it, read like the decodes, is the most a reenactment can show through that autoencoder (a decode it cannot
draw, it cannot draw from swapped latents either), and the reenactment's PSNR to it says how near C comes.

`fit_factor_probes` checks each on the real held-out clips (and the drift against the truth written in
`embedded_dataset.json`); `score_factors` reads videos against expected factors, which also scores the
pipeline's decoupled control (structure of a clip, dynamics generated for another class).
"""

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.embedded import CLASSES, CONTENTS, FAST_MOTIONS, drift_offset, motion_shows, render_reenactment_answer
from ..data.ucf101 import UCF101Clips
from ..data.video_io import load_clip, sample_frame_indices, write_video
from .class_probe import ClassProbe, fit_class_probe, fit_probe_with_test, reconstructed_clips

CONTENT_NAMES = tuple(CONTENTS)
_SATURATION_FLOOR = 0.15  # the background's channels stay within ~0.1 of each other


def _unit_frames(videos) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] (torch or numpy) -> (B, T, H, W, 3) float32 in [0, 1]."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().float().cpu().numpy()
    videos = np.asarray(videos, dtype=np.float32)
    if videos.ndim != 5 or videos.shape[1] != 3 or videos.shape[2] < 3:
        raise ValueError(f"videos must be (B, 3, T, H, W) with T >= 3 in [-1, 1], got shape {videos.shape}")
    return np.clip((videos.transpose(0, 2, 3, 4, 1) + 1) / 2, 0, 1)


def _object_weight(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) -> (..., H, W): how much each pixel is object (saturation above the background's)."""
    saturation = frames.max(-1) - frames.min(-1)
    return np.clip(saturation - _SATURATION_FLOOR, 0, None)


def global_drift(frames: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-step translation of the background: (T, H, W, 3), object weight (T, H, W) -> (T - 1, 2) in pixels (x, y).

    One Lucas-Kanade step with a single motion for the whole frame, over pixels away from the object.
    """
    grey = frames.mean(-1)  # (T, H, W)
    background = (weight < 1e-3).astype(np.float32)
    # Dilate the object's mask by a pixel: its blurred edge moves with the object, not with the scene.
    background = np.minimum.reduce([background, np.roll(background, 1, 1), np.roll(background, -1, 1),
                                    np.roll(background, 1, 2), np.roll(background, -1, 2)])
    steps = np.zeros((len(grey) - 1, 2), np.float32)
    for t in range(len(grey) - 1):
        mean = (grey[t] + grey[t + 1]) / 2
        gx, gy = np.gradient(mean, axis=1), np.gradient(mean, axis=0)
        gt = grey[t + 1] - grey[t]
        w = background[t] * background[t + 1]
        w[[0, -1], :] = 0  # np.gradient is one-sided at the border
        w[:, [0, -1]] = 0
        a = np.array([[(w * gx * gx).sum(), (w * gx * gy).sum()], [(w * gx * gy).sum(), (w * gy * gy).sum()]])
        b = -np.array([(w * gx * gt).sum(), (w * gy * gt).sum()])
        if np.linalg.det(a) > 1e-9:
            steps[t] = np.linalg.solve(a, b)
    return steps


def _symmetry_moments(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) object weight -> centroids (T, 2) and normalised complex moments (T, 3) of orders 2, 3, 4.

    Moment k of the object around its centroid, sum w (x + iy)^k / sum w |x + iy|^k: zero for a circle, of
    constant size and turning k times as fast as the object for a shape with k-fold symmetry.
    """
    height, width = weight.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    mass = weight.sum((1, 2)) + 1e-6
    cx, cy = (weight * xs).sum((1, 2)) / mass, (weight * ys).sum((1, 2)) / mass
    z = (xs[None] - cx[:, None, None]) + 1j * (ys[None] - cy[:, None, None])
    moments = np.stack([(weight * z**k).sum((1, 2)) / ((weight * np.abs(z) ** k).sum((1, 2)) + 1e-6) for k in (2, 3, 4)], 1)
    return np.stack([cx, cy], 1), moments


def _steady_turning(moments: np.ndarray) -> np.ndarray:
    """(T, K) complex moments -> (K,): |weighted mean of sin(phase step)| over the clip, in [0, 1].

    Each step m_t+1 * conj(m_t) has the moment's turn as its phase and is weighted by the moment's size, so a
    shape whose symmetry is faint (a blurred blob) counts little; the sign is kept until the mean, so turns back
    and forth cancel.
    """
    steps = moments[1:] * np.conj(moments[:-1])
    return np.abs(steps.imag.sum(0)) / (np.abs(steps).sum(0) + 1e-6)


def clip_statistics(videos) -> dict[str, np.ndarray]:
    """Hand-made statistics of (B, 3, T, H, W) clips in [-1, 1].

    Returns:
        "content": (B, 3) the object's chromaticity (its mean colour over the clip, divided by its sum);
        "drift": (B, 2) the scene's translation over the clip in frame heights (x, y);
        "fast": (B, 7) the object's brightness and mass swing, its up-down and sideways oscillation against the
            background, and how steadily its moments of orders 2-4 turn (`_steady_turning`).
    """
    frames = _unit_frames(videos)
    height = frames.shape[2]
    content, drift, fast = [], [], []
    for clip in frames:
        weight = _object_weight(clip)  # (T, H, W)
        mass = weight.sum((1, 2))  # (T,)
        colour = (weight[..., None] * clip).sum((0, 1, 2)) / (mass.sum() + 1e-6)
        brightness = (weight[..., None] * clip).sum((1, 2, 3)) / (mass + 1e-6)  # (T,)
        centroids, moments = _symmetry_moments(weight)
        scene = np.concatenate([[[0.0, 0.0]], np.cumsum(global_drift(clip, weight), 0)])  # (T, 2) background's travel
        relative = centroids - scene  # the object's place in the scene's own frame
        relative -= relative.mean(0)
        content.append(colour / (colour.sum() + 1e-6))
        drift.append(scene[-1] / height)
        fast.append(np.concatenate([[brightness.std() / (brightness.mean() + 1e-6), mass.std() / (mass.mean() + 1e-6),
                                     relative[:, 1].std() / height, relative[:, 0].std() / height],
                                    _steady_turning(moments)]))
    return {"content": np.array(content), "drift": np.array(drift), "fast": np.array(fast)}


def _embedded_description(data_root) -> dict:
    path = Path(data_root) / "embedded_dataset.json"
    if not path.is_file():
        raise ValueError(f"data_root {str(data_root)!r} has no embedded_dataset.json: the decoupling probes need the "
                         "embedded data set's factors; write one with `vidtwin-gen make-dataset --output-dir DIR`")
    description = json.loads(path.read_text())
    if "videos" not in description:
        raise ValueError(f"{path} predates per-video factors (no 'videos' entry): write the data set again with "
                         "`vidtwin-gen make-dataset --overwrite`")
    return description


def _relative_path(path) -> str:
    """A clip's video as embedded_dataset.json names it: "ClassName/v_ClassName_gXX_cYY.avi"."""
    return Path(path).relative_to(Path(path).parents[1]).as_posix()


def _factor_names(class_names: list[str]) -> tuple[list[str], list[str]]:
    """Class names of the embedded set -> (content, fast motion) of each; a clear error for other classes."""
    by_name = {cls.name: cls for cls in CLASSES}
    unknown = [name for name in class_names if name not in by_name]
    if unknown:
        raise ValueError(f"classes {unknown} are not the embedded set's ({[cls.name for cls in CLASSES]}): "
                         "write the data set again with `vidtwin-gen make-dataset --overwrite`")
    return [by_name[name].content for name in class_names], [by_name[name].motion for name in class_names]


@dataclass
class EmbeddedClips:
    """Clips of one subset of an embedded data set at a model's size, with their factors.

    videos (N, 3, T, H, W) in [-1, 1]; contents, fast_motions: N names; true_drift: (N, 2) in frame heights, from
    the data set's description (the truth the drift read-out is checked against); paths: N video files; data_root
    and fps: where and how they were read (None: not from a data set on disk).
    """

    videos: torch.Tensor
    contents: list[str]
    fast_motions: list[str]
    true_drift: np.ndarray
    paths: list[str] = field(default_factory=list)
    data_root: str | None = None
    fps: float | None = None


def load_embedded_clips(data_root, subset: str, num_frames: int, size: tuple[int, int], fps: float, split: int = 1,
                        clips_per_video: int = 1) -> EmbeddedClips:
    """Clips of `subset` ("train" / "test") of split `split`, evenly spread over each video (the centre for one)."""
    description = _embedded_description(data_root)
    dataset = UCF101Clips(data_root, split, subset, num_frames, size, fps, train=False, clips_per_video=clips_per_video)
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    if not items:
        raise ValueError(f"no readable clips in split {split}'s {subset} list of {data_root}")
    contents, motions = _factor_names([dataset.class_names[item["label"]] for item in items])
    drifts = []
    for item in items:
        motion = description["videos"][_relative_path(item["path"])]
        source_fps = description["fps"]
        k = clips_per_video
        indices = sample_frame_indices(description["num_frames"], source_fps, num_frames, fps,
                                       item["clip_index"] / (k - 1) if k > 1 else "center")
        first, last = (drift_offset(motion, index / source_fps) for index in (indices[0], indices[-1]))
        drifts.append((last[0] - first[0], last[1] - first[1]))
    return EmbeddedClips(torch.stack([item["video"] for item in items]), contents, motions, np.array(drifts),
                         [item["path"] for item in items], str(data_root), fps)


@dataclass
class FactorProbes:
    """The content and fast-motion probes (linear, on `clip_statistics`) and their held-out check."""

    content: ClassProbe
    fast: ClassProbe
    checks: dict

    def read(self, videos) -> dict[str, np.ndarray | list[str]]:
        """(B, 3, T, H, W) in [-1, 1] -> content and fast-motion names (B each), drift (B, 2) in frame heights."""
        statistics = clip_statistics(videos)
        return {"content": [self.content.class_names[k] for k in self.content.predict(statistics["content"])],
                "fast": [self.fast.class_names[k] for k in self.fast.predict(statistics["fast"])],
                "drift": statistics["drift"]}


def _drift_pair_accuracy(estimated: np.ndarray, truth: np.ndarray, min_separation: float) -> float:
    """How often a clip's estimated drift is nearer its own true drift than another clip's (pairs far enough apart)."""
    hits = []
    for a in range(len(truth)):
        for b in range(len(truth)):
            if a != b and np.linalg.norm(truth[a] - truth[b]) >= min_separation:
                hits.append(np.linalg.norm(estimated[a] - truth[a]) < np.linalg.norm(estimated[a] - truth[b]))
    return float(np.mean(hits)) if hits else float("nan")


def fit_factor_probes(train: EmbeddedClips, test: EmbeddedClips, min_separation: float = 0.1) -> FactorProbes:
    """Fit the content and fast-motion probes on real train clips; check all three read-outs on real test clips."""
    train_stats, test_stats = clip_statistics(train.videos), clip_statistics(test.videos)
    probes, checks = {}, {}
    for factor, names, train_labels, test_labels in (
        ("content", CONTENT_NAMES, train.contents, test.contents),
        ("fast", FAST_MOTIONS, train.fast_motions, test.fast_motions),
    ):
        names = list(names)
        probe = fit_class_probe(train_stats[factor], [names.index(x) for x in train_labels], len(names), names,
                                metadata={"features": f"decoupling.clip_statistics()['{factor}']"})
        predicted = probe.predict(test_stats[factor])
        checks[factor] = {"train_clips": len(train_labels), "test_clips": len(test_labels),
                          "train_accuracy": probe.metadata["train_accuracy"],
                          "test_accuracy": float(np.mean([names[k] == x for k, x in zip(predicted, test_labels)]))}
        probes[factor] = probe
    error = np.linalg.norm(test_stats["drift"] - test.true_drift, axis=1)
    checks["drift"] = {"test_clips": len(test.contents), "mean_true_drift": float(np.linalg.norm(test.true_drift, axis=1).mean()),
                       "mean_error": float(error.mean()), "min_separation": min_separation,
                       "pair_accuracy": _drift_pair_accuracy(test_stats["drift"], test.true_drift, min_separation)}
    return FactorProbes(probes["content"], probes["fast"], checks)


def probes_for_data_root(data_root, num_frames: int, size: tuple[int, int], fps: float, split: int = 1,
                         train_clips_per_video: int = 2) -> tuple[FactorProbes, EmbeddedClips]:
    """Probes fitted on the split's train clips and checked on its test clips (centre clips); also those test clips."""
    train = load_embedded_clips(data_root, "train", num_frames, size, fps, split, train_clips_per_video)
    test = load_embedded_clips(data_root, "test", num_frames, size, fps, split)
    return fit_factor_probes(train, test), test


def statistics_features(videos) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, 10): the content and fast-motion statistics of `clip_statistics` side by
    side, the features of the embedded set's class probes."""
    statistics = clip_statistics(videos)
    return np.concatenate([statistics["content"], statistics["fast"]], axis=1)


def statistics_class_probes(data_root, vae, fps: float, split: int = 1, train_clips_per_video: int = 2,
                            batch_size: int = 8, l2: float = 1e-3) -> dict[str, ClassProbe]:
    """Sample-class probes for a generator trained on the embedded set, on `statistics_features` instead of I3D:
    {"real": fitted on real train clips, "reconstruction": fitted on `vae`'s reconstructions of them}, each
    checked on the held-out clips of the same kind (`metadata["test_accuracy"]`), in the data root's class order.

    A class of the embedded set is a content and a fast motion, which these statistics read directly (the factor
    probes read 100 % of real held-out clips), while I3D, made for 224x224 footage, reads 32x32 clips poorly. A
    linear probe suffices: a class's logit is the sum of its content's and its motion's.
    """
    description = _embedded_description(data_root)
    class_names = [entry["name"] for entry in description["classes"]]
    _, frames, height, width = vae.sample_shape
    subsets = {"train": load_embedded_clips(data_root, "train", frames, (height, width), fps, split, train_clips_per_video),
               "test": load_embedded_clips(data_root, "test", frames, (height, width), fps, split)}
    labels = {name: np.array([class_names.index(c + m.capitalize()) for c, m in zip(clips.contents, clips.fast_motions)])
              for name, clips in subsets.items()}
    probes = {}
    for kind in ("real", "reconstruction"):
        features = {}
        for name, clips in subsets.items():
            videos = clips.videos if kind == "real" else torch.stack(list(reconstructed_clips(iter(clips.videos), vae, batch_size)))
            features[name] = statistics_features(videos)
        metadata = {"features": "decoupling.statistics_features (object chromaticity + fast-motion statistics)",
                    "clips": "real" if kind == "real" else "vae reconstruction", "data_root": str(Path(data_root).resolve()),
                    "split": split, "num_frames": frames, "size": [height, width], "fps": fps,
                    "train_clips_per_video": train_clips_per_video}
        probes[kind] = fit_probe_with_test((features["train"], labels["train"]), (features["test"], labels["test"]),
                                           class_names, l2, metadata)
    return probes


def _drift_matches(drift: np.ndarray, expected: np.ndarray, alternative: np.ndarray | None) -> np.ndarray:
    """Nearer the expected drift than the alternative one; without an alternative, within half the expected
    drift's length (at least 0.05 heights) of it."""
    distance = np.linalg.norm(drift - expected, axis=1)
    if alternative is not None:
        return distance < np.linalg.norm(drift - alternative, axis=1)
    return distance < np.maximum(0.5 * np.linalg.norm(expected, axis=1), 0.05)


def score_factors(probes: FactorProbes, videos, contents: list[str] | None = None, fast_motions: list[str] | None = None,
                  drifts=None, alternative_drifts=None) -> dict:
    """How many videos show the expected factors: fractions per factor given, and of all given at once.

    Scores, e.g., the pipeline's decoupled control: the structure of clip X held while dynamics are generated for
    class K should give X's content and drift (`drifts`: X's drift as read off X, (N, 2)) and K's fast motion.

    Args:
        videos: (N, 3, T, H, W) in [-1, 1].
        contents, fast_motions: N expected names (of `CONTENT_NAMES`, `FAST_MOTIONS`), or None to skip.
        drifts: (N, 2) expected drifts in frame heights, or None to skip.
        alternative_drifts: (N, 2) drifts the video should NOT have (e.g. the dynamics clip's): the drift then
            matches when nearer the expected one than this one.
    """
    read = probes.read(videos)
    matches = {}
    for factor, expected, allowed in (("content", contents, CONTENT_NAMES), ("fast", fast_motions, FAST_MOTIONS)):
        if expected is not None:
            if len(expected) != len(read[factor]) or any(x not in allowed for x in expected):
                raise ValueError(f"{factor}: expected {len(read[factor])} names from {list(allowed)}, got {expected!r}")
            matches[factor] = np.array([a == b for a, b in zip(read[factor], expected)])
    if drifts is not None:
        drifts = np.asarray(drifts, dtype=np.float64).reshape(len(read["drift"]), 2)
        alternative = None if alternative_drifts is None else np.asarray(alternative_drifts, np.float64).reshape(drifts.shape)
        matches["drift"] = _drift_matches(read["drift"], drifts, alternative)
    if not matches:
        raise ValueError("give at least one of contents, fast_motions, drifts to score against")
    report = {factor: float(hit.mean()) for factor, hit in matches.items()}
    report["all"] = float(np.logical_and.reduce(list(matches.values())).mean())
    report["num_videos"] = len(read["drift"])
    return report


def can_reenact(content_a: str, fast_a: str, content_b: str, fast_b: str) -> bool:
    """Whether a reenactment of A's structure with B's dynamics has an answer to read: A and B differ in content
    and fast motion, and B's fast motion shows on A's content."""
    return content_a != content_b and fast_a != fast_b and motion_shows(content_a, fast_b)


def choose_pairs(clips: EmbeddedClips, drifts: np.ndarray, num_pairs: int, seed: int = 0,
                 min_separation: float = 0.1) -> list[tuple[int, int]]:
    """Ordered pairs (A, B) with different content, different fast motion and drifts (as read off the real
    clips) at least `min_separation` frame heights apart, whose reenactment can show its answer (B's fast motion
    changes A's content: not A's circle with B's spin); `num_pairs` of them drawn without replacement."""
    factors = list(zip(clips.contents, clips.fast_motions))
    candidates = [(a, b) for a in range(len(factors)) for b in range(len(factors))
                  if can_reenact(*factors[a], *factors[b]) and np.linalg.norm(drifts[a] - drifts[b]) >= min_separation]
    if not candidates:
        raise ValueError("no pair of held-out clips differs in content, fast motion and drift with B's fast motion "
                         "showing on A's content: use more classes")
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:num_pairs]
    return [candidates[k] for k in sorted(chosen)]


def answer_clips(clips: EmbeddedClips, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Per pair (A, B), the clip its reenactment should be: A's scene and drift with B's fast motion, rendered
    (`embedded.render_reenactment_answer`) at the frames of a centre clip (as `probes_for_data_root` reads the
    held-out clips), encoded and read back through the same decoder and resize. (P, 3, T, H, W) in [-1, 1]."""
    import tempfile

    if clips.data_root is None:
        raise ValueError("the clips hold no data_root: load them with load_embedded_clips to render their answers")
    description = _embedded_description(clips.data_root)
    _, _, num_frames, height, width = clips.videos.shape
    indices = sample_frame_indices(description["num_frames"], description["fps"], num_frames, clips.fps, "center")
    answers = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "answer.avi"
        for a, b in pairs:
            structure_video, dynamics_video = _relative_path(clips.paths[a]), _relative_path(clips.paths[b])
            write_video(path, render_reenactment_answer(description, structure_video, dynamics_video, indices), clips.fps)
            answers.append(load_clip(path, num_frames, (height, width)))  # every frame written: the clip
    return torch.stack(answers)


@torch.no_grad()
def _decodes(vae, videos: torch.Tensor, pairs: list[tuple[int, int]], batch_size: int) -> dict[str, torch.Tensor]:
    """Per clip: reconstruction, structure-only, dynamics-only; per pair: the reenactment (structure of A, dynamics
    of B: the posterior means `vae.reenact` uses, encoded once per clip)."""
    vae.eval()
    latents = torch.cat([vae.encode(batch.to(vae.device, vae.dtype)).latent_dist.mode() for batch in videos.split(batch_size)])
    structure, dynamics = vae.unpack_latents(latents)
    out = {name: [] for name in ("reconstruction", "structure", "dynamics", "reenactment")}
    for batch in latents.split(batch_size):
        for name, part in (("reconstruction", None), ("structure", "structure"), ("dynamics", "dynamics")):
            out[name].append(vae.decode(batch, part=part).sample.float().cpu())
    a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    for index in torch.arange(len(pairs)).split(batch_size):
        z = vae.pack_latents(structure[a[index]], dynamics[b[index]])
        out["reenactment"].append(vae.decode(z).sample.float().cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.no_grad()
def _reconstructions(vae, videos: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Decodes of the posterior means, as `_decodes` reconstructs."""
    return torch.cat([vae.decode(vae.encode(batch.to(vae.device, vae.dtype)).latent_dist.mode()).sample.float().cpu()
                      for batch in videos.split(batch_size)])


# Table rows: (key, title, which source clip's decode is read: "A", "B" or "pair").
ROWS = (
    ("reconstruction", "reconstruction of A", "A"),
    ("structure", "structure only of A", "A"),
    ("dynamics", "dynamics only of B", "B"),
    ("reenactment", "reenactment S(A) + D(B)", "pair"),
    ("answer", "reconstruction of the answer", "pair"),
)


def evaluate_decoupling(vae, probes: FactorProbes, clips: EmbeddedClips, num_pairs: int = 200, seed: int = 0,
                        batch_size: int = 8, min_separation: float = 0.1) -> dict:
    """Read content, drift and fast motion off each decode of many (A, B) pairs of held-out clips.

    Returns a JSON-serialisable dict: "rows" maps each decode to the fraction of pairs whose read-out has A's /
    B's content, A's / B's drift (the nearer of the two), A's / B's fast motion, and "goal": A's content and
    drift with B's fast motion at once; "psnr" the reconstruction PSNR of the clips; "probes" their checks.

    For clips read from a data root, each pair's answer (`answer_clips`: A's scene and drift with B's fast motion,
    rendered) is reconstructed too: its row is the most a reenactment can show through this autoencoder, and
    "psnr_to_answer" says how near the reenactment is to the answer, beside A's and the answer's own
    reconstructions.
    """
    from .metrics import psnr, to_unit_range

    real = probes.read(clips.videos)
    pairs = choose_pairs(clips, real["drift"], num_pairs, seed, min_separation)
    decodes = _decodes(vae, clips.videos, pairs, batch_size)
    if clips.data_root is not None:
        answers = answer_clips(clips, pairs)
        decodes["answer"] = _reconstructions(vae, answers, batch_size)
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    content, fast = np.array(clips.contents), np.array(clips.fast_motions)
    rows = {}
    for key, title, source in (row for row in ROWS if row[0] in decodes):
        read = probes.read(decodes[key])
        index = {"A": a, "B": b, "pair": np.arange(len(pairs))}[source]
        got_content, got_fast, got_drift = np.array(read["content"])[index], np.array(read["fast"])[index], read["drift"][index]
        drift_a = _drift_matches(got_drift, real["drift"][a], real["drift"][b])
        row = {"content_A": np.mean(got_content == content[a]), "content_B": np.mean(got_content == content[b]),
               "drift_A": np.mean(drift_a), "drift_B": np.mean(~drift_a),
               "fast_A": np.mean(got_fast == fast[a]), "fast_B": np.mean(got_fast == fast[b]),
               "goal": np.mean((got_content == content[a]) & drift_a & (got_fast == fast[b]))}
        rows[key] = {"title": title, **{name: float(value) for name, value in row.items()}}
        if key == "reenactment":
            # Which fast motion C shows, per fast motion of B: where the transfer fails, and to what.
            fast_confusion = {motion: {read_as: int(np.sum((fast[b] == motion) & (got_fast == read_as)))
                                       for read_as in FAST_MOTIONS} for motion in FAST_MOTIONS if np.any(fast[b] == motion)}
    mean_psnr = lambda x, y: float(psnr(to_unit_range(x), to_unit_range(y)).mean())  # noqa: E731
    report = {"num_pairs": len(pairs), "num_clips": len(clips.contents),
              "psnr": mean_psnr(decodes["reconstruction"], clips.videos), "rows": rows,
              "reenactment_fast_motion_by_B": fast_confusion, "probes": probes.checks,
              "read_out": "content and fast motion: linear probes on clip_statistics fitted on real train clips; drift: "
                          "global optical flow, A's when nearer A's than B's (as read off the real clips)"}
    if "answer" in decodes:
        report["psnr_to_answer"] = {"reenactment": mean_psnr(decodes["reenactment"], answers),
                                    "reconstruction of A": mean_psnr(decodes["reconstruction"][a], answers),
                                    "reconstruction of the answer": mean_psnr(decodes["answer"], answers)}
    return report


def format_decoupling(report: dict) -> str:
    """The report as a table (percent of pairs), with the probes' held-out checks underneath."""
    columns = ("content_A", "content_B", "drift_A", "drift_B", "fast_A", "fast_B", "goal")
    width = max(len(row["title"]) for row in report["rows"].values())
    lines = [f"decoupling over {report['num_pairs']} pairs (A, B) of {report['num_clips']} held-out clips with different "
             f"content, drift and fast motion; reconstruction PSNR {report['psnr']:.2f} dB",
             f"{'decode':<{width}}  " + "  ".join(f"{c:>9}" for c in columns)]
    for row in report["rows"].values():
        lines.append(f"{row['title']:<{width}}  " + "  ".join(f"{100 * row[c]:8.1f}%" for c in columns))
    lines.append("C's fast motion read as, per fast motion of B: " + "; ".join(
        f"{motion}: " + ", ".join(f"{read_as} {count}" for read_as, count in counts.items())
        for motion, counts in report["reenactment_fast_motion_by_B"].items()))
    if "psnr_to_answer" in report:
        lines.append("the answer: A's scene and drift with B's fast motion, rendered; its reconstruction's row is "
                     "the most a reenactment can show through this autoencoder. PSNR to the answer: " +
                     ", ".join(f"{name} {value:.2f} dB" for name, value in report["psnr_to_answer"].items()))
    checks = report["probes"]
    lines.append("goal: A's content and drift with B's fast motion. Read-outs on real held-out clips: content "
                 f"{100 * checks['content']['test_accuracy']:.1f}%, fast motion {100 * checks['fast']['test_accuracy']:.1f}%, "
                 f"drift nearer its own truth than another clip's {100 * checks['drift']['pair_accuracy']:.1f}% "
                 f"(mean error {checks['drift']['mean_error']:.3f} of {checks['drift']['mean_true_drift']:.3f} frame heights)")
    return "\n".join(lines)


def sheet_videos(vae, clip_a: torch.Tensor, clip_b: torch.Tensor,
                 answer: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The sheet's rows for one pair: title -> (T, H, W, 3) in [0, 1]. Clips (3, T, H, W) in [-1, 1]; `answer`,
    what the reenactment should be (`answer_clips`), is shown last."""
    from ..data.export import decoded_to_frames

    clips = torch.stack([clip_a, clip_b]).to(vae.device, vae.dtype)
    with torch.no_grad():
        z = vae.encode(clips).latent_dist.mode()
        structure, dynamics = vae.unpack_latents(z)
        videos = {
            "original A": clips[:1],
            "original B": clips[1:],
            "reconstruction A": vae.decode(z[:1]).sample,
            "structure only A": vae.decode(z[:1], part="structure").sample,
            "dynamics only B": vae.decode(z[1:], part="dynamics").sample,
            "reenactment S(A)+D(B)": vae.decode(vae.pack_latents(structure[:1], dynamics[1:])).sample,
        }
        if answer is not None:
            videos["answer (rendered)"] = answer[None].to(vae.device, vae.dtype)
    return {title: decoded_to_frames(video)[0] for title, video in videos.items()}


def _text_block(lines: list[str], width: int) -> "PIL.Image.Image":
    import PIL.Image
    import PIL.ImageDraw

    block = PIL.Image.new("RGB", (width, 4 + 12 * len(lines)), "white")
    draw = PIL.ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        draw.text((4, 2 + 12 * i), line, fill="black")
    return block


def write_decoupling_sheet(path, videos: dict[str, np.ndarray], caption: list[str], scale: int = 4, fps: float = 8.0) -> list[Path]:
    """`path` (.png): each video's frames left to right with its frame differences (x4) under it, and `caption`
    (the measured figures) on top; beside it `path` with .gif: all videos side by side, playing. Returns both paths."""
    import PIL.Image
    import PIL.ImageDraw

    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"the decoupling sheet is a .png path (the GIF goes beside it), got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def image(array: np.ndarray) -> PIL.Image.Image:
        picture = PIL.Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
        return picture.resize((picture.width * scale, picture.height * scale), PIL.Image.NEAREST)

    label = 14
    tiles = []
    for title, frames in videos.items():
        difference = np.abs(np.diff(frames, axis=0, prepend=frames[:1])).mean(-1, keepdims=True).repeat(3, -1)
        strip = image(np.concatenate([np.concatenate(list(frames), 1), np.concatenate(list(np.minimum(4 * difference, 1)), 1)], 0))
        tile = PIL.Image.new("RGB", (strip.width, strip.height + label), "white")
        tile.paste(strip, (0, label))
        PIL.ImageDraw.Draw(tile).text((2, 1), f"{title}   (lower row: |frame - previous frame| x4)", fill="black")
        tiles.append(tile)
    width = max(tile.width for tile in tiles)
    header = _text_block(caption, width)
    sheet = PIL.Image.new("RGB", (width, header.height + sum(tile.height for tile in tiles)), "white")
    sheet.paste(header, (0, 0))
    top = header.height
    for tile in tiles:
        sheet.paste(tile, (0, top))
        top += tile.height
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)

    # The GIF: one panel per video, side by side, a title over each.
    titles, clips = list(videos), [image_frames for image_frames in videos.values()]
    panel = clips[0].shape[2] * scale
    gif_frames = []
    for t in range(len(clips[0])):
        frame = PIL.Image.new("RGB", ((panel + 4) * len(clips), panel + 2 * label), "white")
        draw = PIL.ImageDraw.Draw(frame)
        for k, (title, clip) in enumerate(zip(titles, clips)):
            frame.paste(image(clip[t]), (k * (panel + 4), 2 * label))
            words = title.split(" ", 1)
            draw.text((k * (panel + 4) + 2, 0), words[0], fill="black")
            draw.text((k * (panel + 4) + 2, label), words[1] if len(words) > 1 else "", fill="black")
        gif_frames.append(frame)
    gif = path.with_suffix(".gif")
    tmp = gif.with_name(gif.name + ".tmp.gif")
    gif_frames[0].save(tmp, save_all=True, append_images=gif_frames[1:], duration=round(1000 / fps), loop=0)
    os.replace(tmp, gif)
    return [path, gif]


def sheet_caption(report: dict, names: dict[str, str]) -> list[str]:
    """The measured figures, in a few lines for the sheet."""
    rows = report["rows"]
    percent = lambda row, key: f"{100 * rows[row][key]:.0f}%"  # noqa: E731
    return [
        f"A = {names['A']}, B = {names['B']}.  Over {report['num_pairs']} held-out pairs (reconstruction PSNR {report['psnr']:.1f} dB):",
        f"reenactment S(A)+D(B): A's content {percent('reenactment', 'content_A')}, A's drift {percent('reenactment', 'drift_A')}, "
        f"B's fast motion {percent('reenactment', 'fast_B')}, all three {percent('reenactment', 'goal')}"
        + (f" (the answer's reconstruction: {percent('answer', 'goal')})" if "answer" in rows else ""),
        f"structure only: A's content {percent('structure', 'content_A')}, A's drift {percent('structure', 'drift_A')}, "
        f"A's fast motion {percent('structure', 'fast_A')}.  dynamics only: B's fast motion {percent('dynamics', 'fast_B')}, "
        f"B's content {percent('dynamics', 'content_B')}",
    ]


def pick_sheet_pair(clips: EmbeddedClips) -> tuple[int, int]:
    """A clip A and a clip B of another content and another fast motion that shows on A's content, B spinning
    when possible (the fast motion easiest to see)."""
    a = 0
    others = [b for b in range(len(clips.contents))
              if can_reenact(clips.contents[a], clips.fast_motions[a], clips.contents[b], clips.fast_motions[b])]
    if not others:
        raise ValueError("the held-out clips hold no pair with different content and a different fast motion that "
                         "shows on the first clip's content: use more classes")
    spinning = [b for b in others if clips.fast_motions[b] == "spin"]
    return a, (spinning or others)[0]


def decoupling_for_vae(vae, data_root, num_pairs: int = 200, seed: int = 0, split: int = 1, fps: float = 8.0,
                       sheet: str | os.PathLike | None = None, videos_dir: str | os.PathLike | None = None) -> dict:
    """Fit the probes on `data_root` and evaluate `vae` on its held-out clips (`evaluate_decoupling`'s report).

    `sheet`: also write the decoupling sheet of one pair there (.png, and a .gif beside it); `videos_dir`: also
    each of its rows as an mp4 and a GIF there.
    """
    from ..data.export import export_videos

    _, frames, height, width = vae.sample_shape
    probes, clips = probes_for_data_root(data_root, frames, (height, width), fps, split)
    report = evaluate_decoupling(vae, probes, clips, num_pairs=num_pairs, seed=seed)
    if sheet is not None or videos_dir is not None:
        a, b = pick_sheet_pair(clips)
        names = {"A": f"{clips.contents[a]} {clips.fast_motions[a]}", "B": f"{clips.contents[b]} {clips.fast_motions[b]}"}
        videos = sheet_videos(vae, clips.videos[a], clips.videos[b], answer_clips(clips, [(a, b)])[0])
        report["sheet_pair"] = {"A": clips.paths[a], "B": clips.paths[b]}
        if sheet is not None:
            write_decoupling_sheet(sheet, videos, sheet_caption(report, names), fps=fps)
        if videos_dir is not None:
            file_names = [re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_") for title in videos]  # reenactment_S_A_D_B
            export_videos(np.stack(list(videos.values())), videos_dir, file_names, fps)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtwin-gen eval-decoupling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", required=True, help="an AutoencoderVidTwin folder (save_pretrained)")
    parser.add_argument("--data-root", required=True, help="an embedded data set (vidtwin-gen make-dataset)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--sheet", help="write the decoupling sheet to this .png (and a .gif beside it)")
    parser.add_argument("--num-pairs", type=int, default=200, help="(A, B) pairs of held-out clips (default: %(default)s)")
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--fps", type=float, default=8.0, help="clip frame rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="draws the pairs")
    args = parser.parse_args(argv)
    if args.num_pairs < 1:
        parser.error(f"--num-pairs must be >= 1, got {args.num_pairs}")
    from ..models.autoencoder_vidtwin import AutoencoderVidTwin

    vae = AutoencoderVidTwin.from_pretrained(args.vae)
    report = decoupling_for_vae(vae, args.data_root, args.num_pairs, args.seed, args.split, args.fps, args.sheet)
    report["vae"], report["data_root"] = str(args.vae), str(args.data_root)
    print(format_decoupling(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    return 0


def score_decoupled_control(probes: FactorProbes, clip: torch.Tensor, frames, class_names: list[str]) -> dict:
    """Score the pipeline's decoupled control: videos generated with the structure of `clip` held and dynamics
    for `class_names` (embedded classes) should show the clip's content and drift (as read off the clip) and
    each class's fast motion.

    Args:
        clip: (3, T, H, W) or (1, 3, T, H, W) in [-1, 1], the clip whose structure was kept.
        frames: the pipeline's output, `pipe(...).frames` with output_type "np": (B, T, H, W, 3) in [0, 1].
        class_names: B names of embedded classes, the classes the dynamics were generated for.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 5 or frames.shape[-1] != 3 or len(frames) != len(class_names):
        raise ValueError(f"frames must be (B, T, H, W, 3) in [0, 1] with B = {len(class_names)} (one per class name), "
                         f"got shape {frames.shape}")
    clip = clip if clip.ndim == 5 else clip[None]
    videos = torch.from_numpy(frames).permute(0, 4, 1, 2, 3) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]
    source = probes.read(clip)
    _, fast_motions = _factor_names(list(class_names))
    report = score_factors(probes, videos, contents=source["content"] * len(frames), fast_motions=fast_motions,
                           drifts=np.repeat(source["drift"], len(frames), axis=0))
    report["clip"] = {"content": source["content"][0], "fast": source["fast"][0], "drift": source["drift"][0].tolist()}
    return report
