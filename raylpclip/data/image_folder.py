"""An image folder as a source: ROOT/<class>/<image>, one subfolder per class (torchvision's ImageFolder
layout), captioned from templates filled with the class name; optionally a seeded share of deliberately
wrong captions (noisy correspondence). See raylpclip.data.sources for the two-step item/sample model."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from raylpclip.data.caption_templates import DEFAULT_TEMPLATES, check_templates
from raylpclip.data.sample import Sample
from raylpclip.data.sources import SourceItem, SourceStats, iter_samples

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_TEMPLATE_STREAM, _MISMATCH_STREAM = 0x7465, 0x6D6D  # separate random streams per decision


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


def image_folder_samples(root: str | os.PathLike, *, templates: Sequence[str] = DEFAULT_TEMPLATES,
                         mismatch_fraction: float = 0.0, seed: int = 0, image_size: int | None = None,
                         classnames: Sequence[str] | Mapping[str, str] | None = None,
                         stats: SourceStats | None = None) -> Iterator[Sample]:
    """Samples of an image folder (see `image_folder_items`); pass `stats` to read the skip counts."""
    items = image_folder_items(root, templates=templates, mismatch_fraction=mismatch_fraction, seed=seed,
                               classnames=classnames)
    return iter_samples(items, image_size=image_size, stats=stats)
