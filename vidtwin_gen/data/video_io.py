"""Reading and writing video files with PyAV.

Clips come out as float32 tensors of shape (3, T, H, W) in [-1, 1], the layout `AutoencoderVidTwin` takes.

A clip of T frames at a target frame rate takes every k-th source frame, k = round(source fps / target fps)
(at least 1), starting at a random offset (training) or in the middle (evaluation); a video shorter than the
clip is padded by repeating its last frame. Frames are resized so that the short side fits the requested size
(inside FFmpeg's scaler, on the needed frames only) and then cropped, at random or in the centre. Decoding
stops after the last needed frame, so the cost of a clip grows with where it ends, not with the video length.

Files that cannot be read raise `VideoDecodeError` naming the file: missing, empty, not a regular file (a named
pipe would block forever), not a video, truncated, corrupt (including damage FFmpeg conceals: frames it flags
as corrupt are refused), slower to decode than a per-file time limit, or failing in any other way while opened
or decoded. The data sets built on this module catch it, log the file once and count it. Metadata that is not
UTF-8 is read leniently. A header that undercounts the frames or gives an implausible frame rate is corrected
from the packets and the codec, with one warning per file, instead of producing a frozen clip.
"""

import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")

# A file that decodes to fewer frames than its header promises is truncated. A few frames of slack keep
# files whose header count is slightly off (dropped-frame markers in AVI, rounding) readable; inside that
# slack the clip is padded with the last decoded frame, like any clip that runs past the end.
_TRUNCATION_SLACK_FRAMES = 2
_TRUNCATION_SLACK_FRACTION = 0.02

# A header frame rate outside this range is a damaged or hostile header (1e9 fps would make every clip one frame
# repeated); the codec's own rate is used instead.
_PLAUSIBLE_FPS = (1.0, 1000.0)

# Default wall-clock limit on opening and decoding one file, in seconds: a stalled network mount or a
# pathological file is skipped instead of stopping a run. Generous: a 10-minute 1080p file decodes in well under it.
DECODE_TIME_LIMIT_S = 300.0

_warned: set[tuple[str, str]] = set()


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
    _check_sampling(num_frames, target_fps, mode)
    if target_fps is not None and source_fps <= 0:
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
    else:
        start = int(mode * max_start)
    return [start + i * stride for i in range(num_frames)]


def _check_sampling(num_frames: int, target_fps: float | None, mode: str | float, time_limit: float = 1.0) -> None:
    """The argument checks of `sample_frame_indices` (and the time limit), made before a file is opened, so that
    they stay ValueErrors rather than a skipped file."""
    if not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if target_fps is not None and not target_fps > 0:
        raise ValueError(f"target_fps must be positive or None, got {target_fps}")
    numeric = isinstance(mode, (int, float)) and not isinstance(mode, bool)
    if mode not in ("random", "center") and not (numeric and 0 <= mode <= 1):
        raise ValueError(f"mode must be 'random', 'center' or a float in [0, 1], got {mode!r}")


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


def _warn_once(path, kind: str, message: str) -> None:
    """Log `message` the first time this process sees this kind of problem in this file."""
    if (str(path), kind) not in _warned:
        _warned.add((str(path), kind))
        logger.warning(message)


@contextmanager
def _failures_name_the_file(path):
    """Any exception while a file is opened or decoded becomes a `VideoDecodeError` naming it: real files fail in
    ways no list anticipates (a UnicodeDecodeError from metadata, a MemoryError from a hostile size field), and
    each must be one skipped file, not a dead run."""
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(f"cannot read {path}: {type(error).__name__}: {error}") from error


def _open_video(path, time_limit: float = DECODE_TIME_LIMIT_S) -> tuple[av.container.InputContainer, av.VideoStream]:
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise VideoDecodeError(f"cannot open {path}: {error.strerror or error}") from error
    if not stat.S_ISREG(mode):
        # Opening a named pipe blocks until something writes to it; a device may never end.
        raise VideoDecodeError(f"{path} is not a regular file (a named pipe, device or folder): not read")
    try:
        # Metadata is decoded leniently: a latin-1 INFO tag must not make a readable video unreadable.
        # `timeout` bounds each blocking read, the deadline in `_checked_frames` the whole file.
        container = av.open(str(path), metadata_errors="replace", timeout=time_limit)
    except av.ExitError as error:  # FFmpeg's interrupt: the timeout passed
        raise VideoDecodeError(f"cannot open {path}: no data within the {time_limit:g} s limit") from error
    except Exception as error:
        raise VideoDecodeError(f"cannot open {path}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path} has no video stream")
    # PyAV's default threading (slice threads only) is kept on purpose: frame threading measured 2-3x slower
    # on 160x120 and 320x240 MPEG-4 with 2 cores, and DataLoader workers are the parallelism anyway.
    return container, container.streams.video[0]


def _frame_rate(stream: av.VideoStream, path) -> float:
    """The header's average frame rate, or, when that is missing or implausible, the first plausible one of the
    guessed (codec/timestamp) and base rates."""
    low, high = _PLAUSIBLE_FPS
    candidates = (stream.average_rate, stream.guessed_rate, stream.base_rate, stream.codec_context.framerate)
    plausible = [float(rate) for rate in candidates if rate and low <= rate <= high]
    if not plausible:
        raise VideoDecodeError(f"{path} has no plausible frame rate in its header (rates {[str(r) for r in candidates]}; "
                               f"expected {low:g}..{high:g} fps)")
    if stream.average_rate and plausible[0] != stream.average_rate:
        _warn_once(path, "fps", f"{path}: the header's frame rate {float(stream.average_rate):g} fps is implausible; "
                                f"using {plausible[0]:g} fps, guessed from the codec and timestamps")
    return plausible[0]


def _count_frames(path, time_limit: float = DECODE_TIME_LIMIT_S) -> int:
    """Frames in the file, counted from its video packets without decoding (for headers with no count or a wrong one)."""
    container, stream = _open_video(path, time_limit)
    deadline = time.monotonic() + time_limit
    count = 0
    with container:
        try:
            for packet in container.demux(stream):
                count += packet.size > 0
                if count % 256 == 0 and time.monotonic() > deadline:
                    raise VideoDecodeError(f"{path}: counting its frames took over the {time_limit:g} s limit")
        except av.FFmpegError as error:
            raise VideoDecodeError(f"cannot read {path}: {error}") from error
    return count


def _checked_frames(container, stream, path, deadline: float, time_limit: float) -> Iterator[av.VideoFrame]:
    """The stream's decoded frames, refusing any the decoder flags as damaged (FFmpeg conceals bitstream errors
    and would otherwise hand over visibly wrong frames) and stopping at the file's time limit."""
    decoded = 0
    try:
        # `container.decode` unrolled, so that the clock is read per packet: a file of packets that decode to
        # no frames must hit the limit too.
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise VideoDecodeError(f"{path} took over the {time_limit:g} s limit to decode ({decoded} frames)")
            for frame in packet.decode():
                if frame.is_corrupt:
                    raise VideoDecodeError(f"{path} is corrupt: frame {decoded} was damaged (concealed by the decoder)")
                decoded += 1
                yield frame
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path} is corrupt: decoding failed after {decoded} frames ({error})") from error


def _check_not_truncated(path, decoded: int, expected: int) -> None:
    if decoded == 0:
        raise VideoDecodeError(f"{path} contains no decodable frames")
    slack = _frame_count_slack(expected)
    if decoded < expected - slack:
        raise VideoDecodeError(f"{path} is truncated or corrupt: its header promises {expected} frames, {decoded} decode")


def _frame_count_slack(expected: int) -> int:
    return max(_TRUNCATION_SLACK_FRAMES, int(_TRUNCATION_SLACK_FRACTION * expected))


def _checked_frame_count(path, header: int, time_limit: float) -> int:
    """The header's frame count checked against the file's packets: the packet count when the file holds more
    (1 in the header for a 70-frame file would give a clip of one frame repeated), with one warning per file."""
    counted = _count_frames(path, time_limit)
    if counted <= header + _frame_count_slack(header):
        return header
    _warn_once(path, "frames", f"{path}: the header says {header} frames but the file holds {counted}; "
                               "sampling from the frames it holds")
    return counted


def load_clip(
    path,
    num_frames: int,
    size: int | tuple[int, int],
    target_fps: float | None = None,
    mode: str | float = "center",
    generator: torch.Generator | None = None,
    time_limit: float = DECODE_TIME_LIMIT_S,
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
        time_limit: seconds allowed for opening and decoding this file.
        crop: "random" or "center" overrides the crop `mode` implies (e.g. a random start, centre crop).
        resize: "bilinear" (in YUV) or "area" (anti-aliased, in RGB); see `_FrameConverter`.

    Returns:
        (3, T, H, W) float32 in [-1, 1].

    Raises:
        VideoDecodeError: the file is missing, empty, not a regular file, truncated, corrupt, not a video, too
            slow to decode, or fails in any other way.
    """
    height, width = _size_hw(size)
    _check_sampling(num_frames, target_fps, mode, time_limit)
    if crop is not None and crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS} or None, got {crop!r}")
    random_crop = crop == "random" if crop is not None else mode == "random"
    deadline = time.monotonic() + time_limit
    with _failures_name_the_file(path):
        container, stream = _open_video(path, time_limit)
        with container:
            fps = _frame_rate(stream, path) if target_fps is not None else 1.0
            total = stream.frames or _count_frames(path, time_limit)
            indices = sample_frame_indices(total, fps, num_frames, target_fps, mode, generator)
            if stream.frames and indices[-1] >= total - 1:
                # Only a clip reaching the header's last frame can be hurt by a count that is too low (clips
                # inside it hold frames that exist), so only such a clip pays for checking it.
                checked = _checked_frame_count(path, total, time_limit)
                if checked != total:
                    total = checked
                    indices = sample_frame_indices(total, fps, num_frames, target_fps, mode, generator)
            wanted, last = set(indices), indices[-1]
            convert = _FrameConverter((height, width), random_crop=random_crop, generator=generator, resize=resize)
            frames, decoded, frame = {}, 0, None
            for frame in _checked_frames(container, stream, path, deadline, time_limit):
                if decoded in wanted:
                    frames[decoded] = convert(frame)
                decoded += 1
                if decoded > last:
                    break
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
    time_limit: float = DECODE_TIME_LIMIT_S,
) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping clips of one video, centre-cropped (MCL-JCV-style evaluation).

    Frames are taken at the stride of `sample_frame_indices` from the first frame on. An incomplete tail is
    dropped, except that a video shorter than one clip gives one clip padded with its last frame.

    Yields:
        (3, T, H, W) float32 in [-1, 1], at most `max_clips` of them.

    Raises:
        VideoDecodeError: where the problem is found; clips already yielded hold valid frames, but a caller that
            wants only wholly readable files must hold a file's clips back until the iterator ends.
    """
    _size_hw(size)
    _check_sampling(num_frames, target_fps, "center", time_limit)
    if max_clips is not None and max_clips < 1:
        return
    deadline = time.monotonic() + time_limit
    with _failures_name_the_file(path):
        container, stream = _open_video(path, time_limit)
        with container:
            fps = _frame_rate(stream, path) if target_fps is not None else 1.0
            stride = 1 if target_fps is None else max(1, round(fps / target_fps))
            expected = stream.frames
            convert = _FrameConverter(size)
            clip, decoded, yielded = [], 0, 0
            for frame in _checked_frames(container, stream, path, deadline, time_limit):
                if decoded % stride == 0:
                    clip.append(convert(frame))
                    if len(clip) == num_frames:
                        yield _to_tensor(clip)
                        clip, yielded = [], yielded + 1
                        if yielded == max_clips:
                            return
                decoded += 1
            _check_not_truncated(path, decoded, expected or decoded)
            if expected and decoded > expected + _frame_count_slack(expected):
                _warn_once(path, "frames", f"{path}: the header says {expected} frames but {decoded} decode")
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
