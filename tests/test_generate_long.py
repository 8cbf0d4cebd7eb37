"""`vidtwin-gen generate` for long videos: --num-frames, --continue, per-chunk classes, parts held across chunks."""

import av
import numpy as np
import pytest
import torch
from test_pipeline import tiny_pipeline

from vidtwin_gen import VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.cli import main as cli
from vidtwin_gen.data.video_io import write_video


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny (context-free) pipeline, and a.avi: 60 frames at 25 fps, 20 frames (2.5 chunks) at 8 fps."""
    root = tmp_path_factory.mktemp("long_cli")
    tiny_pipeline().save_pretrained(root / "pipe")
    frames = np.random.default_rng(0).integers(0, 255, (60, 48, 64, 3), dtype=np.uint8)
    write_video(root / "a.avi", frames, fps=25)
    return root


def generate(folder, out, *arguments):
    return cli(["generate", "--pipeline", str(folder / "pipe"), "--num-inference-steps", "1", "--output-dir",
                str(folder / out), *[str(folder / a) if a.endswith(".avi") else a for a in arguments]])


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_num_frames_writes_that_many_frames(folder):
    assert generate(folder, "long", "--class-label", "0", "--num-frames", "20", "--context-chunks", "0") == 0
    assert frame_count(folder / "long" / "RedSquareDrift_00.mp4") == 20


def test_seam_blend_frames_reaches_the_pipeline(folder, monkeypatch, capsys):
    seen = []
    real = VidTwinPipeline.__call__
    monkeypatch.setattr(VidTwinPipeline, "__call__",
                        lambda self, *a, **k: (seen.append(k["seam_blend_frames"]), real(self, *a, **k))[-1])
    for flag, expected in (([], None), (["--seam-blend-frames", "0"], 0), (["--seam-blend-frames", "3"], 3)):
        assert generate(folder, "blend", "--class-label", "0", "--num-frames", "20", "--context-chunks", "0",
                        *flag) == 0
    assert seen == [None, 0, 3]
    assert generate(folder, "blend", "--class-label", "0", "--num-frames", "20", "--context-chunks", "0",
                    "--seam-blend-frames", "5") == 2
    assert "seam_blend_frames must be at most 4" in capsys.readouterr().err


def test_a_context_free_model_gives_one_line_naming_the_fix(folder, capsys):
    assert generate(folder, "refused", "--class-label", "0", "--num-frames", "20") == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # one line
    assert error.startswith("vidtwin-gen generate: error: num_frames=20 (3 chunks of 8 frames) needs a long-video")
    assert "context_chunks=0" in error


def test_class_per_chunk_names_the_runs(folder):
    assert generate(folder, "switch", "--chunk-class-labels", "RedSquareDrift", "RedSquareDrift", "2",
                    "--num-frames", "20", "--context-chunks", "0", "--num-videos", "2") == 0
    names = sorted(p.name for p in (folder / "switch").glob("*.mp4"))
    assert names == ["RedSquareDrift_then_GreenTriangleSpin_00.mp4", "RedSquareDrift_then_GreenTriangleSpin_01.mp4"]
    assert frame_count(folder / "switch" / names[0]) == 20


def test_wrong_number_of_chunk_classes_is_one_line(folder, capsys):
    assert generate(folder, "wrong", "--chunk-class-labels", "0", "1", "--num-frames", "20", "--context-chunks", "0") == 2
    assert "chunk_class_labels needs one entry per chunk generated: 3" in capsys.readouterr().err


def test_structure_held_chunk_by_chunk_from_a_clip(folder, capsys):
    assert generate(folder, "kept", "--class-label", "1", "--keep-structure-of", "a.avi", "--kept-per-chunk",
                    "--num-frames", "16", "--context-chunks", "0") == 0
    assert frame_count(folder / "kept" / "BlueCircleBounce_00.mp4") == 16
    # a.avi holds 2 whole chunks of 8 frames at 8 fps: not enough for 3.
    assert generate(folder, "kept3", "--class-label", "1", "--keep-structure-of", "a.avi", "--kept-per-chunk",
                    "--num-frames", "24", "--context-chunks", "0") == 2
    assert "a.avi holds 2 chunk(s) of 8 frames at 8 fps, and --num-frames 24 needs 3" in capsys.readouterr().err
    assert generate(folder, "kept4", "--class-label", "1", "--kept-per-chunk") == 2
    assert "--kept-per-chunk needs --keep-structure-of or --keep-dynamics-of" in capsys.readouterr().err


def test_continue_a_clip(folder, monkeypatch):
    """The tiny model has no context: one chunk of context is patched in, and the forward records what it gets."""
    contexts = []
    forward = VidTwinTransformer3DModel.forward

    def recording_forward(self, *args, context_structure=None, context_dynamics=None, context_mask=None, **kwargs):
        contexts.append(None if context_structure is None else context_structure.shape[1])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(VidTwinPipeline, "num_context_chunks", property(lambda self: 1))
    monkeypatch.setattr(VidTwinTransformer3DModel, "forward", recording_forward)
    assert generate(folder, "continued", "--class-label", "0", "--continue", "a.avi", "--num-frames", "12") == 0
    assert frame_count(folder / "continued" / "a_then_RedSquareDrift_00.mp4") == 12  # the new frames only
    assert contexts == [1, 1]  # both chunks see one chunk: the clip's last, then the first new one
    assert generate(folder, "with_input", "--class-label", "0", "--continue", "a.avi", "--num-frames", "12",
                    "--with-input") == 0
    assert frame_count(folder / "with_input" / "a_then_RedSquareDrift_00.mp4") == 8 + 12  # the clip's last chunk first
    torch.testing.assert_close(torch.tensor(contexts[2:]), torch.tensor([1, 1]))
