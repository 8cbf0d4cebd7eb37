"""Crop and resize options of the clip reader: centre crop with a random start, area (anti-aliased) RGB resize."""

import av
import numpy as np
import pytest
import torch

from vidtwin_gen.data.video_io import _FrameConverter, load_clip, write_video


def test_area_resize_averages_blocks_in_rgb():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = blocks.repeat(4, axis=0).repeat(4, axis=1)  # 64x64 of 4x4 constant blocks
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    area = _FrameConverter(16, resize="area")(frame)
    assert np.abs(area.astype(int) - blocks.astype(int)).max() <= 1  # each block averages to its own value
    # A one-pixel checkerboard averages to grey; the output size and crop are the same for both filters.
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    grey = _FrameConverter(16, resize="area")(av.VideoFrame.from_ndarray(checker, format="rgb24"))
    assert grey.shape == (16, 16, 3) and np.abs(grey.astype(int) - 127.5).max() <= 1.5
    with pytest.raises(ValueError, match="resize must be one of .*'nearest'"):
        _FrameConverter(16, resize="nearest")


@pytest.fixture()
def static_video(tmp_path):
    """24 identical frames with a spatial pattern, so only the crop window decides a clip."""
    gradient = np.linspace(0, 255, 96)[None, :, None] * np.ones((64, 1, 3))
    frame = (gradient + np.linspace(0, 100, 64)[:, None, None]).clip(0, 255).astype(np.uint8)
    path = tmp_path / "static.avi"
    write_video(path, np.stack([frame] * 24), fps=8)
    return path


def test_centre_crop_with_a_random_start(static_video):
    centre = load_clip(static_video, 4, 32, mode="center")
    random_starts = [load_clip(static_video, 4, 32, mode="random", generator=torch.Generator().manual_seed(seed),
                               crop="center") for seed in range(3)]
    for clip in random_starts:
        torch.testing.assert_close(clip, centre, atol=0.05, rtol=0)  # same window whatever the start (codec noise aside)
    random_crops = [load_clip(static_video, 4, 32, mode="random", generator=torch.Generator().manual_seed(seed))
                    for seed in range(3)]
    assert any((clip - centre).abs().max() > 0.1 for clip in random_crops)  # the default crop moves
    with pytest.raises(ValueError, match="crop must be one of"):
        load_clip(static_video, 4, 32, crop="left")


def test_area_resize_through_the_reader(static_video):
    bilinear = load_clip(static_video, 4, 32, mode="center")
    area = load_clip(static_video, 4, 32, mode="center", resize="area")
    assert area.shape == bilinear.shape == (3, 4, 32, 32)
    assert (area - bilinear).abs().mean() < 0.05  # the same picture, filtered differently
