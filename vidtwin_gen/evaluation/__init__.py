"""Evaluation: PSNR/SSIM/LPIPS of reconstructions, and FVD with a PyTorch port of the Kinetics-400 I3D."""

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
from .metrics import lpips_video, psnr, ssim, to_unit_range
from .reconstruction import evaluate_reconstruction

__all__ = [
    "FVDProtocol",
    "InceptionI3d",
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
