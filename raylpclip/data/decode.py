"""Raw shard rows -> training columns. Pure numpy/PIL: runs inside Ray Data `map_batches` on CPUs.

Two row shapes arrive, both img2dataset layouts:
- webdataset read with `decoder=None`: `__key__`, `jpg` (bytes), `txt` (bytes), `json` (bytes)
- parquet: `key`, `jpg` (bytes), `txt` (str), metadata columns such as `label`

A bad sample (undecodable image, missing/empty caption) is dropped and counted by reason; the rest of
the batch goes on.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from raylpclip import columns
from raylpclip.data.transforms import decode_image, eval_transform, train_transform
from raylpclip.models.tokenizer import tokenize

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "text", "caption")


def _first_present(batch: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in batch), None)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return str(value).strip()


def _label(batch: dict[str, Any], i: int) -> int:
    if "label" in batch and batch["label"][i] is not None:
        return int(batch["label"][i])
    if "json" in batch and batch["json"][i] is not None:
        try:
            return int(json.loads(_as_text(batch["json"][i])).get("label", -1))
        except (ValueError, TypeError):
            return -1
    return -1


def _keys(batch: dict[str, Any], n: int) -> list[str]:
    col = batch.get("__key__", batch.get("key"))
    return [str(k) for k in col] if col is not None else [str(i) for i in range(n)]


def describe_columns(batch: dict[str, Any]) -> str:
    return ", ".join(sorted(batch.keys()))


class BatchDecoder:
    """Callable for `map_batches`: decode, resize/augment, tokenize.

    Args:
        tokenizer: a HF tokenizer (fast tokenizers pickle, so each Ray actor gets its own copy).
        train: random-resized-crop augmentation when True, CLIP's resize + center crop otherwise.
        with_keys: also emit the sample key (not for `iter_torch_batches`, which needs tensors only).
    """

    def __init__(self, *, tokenizer, image_size: int, context_length: int, train: bool,
                 aug_scale_min: float = 0.9, seed: int = 0, with_keys: bool = False):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.context_length = context_length
        self.train = train
        self.scale = (aug_scale_min, 1.0)
        self.rng = np.random.default_rng(seed)
        self.with_keys = with_keys
        self.skipped: Counter[str] = Counter()

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        image_col = _first_present(batch, IMAGE_KEYS)
        text_col = _first_present(batch, TEXT_KEYS)
        if image_col is None or text_col is None:
            # Wrong member names (e.g. `input.jpg` -> column `input.jpg`): no sample can be usable.
            raise KeyError(
                f"shard rows have columns [{describe_columns(batch)}]; expected an image column "
                f"{list(IMAGE_KEYS)} and a caption column {list(TEXT_KEYS)} (img2dataset layout)"
            )
        n = len(batch[image_col])
        keys = _keys(batch, n)
        images, texts, labels, kept = [], [], [], []
        for i in range(n):
            image = self._image(batch[image_col][i])
            text = _as_text(batch[text_col][i])
            if image is None:
                self.skipped["bad_image"] += 1
                continue
            if not text:
                self.skipped["no_caption"] += 1
                continue
            images.append(image)
            texts.append(text)
            labels.append(_label(batch, i))
            kept.append(keys[i])
        return self._columns(images, texts, labels, kept)

    def _image(self, data: Any) -> np.ndarray | None:
        if data is None or len(data) == 0:
            return None
        try:
            img = decode_image(bytes(data))
        except ValueError:
            return None
        if self.train:
            return train_transform(img, size=self.image_size, rng=self.rng, scale=self.scale)
        return eval_transform(img, size=self.image_size)

    def _columns(self, images, texts, labels, keys) -> dict[str, np.ndarray]:
        size = self.image_size
        tokens = tokenize(self.tokenizer, texts, context_length=self.context_length) if texts else {
            "input_ids": np.zeros((0, self.context_length), np.int64),
            "attention_mask": np.zeros((0, self.context_length), np.int64),
        }
        out = {
            columns.IMAGE: np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
            columns.INPUT_IDS: tokens["input_ids"],
            columns.ATTENTION_MASK: tokens["attention_mask"],
            columns.LABEL: np.asarray(labels, dtype=np.int64),
        }
        if self.with_keys:
            out[columns.KEY] = np.asarray(keys, dtype=object)
        return out
