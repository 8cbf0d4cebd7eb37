"""Reading and writing video files with PyAV.

Clips come out as float32 tensors of shape (3, T, H, W) in [-1, 1], the layout `AutoencoderVidTwin` takes.

A clip of T frames at a target frame rate takes every k-th source frame, k = round(source fps / target fps)
(at least 1), starting at a random offset (training) or in the middle (evaluation); a video shorter than the
clip is padded by repeating its last frame. Frames are resized so that the short side fits the requested size
(inside FFmpeg's scaler, on the needed frames only) and then cropped, at random or in the centre. Decoding
stops after the last needed frame, so the cost of a clip grows with where it ends, not with the video length.

Files that cannot be read (missing, empty, not a video, truncated, corrupt) raise `VideoDecodeError`; the data
sets built on this module catch it, log the file once and count it.
"""

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")

# A file that decodes to fewer frames than its header promises is truncated. A few frames of slack keep
# files whose header count is slightly off (dropped-frame markers in AVI, rounding) readable; inside that
# slack the clip is padded with the last decoded frame, like any clip that runs past the end.
_TRUNCATION_SLACK_FRAMES = 2
_TRUNCATION_SLACK_FRACTION = 0.02


class VideoDecodeError(RuntimeError):
    """A video file is missing, empty, truncated, corrupt or not a video."""


def sample_frame_indices(
    num_source_frames: int,
    source_fps: float,
    num_frames: int,
    target_fps: float | None,
    mode: str | float = "center",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices of the `num_frames` source frames that make one clip.

    Args:
        num_source_frames: frames in the video.
        source_fps: the video's frame rate.
        num_frames: frames per clip T.
        target_fps: frame rate of the clip; the stride is max(1, round(source_fps / target_fps)).
            None keeps every frame (stride 1).
        mode: "random" (uniform start, drawn from `generator` or torch's global RNG), "center", or a float in
            [0, 1] giving the start as a fraction of the possible range (0 first, 1 last; "center" is 0.5).
        generator: RNG for "random".

    Returns:
        T indices; a video shorter than the clip's span gives every stride-th frame from the start and then
        repeats the last one.
    """
    if num_source_frames < 1:
        raise ValueError(f"num_source_frames must be >= 1, got {num_source_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if target_fps is not None and (target_fps <= 0 or source_fps <= 0):
        raise ValueError(f"frame rates must be positive, got source_fps={source_fps}, target_fps={target_fps}")
    stride = 1 if target_fps is None else max(1, round(source_fps / target_fps))
    span = (num_frames - 1) * stride + 1
    max_start = num_source_frames - span
    if max_start < 0:
        indices = list(range(0, num_source_frames, stride))[:num_frames]
        return indices + [indices[-1]] * (num_frames - len(indices))
    if mode == "random":
        start = int(torch.randint(0, max_start + 1, (1,), generator=generator))
    elif mode == "center":
        start = max_start // 2
    elif isinstance(mode, (int, float)) and not isinstance(mode, bool) and 0 <= mode <= 1:
        start = int(mode * max_start)
    else:
        raise ValueError(f"mode must be 'random', 'center' or a float in [0, 1], got {mode!r}")
    return [start + i * stride for i in range(num_frames)]


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (an int or (height, width)), got {size!r}")
    return height, width


CROPS = ("random", "center")
RESIZES = ("bilinear", "area")


class _FrameConverter:
    """Turns decoded frames into (H, W, 3) uint8 crops: short side resized by FFmpeg's scaler, then cropped.

    The crop window is chosen on the first frame (centre, or at random from `generator`) and kept for the clip.

    `resize="bilinear"` (default) resizes in YUV before the RGB conversion: swscale's combined resize+convert
    path is biased by about 2 grey levels, the two steps are exact and, with cached scaler contexts, faster.
    `resize="area"` converts to RGB first and resizes with swscale's area filter (anti-aliased averaging, the
    original VidTwin data pipeline's and its evaluations' choice).
    """

    def __init__(self, size: int | tuple[int, int], random_crop: bool = False, generator: torch.Generator | None = None,
                 resize: str = "bilinear"):
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.height, self.width = _size_hw(size)
        self.random_crop = random_crop
        self.generator = generator
        self.resize = resize
        self.layout = None  # (resized_w, resized_h, top, left), fixed by the first frame
        # One reformatter per step keeps its SwsContext between frames (`VideoFrame.reformat` rebuilds it: ~1 ms).
        self.resizer, self.to_rgb = VideoReformatter(), VideoReformatter()

    def _choose_layout(self, frame: av.VideoFrame) -> tuple[int, int, int, int]:
        scale = max(self.height / frame.height, self.width / frame.width)
        resized_h = max(self.height, round(frame.height * scale))
        resized_w = max(self.width, round(frame.width * scale))
        if self.random_crop:
            top = int(torch.randint(0, resized_h - self.height + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, resized_w - self.width + 1, (1,), generator=self.generator))
        else:
            top, left = (resized_h - self.height) // 2, (resized_w - self.width) // 2
        return resized_w, resized_h, top, left

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.layout is None:
            self.layout = self._choose_layout(frame)
        resized_w, resized_h, top, left = self.layout
        same_size = (resized_w, resized_h) == (frame.width, frame.height)
        if self.resize == "area":
            frame = self.to_rgb.reformat(frame, format="rgb24", threads=1)
            if not same_size:
                frame = self.resizer.reformat(frame, width=resized_w, height=resized_h, interpolation="AREA", threads=1)
            rgb = frame.to_ndarray()
        else:
            if not same_size:
                # swscale's bilinear filter widens with the scale factor, so downscaling is antialiased.
                frame = self.resizer.reformat(frame, width=resized_w, height=resized_h, interpolation="BILINEAR",
                                              threads=1)
            rgb = self.to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
        return rgb[top : top + self.height, left : left + self.width]


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """T frames of (H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)
    return video.float().div_(127.5).sub_(1.0)


def _open_video(path) -> tuple[av.container.InputContainer, av.VideoStream]:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoDecodeError(f"cannot open {path}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path} has no video stream")
    # PyAV's default threading (slice threads only) is kept on purpose: frame threading measured 2-3x slower
    # on 160x120 and 320x240 MPEG-4 with 2 cores, and DataLoader workers are the parallelism anyway.
    return container, container.streams.video[0]


def _frame_rate(stream: av.VideoStream, path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoDecodeError(f"{path} has no frame rate in its header")
    return float(rate)


def _count_frames(path) -> int:
    """Frame count for containers whose header has none (mkv, webm): count the video packets, no decoding."""
    container, stream = _open_video(path)
    try:
        with container:
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"cannot read {path}: {error}") from error


def _check_not_truncated(path, decoded: int, expected: int) -> None:
    if decoded == 0:
        raise VideoDecodeError(f"{path} contains no decodable frames")
    slack = max(_TRUNCATION_SLACK_FRAMES, int(_TRUNCATION_SLACK_FRACTION * expected))
    if decoded < expected - slack:
        raise VideoDecodeError(f"{path} is truncated or corrupt: its header promises {expected} frames, {decoded} decode")


def load_clip(
    path,
    num_frames: int,
    size: int | tuple[int, int],
    target_fps: float | None = None,
    mode: str | float = "center",
    generator: torch.Generator | None = None,
    crop: str | None = None,
    resize: str = "bilinear",
) -> torch.Tensor:
    """Decode one clip of a video.

    Args:
        path: video file.
        num_frames: frames per clip T.
        size: output size, int or (H, W); the short side is resized to fit, then the frame is cropped.
        target_fps: clip frame rate (see `sample_frame_indices`); None keeps every frame.
        mode: "random" (random start and random crop), "center" (centred start and crop), or a float in [0, 1]
            placing the start (centre crop).
        generator: RNG for "random".
        crop: "random" or "center" overrides the crop `mode` implies (e.g. a random start, centre crop).
        resize: "bilinear" (in YUV) or "area" (anti-aliased, in RGB); see `_FrameConverter`.

    Returns:
        (3, T, H, W) float32 in [-1, 1].

    Raises:
        VideoDecodeError: the file is missing, empty, truncated, corrupt or not a video.
    """
    height, width = _size_hw(size)
    container, stream = _open_video(path)
    with container:
        fps = _frame_rate(stream, path) if target_fps is not None else 1.0
        total = stream.frames or _count_frames(path)
        if total < 1:
            raise VideoDecodeError(f"{path} contains no frames")
        indices = sample_frame_indices(total, fps, num_frames, target_fps, mode, generator)
        wanted, last = set(indices), indices[-1]
        if crop is not None and crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS} or None, got {crop!r}")
        random_crop = crop == "random" if crop is not None else mode == "random"
        convert = _FrameConverter((height, width), random_crop=random_crop, generator=generator, resize=resize)
        frames, decoded, frame = {}, 0, None
        try:
            for frame in container.decode(stream):
                if decoded in wanted:
                    frames[decoded] = convert(frame)
                decoded += 1
                if decoded > last:
                    break
        except av.FFmpegError as error:
            raise VideoDecodeError(f"{path} is corrupt: decoding failed after {decoded} frames ({error})") from error
        if decoded <= last:
            # The stream ended early. Within the slack the clip is padded with the last frame decoded.
            _check_not_truncated(path, decoded, total)
            if decoded - 1 not in frames:
                frames[decoded - 1] = convert(frame)
            indices = [min(i, decoded - 1) for i in indices]
    return _to_tensor([frames[i] for i in indices])


def iter_clips(
    path,
    num_frames: int,
    size: int | tuple[int, int],
    target_fps: float | None = None,
    max_clips: int | None = None,
) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping clips of one video, centre-cropped (MCL-JCV-style evaluation).

    Frames are taken at the stride of `sample_frame_indices` from the first frame on. An incomplete tail is
    dropped, except that a video shorter than one clip gives one clip padded with its last frame.

    Yields:
        (3, T, H, W) float32 in [-1, 1], at most `max_clips` of them.

    Raises:
        VideoDecodeError: where the problem is found; clips already yielded hold valid frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_clips is not None and max_clips < 1:
        return
    container, stream = _open_video(path)
    with container:
        fps = _frame_rate(stream, path) if target_fps is not None else 1.0
        stride = 1 if target_fps is None else max(1, round(fps / target_fps))
        expected = stream.frames
        convert = _FrameConverter(size)
        clip, decoded, yielded = [], 0, 0
        try:
            for frame in container.decode(stream):
                if decoded % stride == 0:
                    clip.append(convert(frame))
                    if len(clip) == num_frames:
                        yield _to_tensor(clip)
                        clip, yielded = [], yielded + 1
                        if yielded == max_clips:
                            return
                decoded += 1
        except av.FFmpegError as error:
            raise VideoDecodeError(f"{path} is corrupt: decoding failed after {decoded} frames ({error})") from error
        _check_not_truncated(path, decoded, expected or decoded)
        if yielded == 0:
            yield _to_tensor(clip + [clip[-1]] * (num_frames - len(clip)))


def list_videos(folder) -> list[Path]:
    """All video files under `folder` (recursive, sorted), by extension (`VIDEO_EXTENSIONS`, any case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist or is not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def write_video(path, frames: np.ndarray, fps: float, quality: int | None = None) -> None:
    """Write (T, H, W, 3) uint8 frames: `.avi` as MPEG-4 Part 2 tagged XVID (UCF-101's format), `.mp4` as H.264.

    Args:
        quality: MPEG-4 quantiser for .avi (2 best .. 31 worst; default 3, within ~1 dB of the 4:2:0 limit on
            synthetic content) or x264 CRF for .mp4 (default 18, visually lossless).

    H and W must be even (4:2:0 chroma). Single-threaded encoding keeps the output byte-identical for equal input.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for 4:2:0 video, got {height}x{width}")
    suffix = path.suffix.lower()
    if suffix not in (".avi", ".mp4"):
        raise ValueError(f"write_video writes .avi (MPEG-4/XVID) or .mp4 (H.264), got {path.name!r}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        if suffix == ".avi":
            stream = container.add_stream("mpeg4", rate=rate)
            stream.codec_tag = "XVID"
            # Constant quantiser instead of mpeg4's 200 kb/s default, which smears fine texture.
            quantiser = 3 if quality is None else quality
            stream.options = {"flags": "+qscale", "global_quality": str(quantiser * 118)}  # 118 = FF_QP2LAMBDA
        else:
            stream = container.add_stream("libx264", rate=rate)
            stream.options = {"crf": str(18 if quality is None else quality)}
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
