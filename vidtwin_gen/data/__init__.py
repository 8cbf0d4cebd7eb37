"""Video decoding, the UCF-101 and own-videos (metadata file) readers, the embedded synthetic data set and the latent cache."""

from .embedded import CLASSES as EMBEDDED_CLASSES
from .embedded import make_embedded_dataset
from .latent_cache import LatentCache, encode_dataset, load_latent_cache
from .ucf101 import (
    CAPTION_TEMPLATES,
    ClipTransform,
    UCF101Clips,
    class_to_caption,
    collate_clips,
    load_ucf101,
    load_video_index,
    read_class_index,
)
from .video_folder import is_video_folder, load_video_folder
from .video_io import VIDEO_EXTENSIONS, VideoDecodeError, iter_clips, list_videos, load_clip, sample_frame_indices, write_video

__all__ = [
    "CAPTION_TEMPLATES",
    "ClipTransform",
    "EMBEDDED_CLASSES",
    "LatentCache",
    "UCF101Clips",
    "VIDEO_EXTENSIONS",
    "VideoDecodeError",
    "class_to_caption",
    "collate_clips",
    "encode_dataset",
    "is_video_folder",
    "iter_clips",
    "list_videos",
    "load_clip",
    "load_latent_cache",
    "load_ucf101",
    "load_video_folder",
    "load_video_index",
    "make_embedded_dataset",
    "read_class_index",
    "sample_frame_indices",
    "write_video",
]
