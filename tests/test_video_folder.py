"""Your own videos: metadata.csv / metadata.jsonl roots, splits, labels, errors, and the readers that dispatch to them."""

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from torch.utils.data import DataLoader

from vidtwin_gen.data import is_video_folder, load_ucf101, load_video_folder, load_video_index
from vidtwin_gen.data.ucf101 import UCF101Clips, collate_clips
from vidtwin_gen.data.video_folder import HOLDOUT_FRACTION


def touch(root: Path, names) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # the index never decodes


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ------------------------------------------------------------------ index building


def test_csv_with_a_split_column(tmp_path):
    touch(tmp_path, ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4", "clips/d.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text,label,split", [
        'clips/a.mp4,"a dog runs, fast",dog,train', "clips/b.mp4,a cat sleeps,cat,train",
        "clips/c.mp4,a dog sits,dog,test", "clips/d.mp4,a bird sings,bird,validation",
    ])
    assert is_video_folder(tmp_path)
    train, test = load_video_folder(tmp_path, "train"), load_video_folder(tmp_path, "test")
    assert isinstance(train.features["label"], datasets.ClassLabel)
    # Class names are sorted over the whole set, so train and test agree even if a class is in one side only.
    assert train.features["label"].names == test.features["label"].names == ["bird", "cat", "dog"]
    assert train["path"] == [str((tmp_path / "clips" / n).resolve()) for n in ("a.mp4", "b.mp4")]
    assert train["caption"] == ["a dog runs, fast", "a cat sleeps"]
    assert train["label"] == [2, 1]
    assert test["caption"] == ["a dog sits", "a bird sings"] and test["label"] == [2, 0]


def test_jsonl_in_split_folders_with_integer_labels(tmp_path):
    touch(tmp_path, ["train/x/1.mp4", "train/x/2.mp4", "test/3.mp4"])
    write_jsonl(tmp_path / "train" / "metadata.jsonl", [
        {"file_name": "x/1.mp4", "text": "one", "label": 0}, {"file_name": "x/2.mp4", "text": "two", "label": 2},
    ])
    write_jsonl(tmp_path / "test" / "metadata.jsonl", [{"file_name": "3.mp4", "text": "three", "label": 1}])
    train, test = load_video_folder(tmp_path, "train"), load_video_folder(tmp_path, "test")
    assert train.features["label"].names == ["0", "1", "2"]
    assert train["path"] == [str((tmp_path / "train" / "x" / f"{i}.mp4").resolve()) for i in (1, 2)]  # relative to its file
    assert train["label"] == [0, 2] and test["label"] == [1] and test["caption"] == ["three"]


def test_integer_labels_take_names_from_classes_txt_and_csv_digits_are_integers(tmp_path):
    touch(tmp_path, ["a.mp4", "b.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text,label,split", ["a.mp4,A,1,train", "b.mp4,B,0,test"])
    assert load_video_folder(tmp_path).features["label"].names == ["0", "1"]
    (tmp_path / "classes.txt").write_text("Walking\nJumpingJacks\n")
    train = load_video_folder(tmp_path)
    assert train.features["label"].names == ["Walking", "JumpingJacks"] and train["label"] == [1]
    (tmp_path / "classes.txt").write_text("Walking\n")
    with pytest.raises(ValueError, match="classes.txt names 1 classes"):
        load_video_folder(tmp_path)


def test_validation_folder_is_the_test_subset(tmp_path):
    touch(tmp_path, ["train/a.mp4", "validation/b.mp4"])
    write_csv(tmp_path / "train" / "metadata.csv", "file_name,text", ["a.mp4,A"])
    write_csv(tmp_path / "validation" / "metadata.csv", "file_name,text", ["b.mp4,B"])
    assert load_video_folder(tmp_path, "test")["caption"] == ["B"]


def test_without_a_test_split_a_hashed_fraction_is_held_out(tmp_path, caplog):
    names = [f"v{i:03d}.mp4" for i in range(400)]
    touch(tmp_path, names)
    write_csv(tmp_path / "metadata.csv", "file_name,text", [f"{n},clip {n}" for n in names])
    with caplog.at_level(logging.INFO, logger="vidtwin_gen.data.video_folder"):
        train, test = load_video_folder(tmp_path, "train"), load_video_folder(tmp_path, "test")
    assert any("holding out 10% of them by a hash of file_name" in r.getMessage() for r in caplog.records)
    assert set(train["path"]).isdisjoint(test["path"])
    assert len(train) + len(test) == 400
    assert 0.05 * 400 < len(test) < 0.15 * 400  # HOLDOUT_FRACTION of 400, give or take chance
    assert HOLDOUT_FRACTION == 0.1
    # Deterministic, and a video keeps its side when others are added.
    more = names + [f"w{i:03d}.mp4" for i in range(100)]
    touch(tmp_path, more)
    write_csv(tmp_path / "metadata.csv", "file_name,text", [f"{n},clip {n}" for n in more])
    assert set(test["path"]) <= set(load_video_folder(tmp_path, "test")["path"])
    assert set(train["path"]) <= set(load_video_folder(tmp_path, "train")["path"])


def test_a_tiny_set_without_a_test_split_still_holds_one_video_out(tmp_path):
    touch(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text", ["a.mp4,A", "b.mp4,B", "c.mp4,C"])
    train, test = load_video_folder(tmp_path, "train"), load_video_folder(tmp_path, "test")
    assert len(test) >= 1 and len(train) >= 1 and len(train) + len(test) == 3


def test_a_split_column_without_test_rows_falls_back_to_the_hash(tmp_path):
    touch(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text,split", ["a.mp4,A,train", "b.mp4,B,train", "c.mp4,C,"])
    assert len(load_video_folder(tmp_path, "train")) + len(load_video_folder(tmp_path, "test")) == 3


def test_no_label_column_is_one_class_and_no_text_column_captions_the_label(tmp_path):
    touch(tmp_path, ["a.mp4", "b.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text,split", ["a.mp4,A,train", "b.mp4,B,test"])
    train = load_video_folder(tmp_path)
    assert train.features["label"].names == ["video"] and train["label"] == [0]
    write_csv(tmp_path / "metadata.csv", "file_name,text,label,split", ["a.mp4,A,,train", "b.mp4,B,,test"])
    assert load_video_folder(tmp_path).features["label"].names == ["video"]  # an empty label column is no labels
    write_csv(tmp_path / "metadata.csv", "file_name,label,split", ["a.mp4,ApplyEyeMakeup,train", "b.mp4,Fencing,test"])
    assert load_video_folder(tmp_path)["caption"] == ["apply eye makeup"]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("metadata.csv", "", r"metadata.csv is empty"),
        ("metadata.csv", "file_name,text\n", r"metadata.csv lists no videos"),
        ("metadata.csv", "path,text\na.mp4,A\n", r"metadata.csv has no file_name column \(columns: path, text\)"),
        ("metadata.csv", "file_name,text\na.mp4,A\nb.mp4,B,extra\n", r"metadata.csv, line 3: 2 columns expected"),
        ("metadata.jsonl", '{"file_name": "a.mp4", "text": "A"}\n{"file_name": "b.mp4", "text": \n',
         r"metadata.jsonl, line 2: not valid JSON"),
        ("metadata.jsonl", '["a.mp4", "A"]\n', r"metadata.jsonl, line 1: expected a JSON object"),
        ("metadata.jsonl", '{"text": "A"}\n', r"metadata.jsonl, line 1: file_name is missing"),
        ("metadata.jsonl", '{"file_name": "a.mp4", "text": "A", "split": "holdout"}\n',
         r"metadata.jsonl, line 1: split 'holdout' is not one of"),
        ("metadata.jsonl", '{"file_name": "a.mp4", "text": 3}\n', r"metadata.jsonl, line 1: text 3 is not a caption"),
        ("metadata.jsonl", '{"file_name": "a.mp4", "text": "A", "label": "dog"}\n{"file_name": "b.mp4", "text": "B"}\n',
         r"metadata.jsonl, line 2: no label, while other rows have one"),
        ("metadata.jsonl", '{"file_name": "a.mp4", "text": "A", "label": "dog"}\n{"file_name": "b.mp4", "text": "B", "label": 1}\n',
         r"metadata.jsonl, line 2: label 1 is neither a class name nor an integer"),
    ],
)
def test_malformed_metadata_names_file_and_line(tmp_path, file, content, message):
    touch(tmp_path, ["a.mp4", "b.mp4"])
    (tmp_path / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_video_folder(tmp_path)


def test_ambiguous_layouts_are_refused(tmp_path):
    touch(tmp_path, ["a.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text", ["a.mp4,A"])
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.mp4", "text": "A"}])
    with pytest.raises(ValueError, match="holds both metadata.csv and metadata.jsonl"):
        load_video_folder(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    write_csv(tmp_path / "train" / "metadata.csv", "file_name,text", ["a.mp4,A"])
    with pytest.raises(ValueError, match="both metadata.csv and split folders"):
        load_video_folder(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    shutil.move(tmp_path / "train", tmp_path / "test")
    with pytest.raises(ValueError, match="but no train/ metadata"):
        load_video_folder(tmp_path)


def test_bad_subset_is_named(tmp_path):
    touch(tmp_path, ["a.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text", ["a.mp4,A"])
    with pytest.raises(ValueError, match="subset must be one of"):
        load_video_folder(tmp_path, "val")


def test_missing_videos_are_kept_with_a_warning_and_all_missing_is_an_error(tmp_path, caplog):
    touch(tmp_path, ["a.mp4"])
    write_csv(tmp_path / "metadata.csv", "file_name,text,split", ["a.mp4,A,train", "gone.mp4,G,train", "b.mp4,B,test"])
    with caplog.at_level(logging.WARNING):
        train = load_video_folder(tmp_path, "train")
    assert len(train) == 2
    assert any("1 of 2 train videos" in r.getMessage() and "gone.mp4" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="none of the 1 test videos"):
        load_video_folder(tmp_path, "test")


# ------------------------------------------------------------------ dispatch and decoding


def test_load_video_index_dispatches_on_the_layout(embedded_root, make_embedded, tmp_path):
    ucf = load_video_index(embedded_root, 2, "test")
    assert ucf["path"] == load_ucf101(embedded_root, 2, "test")["path"]
    own = make_embedded(layout="metadata")
    assert is_video_folder(own) and not is_video_folder(embedded_root)
    assert load_video_index(own, 1, "test")["path"] == load_video_folder(own, "test")["path"]
    with pytest.raises(FileNotFoundError, match="(?s)UCF-101 layout.*metadata.csv or metadata.jsonl"):
        load_video_index(tmp_path)


def test_clips_from_a_metadata_root_skip_and_count_broken_files(make_embedded, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(make_embedded(layout="metadata"), root)
    clips = UCF101Clips(root, subset="test", num_frames=4, size=32, target_fps=None, train=False)
    assert len(clips) == 6  # split 1's test groups: 3 classes x 1 group x 2 clips
    assert clips.class_names == ["BlueCircleBounce", "RedSquareBounce", "RedSquareSpin"]
    victim = Path(clips.dataset[0]["path"])
    victim.write_bytes(b"not a video")
    with caplog.at_level(logging.WARNING):
        batches = list(DataLoader(clips, batch_size=3, collate_fn=collate_clips))
    assert sum(b["num_skipped"] for b in batches) == 1
    assert sum(b["video"].shape[0] for b in batches) == 5
    assert batches[0]["video"].shape[1:] == (3, 4, 32, 32) and batches[0]["video"].dtype == torch.float32
    assert any("skipping unreadable video" in r.getMessage() and victim.name in r.getMessage() for r in caplog.records)
    item = clips[4]  # rows keep the metadata file's order; labels follow the sorted class names
    assert item["caption"] == "blue circle bounce" and item["label"] == 0
