"""Shard rows -> the image views that batch inference encodes: LP-CLIP's weak and strong views, the clean
test image and its corrupted copies. Pure numpy/PIL: runs inside Ray Data `map_batches`.

Each image is decoded once and every requested view becomes its own column `view_<view>` (uint8
(B, 3, S, S)), so one row stays one image and every view of it travels together to the encoder.
View names: `clean` (CLIP's eval resize + centre crop), `weak` (mild random crop + flip), `strong`
(`strong_transform`), and `<corruption>@<severity>` (the clean view, corrupted; eval/corruptions.py).

Random views are seeded from (seed, view, sample key), not from batch order, so a sample's views are
the same whichever actor decodes it and however the stream is split. Images that do not decode are
skipped and counted; labels pass through for evaluation (`label`, -1 when the shards have none), and
nothing here decides anything from them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Sequence

import numpy as np

from raylpclip import batch_schema
from raylpclip.config.inference_sections import ViewsConfig
from raylpclip.data.decode import (IMAGE_KEYS, TEXT_KEYS, DataError, _as_text, _first_present, _image_id, _keys, _label,
                                   _row_meta, describe_columns, source_paths)
from raylpclip.data.tokenization import tokenize, tokenize_on_one_thread
from raylpclip.data.transforms import decode_image, eval_transform, strong_transform, train_transform
from raylpclip.eval.corruptions import CORRUPTIONS, SEVERITIES, corrupt

CLEAN, WEAK, STRONG = "clean", "weak", "strong"
IMAGE_PREFIX = "view_"  # not "image_": batch_schema.IMAGE_ID is "image_id"


def corruption_view(name: str, severity: int) -> str:
    return f"{name}@{severity}"


def parse_view(view: str) -> tuple[str, int] | None:
    """(corruption, severity) for a corruption view, None for clean/weak/strong; ValueError otherwise."""
    if view in (CLEAN, WEAK, STRONG):
        return None
    name, _, severity = view.partition("@")
    if name not in CORRUPTIONS or not severity.isdigit() or int(severity) not in SEVERITIES:
        raise ValueError(f"unknown view {view!r}: expected clean, weak, strong or <corruption>@<1-5> with a "
                         f"corruption among {sorted(CORRUPTIONS)}")
    return name, int(severity)


def corruption_views(names: Sequence[str], severities: Sequence[int]) -> list[str]:
    views = [corruption_view(n, s) for n in names for s in severities]
    for view in views:
        parse_view(view)
    return views


def view_rng(seed: int, view: str, key: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}|{view}|{key}".encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def make_view(img, view: str, *, size: int, key: str, seed: int, clean: np.ndarray | None = None,
              augment: ViewsConfig | None = None) -> np.ndarray:
    """One view of a decoded PIL image -> uint8 (3, size, size). `clean` reuses an already made clean view;
    `augment`: the weak and strong views' settings (default: ViewsConfig's)."""
    a = augment or ViewsConfig()
    if view == WEAK:
        return train_transform(img, size=size, rng=view_rng(seed, view, key), scale=(a.weak_scale_min, 1.0),
                               hflip=a.weak_hflip)
    if view == STRONG:
        return strong_transform(img, size=size, rng=view_rng(seed, view, key), scale=(a.strong_scale_min, 1.0),
                                hflip=a.strong_hflip, jitter=a.strong_jitter, grayscale_p=a.strong_grayscale_p)
    base = clean if clean is not None else eval_transform(img, size=size)
    parsed = parse_view(view)
    if parsed is None:
        return base
    name, severity = parsed
    # The corruption key is the sample key alone, so `raylpclip eval` and any other tool that corrupts the
    # same sample with eval/corruptions.py get the same pixels.
    return corrupt(base.transpose(1, 2, 0), name, severity, key=key).transpose(2, 0, 1).copy()


class ViewDecoder:
    """`map_batches` callable: raw shard rows -> `view_<view>` columns, `label`, `image_id`, `key`, and
    with a tokenizer the caption's `input_ids`/`attention_mask` (retrieval evaluation)."""

    def __init__(self, *, views: Sequence[str], image_size: int, seed: int = 0, tokenizer=None,
                 context_length: int = 0, fail_after_bad: int | None = 1000, counter=None,
                 augment: ViewsConfig | None = None):
        if not views:
            raise ValueError("ViewDecoder needs at least one view")
        for view in views:
            parse_view(view)
        self.views = list(views)
        self.augment = augment
        self.image_size = image_size
        self.seed = seed
        self.tokenizer = tokenizer
        if tokenizer is not None:
            tokenize_on_one_thread()  # runs as a decode actor reserving `data.decode_cpus` CPUs
        self.context_length = context_length
        self.fail_after_bad = fail_after_bad
        self.counter = counter
        self.skipped: Counter[str] = Counter()
        self.seen = self.kept = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        image_col = _first_present(batch, IMAGE_KEYS)
        text_col = _first_present(batch, TEXT_KEYS)
        if image_col is None or (self.tokenizer is not None and text_col is None):
            wanted = f"an image {list(IMAGE_KEYS)}" + (f" and a caption {list(TEXT_KEYS)}" if self.tokenizer else "")
            raise DataError(f"shards {source_paths(batch)} have keys [{describe_columns(batch)}]; expected {wanted} "
                            f"per sample (img2dataset layout)")
        n = len(batch[image_col])
        keys = _keys(batch, n)
        rows, texts, skipped = [], [], Counter()
        for i in range(n):
            img = self._decode(batch[image_col][i])
            text = _as_text(batch[text_col][i]) if text_col else ""
            if img is None:
                skipped["bad_image"] += 1
                continue
            if self.tokenizer is not None and not text:
                skipped["no_caption"] += 1
                continue
            rows.append((i, img))
            texts.append(text)
        self._account(n, len(rows), skipped, batch)
        return self._columns(batch, keys, rows, texts)

    @staticmethod
    def _decode(data: Any):
        if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)) or len(data) == 0:
            return None
        try:
            return decode_image(bytes(data))
        except ValueError:
            return None

    def _account(self, seen: int, kept: int, skipped: Counter, batch: dict[str, Any]) -> None:
        self.skipped.update(skipped)
        if skipped and self.counter is not None:
            self.counter.add.remote(dict(skipped))
        self.seen += seen
        self.kept += kept
        if self.fail_after_bad and self.kept == 0 and self.seen >= self.fail_after_bad:
            raise DataError(f"no usable image among the first {self.seen} read from shards {source_paths(batch)}: "
                            f"skipped {dict(self.skipped)}")

    def _columns(self, batch, keys, rows, texts) -> dict[str, np.ndarray]:
        size = self.image_size
        per_view = {view: [] for view in self.views}
        labels, image_ids, kept_keys = [], [], []
        for i, img in rows:
            clean = eval_transform(img, size=size)
            for view in self.views:
                per_view[view].append(make_view(img, view, size=size, key=keys[i], seed=self.seed, clean=clean,
                                                augment=self.augment))
            meta = _row_meta(batch, i)
            labels.append(_label(meta))
            image_ids.append(_image_id(meta, keys[i]))
            kept_keys.append(keys[i])
        out = {IMAGE_PREFIX + view: np.stack(imgs) if imgs else np.zeros((0, 3, size, size), np.uint8)
               for view, imgs in per_view.items()}
        out[batch_schema.LABEL] = np.asarray(labels, dtype=np.int64)
        out[batch_schema.IMAGE_ID] = np.asarray(image_ids, dtype=np.int64)
        out[batch_schema.KEY] = np.asarray(kept_keys, dtype=object)
        if self.tokenizer is not None:
            tokens = tokenize(self.tokenizer, texts, context_length=self.context_length) if texts else {
                "input_ids": np.zeros((0, self.context_length), np.int64),
                "attention_mask": np.zeros((0, self.context_length), np.int64)}
            out[batch_schema.INPUT_IDS] = tokens["input_ids"]
            out[batch_schema.ATTENTION_MASK] = tokens["attention_mask"]
        return out
