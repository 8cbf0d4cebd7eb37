"""The embedded synthetic data set: layout, determinism, and clips whose content, slow drift and fast motion are\nseparate factors (the probes that read them: test_decoupling.py)."""

import inspect
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from vidtwin_gen.data.embedded import (
    CLASSES,
    CONTENTS,
    FAST_MOTIONS,
    EmbeddedClass,
    _render,
    _scene,
    drift_offset,
    main,
    make_embedded_dataset,
    motion_shows,
    render_reenactment_answer,
)
from vidtwin_gen.data.ucf101 import load_ucf101
from vidtwin_gen.data.video_folder import load_video_folder


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_ten_classes_cross_content_with_fast_motion():
    assert len(CLASSES) == 10 and len({cls.name for cls in CLASSES}) == 10
    assert {cls.motion for cls in CLASSES} == set(FAST_MOTIONS) == {"spin", "bounce", "flicker"}
    for content in CONTENTS:  # each content with two fast motions
        assert len({cls.motion for cls in CLASSES if cls.content == content}) == 2, content
    for motion in FAST_MOTIONS:  # each fast motion with several contents
        assert len({cls.content for cls in CLASSES if cls.motion == motion}) >= 3, motion
    assert all(cls.name == cls.content + cls.motion.capitalize() for cls in CLASSES)
    assert not any(cls.shape == "circle" and cls.motion == "spin" for cls in CLASSES)  # a spinning disc looks still
    assert all(re.fullmatch(r"(?:[A-Z][a-z]+)+", cls.name) for cls in CLASSES)  # CamelCase like UCF-101


def test_a_spin_shows_on_every_content_but_the_circle():
    # Rendered with and without its spin (the drift alone), each shape differs unless it is a circle.
    rng = np.random.default_rng(0)
    motion = {"drift_radius": 0.09, "drift_period": 7.0, "drift_direction": 1, "drift_phase": 0.0, "turns_per_s": 0.4}
    for content, (colour, shape) in CONTENTS.items():
        cls = EmbeddedClass(content + "Spin", colour, shape, "spin")
        scene = _scene(rng, cls, 48, 48)
        spun = _render(cls, scene, motion, 8, 8.0, 48, 48, 0.0, rng).astype(float)
        still = _render(cls, scene, {**motion, "turns_per_s": 0.0}, 8, 8.0, 48, 48, 0.0, rng).astype(float)
        difference = np.abs(spun - still).max()
        assert motion_shows(content, "spin") == (difference > 30), (content, difference)
        assert motion_shows(content, "bounce") and motion_shows(content, "flicker")


def test_default_videos_hold_four_chunks_at_8_fps():
    # Four consecutive 16-frame chunks at 8 fps (every 3rd frame at 25 fps) need 3 * 63 + 1 = 190 frames.
    defaults = inspect.signature(make_embedded_dataset).parameters
    assert defaults["fps"].default == 25.0 and defaults["num_frames"].default >= 190


def test_scene_drifts_on_a_closed_path_and_the_object_stays_in_frame(tmp_path):
    # A whole default-length video per class, small: every frame's border (of the 4:3 frame and of its centre
    # square, the quickstart's crop) is background, while the scene moves; only a bouncing object, at the top or
    # bottom of a hop where the drift carries it the same way, may reach the edge (in up to ~20 % of its frames).
    height, width = 48, 64
    root = make_embedded_dataset(tmp_path, classes=[cls.name for cls in CLASSES], num_groups=3, clips_per_group=1,
                                 width=width, height=height)
    description = json.loads((root / "embedded_dataset.json").read_text())
    left = (width - height) // 2
    for cls in CLASSES:
        relative = f"{cls.name}/v_{cls.name}_g01_c01.avi"
        frames = _decode(root / "UCF-101" / relative).astype(float)
        assert len(frames) == 210
        saturation = frames.max(-1) - frames.min(-1)  # (T, H, W); the background is nearly grey
        touches = np.zeros(len(frames), bool)
        for border in (saturation[:, [0, -1], :], saturation[:, :, [0, -1]], saturation[:, :, [left, left + height - 1]]):
            touches |= border.max((1, 2)) >= 60
        assert touches.mean() <= (0.25 if cls.motion == "bounce" else 0.0), cls.name
        assert saturation.max() > 120, cls.name  # the object is there
        # The drift: the corners change (most after half a turn, the circle's diameter away), and the path is a
        # circle (back where it started after a period).
        factors = description["videos"][relative]
        corners = np.concatenate([frames[:, :8, :8], frames[:, -8:, -8:]], axis=1)
        assert np.abs(corners[round(factors["drift_period"] / 2 * 25)] - corners[0]).mean() > 2, cls.name
        assert factors["content"] == cls.content and factors["fast_motion"] == cls.motion
        start, after_a_turn = drift_offset(factors, 0.0), drift_offset(factors, factors["drift_period"])
        assert np.allclose(start, after_a_turn) and 0.08 <= np.hypot(*start) <= 0.10


def test_layout_matches_ucf101(embedded_root, tiny_embedded_options):
    root = Path(embedded_root)
    names = tiny_embedded_options["classes"]
    assert sorted(p.name for p in (root / "UCF-101").iterdir()) == sorted(names)
    files = sorted((root / "UCF-101").rglob("*"))
    videos = [p for p in files if p.is_file()]
    assert len(videos) == len(names) * 3 * 2
    assert all(re.fullmatch(rf"v_{p.parent.name}_g0[1-3]_c0[12]\.avi", p.name) for p in videos)
    class_ind = (root / "ucfTrainTestlist" / "classInd.txt").read_bytes()
    assert class_ind == "".join(f"{i} {name}\r\n" for i, name in enumerate(names, 1)).encode()
    first_train = (root / "ucfTrainTestlist" / "trainlist01.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"RedSquareBounce/v_RedSquareBounce_g02_c01\.avi 1", first_train)
    with av.open(str(videos[0])) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames, float(stream.average_rate)) == (64, 48, 24, 25.0)
        assert stream.codec_tag == "XVID"
    description = json.loads((root / "embedded_dataset.json").read_text())
    assert [c["name"] for c in description["classes"]] == names


def test_same_seed_same_frames_other_seed_other_frames(embedded_root, tmp_path, tiny_embedded_options):
    options = {**tiny_embedded_options, "classes": ["RedSquareSpin"], "num_groups": 3, "clips_per_group": 1}
    again = make_embedded_dataset(tmp_path / "again", seed=0, **options)
    other = make_embedded_dataset(tmp_path / "other", seed=1, **options)
    relative = "UCF-101/RedSquareSpin/v_RedSquareSpin_g02_c01.avi"
    # Per-video seeding: the video is the same whatever the other classes and clips are.
    assert np.array_equal(_decode(Path(embedded_root) / relative), _decode(again / relative))
    assert not np.array_equal(_decode(again / relative), _decode(other / relative))


def test_a_reenactments_answer_is_the_structure_videos_scene_with_the_dynamics_videos_fast_motion(embedded_root):
    description = json.loads((Path(embedded_root) / "embedded_dataset.json").read_text())
    a, b = "RedSquareSpin/v_RedSquareSpin_g02_c01.avi", "BlueCircleBounce/v_BlueCircleBounce_g01_c02.avi"
    video_a = _decode(Path(embedded_root) / "UCF-101" / a).astype(float)
    # The same video twice: the video as written (up to its codec).
    assert np.abs(render_reenactment_answer(description, a, a) - video_a).mean() < 4
    answer = render_reenactment_answer(description, a, b).astype(float)
    # A's red object, never B's blue one, on A's background (compared away from both red objects).
    red, blue = (answer[..., 0] > 150) & (answer[..., 2] < 100), (answer[..., 2] > 150) & (answer[..., 0] < 100)
    assert red.mean() > 0.1 and not blue.any()
    background = ~red & ~((video_a[..., 0] > 150) & (video_a[..., 2] < 100))
    assert np.abs(answer - video_a)[background].mean() < 4
    # B's bounce, not A's spin: the red object's height changes by B's amplitude (0.20-0.24 heights, plus A's
    # drift); a spin keeps it within a few pixels.
    rows = np.arange(answer.shape[1])
    centre = [(rows * frame.sum(1)).sum() / frame.sum() for frame in red]
    assert np.ptp(centre) > 0.2 * answer.shape[1], np.ptp(centre)
    with pytest.raises(ValueError, match="not a video of this data set"):
        render_reenactment_answer(description, a, "RedSquareSpin/v_RedSquareSpin_g09_c01.avi")


def test_classes_differ_in_content(make_embedded):
    root = make_embedded(classes=[cls.name for cls in CLASSES], num_groups=3, clips_per_group=1, num_frames=25)
    for cls in CLASSES:
        frames = _decode(Path(root) / f"UCF-101/{cls.name}/v_{cls.name}_g01_c01.avi").astype(float)  # (T, H, W, 3)
        # The object's colour: the most saturated pixels of the middle frame.
        middle = frames[len(frames) // 2].reshape(-1, 3)
        saturation = middle.max(1) - middle.min(1)
        colour = middle[saturation >= np.quantile(saturation, 0.97)].mean(0)
        # The hue is the class's own: nearest of the five palette colours by direction (textures and flicker
        # darken the object, which scales its colour).
        palette = np.array(sorted({c.colour for c in CLASSES}), float)
        similarity = palette @ colour / np.linalg.norm(palette, axis=1)
        assert tuple(palette[similarity.argmax()]) == cls.colour, (cls.name, colour)


def test_fast_motion_changes_the_object_between_sampled_frames(embedded_root):
    # At 8 fps (every 3rd frame) a spinning square looks different in consecutive samples (no aliasing).
    frames = _decode(Path(embedded_root) / "UCF-101/RedSquareSpin/v_RedSquareSpin_g01_c01.avi").astype(float)
    differences = [np.abs(frames[i + 3] - frames[i]).mean() for i in range(0, 18, 3)]
    assert min(differences) > 1.0


def test_train_split_loads_every_class(embedded_root, tiny_embedded_options):
    train = load_ucf101(embedded_root, 3, "train")
    assert sorted(set(train["label"])) == list(range(len(tiny_embedded_options["classes"])))


def test_existing_output_needs_overwrite(tmp_path):
    options = {"classes": ["BlueCircleBounce"], "num_groups": 3, "clips_per_group": 1, "num_frames": 4, "width": 32,
               "height": 24}
    make_embedded_dataset(tmp_path, **options)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_embedded_dataset(tmp_path, **options)
    make_embedded_dataset(tmp_path, overwrite=True, **{**options, "classes": ["RedSquareSpin"]})
    assert [p.name for p in (tmp_path / "UCF-101").iterdir()] == ["RedSquareSpin"]


@pytest.mark.parametrize("kwargs", [{"num_groups": 2}, {"classes": ["PinkElephantDance"]}, {"classes": []},
                                    {"layout": "webdataset"}, {"layout": "metadata", "metadata_format": "parquet"}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_embedded_dataset(tmp_path, **kwargs)


def test_cli(tmp_path, capsys):
    argv = ["--output-dir", str(tmp_path), "--classes", "GreenTriangleSpin", "YellowStripesBounce", "--num-groups", "3",
            "--clips-per-group", "1", "--num-frames", "6", "--width", "32", "--height", "24", "--seed", "5"]
    assert main(argv) == 0
    assert "wrote 6 videos" in capsys.readouterr().out
    assert len(load_ucf101(tmp_path, 1, "train")) == 4
    with pytest.raises(SystemExit):  # exists: argparse error, not a traceback
        main(argv)


def test_metadata_layout_holds_split_1_with_the_same_videos(embedded_root, make_embedded):
    root = Path(make_embedded(layout="metadata"))
    assert sorted(p.name for p in root.iterdir()) == ["embedded_dataset.json", "test", "train"]
    header, first = (root / "train" / "metadata.csv").read_text().splitlines()[:2]
    assert header == "file_name,text,label"
    assert first == "RedSquareBounce/v_RedSquareBounce_g02_c01.avi,red square bounce,RedSquareBounce"
    for subset in ("train", "test"):
        ucf, own = load_ucf101(embedded_root, 1, subset), load_video_folder(root, subset)
        relative = lambda paths, base: [str(Path(p).relative_to(base)) for p in paths]  # noqa: E731
        assert relative(own["path"], root / subset) == relative(ucf["path"], Path(embedded_root) / "UCF-101")
        assert own["caption"] == ucf["caption"]
        names = own.features["label"].names
        assert [names[label] for label in own["label"]] == [ucf.features["label"].names[label] for label in ucf["label"]]
    same = "RedSquareSpin/v_RedSquareSpin_g01_c02.avi"
    assert np.array_equal(_decode(root / "test" / same), _decode(Path(embedded_root) / "UCF-101" / same))


def test_cli_metadata_layout_jsonl_and_overwrite(tmp_path, capsys):
    argv = ["--output-dir", str(tmp_path), "--classes", "GreenTriangleSpin", "--num-groups", "3", "--clips-per-group",
            "1", "--num-frames", "6", "--width", "32", "--height", "24", "--layout", "metadata", "--metadata-format", "jsonl"]
    assert main(argv) == 0
    assert "wrote 3 videos in train/ and test/ with metadata.jsonl" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "train" / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "GreenTriangleSpin/v_GreenTriangleSpin_g02_c01.avi", "text": "green triangle spin",
                       "label": "GreenTriangleSpin"}
    assert len(load_video_folder(tmp_path, "train")) == 2 and len(load_video_folder(tmp_path, "test")) == 1
    with pytest.raises(SystemExit):  # exists
        main(argv)
    assert main([*argv[:-4], "--overwrite"]) == 0  # back to the UCF-101 layout: the metadata folders go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UCF-101", "embedded_dataset.json", "ucfTrainTestlist"]
