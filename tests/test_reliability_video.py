"""Hostile video files: each is a clear `VideoDecodeError` naming the file (so a skipped, counted file in the data
sets) or a correct clip with a warning, never a crash, a hang or a silently wrong clip.

Every file is made here: a clean AVI written with PyAV, then its bytes patched (RIFF INFO tags, the `avih`/`strh`
headers, the frame payload).
"""

import io
import logging
import os
import struct
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidtwin_gen.data import video_io
from vidtwin_gen.data.ucf101 import UCF101Clips, collate_clips, load_ucf101
from vidtwin_gen.data.video_io import VideoDecodeError, iter_clips, load_clip, write_video

LEVEL0, STEP = 8, 3  # frame i of the ramp is uniformly grey at LEVEL0 + STEP * i


def _ramp(num_frames: int = 70) -> np.ndarray:
    levels = LEVEL0 + STEP * np.arange(num_frames)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, 48, 64, 3)).astype(np.uint8).copy()


def _source_index(clip: torch.Tensor) -> list[int]:
    return [round(((level + 1) * 127.5 - LEVEL0) / STEP) for level in clip.mean(dim=(0, 2, 3)).tolist()]


def _patch(data: bytes, tag: bytes, offset: int, value: int) -> bytes:
    """Overwrite the 32-bit field `offset` bytes into the payload of the first `tag` chunk."""
    patched = bytearray(data)
    struct.pack_into("<I", patched, patched.index(tag) + 8 + offset, value)
    return bytes(patched)


def _movi_chunks(data: bytes) -> list[tuple[int, int]]:
    """(payload start, payload size) of each chunk in the AVI's movi list."""
    position, end, chunks = data.index(b"movi") + 4, data.index(b"idx1"), []
    while position < end:
        size = struct.unpack_from("<I", data, position + 4)[0]
        chunks.append((position + 8, size))
        position += 8 + size + (size & 1)
    return chunks


@pytest.fixture(scope="module")
def ramp_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "ramp.avi"
    write_video(path, _ramp(), fps=25)
    return path.read_bytes()


@pytest.fixture(autouse=True)
def _fresh_warnings():
    video_io._warned.clear()  # warnings are once per file and process; each test starts from none


# ------------------------------------------------------------------ metadata that is not UTF-8


def test_latin1_info_tags_are_read_leniently(tmp_path):
    path = tmp_path / "cafe.avi"
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "Cafx"
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"flags": "+qscale", "global_quality": str(2 * 118)}  # near-lossless, as write_video
        for image in _ramp(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    # The encoder tag (ISFT) and the title (INAM) become latin-1 "Café", sizes unchanged.
    software = data.index(b"ISFT")
    size = struct.unpack_from("<I", data, software + 4)[0]
    data = data[: software + 8] + b"Caf\xe9".ljust(size, b"\0") + data[software + 8 + size :]
    path.write_bytes(data.replace(b"Cafx", b"Caf\xe9"))
    with pytest.raises(UnicodeDecodeError):
        av.open(str(path))  # what the reader ran into before
    assert _source_index(load_clip(path, 6, 32)) == list(range(6))
    assert len(list(iter_clips(path, 3, 32))) == 2


# ------------------------------------------------------------------ headers that lie


def test_header_frame_count_too_low_is_corrected_with_one_warning(tmp_path, ramp_bytes, caplog):
    path = tmp_path / "count1.avi"
    path.write_bytes(_patch(_patch(ramp_bytes, b"strh", 32, 1), b"avih", 16, 1))  # dwLength, dwTotalFrames
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 1  # the header the reader used to trust
    with caplog.at_level(logging.WARNING, logger="vidtwin_gen.data.video_io"):
        centre = load_clip(path, 8, 32, target_fps=8.0)
        again = load_clip(path, 8, 32, target_fps=8.0, mode=1.0)
    # 70 frames at stride 3: the clip spans 22 frames from the centre start 24, not frame 0 eight times.
    assert _source_index(centre) == list(range(24, 46, 3))
    assert _source_index(again) == list(range(48, 70, 3))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "1 frames" in warnings[0] and "70" in warnings[0]
    assert [_source_index(clip) for clip in iter_clips(path, 8, 32, target_fps=8.0)] == [
        list(range(start, start + 22, 3)) for start in (0, 24, 48)]


def test_random_clips_of_an_undercounting_header_cover_the_file(tmp_path, ramp_bytes):
    path = tmp_path / "count1.avi"
    path.write_bytes(_patch(ramp_bytes, b"strh", 32, 1))
    generator = torch.Generator().manual_seed(0)
    starts = {_source_index(load_clip(path, 4, 32, 8.0, "random", generator))[0] for _ in range(12)}
    assert len(starts) > 3 and max(starts) <= 70 - 10


def test_implausible_header_frame_rate_uses_the_codec_rate_with_one_warning(tmp_path, ramp_bytes, caplog):
    path = tmp_path / "fps1e9.avi"
    path.write_bytes(_patch(_patch(ramp_bytes, b"strh", 20, 1), b"strh", 24, 10**9))  # dwScale 1, dwRate 1e9
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 10**9
    with caplog.at_level(logging.WARNING, logger="vidtwin_gen.data.video_io"):
        clip = load_clip(path, 8, 32, target_fps=8.0)
        clips = list(iter_clips(path, 8, 32, target_fps=8.0))
    assert _source_index(clip) == list(range(24, 46, 3))  # stride 3 from 25 fps, as for the clean file
    assert [_source_index(c)[:2] for c in clips] == [[0, 3], [24, 27], [48, 51]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "1e+09 fps" in warnings[0]


def test_no_plausible_frame_rate_is_a_decode_error(tmp_path, ramp_bytes, monkeypatch):
    path = tmp_path / "ramp.avi"
    path.write_bytes(ramp_bytes)
    monkeypatch.setattr(video_io, "_PLAUSIBLE_FPS", (1e12, 1e13))  # every rate the stream offers is now implausible
    with pytest.raises(VideoDecodeError, match=f"{path} has no plausible frame rate"):
        load_clip(path, 8, 32, target_fps=8.0)
    assert load_clip(path, 8, 32).shape == (3, 8, 32, 32)  # without a target rate the rate is not needed


# ------------------------------------------------------------------ payload damage that FFmpeg conceals


def _damaged(ramp_free_bytes: bytes) -> bytes:
    """Three bytes inverted inside the first (intra) frame's payload."""
    start, size = _movi_chunks(ramp_free_bytes)[0]
    damaged = bytearray(ramp_free_bytes)
    for offset in (size // 3, size // 2, 2 * size // 3):
        damaged[start + offset] ^= 0xFF
    return bytes(damaged)


@pytest.fixture(scope="module")
def textured_bytes(tmp_path_factory):
    """Moving texture with grain: the payload, not the header, is most of the file (as in real video)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:48, 0:64]
    frames = np.stack([np.stack([3 * xs + 4 * t, 4 * ys + 2 * t, np.full_like(xs, 9 * t)], -1) % 256 for t in range(20)])
    frames = np.clip(frames + rng.integers(-6, 7, frames.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("textured") / "textured.avi"
    write_video(path, frames, fps=25)
    return path.read_bytes()


def _plain_decode(data: bytes) -> tuple[np.ndarray, list[bool]]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
        return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [f.is_corrupt for f in frames]


def test_concealed_payload_damage_is_detected(tmp_path, textured_bytes):
    damaged = _damaged(textured_bytes)
    clean, _ = _plain_decode(textured_bytes)
    concealed, corrupt_flags = _plain_decode(damaged)
    # What the reader used to get: every frame, no error, and visibly wrong pictures.
    assert len(concealed) == len(clean) == 20
    assert np.abs(concealed.astype(float) - clean).mean() / 255 > 0.05
    assert any(corrupt_flags)

    path = tmp_path / "damaged.avi"
    path.write_bytes(damaged)
    with pytest.raises(VideoDecodeError, match=f"{path}.*corrupt"):
        load_clip(path, 8, 32)
    with pytest.raises(VideoDecodeError, match="corrupt"):
        list(iter_clips(path, 4, 32))
    clean_path = tmp_path / "clean.avi"
    clean_path.write_bytes(textured_bytes)
    assert len(list(iter_clips(clean_path, 4, 32))) == 5  # the check refuses no clean frame


def test_damage_after_the_clip_does_not_reject_the_clip(tmp_path, textured_bytes):
    # Decoding stops after the last frame a clip needs: damage further on cannot have touched it.
    start, size = _movi_chunks(textured_bytes)[-1]
    damaged = bytearray(textured_bytes)
    damaged[start + size // 2] ^= 0xFF
    path = tmp_path / "late.avi"
    path.write_bytes(bytes(damaged))
    clean_path = tmp_path / "clean.avi"
    clean_path.write_bytes(textured_bytes)
    assert torch.equal(load_clip(path, 4, 32, mode=0.0), load_clip(clean_path, 4, 32, mode=0.0))


# ------------------------------------------------------------------ files that are not files, slow files


def test_named_pipe_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)
    # In a subprocess with a timeout: the old reader blocked in open() forever.
    check = (f"from vidtwin_gen.data.video_io import load_clip, iter_clips, VideoDecodeError\n"
             f"for read in (lambda: load_clip({str(fifo)!r}, 4, 32), lambda: list(iter_clips({str(fifo)!r}, 4, 32))):\n"
             f"    try:\n        read()\n    except VideoDecodeError as error:\n        print(error)\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    assert all(str(fifo) in line and "not a regular file" in line for line in lines)


def test_a_folder_named_like_a_video_is_refused(tmp_path):
    (tmp_path / "folder.avi").mkdir()
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        load_clip(tmp_path / "folder.avi", 4, 32)


def test_decode_time_limit(tmp_path, ramp_bytes, monkeypatch):
    path = tmp_path / "ramp.avi"
    path.write_bytes(ramp_bytes)
    clock = iter(range(0, 10**6, 10))  # every reading of the clock is 10 s later
    monkeypatch.setattr(video_io.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(VideoDecodeError, match=f"{path}.*over the 15 s limit"):
        load_clip(path, 8, 32, time_limit=15)
    with pytest.raises(VideoDecodeError, match="over the 15 s limit"):
        list(iter_clips(path, 8, 32, time_limit=15))
    monkeypatch.undo()
    assert load_clip(path, 8, 32, time_limit=15).shape == (3, 8, 32, 32)
    with pytest.raises(ValueError, match="time_limit"):
        load_clip(path, 8, 32, time_limit=0)


# ------------------------------------------------------------------ any failure names the file


def test_any_exception_while_decoding_is_a_decode_error_naming_the_file(tmp_path, ramp_bytes, monkeypatch):
    path = tmp_path / "ramp.avi"
    path.write_bytes(ramp_bytes)

    def broken_open(*args, **kwargs):
        raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")

    monkeypatch.setattr(video_io.av, "open", broken_open)
    with pytest.raises(VideoDecodeError, match=f"cannot open {path}"):
        load_clip(path, 4, 32)
    monkeypatch.undo()

    def broken_converter(self, frame):
        raise MemoryError("cannot allocate 77 GB")

    monkeypatch.setattr(video_io._FrameConverter, "__call__", broken_converter)
    with pytest.raises(VideoDecodeError, match=f"{path}: MemoryError"):
        load_clip(path, 4, 32)
    with pytest.raises(VideoDecodeError, match=f"{path}: MemoryError"):
        list(iter_clips(path, 4, 32))


def test_bad_arguments_stay_value_errors(tmp_path, ramp_bytes):
    path = tmp_path / "ramp.avi"
    path.write_bytes(ramp_bytes)
    for kwargs in ({"mode": "middle"}, {"target_fps": -1.0}, {"num_frames": 0}, {"size": 0}):
        with pytest.raises(ValueError):
            load_clip(path, **{"num_frames": 4, "size": 32, **kwargs})
    with pytest.raises(ValueError):
        list(iter_clips(path, 4, (0, 32)))


# ------------------------------------------------------------------ end to end: skipped and counted


def test_hostile_files_are_skipped_and_counted_with_zero_workers(tmp_path, make_embedded, caplog):
    root = tmp_path / "data"
    shutil.copytree(make_embedded(), root)
    latin1, pipe, damaged = map(Path, load_ucf101(root, split=1, subset="test")["path"][:3])
    data = latin1.read_bytes()
    latin1.write_bytes(data.replace(b"Lavf", b"L\xe9vf", 1))  # a latin-1 byte in the encoder tag
    pipe.unlink()
    os.mkfifo(pipe)
    damaged.write_bytes(_damaged(damaged.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="vidtwin_gen.data.ucf101"):
        clips = UCF101Clips(root, split=1, subset="test", num_frames=4, size=32, target_fps=None, train=False)
        batch = collate_clips([clips[i] for i in range(len(clips))])
    assert batch["num_skipped"] == 2 and len(batch["video"]) == len(clips) - 2  # latin-1 tag read fine
    logged = [r.getMessage() for r in caplog.records]
    assert not any("missing" in line for line in logged)  # the pipe exists: refused when read, not "missing"
    assert sum(str(pipe) in line for line in logged) == 1 and sum(str(damaged) in line for line in logged) == 1
    assert not any(str(latin1) in line for line in logged)
