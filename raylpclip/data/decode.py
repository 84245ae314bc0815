"""Raw shard rows -> training columns. Pure numpy/PIL: runs inside Ray Data `map_batches` on CPUs.

Two row shapes arrive, both img2dataset layouts:
- webdataset read with `decoder=None`: `__key__`, `jpg` (bytes), `txt` (bytes), `json` (bytes)
- parquet: `key`, `jpg` (bytes), `txt` (str), metadata columns such as `label`

A bad sample is dropped and counted by reason (`bad_image`: missing, undecodable or too large an image;
`no_caption`: missing or blank; `bad_caption`: not UTF-8 or not text), with its identity (`skip_id` of
its shard and key) so that a run's counter can tell a sample read again in the next epoch from a new
one; the rest of the batch goes on. Each row takes its image and caption from the first of the known
columns that it has (a shard may name one sample's image `.png`, another's `.jpg`), and a batch without
any such column has only bad samples: a shard of another layout costs its samples, not the run, and
`fail_after_bad` stops a run whose every shard is so (naming the columns found).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np

from raylpclip import batch_schema
from raylpclip.data.caption_text import caption_text, clip_caption, missing
from raylpclip.data.tokenization import tokenize
from raylpclip.data.transforms import decode_image, eval_transform, train_draft_side, train_transform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "text", "caption")


def _first_present(batch: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in batch), None)


def _row_value(batch: dict[str, Any], names: tuple[str, ...], i: int) -> Any:
    """Row i's value in the first of the columns `names` where it has one (None if in none)."""
    return next((batch[n][i] for n in names if n in batch and not missing(batch[n][i])), None)


def _as_text(value: Any) -> str:
    """Lenient text (metadata members, views.py's captions): undecodable bytes become U+FFFD."""
    if missing(value):
        return ""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return str(value).strip()


META_FIELDS = ("label", "image_id")


def _row_meta(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """The metadata fields the trainers use: parquet columns, or keys of the webdataset `.json` member
    (parsed once per row)."""
    if any(name in batch for name in META_FIELDS):
        return {name: batch[name][i] for name in META_FIELDS if name in batch}
    if "json" in batch and batch["json"][i] is not None:
        try:
            meta = json.loads(_as_text(batch["json"][i]))
            return meta if isinstance(meta, dict) else {}
        except (ValueError, RecursionError):  # (a damaged member, or JSON nested deeper than the parser goes)
            return {}
    return {}


INT64 = np.iinfo(np.int64)


def _label(meta: dict[str, Any]) -> int:
    """The class label, -1 where none fits an int64 (absent, text, NaN, infinite, or out of range)."""
    try:
        label = int(meta.get("label", -1)) if meta.get("label") is not None else -1
    except (TypeError, ValueError, OverflowError):
        return -1
    return label if INT64.min <= label <= INT64.max else -1


def stable_id(text: str) -> int:
    """A process-independent int64 for a string (Python's hash() is salted per process); lone surrogates
    (a JSON "\\udce9" escape) are hashed as they are, not refused."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def skip_id(shard: str, key: str) -> int:
    """A skipped sample's identity (a bad shard's with key ""): the same in every epoch and process."""
    return stable_id(f"{shard}\0{key}")


def _image_id(meta: dict[str, Any], key: str) -> int:
    """Rows of the same image (a captions CSV gives several) share `image_id`; otherwise each row is its own."""
    image_id = meta.get("image_id")
    return stable_id(str(image_id) if image_id is not None else f"key:{key}")


def _keys(batch: dict[str, Any], n: int) -> list[str]:
    col = batch.get("__key__", batch.get("key"))
    return [str(k) for k in col] if col is not None else [str(i) for i in range(n)]


def _skip_names(batch: dict[str, Any], keys: list[str]) -> list[tuple[str, str] | None]:
    """Each row's (shard, key) for `skip_id`: its sample key, else its position; None where the batch has
    neither (a skip there is counted, but cannot be told from the same row read again)."""
    n = len(keys)
    col = batch.get("__url__", batch.get("path"))
    shards = [str(p) for p in col] if col is not None else [""] * n
    if "__key__" in batch or "key" in batch:
        return list(zip(shards, keys))
    if batch_schema.POSITION in batch:
        return [(shard, f"@{p}") for shard, p in zip(shards, batch[batch_schema.POSITION])]
    return [None] * n


def describe_columns(batch: dict[str, Any]) -> str:
    """The columns a shard gave (not the row positions the training readers add)."""
    return ", ".join(sorted(k for k in batch.keys() if k != batch_schema.POSITION))


def source_paths(batch: dict[str, Any]) -> str:
    """The shard files a batch came from (webdataset rows carry `__url__`, parquet rows `path` when
    read with include_paths), for error messages."""
    col = batch.get("__url__", batch.get("path"))
    if col is None:
        return "unknown shards"
    return ", ".join(sorted({str(p) for p in col})[:3])


class DataError(ValueError):
    """Shards that cannot give a single usable sample. The message names the files and what was found."""


class BatchDecoder:
    """Callable for `map_batches`: decode, resize/augment, tokenize.

    Args:
        tokenizer: a HF tokenizer (fast tokenizers pickle, so each Ray actor gets its own copy).
        train: random-resized-crop augmentation when True, CLIP's resize + center crop otherwise.
        with_keys: also emit the sample key (not for `iter_torch_batches`, which needs tensors only).
        jpeg_draft: decode JPEGs larger than needed at 1/2, 1/4 or 1/8 scale (transforms.decode_image),
            never below what the crop and resize need (`data.jpeg_draft`).

    `skipped` counts every skip by reason; `skipped_ids` holds each one's `skip_id` by reason (those
    whose row has a key or position) until a caller takes them (`take_skipped_ids`), so that a counter
    can count distinct samples across epochs.
    """

    def __init__(self, *, tokenizer, image_size: int, context_length: int, train: bool,
                 aug_scale_min: float = 0.9, seed: int = 0, with_keys: bool = False,
                 fail_after_bad: int | None = None, jpeg_draft: bool = False):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.context_length = context_length
        self.train = train
        self.scale = (aug_scale_min, 1.0)
        self.rng = np.random.default_rng(seed)
        self.with_keys = with_keys
        self.skipped: Counter[str] = Counter()
        self.skipped_ids: dict[str, list[int]] = {}
        self.fail_after_bad = fail_after_bad
        self.seen = self.kept = 0
        self.layout: tuple[str, str] | None = None  # (shards, columns) of a batch without image or caption columns
        # The side a JPEG keeps when decoded in draft: what every crop box (train) or the short side (eval) needs.
        if not jpeg_draft:
            self.draft = None
        elif train:
            self.draft = train_draft_side(image_size, scale=self.scale)
        else:
            self.draft = image_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        if _first_present(batch, IMAGE_KEYS) is None or _first_present(batch, TEXT_KEYS) is None:
            # Wrong member names (e.g. `input.jpg` -> column `input.jpg`): kept for the error that
            # `fail_after_bad` raises if no shard has any usable sample.
            self.layout = (source_paths(batch), describe_columns(batch))
        n = len(next(iter(batch.values()))) if batch else 0
        keys = _keys(batch, n)
        names = _skip_names(batch, keys)
        # Each image is written straight into its row of the batch's array (a skipped one's row is
        # reused): at 224 px, ~120 us a sample less than stacking separate arrays (transforms._to_chw).
        images = np.empty((n, 3, self.image_size, self.image_size), np.uint8)
        texts, labels, image_ids, kept, kept_rows = [], [], [], [], []
        for i in range(n):
            image = self._image(_row_value(batch, IMAGE_KEYS, i), out=images[len(kept)])
            text = caption_text(_row_value(batch, TEXT_KEYS, i))
            if image is None or not text:
                self._skip("bad_image" if image is None else "no_caption" if text == "" else "bad_caption", names[i])
                continue
            texts.append(clip_caption(text, self.context_length, getattr(self.tokenizer, "truncation_side", "right")))
            meta = _row_meta(batch, i)
            labels.append(_label(meta))
            image_ids.append(_image_id(meta, keys[i]))
            kept.append(keys[i])
            kept_rows.append(i)
        self._check_usable(n, len(kept), batch)
        out = self._columns(images[:len(kept)], texts, labels, image_ids, kept)
        if batch_schema.POSITION in batch:  # where each row sits in its shard (see data/stream_position.py)
            out[batch_schema.POSITION] = np.asarray(batch[batch_schema.POSITION], dtype=np.int64)[kept_rows]
        return out

    def _skip(self, reason: str, name: tuple[str, str] | None) -> None:
        self.skipped[reason] += 1
        if name is not None:
            self.skipped_ids.setdefault(reason, []).append(skip_id(*name))

    def take_skipped_ids(self) -> dict[str, list[int]]:
        """The identities of the skips since the last call, by reason."""
        taken, self.skipped_ids = self.skipped_ids, {}
        return taken

    def _check_usable(self, seen: int, kept: int, batch: dict[str, Any]) -> None:
        """Stop within one batch or so when nothing decodes, instead of streaming an epoch of garbage."""
        self.seen += seen
        self.kept += kept
        if self.fail_after_bad and self.kept == 0 and self.seen >= self.fail_after_bad:
            layout = "" if self.layout is None else (
                f"; shards {self.layout[0]} have keys [{self.layout[1]}]; expected an image {list(IMAGE_KEYS)} and a "
                f"caption {list(TEXT_KEYS)} per sample (img2dataset layout)")
            raise DataError(f"no usable sample among the first {self.seen} read from shards {source_paths(batch)}: "
                            f"skipped {dict(self.skipped)}{layout}")

    def _image(self, data: Any, out: np.ndarray) -> np.ndarray | None:
        if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)) or len(data) == 0:
            return None  # missing member (None/NaN) or empty file
        try:
            img = decode_image(bytes(data), draft=self.draft)
        except ValueError:
            return None
        if self.train:
            return train_transform(img, size=self.image_size, rng=self.rng, scale=self.scale, out=out)
        return eval_transform(img, size=self.image_size, out=out)

    def _columns(self, images: np.ndarray, texts, labels, image_ids, keys) -> dict[str, np.ndarray]:
        tokens = tokenize(self.tokenizer, texts, context_length=self.context_length) if texts else {
            "input_ids": np.zeros((0, self.context_length), np.int64),
            "attention_mask": np.zeros((0, self.context_length), np.int64),
        }
        out = {
            batch_schema.IMAGE: images,
            batch_schema.INPUT_IDS: tokens["input_ids"],
            batch_schema.ATTENTION_MASK: tokens["attention_mask"],
            batch_schema.LABEL: np.asarray(labels, dtype=np.int64),
            batch_schema.IMAGE_ID: np.asarray(image_ids, dtype=np.int64),
        }
        if self.with_keys:
            out[batch_schema.KEY] = np.asarray(keys, dtype=object)
        return out
