"""Users' own data as `Sample`s: an image folder (one subfolder per class) or a captions CSV.

A source is built in two steps so that shard writing can be spread over Ray tasks:
1. `*_items` lists the images and decides every caption up front (cheap, in the driver): class
   labels, templates, deliberately wrong captions and the held-out split are all fixed here from
   the seed, so the result never depends on how the items are later chunked into tasks.
2. `load_sample` reads and (re-)encodes one item's image (the expensive part, in the tasks).

`image_folder_samples` and `caption_csv_samples` chain both steps for single-process use.

Images are referred to by local paths: on a Ray cluster the source folder must be visible to
every node (a shared filesystem).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from raylpclip.data.sample import Sample

# Plain photo captions: varied phrasing, every one names the class once.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of the {}.",
    "a good photo of a {}.",
    "a bright photo of the {}.",
    "a photo of the small {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "there is a {} in this picture.",
    "a {} in the photo.",
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO (camera multi-picture files) is a JPEG with extra frames
JPEG_QUALITY = 95  # img2dataset's default encode_quality
CAPTION_MODES = ("all", "first")
SPLITS = ("all", "train", "eval")
MAX_SKIP_EXAMPLES = 5
_TEMPLATE_STREAM, _MISMATCH_STREAM = 0x7465, 0x6D6D  # separate random streams per decision


@dataclass(frozen=True)
class SourceItem:
    """One image to be written with one caption: everything but the pixels, decided in the driver."""

    path: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceStats:
    """What a source produced and what it skipped, by reason ("unreadable", "missing", ...).

    Filled in while samples are listed and loaded; mergeable so that Ray tasks can each return one.
    """

    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few skipped files, to go and look at

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{reason}: {what}")

    def merge(self, other: SourceStats) -> None:
        self.samples += other.samples
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[:MAX_SKIP_EXAMPLES - len(self.examples)])

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates as a list; each must hold exactly one "{}" and no other format field."""
    if not templates:
        raise ValueError("no caption templates given; expected strings such as 'a photo of a {}.'")
    for template in templates:
        try:
            ok = template.count("{}") == 1 and template.format("x") == template.replace("{}", "x")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"caption template {template!r}: expected exactly one '{{}}' for the class name")
    return list(templates)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment ('#') lines of a text file, stripped: templates or class names files."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _visible(entry: os.DirEntry | Path) -> bool:
    return not entry.name.startswith(".")


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not folders:
        raise ValueError(f"image folder {str(root)!r} has no class subfolders; expected ROOT/<class>/<image>")
    return folders


def _display_names(folders: Sequence[Path], classnames: Sequence[str] | Mapping[str, str] | None) -> list[str]:
    """Class names by label: `classnames` (in sorted-folder order, or folder -> name), else the folder
    names with underscores as spaces."""
    names = [f.name.replace("_", " ") for f in folders]
    if isinstance(classnames, Mapping):
        names = [classnames.get(f.name, name) for f, name in zip(folders, names)]
    elif classnames is not None:
        if len(classnames) != len(folders):
            raise ValueError(f"{len(classnames)} class names for {len(folders)} class folders "
                             f"({[f.name for f in folders][:5]}...); expected one per folder, in sorted order")
        names = list(classnames)
    duplicated = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicated:
        # Two classes with one name cannot be told apart by caption (or by a zero-shot prompt).
        raise ValueError(f"class names {duplicated} are used by more than one class folder")
    return names


def _folder_images(folder: Path) -> list[Path]:
    """Image files under a class folder (recursively, like torchvision's ImageFolder), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, name) for name in filenames
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def _mismatched(n: int, *, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask with exactly round(n * fraction) True entries at seeded random positions."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"mismatch_fraction={fraction}; expected a value in [0, 1]")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, _MISMATCH_STREAM]).permutation(n)[:round(n * fraction)]] = True
    return mask


def image_folder_items(root: str | os.PathLike, *, templates: Sequence[str] = DEFAULT_TEMPLATES,
                       mismatch_fraction: float = 0.0, seed: int = 0,
                       classnames: Sequence[str] | Mapping[str, str] | None = None) -> list[SourceItem]:
    """One item per image of `root/<class>/...`, in sorted order; label = index of the sorted folder.

    Caption = a template (drawn per image from `seed`) filled with the class name. Exactly
    round(n * mismatch_fraction) images, picked from `seed`, get the same kind of caption for a
    uniformly drawn *other* class (noisy correspondence); `meta["label"]` stays the true class.
    """
    templates = check_templates(templates)
    root = Path(root)
    folders = _class_folders(root)
    names = _display_names(folders, classnames)
    if mismatch_fraction > 0 and len(folders) < 2:
        raise ValueError("mismatch_fraction > 0 needs at least two classes to take a wrong caption from")
    files = [(label, path) for label, folder in enumerate(folders) for path in _folder_images(folder)]
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under the class folders of {str(root)!r}")
    n = len(files)
    template_ids = np.random.default_rng([seed, _TEMPLATE_STREAM]).integers(len(templates), size=n)
    mismatched = _mismatched(n, fraction=mismatch_fraction, seed=seed)
    # An offset in 1..classes-1 never lands back on the true class.
    offsets = np.random.default_rng([seed, _MISMATCH_STREAM, 1]).integers(1, max(len(folders), 2), size=n)
    items = []
    for i, (label, path) in enumerate(files):
        caption_label = (label + int(offsets[i])) % len(folders) if mismatched[i] else label
        meta = {"label": label, "label_name": names[label], "caption_mismatched": bool(mismatched[i]),
                "image_id": path.relative_to(root).as_posix()}
        items.append(SourceItem(str(path), templates[int(template_ids[i])].format(names[caption_label]), meta))
    return items


def holdout_image_ids(image_ids: Iterable[str], *, fraction: float, seed: int = 0) -> frozenset[str]:
    """The held-out images: the round(n * fraction) distinct ids with the smallest sha256(seed, id).

    Grouping by image keeps every caption of a held-out image out of training; ranking by hash makes
    the split exact in size, independent of row order, and the same on every call.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout_fraction={fraction}; expected a value in [0, 1)")
    ids = sorted(set(image_ids))
    count = round(len(ids) * fraction)
    if fraction > 0 and ids:
        count = max(count, 1)  # a requested holdout is never silently empty
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode("utf-8")).digest())
    return frozenset(ranked[:count])


def _read_csv(csv_path: Path, image_col: str, caption_col: str) -> list[tuple[int, str, str]]:
    """(line number, image cell, caption cell) per data row; a clear error for missing columns."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"captions CSV {str(csv_path)!r} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a spreadsheet's BOM
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in (image_col, caption_col) if c not in header]
        if missing:
            raise ValueError(f"captions CSV {str(csv_path)!r} has no column(s) {missing}; columns found: {header} "
                             "(choose them with image_col/caption_col, --image-col/--caption-col)")
        i_img, i_cap = header.index(image_col), header.index(caption_col)
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{csv_path}:{reader.line_num}: {len(row)} fields for {len(header)} columns "
                                 f"{header}; quote captions that contain the delimiter")
            rows.append((reader.line_num, row[i_img].strip(), row[i_cap].strip()))
    return rows


def caption_csv_items(csv_path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                      image_col: str = "image", caption_col: str = "caption", captions: str = "all",
                      holdout_fraction: float = 0.0, split: str = "all", seed: int = 0,
                      stats: SourceStats | None = None) -> list[SourceItem]:
    """One item per (image, caption) row of a CSV, in file order; several rows per image are allowed.

    Image cells are paths relative to `image_root` (default: the CSV's folder) or absolute.
    `captions="first"` keeps only each image's first caption. With `holdout_fraction` > 0, `split`
    picks the "train" or "eval" side of `holdout_image_ids`. `meta["image_id"]` is the image cell
    and `meta["caption_index"]` the caption's position among its image's rows, for grouped retrieval.
    Rows with an empty caption are skipped and counted in `stats`; missing image files are an error.
    """
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions={captions!r}; expected one of {CAPTION_MODES}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if holdout_fraction > 0 and split == "all":
        raise ValueError(f"holdout_fraction={holdout_fraction} holds images out: choose split='train' or split='eval'")
    if split != "all" and holdout_fraction <= 0:
        raise ValueError(f"split={split!r} needs holdout_fraction > 0 (the eval side would be empty)")
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    rows = _read_csv(csv_path, image_col, caption_col)
    stats = stats if stats is not None else SourceStats()
    kept: list[tuple[str, str, int]] = []
    seen: Counter = Counter()
    for line, image, caption in rows:
        if not image:
            raise ValueError(f"{csv_path}:{line}: empty {image_col!r} cell")
        if not caption:
            stats.skip("empty_caption", f"{csv_path}:{line}")
            continue
        index = seen[image]
        seen[image] += 1
        if captions == "all" or index == 0:
            kept.append((image, caption, index))
    _check_images_exist(sorted(seen), root=root, csv_path=csv_path, image_col=image_col)
    if split != "all":
        held_out = holdout_image_ids(seen, fraction=holdout_fraction, seed=seed)
        kept = [row for row in kept if (row[0] in held_out) == (split == "eval")]
    return [SourceItem(str(root / image), caption, {"image_id": image, "caption_index": index})
            for image, caption, index in kept]


def _check_images_exist(images: Sequence[str], *, root: Path, csv_path: Path, image_col: str) -> None:
    """Fail before any work when the CSV names images that are not there: usually a wrong image root."""
    missing = [image for image in images if not (root / image).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(images)} images named in column {image_col!r} of "
                                f"{str(csv_path)!r} are not under {str(root)!r}, e.g. {missing[:3]}; "
                                "set the image root (image_root / --image-root)")


def _jpeg_ready(img: Image.Image) -> Image.Image:
    """A mode JPEG can hold: RGB or L; transparency is flattened onto white, as a viewer shows it."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(data: bytes, *, image_size: int | None = None) -> tuple[bytes, int, int]:
    """(JPEG bytes, original width, original height) for encoded image `data`.

    With `image_size`, an image whose shorter side is longer is downscaled (bicubic) to that shorter
    side, keeping its aspect ratio (img2dataset's "keep_ratio" mode): no pixels are cropped away, as
    the loader's random-resized-crop (train) and centre crop (eval) do the cropping. Smaller images
    are never upscaled. The original bytes are kept as they are unless resized or not JPEG, so
    nothing is lost to a second JPEG compression. Raises ValueError for unreadable data.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: truncated files fail here, not in a training step
            width, height = img.size
            short = min(width, height)
            resize = image_size is not None and short > image_size
            if not resize and img.format in JPEG_FORMATS:
                return data, width, height
            out = _jpeg_ready(img)
            if resize:
                if width <= height:
                    size = (image_size, max(1, round(height * image_size / width)))
                else:
                    size = (max(1, round(width * image_size / height)), image_size)
                out = out.resize(size, Image.BICUBIC)
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=JPEG_QUALITY)
            return buf.getvalue(), width, height
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image: {err}") from err


def load_sample(item: SourceItem, *, image_size: int | None = None, stats: SourceStats | None = None) -> Sample | None:
    """The item's image read and encoded as a Sample, or None (counted in `stats`) when the file is
    gone ("missing") or cannot be decoded ("unreadable"). `meta` gains the source image's size as
    `source_width`/`source_height` (the shard writer's own `original_*` fields describe the stored JPEG)."""
    stats = stats if stats is not None else SourceStats()
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        stats.skip("missing", item.path)
        return None
    except OSError as err:
        stats.skip("unreadable", f"{item.path} ({err})")
        return None
    try:
        jpg, width, height = encode_image(data, image_size=image_size)
    except ValueError as err:
        stats.skip("unreadable", f"{item.path} ({err})")
        return None
    stats.samples += 1
    return Sample(key="", jpg=jpg, caption=item.caption,
                  meta={**item.meta, "source_width": width, "source_height": height})


def iter_samples(items: Iterable[SourceItem], *, image_size: int | None = None,
                 stats: SourceStats | None = None) -> Iterator[Sample]:
    """`load_sample` over items, leaving out (and counting) the ones that cannot be read."""
    for item in items:
        sample = load_sample(item, image_size=image_size, stats=stats)
        if sample is not None:
            yield sample


def image_folder_samples(root: str | os.PathLike, *, templates: Sequence[str] = DEFAULT_TEMPLATES,
                         mismatch_fraction: float = 0.0, seed: int = 0, image_size: int | None = None,
                         classnames: Sequence[str] | Mapping[str, str] | None = None,
                         stats: SourceStats | None = None) -> Iterator[Sample]:
    """Samples of an image folder (see `image_folder_items`); pass `stats` to read the skip counts."""
    items = image_folder_items(root, templates=templates, mismatch_fraction=mismatch_fraction, seed=seed,
                               classnames=classnames)
    return iter_samples(items, image_size=image_size, stats=stats)


def caption_csv_samples(csv_path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                        image_col: str = "image", caption_col: str = "caption", image_size: int | None = None,
                        captions: str = "all", holdout_fraction: float = 0.0, split: str = "all", seed: int = 0,
                        stats: SourceStats | None = None) -> Iterator[Sample]:
    """Samples of a captions CSV (see `caption_csv_items`); pass `stats` to read the skip counts."""
    items = caption_csv_items(csv_path, image_root=image_root, image_col=image_col, caption_col=caption_col,
                              captions=captions, holdout_fraction=holdout_fraction, split=split, seed=seed,
                              stats=stats)
    return iter_samples(items, image_size=image_size, stats=stats)


def shuffled(items: Sequence[SourceItem], *, seed: int) -> list[SourceItem]:
    """Items in a seeded random order. Sources list images class by class (and an image's captions
    together) while the loader only shuffles shard order plus a small buffer: shuffling before
    sharding gives every shard a mix of classes and spreads an image's captions over shards."""
    order = np.random.default_rng([seed, 0x7368]).permutation(len(items))
    return [items[int(i)] for i in order]
