"""Frame sampling arithmetic, clip decoding (which frames, crop, range), broken files, writing."""

import av
import numpy as np
import pytest
import torch

from vidtwin_gen.data.video_io import (
    VideoDecodeError,
    iter_clips,
    list_videos,
    load_clip,
    sample_frame_indices,
    write_video,
)

# ------------------------------------------------------------------ sampling arithmetic


@pytest.mark.parametrize(
    ("source_fps", "target_fps", "stride"),
    [(25, 8, 3), (30, 8, 4), (24, 8, 3), (29.97, 10, 3), (25, 25, 1), (8, 25, 1), (25, None, 1), (50, 8.0, 6)],
)
def test_stride_is_rounded_fps_ratio(source_fps, target_fps, stride):
    indices = sample_frame_indices(1000, source_fps, 5, target_fps, mode=0.0)
    assert indices == [i * stride for i in range(5)]


def test_center_start():
    # 16 frames at stride 3 span 46 source frames; 100 frames leave starts 0..54, centre 27.
    assert sample_frame_indices(100, 25, 16, 8) == list(range(27, 27 + 46, 3))
    assert sample_frame_indices(46, 25, 16, 8) == list(range(0, 46, 3))  # exact fit
    assert sample_frame_indices(100, 25, 16, 8, mode=1.0)[-1] == 99


def test_random_start_covers_range_and_is_reproducible():
    starts = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        indices = sample_frame_indices(20, 25, 4, 8, mode="random", generator=generator)  # span 10: starts 0..10
        assert np.all(np.diff(indices) == 3)
        starts.add(indices[0])
    assert starts == set(range(11))
    first = sample_frame_indices(500, 25, 8, 8, "random", torch.Generator().manual_seed(7))
    again = sample_frame_indices(500, 25, 8, 8, "random", torch.Generator().manual_seed(7))
    assert first == again


@pytest.mark.parametrize("mode", ["center", "random", 0.3])
def test_short_video_is_padded_with_last_frame(mode):
    # 10 frames at stride 3 give 0, 3, 6, 9; the rest repeats 9, whatever the mode.
    assert sample_frame_indices(10, 25, 8, 8, mode) == [0, 3, 6, 9, 9, 9, 9, 9]
    assert sample_frame_indices(1, 25, 3, None, mode) == [0, 0, 0]


@pytest.mark.parametrize(
    "kwargs",
    [{"num_source_frames": 0}, {"num_frames": 0}, {"mode": "middle"}, {"mode": 1.5}, {"target_fps": 0.0}],
)
def test_sampling_rejects_bad_arguments(kwargs):
    arguments = {"num_source_frames": 50, "source_fps": 25.0, "num_frames": 4, "target_fps": 8.0, **kwargs}
    with pytest.raises(ValueError):
        sample_frame_indices(**arguments)


# ------------------------------------------------------------------ decoding


def _grey_ramp(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is uniformly grey at level 8 + 4 i, so a decoded frame tells which source frame it is."""
    levels = 8 + 4 * np.arange(num_frames)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8).copy()


def _source_index(clip: torch.Tensor) -> list[int]:
    levels = (clip + 1) * 127.5  # (3, T, H, W)
    return [round((level - 8) / 4) for level in levels.mean(dim=(0, 2, 3)).tolist()]


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("ramp") / "ramp.avi"
    write_video(path, _grey_ramp(60), fps=25)
    return path


@pytest.mark.parametrize(("target_fps", "mode"), [(8.0, "center"), (None, "center"), (8.0, 0.0), (12.5, 1.0)])
def test_load_clip_takes_the_sampled_frames(ramp_video, target_fps, mode):
    clip = load_clip(ramp_video, 8, 32, target_fps=target_fps, mode=mode)
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert _source_index(clip) == sample_frame_indices(60, 25, 8, target_fps, mode)


def test_load_clip_random_mode_is_reproducible_and_varies(ramp_video):
    def draw(seed):
        return load_clip(ramp_video, 4, (24, 40), 8.0, "random", torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    starts = {_source_index(draw(seed))[0] for seed in range(12)}
    assert len(starts) > 3


def test_short_video_clip_repeats_last_frame(tmp_path):
    path = tmp_path / "short.avi"
    write_video(path, _grey_ramp(10), fps=25)
    assert _source_index(load_clip(path, 8, 32, target_fps=8)) == [0, 3, 6, 9, 9, 9, 9, 9]


def test_resize_short_side_then_centre_crop(tmp_path):
    # Columns coloured by x: a centre crop keeps the middle columns; no resize when the short side fits.
    height, width = 48, 96
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(0, 255, width).astype(np.uint8)[None, :]
    path = tmp_path / "columns.avi"
    write_video(path, np.repeat(frame[None], 4, axis=0), fps=25, quality=2)
    decoded = next(av.open(str(path)).decode(video=0)).to_ndarray(format="rgb24")

    same_scale = load_clip(path, 2, 48, mode=0.0)  # 48x96 -> crop columns 24..72, exactly the decoded pixels
    expected = torch.from_numpy(decoded[:, 24:72]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(same_scale[:, 0], expected, atol=1e-6)

    half = load_clip(path, 2, (24, 24))  # resized to 24x48, crop the middle 24 columns: red spans ~1/4..3/4
    red = (half[0, 0].mean(0) + 1) * 127.5
    assert abs(red[0].item() - 64) < 12 and abs(red[-1].item() - 191) < 12
    assert load_clip(path, 2, (16, 40)).shape == (3, 2, 16, 40)


def test_upscales_when_video_is_smaller(tmp_path):
    path = tmp_path / "small.mp4"
    write_video(path, _grey_ramp(6, 16, 24), fps=10)
    clip = load_clip(path, 3, 32)
    assert clip.shape == (3, 3, 32, 32)
    assert _source_index(clip) == [1, 2, 3]  # centre of 6 frames


def test_container_without_frame_count(tmp_path):
    # Matroska headers carry no frame count: it is counted from the packets instead.
    path = tmp_path / "ramp.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"flags": "+qscale", "global_quality": str(2 * 118)}
        for image in _grey_ramp(30):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    assert _source_index(load_clip(path, 4, 32, target_fps=8)) == sample_frame_indices(30, 25, 4, 8)


# ------------------------------------------------------------------ broken files


def _broken_files(folder, good):
    data = good.read_bytes()
    truncated = folder / "truncated.avi"
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.avi"
    empty.write_bytes(b"")
    text = folder / "text.avi"
    text.write_text("this is not a video\n" * 50)
    return {"truncated": truncated, "empty": empty, "text": text, "missing": folder / "missing.avi"}


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "missing"])
def test_broken_files_raise_video_decode_error(tmp_path, ramp_video, kind):
    path = _broken_files(tmp_path, ramp_video)[kind]
    with pytest.raises(VideoDecodeError):
        load_clip(path, 8, 32, target_fps=8)
    with pytest.raises(VideoDecodeError):
        list(iter_clips(path, 8, 32))


def test_decoding_stops_after_last_needed_frame(tmp_path):
    # Noisy frames, so that frame data (not the header) fills the file. The first half of the truncated
    # file is intact: a clip from the start never reaches the damage, a centred clip does and is reported.
    rng = np.random.default_rng(0)
    levels = 40 + 4 * np.arange(40)
    frames = np.clip(levels[:, None, None, None] + rng.integers(-20, 21, (40, 48, 64, 3)), 0, 255).astype(np.uint8)
    good = tmp_path / "noisy.avi"
    write_video(good, frames, fps=25)
    truncated = _broken_files(tmp_path, good)["truncated"]
    start = load_clip(truncated, 4, (48, 64), mode=0.0)
    assert [round(((level + 1) * 127.5 - 40) / 4) for level in start.mean(dim=(0, 2, 3)).tolist()] == [0, 1, 2, 3]
    with pytest.raises(VideoDecodeError, match="truncated"):
        load_clip(truncated, 4, 32, mode="center")


def test_audio_only_file_is_not_a_video(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        load_clip(path, 2, 16)


# ------------------------------------------------------------------ iter_clips, list_videos, write_video


def test_iter_clips_consecutive_non_overlapping(ramp_video):
    clips = list(iter_clips(ramp_video, 8, 32))  # 60 frames -> 7 clips of 8, tail of 4 dropped
    assert len(clips) == 7
    assert [_source_index(clip) for clip in clips[:2]] == [list(range(8)), list(range(8, 16))]
    strided = list(iter_clips(ramp_video, 8, (16, 24), target_fps=8))  # every 3rd frame: 20 -> 2 clips
    assert [_source_index(clip) for clip in strided] == [list(range(0, 24, 3)), list(range(24, 48, 3))]
    assert strided[0].shape == (3, 8, 16, 24)
    assert len(list(iter_clips(ramp_video, 8, 32, max_clips=3))) == 3


def test_iter_clips_pads_a_video_shorter_than_one_clip(tmp_path):
    path = tmp_path / "short.avi"
    write_video(path, _grey_ramp(5), fps=25)
    (clip,) = iter_clips(path, 8, 32)
    assert _source_index(clip) == [0, 1, 2, 3, 4, 4, 4, 4]


def test_list_videos_sorted_recursive(tmp_path):
    for name in ["b/z.avi", "a.MP4", "b/a.mkv", "notes.txt", "c/d/e.webm", "c/avi"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)] == ["a.MP4", "b/a.mkv", "b/z.avi", "c/d/e.webm"]
    with pytest.raises(FileNotFoundError):
        list_videos(tmp_path / "nowhere")


@pytest.mark.parametrize(("suffix", "codec", "tag"), [(".avi", "mpeg4", "XVID"), (".mp4", "h264", "avc1")])
def test_write_video_round_trip(tmp_path, suffix, codec, tag):
    ys, xs = np.mgrid[0:24, 0:32]
    frames = np.stack([np.stack([7 * xs + t, 10 * ys, np.full_like(xs, 20 * t)], -1) for t in range(12)]).astype(np.uint8)
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, fps=12.5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec and stream.codec_tag == tag
        assert float(stream.average_rate) == 12.5
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames).mean() < 3  # lossy, but close on smooth content


@pytest.mark.parametrize(
    ("name", "frames"),
    [("odd.avi", np.zeros((2, 15, 16, 3), np.uint8)), ("float.avi", np.zeros((2, 16, 16, 3), np.float32)),
     ("clip.gif", np.zeros((2, 16, 16, 3), np.uint8)), ("gray.avi", np.zeros((2, 16, 16), np.uint8))],
)
def test_write_video_rejects_bad_input(tmp_path, name, frames):
    with pytest.raises(ValueError):
        write_video(tmp_path / name, frames, fps=25)
