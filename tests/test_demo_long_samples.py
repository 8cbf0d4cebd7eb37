"""The quickstart's samples stage: one 64-frame sample per class from a long-video model, as videos and a sheet."""

import argparse

import PIL.Image
import pytest
from test_pipeline import CLASSES, tiny_pipeline

import vidtwin_gen.demo as demo
from vidtwin_gen.demo import write_samples


@pytest.fixture(autouse=True)
def few_steps(monkeypatch):
    monkeypatch.setattr(demo, "sampling_settings", lambda: {"num_inference_steps": 2, "guidance_scale": 2.0})


def test_a_long_video_model_adds_a_64_frame_sample_per_class(tmp_path):
    pipe = tiny_pipeline(num_context_chunks=1)
    names = list(CLASSES.values())
    write_samples(tmp_path, pipe, names, argparse.Namespace(seed=0, videos_per_class=1))
    assert sorted(p.stem for p in (tmp_path / "samples_long").glob("*.mp4")) == sorted(f"{n}_64f" for n in names)
    assert sorted(p.stem for p in (tmp_path / "samples").glob("*.mp4")) == sorted(f"{n}_00" for n in names)
    sheet, short_sheet = PIL.Image.open(tmp_path / "samples_long.png"), PIL.Image.open(tmp_path / "samples.png")
    # A row per chunk: 64 / 8 = 8 rows per class, each as wide as a one-chunk sample's row.
    assert sheet.width == short_sheet.width and sheet.height == 8 * short_sheet.height


def test_a_one_chunk_model_keeps_the_one_chunk_samples_only(tmp_path, capsys):
    write_samples(tmp_path, tiny_pipeline(), list(CLASSES.values()), argparse.Namespace(seed=0, videos_per_class=1))
    assert (tmp_path / "samples.png").is_file() and not (tmp_path / "samples_long").exists()
    assert "no 64-frame samples: this generator has no context chunks" in capsys.readouterr().out
