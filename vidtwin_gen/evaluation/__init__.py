"""Evaluation: PSNR/SSIM/LPIPS of reconstructions, and FVD with a PyTorch port of the Kinetics-400 I3D.

The LPIPS network lives here with the other metrics; the VAE's training loss imports it from here
(training and evaluation sit side by side above the pipelines; evaluation imports nothing from training).
"""

from .fvd import (
    PROTOCOLS,
    FVDProtocol,
    VideoClipSet,
    extract_features,
    feature_statistics,
    frechet_distance,
    fvd_from_features,
    fvd_from_generator,
    get_protocol,
    resize_for_i3d,
    sample_class_labels,
)
from .i3d import InceptionI3d, NumpyOnlyUnpickler, load_i3d, load_numpy_pickle
from .lpips import LPIPS
from .metrics import lpips_video, psnr, ssim, to_unit_range
from .reconstruction import evaluate_reconstruction

__all__ = [
    "FVDProtocol",
    "InceptionI3d",
    "LPIPS",
    "NumpyOnlyUnpickler",
    "PROTOCOLS",
    "VideoClipSet",
    "evaluate_reconstruction",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "fvd_from_features",
    "fvd_from_generator",
    "get_protocol",
    "load_i3d",
    "load_numpy_pickle",
    "lpips_video",
    "psnr",
    "resize_for_i3d",
    "sample_class_labels",
    "ssim",
    "to_unit_range",
]
