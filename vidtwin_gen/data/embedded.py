"""The embedded data set: small synthetic videos written in exactly the UCF-101 layout.

Every clip has three factors, the ones VidTwin's two latents are meant to separate:

- **content**: a coloured shape or textured patch (red square, blue circle, green triangle, yellow stripes,
  purple checker) on a softly textured, nearly grey background; the structure latent's "main semantic content";
- **slow motion**: the whole scene (background and object together, like a camera) drifts along a closed
  circle of about a tenth of the frame height, one turn in 6-8 s, clockwise or not, from a random phase. A
  16-frame clip at 8 fps (2 s) sees a drift of ~0.13 frame heights in a direction that differs from clip to
  clip; over the whole video the object stays in frame (a bouncing one reaches the frame's edge at the
  top or bottom of some hops). The structure latent's "gradual camera motion";
- **fast motion**: a local motion of the object alone, several times faster than the drift and visible in every
  8 fps frame (spin 0.3-0.45 turns/s, bounce 1-1.5 Hz over ~0.2 frame heights, flicker 1-1.5 Hz between 30 % and
  full brightness), well below the 4 Hz Nyquist rate of 8 fps (a square's spin repeats every quarter turn:
  1.2-1.8 Hz); the dynamics latent's "rapid local motion".

The ten classes cross content with fast motion ("RedSquareSpin", "RedSquareBounce", ...): each content with
two fast motions and each fast motion with three or four contents (spin is left out for the circle, which it
would not change), so neither factor gives the other away and a probe can read each from a clip on its own.
A cross-reenactment of two clips with different content and different fast motion then has an answer per
factor: content and slow drift of the structure clip, fast motion of the dynamics clip. The slow drift is a
per-clip continuous factor (not part of the class), so every class shows it and a reenactment's drift can be
compared with both source clips'.

Sizes suit the quickstart (32x32, 16 frames at 8 fps, an autoencoder with 8x8 patches): the object's radius is
~0.28 of the frame height (its shape, spin and bounce span several patches), the background's texture has
wavelengths of 0.5-1 heights (a drift is visible at 32x32, and the background does not take the autoencoder's
capacity from the object: with the earlier design, objects of radius 0.2 on textures of 0.25-0.6 heights and fast
motions up to 0.85 turns/s and 2.4 Hz, the quickstart autoencoder's reconstructions kept the fast motion of only
about half of the clips; on this design 96.5 %), and a video is 210
frames at 25 fps (8.4 s: four consecutive 16-frame chunks at 8 fps and then some), each motion persisting for
the whole video. `embedded_dataset.json` lists every video's factors (content, fast motion and its
parameters, the drift circle), so evaluation code can check its read-outs against the truth.

Like UCF-101, videos come in groups gXX (a "scene": background, object size and place, colour shade) of clips
cYY (drift path, speed and phase of the fast motion), and split k holds out the k-th third of the groups.
Everything is drawn from a seed: the same seed writes the same frames.

    vidtwin-gen make-dataset --output-dir data/embedded      # then load_ucf101("data/embedded")

With `layout="metadata"` (`--layout metadata`) the same videos are written as a folder of your own videos would
be (see `video_folder`): `train/` and `test/` (split 1's groups), each with its videos and a `metadata.csv`
(or `metadata.jsonl`) of file_name, text (the class caption) and label (the class name).
"""

import argparse
import csv
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ucf101 import SPLIT_DIR, SPLITS, VIDEO_DIR, class_to_caption
from .video_folder import METADATA_FILENAMES, SPLIT_FOLDERS
from .video_io import write_video


@dataclass(frozen=True)
class EmbeddedClass:
    name: str
    colour: tuple[int, int, int]
    shape: str  # "square" | "circle" | "triangle" | "stripes" | "checker"
    motion: str  # the fast local motion: "spin" | "bounce" | "flicker" (every clip also drifts slowly)

    @property
    def content(self) -> str:
        """"RedSquare", ...: the class name without its motion."""
        return self.name[: -len(self.motion)]


CONTENTS = {
    "RedSquare": ((220, 40, 40), "square"),
    "BlueCircle": ((40, 90, 235), "circle"),
    "GreenTriangle": ((40, 200, 70), "triangle"),
    "YellowStripes": ((240, 215, 40), "stripes"),
    "PurpleChecker": ((165, 60, 210), "checker"),
}
FAST_MOTIONS = ("spin", "bounce", "flicker")
_MOTIONS_OF = {"RedSquare": ("spin", "bounce"), "BlueCircle": ("bounce", "flicker"),
               "GreenTriangle": ("spin", "flicker"), "YellowStripes": ("spin", "bounce"),
               "PurpleChecker": ("spin", "flicker")}

CLASSES = tuple(
    EmbeddedClass(content + motion.capitalize(), colour, shape, motion)
    for content, (colour, shape) in CONTENTS.items()
    for motion in _MOTIONS_OF[content]
)


def motion_shows(content: str, motion: str) -> bool:
    """Whether the fast `motion` changes how `content` looks: a spin leaves a circle as it was, so no clip (real,
    reconstructed or reenacted) can show a spinning circle, and no read-out can expect one."""
    return not (CONTENTS[content][1] == "circle" and motion == "spin")


def _scene(rng: np.random.Generator, cls: EmbeddedClass, height: int, width: int) -> dict:
    """Per-group appearance: background palette and texture, object size, place and shade."""
    base = rng.uniform(60, 140)
    waves = []
    for amplitude in (0.6, 0.4):
        angle, wavelength = rng.uniform(0, math.pi), rng.uniform(0.5, 1.0) * height
        waves.append((amplitude, 2 * math.pi / wavelength * math.cos(angle), 2 * math.pi / wavelength * math.sin(angle),
                      rng.uniform(0, 2 * math.pi)))
    # The background stays nearly grey (channels within +-12 of each other) so that the saturated object stands
    # out; the object (radius ~0.28 heights) stays in frame through its drift (0.10); a bounce (up to 0.12 more)
    # can take it to the frame's edge for a few frames, a price of an object large enough for 8x8 patches.
    return {
        "bg_dark": base + rng.uniform(-12, 12, 3) - 25,
        "bg_light": base + rng.uniform(-12, 12, 3) + 25,
        "waves": waves,
        "radius": rng.uniform(0.27, 0.29) * height,
        "centre": (width / 2 + rng.uniform(-0.03, 0.03) * height, height / 2 + rng.uniform(-0.03, 0.03) * height),
        "colour": np.clip(np.array(cls.colour) + rng.uniform(-15, 15, 3), 0, 255),
        "angle": rng.uniform(0, 2 * math.pi),
    }


def _motion(rng: np.random.Generator, cls: EmbeddedClass) -> dict:
    """Per-clip motion parameters, in frame heights and seconds. Fast motions stay visible (no aliasing) at 8 fps."""
    drift = {"drift_radius": rng.uniform(0.08, 0.10), "drift_period": rng.uniform(6.0, 8.0),
             "drift_direction": int(rng.choice([-1, 1])), "drift_phase": rng.uniform(0, 2 * math.pi)}
    if cls.motion == "spin":
        return {**drift, "turns_per_s": float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.45))}
    if cls.motion == "bounce":
        return {**drift, "hz": rng.uniform(1.0, 1.5), "amplitude": rng.uniform(0.20, 0.24), "phase": rng.uniform(0, 1)}
    return {**drift, "hz": rng.uniform(1.0, 1.5), "phase": rng.uniform(0, 2 * math.pi)}  # flicker


def drift_offset(motion: dict, t: float) -> tuple[float, float]:
    """The scene's displacement (x, y) in frame heights at time `t` s: a point on the clip's drift circle."""
    angle = motion["drift_phase"] + motion["drift_direction"] * 2 * math.pi * t / motion["drift_period"]
    return motion["drift_radius"] * math.cos(angle), motion["drift_radius"] * math.sin(angle)


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Approximate signed distance in pixels to the shape's edge (negative inside); x, y in the object's frame."""
    if shape == "circle":
        return np.sqrt(x * x + y * y) - radius
    if shape == "triangle":  # equilateral, circumradius `radius`: inside all three edges at the inradius
        edges = [x * math.cos(a) + y * math.sin(a) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3,
                                                             math.pi / 2 + 4 * math.pi / 3)]
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - radius / 2
    half = radius * 0.85  # squares and textured patches
    return np.maximum(np.abs(x), np.abs(y)) - half


def _render(cls: EmbeddedClass, scene: dict, motion: dict, num_frames: int, fps: float, height: int, width: int,
            grain: float, rng: np.random.Generator, indices=None) -> np.ndarray:
    """(T, H, W, 3) uint8: frames 0 to num_frames - 1, or those of `indices`."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Each wave a*sin(kx*x + ky*y + phase), kept as its sine and cosine so a shift is a cheap phase rotation.
    waves = [(a, kx, ky, np.sin(kx * xs + ky * ys + phase), np.cos(kx * xs + ky * ys + phase))
             for a, kx, ky, phase in scene["waves"]]
    dark, light = scene["bg_dark"].astype(np.float32), scene["bg_light"].astype(np.float32)

    def background(ox: float, oy: float) -> np.ndarray:
        # The texture seen through a camera moved by (ox, oy): sin(p - s) = sin p cos s - cos p sin s.
        texture = sum(a * (math.cos(kx * ox + ky * oy) * sin_p - math.sin(kx * ox + ky * oy) * cos_p)
                      for a, kx, ky, sin_p, cos_p in waves)
        return dark + (light - dark) * (0.5 + 0.5 * texture)[..., None]

    radius = scene["radius"]
    reach = 1.25 * radius + 2  # the object lies within this distance of its centre
    indices = range(num_frames) if indices is None else indices
    frames = np.empty((len(indices), height, width, 3), np.uint8)
    for position, index in enumerate(indices):
        t = index / fps
        ox, oy = (height * offset for offset in drift_offset(motion, t))  # the slow drift moves everything
        image = background(ox, oy)
        cx, cy = scene["centre"][0] + ox, scene["centre"][1] + oy
        angle, brightness = scene["angle"], 1.0
        if cls.motion == "spin":
            angle += 2 * math.pi * motion["turns_per_s"] * t
        elif cls.motion == "bounce":  # hops up and lands, centred on the scene's place
            cy -= height * motion["amplitude"] * (abs(math.sin(math.pi * (motion["hz"] * t + motion["phase"]))) - 0.5)
        else:  # flicker
            brightness = 0.3 + 0.7 * (0.5 + 0.5 * math.cos(2 * math.pi * motion["hz"] * t + motion["phase"]))

        # Draw the object inside its bounding box only.
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
        if y0 < y1 and x0 < x1:
            dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
            lx = math.cos(angle) * dx + math.sin(angle) * dy  # pixel in the object's rotated frame
            ly = -math.sin(angle) * dx + math.cos(angle) * dy
            alpha = np.clip(0.5 - _signed_distance(cls.shape, lx, ly, radius), 0, 1)[..., None]
            colour = (scene["colour"] * brightness).astype(np.float32)
            period = radius / 1.5  # coarse enough to survive a 32x32 resize
            if cls.shape == "stripes":
                pattern = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * lx / period))
                colour = colour * (0.5 + 0.5 * pattern[..., None])
            elif cls.shape == "checker":
                pattern = 0.5 + 0.5 * np.tanh(3 * np.sin(1.5 * math.pi * lx / period) * np.sin(1.5 * math.pi * ly / period))
                colour = colour * (0.5 + 0.5 * pattern[..., None])
            box = image[y0:y1, x0:x1]
            image[y0:y1, x0:x1] = box + alpha * (colour - box)
        if grain:
            image += grain * rng.standard_normal(image.shape, dtype=np.float32)
        frames[position] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return frames


def render_reenactment_answer(description: dict, structure_video: str, dynamics_video: str,
                              frame_indices: list[int] | None = None) -> np.ndarray:
    """The video a cross-reenactment should give, rendered: (num_frames, height, width, 3) uint8 at the set's fps.

    Args:
        description: the data set's `embedded_dataset.json`, loaded.
        structure_video, dynamics_video: keys of its "videos" ("RedSquareSpin/v_RedSquareSpin_g01_c02.avi").
        frame_indices: render only these frames of the video (a clip's), in this order; default all.

    The answer has the structure video's scene (content, place, background) and slow drift and the dynamics
    video's fast motion, kind and parameters: what VidTwin says a decode of the first's structure with the
    second's dynamics shows. Given the same video twice it renders that video again (as written, before its
    codec).
    """
    by_name = {cls.name: cls for cls in CLASSES}
    class_index = {cls.name: number for number, cls in enumerate(CLASSES)}
    videos = description["videos"]
    for video in (structure_video, dynamics_video):
        if video not in videos:
            raise ValueError(f"{video!r} is not a video of this data set (keys of embedded_dataset.json's 'videos')")
    name, group_clip = structure_video.split("/")[0], structure_video.rsplit("_g", 1)[1].removesuffix(".avi")
    group, clip = (int(part) for part in group_clip.split("_c"))
    structure, dynamics = by_name[name], by_name[dynamics_video.split("/")[0]]
    seed = description["seed"]
    scene = _scene(np.random.default_rng([seed, class_index[name], group]), structure, description["height"],
                   description["width"])
    motion = {key: value for key, value in videos[structure_video].items() if key.startswith("drift_")}
    motion.update({key: value for key, value in videos[dynamics_video].items()
                   if not key.startswith("drift_") and key not in ("content", "fast_motion")})
    answer = EmbeddedClass(structure.content + dynamics.motion.capitalize(), structure.colour, structure.shape,
                           dynamics.motion)
    rng = np.random.default_rng([seed, class_index[name], group, clip])
    _motion(rng, structure)  # the structure video's grain comes next in its stream
    return _render(answer, scene, motion, description["num_frames"], description["fps"], description["height"],
                   description["width"], description["grain"], rng, frame_indices)


LAYOUTS = ("ucf101", "metadata")
METADATA_FORMATS = ("csv", "jsonl")


def _write_split_lists(split_dir: Path, names: list[str], entries: list, test_groups: list) -> None:
    """UCF-101's classInd.txt and train/test lists for the three splits."""
    split_dir.mkdir(parents=True)
    crlf = "\r\n"  # as in the official files
    (split_dir / "classInd.txt").write_text("".join(f"{i} {name}{crlf}" for i, name in enumerate(names, 1)), newline="")
    for split, held_out in zip(SPLITS, test_groups):
        train = [f"{rel} {label}{crlf}" for rel, label, group in entries if group not in held_out]
        test = [f"{rel}{crlf}" for rel, label, group in entries if group in held_out]
        (split_dir / f"trainlist0{split}.txt").write_text("".join(train), newline="")
        (split_dir / f"testlist0{split}.txt").write_text("".join(test), newline="")


def _write_metadata(folder: Path, names: list[str], entries: list, metadata_format: str) -> None:
    """`folder/metadata.{csv,jsonl}` of file_name, text, label for `entries` (relative path, label 1-based, group)."""
    rows = [{"file_name": rel, "text": class_to_caption(names[label - 1]), "label": names[label - 1]}
            for rel, label, _ in entries]
    if metadata_format == "jsonl":
        content = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        stream = io.StringIO()
        writer = csv.DictWriter(stream, fieldnames=["file_name", "text", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        content = stream.getvalue()
    (folder / f"metadata.{metadata_format}").write_text(content, encoding="utf-8")


def _check_arguments(names, by_name, num_groups, clips_per_group, num_frames, fps, layout, metadata_format) -> None:
    unknown = [name for name in names if name not in by_name]
    if unknown or not names:
        raise ValueError(f"unknown or no classes {unknown}; choose from {list(by_name)}")
    if num_groups < len(SPLITS):
        raise ValueError(f"num_groups must be >= {len(SPLITS)} so that each split holds out different groups")
    if clips_per_group < 1 or num_frames < 1 or fps <= 0:
        raise ValueError("clips_per_group and num_frames must be >= 1 and fps positive")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if metadata_format not in METADATA_FORMATS:
        raise ValueError(f"metadata_format must be one of {METADATA_FORMATS}, got {metadata_format!r}")


def _clear_previous(root: Path, ours: list[Path], overwrite: bool) -> None:
    """Remove a data set written earlier into `root` (only the paths this module writes), or refuse to."""
    if not any(path.exists() for path in ours):
        return
    if not overwrite:
        raise FileExistsError(f"{root} already holds a data set ({', '.join(p.name for p in ours if p.exists())}); "
                              "pass overwrite=True (--overwrite) or choose another folder")
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def make_embedded_dataset(
    output_dir,
    seed: int = 0,
    num_groups: int = 6,
    clips_per_group: int = 3,
    num_frames: int = 210,
    fps: float = 25.0,
    width: int = 160,
    height: int = 120,
    classes: list[str] | None = None,
    grain: float = 0.0,
    overwrite: bool = False,
    layout: str = "ucf101",
    metadata_format: str = "csv",
) -> Path:
    """Write the embedded data set and return the root to give `load_video_index` (or `load_ucf101`).

    Args:
        output_dir: root; gets `UCF-101/` and `ucfTrainTestlist/` (layout "ucf101"), or `train/` and `test/` with a
            metadata file each (layout "metadata"); and `embedded_dataset.json`, a description.
        seed: everything is drawn from it; each video's randomness depends only on (seed, class, group, clip),
            so a subset of classes or groups gives the same videos as the full set.
        num_groups: groups gXX per class (>= 3: split k tests on the k-th third of them, trains on the rest).
        clips_per_group: clips cYY per group.
        num_frames, fps, width, height: per video (default 8.4 s of 160x120 at 25 fps, like UCF-101 in small).
        classes: subset of the class names in `CLASSES` (default all ten).
        grain: standard deviation of per-pixel noise (0-255 scale), for benchmarks that want camera-like data.
        overwrite: replace an existing data set in `output_dir`.
        layout: "ucf101" (three official-style splits) or "metadata" (your-own-videos layout, split 1's groups).
        metadata_format: "csv" or "jsonl", for layout "metadata".
    """
    by_name = {cls.name: cls for cls in CLASSES}
    names = list(by_name) if classes is None else list(classes)
    _check_arguments(names, by_name, num_groups, clips_per_group, num_frames, fps, layout, metadata_format)
    root = Path(output_dir)
    videos_dir, split_dir = root / VIDEO_DIR, root / SPLIT_DIR
    subset_dirs = {subset: root / folders[0] for subset, folders in SPLIT_FOLDERS.items()}  # train/, test/
    _clear_previous(root, [videos_dir, split_dir, *subset_dirs.values(), *(root / name for name in METADATA_FILENAMES)],
                    overwrite)

    class_index = {cls.name: number for number, cls in enumerate(CLASSES)}  # stable seeds for any subset
    test_groups = np.array_split(np.arange(1, num_groups + 1), len(SPLITS))
    entries = []  # (relative path, label 1-based, group)
    factors = {}  # relative path -> the video's content, fast motion and motion parameters
    for label, name in enumerate(names, start=1):
        cls = by_name[name]
        for group in range(1, num_groups + 1):
            scene = _scene(np.random.default_rng([seed, class_index[name], group]), cls, height, width)
            for clip in range(1, clips_per_group + 1):
                rng = np.random.default_rng([seed, class_index[name], group, clip])
                motion = _motion(rng, cls)
                frames = _render(cls, scene, motion, num_frames, fps, height, width, grain, rng)
                relative = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
                factors[relative] = {"content": cls.content, "fast_motion": cls.motion,
                                     **{key: float(value) for key, value in motion.items()}}
                subset = "test" if group in test_groups[0] else "train"
                write_video((videos_dir if layout == "ucf101" else subset_dirs[subset]) / relative, frames, fps)
                entries.append((relative, label, group))

    # Listings last: an interrupted run leaves none, so it cannot be mistaken for a data set.
    if layout == "ucf101":
        _write_split_lists(split_dir, names, entries, test_groups)
    else:
        for subset, folder in subset_dirs.items():
            chosen = [entry for entry in entries if (entry[2] in test_groups[0]) == (subset == "test")]
            _write_metadata(folder, names, chosen, metadata_format)
    description = {
        "layout": layout, "seed": seed, "num_groups": num_groups, "clips_per_group": clips_per_group, "num_frames": num_frames,
        "fps": fps, "width": width, "height": height, "grain": grain,
        "test_groups": {str(split): groups.tolist() for split, groups in zip(SPLITS, test_groups)},
        "classes": [{"name": name, "caption": class_to_caption(name), "colour": by_name[name].colour,
                     "shape": by_name[name].shape, "motion": by_name[name].motion, "content": by_name[name].content}
                    for name in names],
        # Per video: drift_* give the slow drift (`drift_offset`), the rest the fast motion; lengths in frame
        # heights, times in seconds.
        "videos": factors,
    }
    (root / "embedded_dataset.json").write_text(json.dumps(description, indent=2))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtwin-gen make-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True,
                        help="root folder; gets UCF-101/ and ucfTrainTestlist/ (or train/ and test/ with --layout metadata)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-groups", type=int, default=6, help="groups gXX per class (>= 3)")
    parser.add_argument("--clips-per-group", type=int, default=3, help="clips cYY per group")
    parser.add_argument("--num-frames", type=int, default=210, help="frames per video (default: 8.4 s at 25 fps)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                        help=f"subset of: {' '.join(cls.name for cls in CLASSES)}")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set in --output-dir")
    parser.add_argument("--layout", choices=LAYOUTS, default="ucf101",
                        help="ucf101: UCF-101's folders and split lists; metadata: train/ and test/ folders with a "
                             "metadata file (file_name, text, label), the layout for your own videos")
    parser.add_argument("--metadata-format", choices=METADATA_FORMATS, default="csv", help="with --layout metadata")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = make_embedded_dataset(args.output_dir, seed=args.seed, num_groups=args.num_groups,
                                     clips_per_group=args.clips_per_group, num_frames=args.num_frames, fps=args.fps,
                                     width=args.width, height=args.height, classes=args.classes, overwrite=args.overwrite,
                                     layout=args.layout, metadata_format=args.metadata_format)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    folders = [root / VIDEO_DIR] if args.layout == "ucf101" else [root / "train", root / "test"]
    count = sum(1 for folder in folders for _ in folder.rglob("*.avi"))
    layout = "UCF-101 layout" if args.layout == "ucf101" else f"train/ and test/ with metadata.{args.metadata_format}"
    print(f"wrote {count} videos in {layout} to {root} in {time.perf_counter() - start:.1f} s")
    return 0
