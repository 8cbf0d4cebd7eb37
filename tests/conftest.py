"""Shared fixtures: a tiny embedded data set (UCF-101 layout), generated once per test session."""

import json

import pytest
import torch

from vidtwin_gen.data import make_embedded_dataset

# 3 classes x 3 groups x 2 clips = 18 videos of 24 frames at 64x48, 25 fps (about a second to write).
# Split k holds out group k: 12 train and 6 test videos per split.
TINY_EMBEDDED = {
    "classes": ["RedSquareBounce", "RedSquareSpin", "BlueCircleBounce"],
    "num_groups": 3,
    "clips_per_group": 2,
    "num_frames": 24,
    "width": 64,
    "height": 48,
}


@pytest.fixture(scope="session")
def make_embedded(tmp_path_factory):
    """`make_embedded(**overrides)` -> root of an embedded data set (TINY_EMBEDDED + overrides), made once per
    distinct set of arguments in the session. Treat it as read-only; copy it before breaking files."""
    made = {}

    def make(**overrides):
        options = {**TINY_EMBEDDED, **overrides}
        key = json.dumps(options, sort_keys=True)
        if key not in made:
            made[key] = make_embedded_dataset(tmp_path_factory.mktemp("embedded"), **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_embedded_options():
    """The arguments `embedded_root` was made with (a copy)."""
    return dict(TINY_EMBEDDED)


@pytest.fixture(scope="session")
def embedded_root(make_embedded):
    """Root of the default tiny embedded data set (read-only)."""
    return make_embedded()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A randomly initialised tiny autoencoder (8 frames of 32x32) saved as a diffusers folder."""
    from vidtwin_gen import AutoencoderVidTwin

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    AutoencoderVidTwin.from_preset("tiny").save_pretrained(path)
    return path
