"""Your own videos: a folder of videos described by a metadata file, the convention of 🤗 datasets' folder builders.

Either one metadata file at the root::

    ROOT/metadata.csv         file_name,text,label[,split]        (or metadata.jsonl, one JSON object a line)
    ROOT/clips/0001.mp4 ...   file_name is relative to the metadata file's folder

or one per split folder, as `datasets`' ImageFolder/VideoFolder read them::

    ROOT/train/metadata.csv   ROOT/train/...videos
    ROOT/test/metadata.csv    ROOT/test/...videos          ("validation/" is read when there is no "test/")

Columns:

- `file_name` (required): the video, relative to the metadata file's folder.
- `text`: the caption, used for text conditioning. Optional when `label` is given (the caption is then made
  from the class name, as for UCF-101).
- `label` (optional): a class name (class names sorted give the labels) or an integer 0..N-1 (names from
  `classes.txt` next to the metadata file, one a line, else "0".."N-1"). Without a label column every video
  is in one class, "video": class conditioning then learns nothing, so train such a set text-conditionally.
- `split` (optional, root metadata only): "train" or "test" ("validation"/"valid"/"val" count as "test").

Rows of a root metadata file with no (or an empty) `split` are training videos. When no video is marked for
testing (no `test/` folder, no "test" in a `split` column), `HOLDOUT_FRACTION` (10 %) of the videos is held out
by a hash of file_name, so validation still works and a video keeps its side when others are added (a log line
says so). A set so small that no hash falls under the fraction holds out its lowest-hash video.

Listed videos that are missing are kept (one warning) and skipped and counted when decoded, like broken files.
Malformed metadata (no file_name column, an empty file, a bad JSON line, a row without a caption) raises a
ValueError naming the file and line.
"""

import csv
import hashlib
import json
import logging
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

METADATA_FILENAMES = ("metadata.csv", "metadata.jsonl")
CLASS_NAMES_FILENAME = "classes.txt"
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "validation")}
SPLIT_VALUES = {"train": "train", "test": "test", "validation": "test", "valid": "test", "val": "test"}
HOLDOUT_FRACTION = 0.1
SINGLE_CLASS = "video"

LAYOUT = """a folder of your own videos needs metadata.csv or metadata.jsonl (columns file_name, text, optional
label and split) at its root, or in train/ and test/ subfolders; file_name is relative to the metadata file"""


def _metadata_file(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA_FILENAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder} holds both {found[0].name} and {found[1].name}; keep one metadata file")
    return found[0] if found else None


def find_metadata_files(root) -> dict[str, Path] | None:
    """Metadata files of a video-folder root: {"all": file} or {"train": file[, "test": file]}; None if `root`
    holds none (it is then not such a root)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    at_root = _metadata_file(root)
    per_split = {}
    for subset, folders in SPLIT_FOLDERS.items():
        found = next((f for f in (_metadata_file(root / name) for name in folders if (root / name).is_dir()) if f), None)
        if found is not None:
            per_split[subset] = found
    if at_root is not None and per_split:
        raise ValueError(f"{root} has both {at_root.name} and split folders with metadata "
                         f"({', '.join(str(p) for p in per_split.values())}); keep one of the two layouts")
    if at_root is not None:
        return {"all": at_root}
    if per_split and "train" not in per_split:
        raise ValueError(f"{root} has {per_split['test']} but no train/ metadata; {LAYOUT}")
    return per_split or None


def is_video_folder(root) -> bool:
    """True when `root` holds a metadata file (at the root or in train/ / test/)."""
    return find_metadata_files(root) is not None


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata file; raises ValueError naming the file and line on malformed input."""
    rows = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}): {line.strip()[:80]!r}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number}: expected a JSON object, got {line.strip()[:80]!r}")
                rows.append((number, row))
    else:
        with path.open(encoding="utf-8-sig", newline="") as stream:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(stream)
            if not reader.fieldnames:
                raise ValueError(f"{path} is empty; {LAYOUT}")
            for row in reader:
                if None in row or None in row.values():
                    raise ValueError(f"{path}, line {reader.line_num}: {len(reader.fieldnames)} columns expected "
                                     f"({', '.join(reader.fieldnames)}), the row has another number")
                rows.append((reader.line_num, row))
            if "file_name" not in reader.fieldnames:
                raise ValueError(f"{path} has no file_name column (columns: {', '.join(reader.fieldnames)}); {LAYOUT}")
    if not rows:
        raise ValueError(f"{path} lists no videos; {LAYOUT}")
    for number, row in rows:
        if not isinstance(row.get("file_name"), str) or not row["file_name"]:
            raise ValueError(f"{path}, line {number}: file_name is missing or not a string: {row!r}")
    return rows


def _is_integer(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


def _class_names(labels: list, sources: list[tuple[Path, int]]) -> list[str]:
    """Class names in label order, for the labels of every row (all subsets, so train and test agree)."""
    if all(_is_integer(label) for label in labels):
        count = max(int(label) for label in labels) + 1
        names_file = next((p.parent / CLASS_NAMES_FILENAME for p, _ in sources
                           if (p.parent / CLASS_NAMES_FILENAME).is_file()), None)
        if names_file is None:
            return [str(i) for i in range(count)]
        names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) < count or len(set(names)) != len(names):
            raise ValueError(f"{names_file} names {len(names)} classes (must be distinct), the labels go up to {count - 1}")
        return names
    for label, (path, number) in zip(labels, sources):
        if not isinstance(label, str) or not label:
            raise ValueError(f"{path}, line {number}: label {label!r} is neither a class name nor an integer, and the "
                             "column mixes them; use class names throughout, or integers 0..N-1 throughout")
    return sorted(set(labels))


def _hash_position(file_name: str) -> float:
    """A fixed number in [0, 1) per file name: the held-out videos are those below HOLDOUT_FRACTION."""
    digest = hashlib.blake2b(file_name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _caption(row: dict, class_name: str | None, path: Path, number: int) -> str:
    text = row.get("text")
    if isinstance(text, str):
        return text
    if text is None and class_name is not None:
        from .ucf101 import class_to_caption  # noqa: PLC0415 (ucf101 imports this module)

        try:
            return class_to_caption(class_name)
        except ValueError:
            return class_name
    raise ValueError(f"{path}, line {number}: text {text!r} is not a caption; give every row a text (a string), "
                     "or a label to make captions from")


def _assign_subsets(entries: list[tuple], root) -> list[tuple]:
    """Entries (path, line, row, subset or None) with every subset set: unmarked rows train, unless nothing is
    marked "test", in which case a hashed HOLDOUT_FRACTION of all rows is the test subset."""
    if any(side == "test" for *_, side in entries):
        return [(p, n, row, side or "train") for p, n, row, side in entries]
    logger.info("%s marks no test videos: holding out %.0f%% of them by a hash of file_name for validation",
                root, 100 * HOLDOUT_FRACTION)
    positions = [_hash_position(row["file_name"]) for _, _, row, _ in entries]
    # Tiny sets, where no hash falls below the fraction, still hold out the lowest one.
    held = [pos < HOLDOUT_FRACTION or pos == min(positions) for pos in positions]
    if all(held):  # a single video trains
        held = [False] * len(held)
    return [(p, n, row, "test" if h else "train") for (p, n, row, _), h in zip(entries, held)]


def load_video_folder(root, subset: str = "train") -> datasets.Dataset:
    """One subset of a video-folder root (see the module docstring) as a `datasets.Dataset` with the columns of
    `load_ucf101`: path (str, absolute), label (ClassLabel), caption (str). Nothing is decoded."""
    if subset not in SPLIT_FOLDERS:
        raise ValueError(f"subset must be one of {tuple(SPLIT_FOLDERS)}, got {subset!r}")
    files = find_metadata_files(root)
    if files is None:
        raise FileNotFoundError(f"{root} has no metadata file; {LAYOUT}")

    # Every row of every file: labels are numbered over the whole set so that train and test agree.
    entries = []  # (metadata path, line, row, subset or None)
    for file_subset, path in files.items():
        for number, row in _read_rows(path):
            side = None if file_subset == "all" else file_subset
            if file_subset == "all" and row.get("split") not in (None, ""):
                side = SPLIT_VALUES.get(str(row["split"]).lower())
                if side is None:
                    raise ValueError(f"{path}, line {number}: split {row['split']!r} is not one of {sorted(SPLIT_VALUES)}")
            entries.append((path, number, row, side))
    has_labels = any(row.get("label") not in (None, "") for _, _, row, _ in entries)  # an empty column is none
    if has_labels:
        missing = next(((p, n) for p, n, row, _ in entries if row.get("label") in (None, "")), None)
        if missing is not None:
            raise ValueError(f"{missing[0]}, line {missing[1]}: no label, while other rows have one; label every row "
                             "or none")
        raw = [row["label"] for _, _, row, _ in entries]
        class_names = _class_names(raw, [(p, n) for p, n, _, _ in entries])
        integer_labels = all(_is_integer(label) for label in raw)
        label_of = {name: i for i, name in enumerate(class_names)}
    else:
        class_names = [SINGLE_CLASS]

    entries = [(p, n, row) for p, n, row, side in _assign_subsets(entries, root) if side == subset]
    if not entries:
        raise ValueError(f"{root} has no {subset} videos; {LAYOUT}")

    paths, labels, captions = [], [], []
    for path, number, row in entries:
        label = 0 if not has_labels else int(row["label"]) if integer_labels else label_of[row["label"]]
        paths.append(str((path.parent / row["file_name"]).resolve()))
        labels.append(label)
        captions.append(_caption(row, class_names[label] if has_labels else None, path, number))
    missing = [p for p in paths if not Path(p).exists()]
    if len(missing) == len(paths):
        raise FileNotFoundError(f"none of the {len(paths)} {subset} videos listed in {root} exist (e.g. {paths[0]}); "
                                "file_name is relative to the metadata file's folder")
    if missing:
        logger.warning("%d of %d %s videos listed in %s are missing (e.g. %s); they will be skipped and counted",
                       len(missing), len(paths), subset, root, missing[0])
    features = datasets.Features({"path": datasets.Value("string"), "label": datasets.ClassLabel(names=class_names),
                                  "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict({"path": paths, "label": labels, "caption": captions}, features=features)
