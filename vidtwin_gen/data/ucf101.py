"""UCF-101 (and anything written in its layout, such as the embedded data set) as datasets and PyTorch data.

Expected layout (the official download, both archives unpacked next to each other)::

    ROOT/
      UCF-101/<ClassName>/v_<ClassName>_gXX_cYY.avi
      ucfTrainTestlist/classInd.txt               "1 ApplyEyeMakeup" ... (1-based)
      ucfTrainTestlist/trainlist0{1,2,3}.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
      ucfTrainTestlist/testlist0{1,2,3}.txt       "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

`ROOT` may also be the `UCF-101/` folder itself when `ucfTrainTestlist/` sits inside it or next to it.

Two ways in:

- `load_ucf101(root, split, subset)` gives a `datasets.Dataset` of (path, label, caption), with no decoding.
  Decoded clips come from a transform::

      ds = load_ucf101(root).with_transform(ClipTransform(num_frames=16, size=128, target_fps=8, train=True))
      ds[0]["video"]                    # (3, 16, 128, 128) in [-1, 1], or None for a broken file
      loader = DataLoader(ds, batch_size=8, collate_fn=collate_clips, num_workers=2)

- `UCF101Clips(root, ...)`, a `torch.utils.data.Dataset` for the training scripts.

Both also read a folder of your own videos with a `metadata.csv` / `metadata.jsonl` (see `video_folder`):
`load_video_index(root, split, subset)` gives the same columns for either layout, and is what every reader of a
data root (trainers, encode-dataset, eval-recon) goes through.

Either way a broken file gives no clip (`UCF101Clips` returns None, `ClipTransform` sets "video" to None) and
is logged once per process; `collate_clips` drops those items and reports how many in the batch's
"num_skipped", so a training loop can sum skips across DataLoader workers and report them per epoch.
"""

import logging
import re
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import default_collate

from .video_folder import LAYOUT as VIDEO_FOLDER_LAYOUT
from .video_folder import is_video_folder, load_video_folder
from .video_io import VideoDecodeError, iter_clips, load_clip

logger = logging.getLogger(__name__)

VIDEO_DIR, SPLIT_DIR = "UCF-101", "ucfTrainTestlist"
SUBSETS = ("train", "test")
SPLITS = (1, 2, 3)

# Prompts for text-conditioned training, applied by the trainer; "{}" is the caption made from the class name.
CAPTION_TEMPLATES = ("{}", "a video of {}", "a clip of {}", "footage of {}")

# Names the CamelCase split gets wrong.
_CAPTION_OVERRIDES = {"YoYo": "yo-yo"}

_LAYOUT = f"""expected the UCF-101 layout:
  ROOT/{VIDEO_DIR}/<ClassName>/v_<ClassName>_gXX_cYY.avi
  ROOT/{SPLIT_DIR}/classInd.txt, trainlist01.txt .. trainlist03.txt, testlist01.txt .. testlist03.txt
(ROOT may also be the {VIDEO_DIR}/ folder, with {SPLIT_DIR}/ inside it or next to it;
`vidtwin-gen make-dataset --output-dir ROOT` writes a small synthetic set in this layout);
or {VIDEO_FOLDER_LAYOUT}"""


def class_to_caption(name: str) -> str:
    """Class name -> caption: "ApplyEyeMakeup" -> "apply eye makeup", "YoYo" -> "yo-yo", "TVNews" -> "TV news".

    Words are split at case changes, digits and non-alphanumerics; acronyms (2+ capitals) keep their case.
    """
    if name in _CAPTION_OVERRIDES:
        return _CAPTION_OVERRIDES[name]
    words = re.findall(r"\d*[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    if not words:
        raise ValueError(f"cannot make a caption from class name {name!r}")
    return " ".join(w if len(w) > 1 and w.isupper() else w.lower() for w in words)


def _find_layout(root) -> tuple[Path, Path]:
    """(videos folder, split-files folder) for any accepted form of `root`."""
    root = Path(root).expanduser()
    candidates = [(root / VIDEO_DIR, root / SPLIT_DIR), (root, root / SPLIT_DIR), (root, root.parent / SPLIT_DIR)]
    for videos, splits in candidates:
        if videos.is_dir() and (splits / "classInd.txt").is_file():
            return videos, splits
    raise FileNotFoundError(f"{root} is not a UCF-101 folder; {_LAYOUT}")


def _read_lines(path: Path) -> list[str]:
    # The official files end lines with CRLF.
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_class_index(split_dir) -> list[str]:
    """Class names in label order (label = line number in classInd.txt, 0-based)."""
    path = Path(split_dir) / "classInd.txt"
    names = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[0] != str(number):
            raise ValueError(f"{path}: line {number} should be '{number} ClassName', got {line!r}")
        names.append(fields[1])
    if not names:
        raise ValueError(f"{path} is empty; {_LAYOUT}")
    return names


def load_ucf101(root, split: int = 1, subset: str = "train") -> datasets.Dataset:
    """One official split as a `datasets.Dataset` with columns path (str, absolute), label (ClassLabel,
    0-based from classInd.txt) and caption (str, from the class name). Nothing is decoded; see the module
    docstring for `ClipTransform`.

    Files listed but missing stay in the list (one warning here) and are skipped and counted at decode time,
    like broken files. If none of the listed files exist, the root is wrong and this raises.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    videos, split_dir = _find_layout(root)
    class_names = read_class_index(split_dir)
    label_of = {name: label for label, name in enumerate(class_names)}
    list_file = split_dir / f"{subset}list0{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file} is missing; {_LAYOUT}")

    paths, labels = [], []
    for line in _read_lines(list_file):
        relative, *given = line.split()
        class_name = relative.replace("\\", "/").split("/")[0]
        if class_name not in label_of:
            raise ValueError(f"{list_file}: {relative!r} is in folder {class_name!r}, which classInd.txt does not list")
        label = label_of[class_name]
        if given and int(given[0]) != label + 1:
            raise ValueError(f"{list_file}: {relative!r} has label {given[0]}, classInd.txt says {label + 1}")
        paths.append(str((videos / relative).resolve()))
        labels.append(label)
    if not paths:
        raise ValueError(f"{list_file} lists no videos")
    missing = [p for p in paths if not Path(p).exists()]  # a listed non-file (a pipe) is refused when decoded
    if len(missing) == len(paths):
        raise FileNotFoundError(f"none of the {len(paths)} videos in {list_file} exist under {videos}; {_LAYOUT}")
    if missing:
        logger.warning("%d of %d videos listed in %s are missing (e.g. %s); they will be skipped and counted",
                       len(missing), len(paths), list_file, missing[0])

    features = datasets.Features(
        {"path": datasets.Value("string"), "label": datasets.ClassLabel(names=class_names), "caption": datasets.Value("string")}
    )
    captions = [class_to_caption(class_names[label]) for label in labels]
    return datasets.Dataset.from_dict({"path": paths, "label": labels, "caption": captions}, features=features)


def load_video_index(root, split: int = 1, subset: str = "train") -> datasets.Dataset:
    """The videos of a data root in either layout, as `load_ucf101` gives them: columns path (str, absolute),
    label (ClassLabel) and caption (str).

    A root holding `metadata.csv` / `metadata.jsonl` (at the top or in `train/` and `test/`) is a folder of your
    own videos, read by `video_folder.load_video_folder` (`split` does not apply to it); any other root is read
    as UCF-101 (`load_ucf101`).
    """
    if is_video_folder(root):
        return load_video_folder(root, subset)
    return load_ucf101(root, split, subset)


class ClipTransform:
    """Decodes the "path" column into a "video" column; use with `Dataset.with_transform` (batched).

    Training: random start and crop. Evaluation: centred start and crop.
    A file that fails to decode gives video None and is logged once per process.
    """

    def __init__(self, num_frames: int, size: int | tuple[int, int], target_fps: float | None = None, train: bool = False,
                 crop: str | None = None, resize: str = "bilinear"):
        self.num_frames, self.size, self.target_fps, self.train = num_frames, size, target_fps, train
        self.crop, self.resize = crop, resize  # see `load_clip`
        self._logged: set[str] = set()

    def decode(self, path: str, clip_position: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(3, T, H, W) in [-1, 1], or None if the file cannot be decoded.

        `clip_position` (evaluation) places the start in [0, 1] instead of the centre; `generator` (training)
        draws the random start and crop (default: torch's global RNG, which DataLoader seeds per worker).
        """
        mode = "random" if self.train else ("center" if clip_position is None else clip_position)
        try:
            return load_clip(path, self.num_frames, self.size, self.target_fps, mode=mode, generator=generator,
                             crop=self.crop, resize=self.resize)
        except VideoDecodeError as error:
            if path not in self._logged:
                self._logged.add(path)
                logger.warning("skipping unreadable video: %s", error)
            return None

    def __call__(self, batch: dict) -> dict:
        batch["video"] = [self.decode(path) for path in batch["path"]]
        return batch


class UCF101Clips(torch.utils.data.Dataset):
    """Clips of a data root for the training scripts: UCF-101 layout or your own videos (`load_video_index`).

    Item: {"video": (3, T, H, W) float32 in [-1, 1], "label": int, "caption": str, "path": str,
    "clip_index": int}, or None for a broken file (use `collate_clips`, which counts them). Captions are the plain class captions, as in the latent cache; trainers
    vary them with `CAPTION_TEMPLATES`.

    Training draws a random start and crop per item. With `seed`, the draw is a function of (seed, epoch,
    index), so an epoch is the same whatever the number of DataLoader workers; call `set_epoch` before each
    epoch's iterator is created (workers copy the dataset then, so not with `persistent_workers`). Without
    a seed, torch's global RNG is used (DataLoader seeds it per worker).

    `clips_per_video` K > 1 (evaluation only) makes K items per video with starts evenly spread from the
    first to the last possible one; K = 1 takes the centre (evaluation) or a random start (training).
    """

    def __init__(
        self,
        root,
        split: int = 1,
        subset: str = "train",
        num_frames: int = 16,
        size: int | tuple[int, int] = 128,
        target_fps: float | None = 8.0,
        train: bool = True,
        clips_per_video: int = 1,
        seed: int | None = None,
        crop: str | None = None,
        resize: str = "bilinear",
    ):
        if clips_per_video < 1 or (train and clips_per_video > 1):
            raise ValueError(f"clips_per_video must be >= 1, and 1 when train=True; got {clips_per_video}")
        self.dataset = load_video_index(root, split, subset)
        self.transform = ClipTransform(num_frames, size, target_fps, train, crop, resize)
        self.clips_per_video = clips_per_video
        self.seed, self.epoch = seed, 0

    @property
    def class_names(self) -> list[str]:
        return self.dataset.features["label"].names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset) * self.clips_per_video

    def __getitem__(self, index: int) -> dict | None:
        row = self.dataset[index // self.clips_per_video]
        clip_index = index % self.clips_per_video
        position = clip_index / (self.clips_per_video - 1) if self.clips_per_video > 1 else None
        generator = None
        if self.transform.train and self.seed is not None:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state))
        video = self.transform.decode(row["path"], position, generator)
        if video is None:
            return None
        return {"video": video, "label": row["label"], "caption": row["caption"], "path": row["path"],
                "clip_index": clip_index}


class UCF101Chunks(torch.utils.data.Dataset):
    """Consecutive chunks of every video of a data root, for the long-video latent cache (`encode_dataset`'s
    `chunks_per_clip`).

    Item: {"video": (C, 3, T, H, W) float32 in [-1, 1], "num_chunks": C, "label": int, "caption": str, "path": str,
    "video_index": int (the video's row in `load_video_index`)}, or None for a broken file (`collate_chunks`
    counts it). The chunks are the first C <= `max_chunks` consecutive, non-overlapping T-frame clips at
    `target_fps` from the video's first frame, centre-cropped (`video_io.iter_clips`): chunk k + 1 starts one
    frame interval after chunk k ends, so they are the T-frame pieces the autoencoder encodes independently.
    A video holds as many chunks as whole chunks fit (an incomplete tail is dropped; a video shorter than one
    chunk gives one chunk padded with its last frame), so short videos give fewer than `max_chunks`.
    """

    def __init__(self, root, split: int = 1, subset: str = "train", num_frames: int = 16,
                 size: int | tuple[int, int] = 128, target_fps: float | None = 8.0, max_chunks: int = 3):
        if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
            raise ValueError(f"max_chunks must be an integer >= 1, got {max_chunks!r}")
        self.dataset = load_video_index(root, split, subset)
        self.num_frames, self.size, self.target_fps, self.max_chunks = num_frames, size, target_fps, max_chunks
        self._logged: set[str] = set()

    @property
    def class_names(self) -> list[str]:
        return self.dataset.features["label"].names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        row = self.dataset[index]
        try:
            # The whole list first: a file that fails after some chunks is skipped whole, never half-kept.
            chunks = list(iter_clips(row["path"], self.num_frames, self.size, self.target_fps, self.max_chunks))
        except VideoDecodeError as error:
            if row["path"] not in self._logged:
                self._logged.add(row["path"])
                logger.warning("skipping unreadable video: %s", error)
            return None
        return {"video": torch.stack(chunks), "num_chunks": len(chunks), "label": row["label"],
                "caption": row["caption"], "path": row["path"], "video_index": index}


def collate_chunks(items: list[dict | None]) -> dict:
    """Batch `UCF101Chunks` items, dropping failed ones: every video's chunks one after the other.

    Returns:
        {"video": (sum of C, 3, T, H, W), "num_chunks": (B,) long, "label", "video_index": (B,) long,
        "caption", "path": [str] (per video), "num_skipped": int}; {"video": None, "num_skipped"} when all failed.
    """
    kept = [item for item in items if item is not None]
    if not kept:
        return {"video": None, "num_skipped": len(items)}
    batch = default_collate([{k: v for k, v in item.items() if k != "video"} for item in kept])
    batch["video"] = torch.cat([item["video"] for item in kept])
    batch["num_skipped"] = len(items) - len(kept)
    return batch


def collate_clips(items: list[dict | None]) -> dict:
    """Batch clips, dropping failed items (None, or video None).

    Returns:
        {"video": (B, 3, T, H, W), "label": (B,) long, "caption": [str], "path": [str], ..., "num_skipped": int};
        when every item failed, {"video": None, "num_skipped": len(items)}: skip the step, keep the count.
    """
    kept = [item for item in items if item is not None and item.get("video") is not None]
    if not kept:
        return {"video": None, "num_skipped": len(items)}
    batch = default_collate(kept)
    batch["num_skipped"] = len(items) - len(kept)
    return batch
