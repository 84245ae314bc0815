"""A captions CSV as a source: one (image, caption) row per caption, several rows per image allowed,
with an optional held-out split by image. See raylpclip.data.sources for the two-step item/sample model."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from raylpclip.data.sample import Sample
from raylpclip.data.sources import SourceItem, SourceStats, iter_samples

CAPTION_MODES = ("all", "first")
SPLITS = ("all", "train", "eval")


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


def caption_csv_samples(csv_path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                        image_col: str = "image", caption_col: str = "caption", image_size: int | None = None,
                        captions: str = "all", holdout_fraction: float = 0.0, split: str = "all", seed: int = 0,
                        stats: SourceStats | None = None) -> Iterator[Sample]:
    """Samples of a captions CSV (see `caption_csv_items`); pass `stats` to read the skip counts."""
    items = caption_csv_items(csv_path, image_root=image_root, image_col=image_col, caption_col=caption_col,
                              captions=captions, holdout_fraction=holdout_fraction, split=split, seed=seed,
                              stats=stats)
    return iter_samples(items, image_size=image_size, stats=stats)
