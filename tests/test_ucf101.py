"""UCF-101 layout parsing, captions, decoded items, and skipping/counting broken files."""

import logging
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from torch.utils.data import DataLoader

from vidtwin_gen.data.ucf101 import (
    CAPTION_TEMPLATES,
    ClipTransform,
    UCF101Clips,
    class_to_caption,
    collate_clips,
    load_ucf101,
)

# The tiny embedded set of conftest.py: 3 classes x 3 groups x 2 clips; split k tests on group k.
CLASSES = ["RedSquareBounce", "RedSquareSpin", "BlueCircleBounce"]


@pytest.fixture(autouse=True, scope="module")
def _tiny_set_is_as_assumed(tiny_embedded_options):
    assert tiny_embedded_options["classes"] == CLASSES
    assert (tiny_embedded_options["num_groups"], tiny_embedded_options["clips_per_group"]) == (3, 2)


@pytest.mark.parametrize(
    ("name", "caption"),
    [("ApplyEyeMakeup", "apply eye makeup"), ("YoYo", "yo-yo"), ("TVNews", "TV news"), ("TaiChi", "tai chi"),
     ("HandstandPushups", "handstand pushups"), ("PlayingDaf", "playing daf"), ("Skijet", "skijet"),
     ("RedSquareDrift", "red square drift"), ("DrawAShape", "draw a shape"), ("apply_eye_makeup", "apply eye makeup"),
     ("Jump3D", "jump 3D")],
)
def test_class_to_caption(name, caption):
    assert class_to_caption(name) == caption


def test_class_to_caption_rejects_empty():
    with pytest.raises(ValueError):
        class_to_caption("__")


# ------------------------------------------------------------------ layout parsing


@pytest.mark.parametrize("split", [1, 2, 3])
def test_splits_on_generated_tree(embedded_root, split):
    train, test = load_ucf101(embedded_root, split, "train"), load_ucf101(embedded_root, split, "test")
    assert (len(train), len(test)) == (12, 6)  # split k holds out group k
    assert train.features["label"].names == CLASSES
    assert isinstance(train.features["label"], datasets.ClassLabel)
    assert set(train["path"]).isdisjoint(test["path"])
    every_video = {str(p.resolve()) for p in (Path(embedded_root) / "UCF-101").rglob("*.avi")}
    assert set(train["path"]) | set(test["path"]) == every_video
    assert all(f"_g{split:02d}_" in path for path in test["path"])
    for row in train:
        class_name = Path(row["path"]).parent.name
        assert row["label"] == CLASSES.index(class_name)  # 0-based classInd order
        assert row["caption"] == class_to_caption(class_name)


def test_ucf101_folder_itself_is_accepted(embedded_root):
    # `ROOT/UCF-101` with `ucfTrainTestlist/` next to it (both archives unpacked side by side).
    assert load_ucf101(Path(embedded_root) / "UCF-101", 2, "test")["path"] == load_ucf101(embedded_root, 2, "test")["path"]


def test_wrong_root_shows_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"UCF-101/<ClassName>/v_<ClassName>_gXX_cYY\.avi"):
        load_ucf101(tmp_path)


@pytest.mark.parametrize(("split", "subset"), [(0, "train"), (4, "test"), (1, "val"), ("1", "train")])
def test_bad_split_or_subset(embedded_root, split, subset):
    with pytest.raises(ValueError):
        load_ucf101(embedded_root, split, subset)


def _official_style_tree(root: Path, train_lines: str, test_lines: str) -> Path:
    """A hand-written tree with the real files' quirks: CRLF, 1-based labels, test lists without labels, and
    HandstandPushups whose file names say 'HandStand'. The videos only need to exist for parsing."""
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    for split in (1, 2, 3):
        (root / "ucfTrainTestlist" / f"trainlist0{split}.txt").write_bytes(train_lines.encode())
        (root / "ucfTrainTestlist" / f"testlist0{split}.txt").write_bytes(test_lines.encode())
    for line in (train_lines + test_lines).splitlines():
        path = root / "UCF-101" / line.split()[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root


def test_official_file_quirks(tmp_path):
    root = _official_style_tree(
        tmp_path,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n",
        "YoYo/v_YoYo_g01_c01.avi\r\nHandstandPushups/v_HandStandPushups_g01_c02.avi\r\n",
    )
    train, test = load_ucf101(root, 1, "train"), load_ucf101(root, 1, "test")
    assert train["label"] == [0, 1] and test["label"] == [2, 1]
    assert test["caption"] == ["yo-yo", "handstand pushups"]
    assert test.features["label"].int2str(2) == "YoYo"


def test_inconsistent_label_is_an_error(tmp_path):
    root = _official_style_tree(tmp_path, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 3\r\n", "YoYo/v_YoYo_g01_c01.avi\r\n")
    with pytest.raises(ValueError, match="classInd.txt says 1"):
        load_ucf101(root, 1, "train")


def test_missing_files_warn_and_all_missing_is_an_error(tmp_path, caplog):
    root = _official_style_tree(tmp_path, "YoYo/v_YoYo_g08_c01.avi 3\r\nYoYo/v_YoYo_g08_c02.avi 3\r\n", "YoYo/v_YoYo_g01_c01.avi\r\n")
    (root / "UCF-101" / "YoYo" / "v_YoYo_g08_c02.avi").unlink()
    with caplog.at_level(logging.WARNING):
        assert len(load_ucf101(root, 1, "train")) == 2  # kept: skipped and counted when decoded
    assert "1 of 2 videos" in caplog.text
    (root / "UCF-101" / "YoYo" / "v_YoYo_g08_c01.avi").unlink()
    with pytest.raises(FileNotFoundError, match="none of the 2 videos"):
        load_ucf101(root, 1, "train")


# ------------------------------------------------------------------ decoded items


def test_with_transform_decodes_clips(embedded_root):
    dataset = load_ucf101(embedded_root, 1, "test").with_transform(ClipTransform(8, 32, target_fps=8))
    item = dataset[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert item["caption"] == class_to_caption(CLASSES[item["label"]])
    batch = collate_clips([dataset[i] for i in range(3)])
    assert batch["video"].shape == (3, 3, 8, 32, 32) and batch["num_skipped"] == 0
    assert torch.equal(dataset[0]["video"], item["video"])  # evaluation: centred, deterministic


def test_training_items_are_random(embedded_root):
    clips = UCF101Clips(embedded_root, 1, "train", num_frames=4, size=24, target_fps=8, train=True)
    assert len(clips) == 12 and clips.class_names == CLASSES
    torch.manual_seed(0)
    items = [clips[0] for _ in range(12)]
    assert len({item["video"].sum().item() for item in items}) > 1  # random start / crop
    assert {item["caption"] for item in items} == {class_to_caption(CLASSES[items[0]["label"]])}  # plain caption
    assert "{}" in CAPTION_TEMPLATES[0]


def test_seeded_training_is_a_function_of_seed_epoch_and_index(embedded_root):
    def videos(seed, epoch, workers):
        clips = UCF101Clips(embedded_root, 1, "train", num_frames=4, size=(24, 32), target_fps=8, train=True, seed=seed)
        clips.set_epoch(epoch)
        loader = DataLoader(clips, batch_size=4, num_workers=workers, collate_fn=collate_clips)
        return torch.cat([batch["video"] for batch in loader])

    reference = videos(seed=1, epoch=0, workers=0)
    assert torch.equal(reference, videos(seed=1, epoch=0, workers=2))  # independent of the worker count
    assert not torch.equal(reference, videos(seed=1, epoch=1, workers=0))
    assert not torch.equal(reference, videos(seed=2, epoch=0, workers=0))


def test_clips_per_video_spread_in_time(embedded_root):
    clips = UCF101Clips(embedded_root, 1, "test", num_frames=4, size=24, target_fps=None, train=False, clips_per_video=3)
    assert len(clips) == 18
    first, middle, last = clips[0], clips[1], clips[2]
    assert first["path"] == middle["path"] == last["path"] and [first["clip_index"], last["clip_index"]] == [0, 2]
    assert not torch.equal(first["video"], last["video"])
    with pytest.raises(ValueError):
        UCF101Clips(embedded_root, train=True, clips_per_video=2)


# ------------------------------------------------------------------ broken files


@pytest.fixture()
def broken_root(embedded_root, tmp_path):
    """A copy of the tiny set in which three test videos of split 1 are a truncated, an empty and a text file."""
    root = tmp_path / "broken"
    shutil.copytree(embedded_root, root)
    test_paths = sorted((root / "UCF-101").rglob("*_g01_*.avi"))
    data = test_paths[0].read_bytes()
    test_paths[0].write_bytes(data[: len(data) // 2])
    test_paths[1].write_bytes(b"")
    test_paths[2].write_text("not a video\n" * 40)
    return root


def test_broken_files_are_skipped_logged_once_and_counted(broken_root, caplog):
    clips = UCF101Clips(broken_root, 1, "test", num_frames=8, size=32, target_fps=8, train=False)
    with caplog.at_level(logging.WARNING, logger="vidtwin_gen.data.ucf101"):
        for _ in range(2):  # two epochs in-process
            batches = list(DataLoader(clips, batch_size=4, collate_fn=collate_clips))
            assert sum(batch["num_skipped"] for batch in batches) == 3
            assert sum(len(batch["path"]) for batch in batches if batch["video"] is not None) == 3
    warnings = [record for record in caplog.records if "skipping unreadable video" in record.getMessage()]
    assert len(warnings) == 3  # once per file, not once per epoch
    broken = sorted((broken_root / "UCF-101").rglob("*_g01_*.avi"))[:3]
    assert [sum(path.name in w.getMessage() for w in warnings) for path in broken] == [1, 1, 1]


def test_skips_are_counted_across_dataloader_workers(broken_root):
    clips = UCF101Clips(broken_root, 1, "test", num_frames=8, size=32, target_fps=8, train=False)
    loader = DataLoader(clips, batch_size=2, num_workers=2, collate_fn=collate_clips)
    batches = list(loader)
    assert sum(batch["num_skipped"] for batch in batches) == 3
    assert sum(batch["video"].shape[0] for batch in batches if batch["video"] is not None) == 3


def test_collate_of_only_failures():
    assert collate_clips([None, {"video": None, "path": "x"}]) == {"video": None, "num_skipped": 2}
