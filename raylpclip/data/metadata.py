"""Read captions and labels straight from shard files, without Ray: for tokenizer training and for
finding the class names of a labelled eval set before any worker starts."""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import fsspec

from raylpclip.data.decode import IMAGE_KEYS, TEXT_KEYS
from raylpclip.data.parquet_blocks import parquet_blocks
from raylpclip.data.tarstream import group_samples, readable_members


def iter_records(paths: Sequence[str], *, fmt: str) -> Iterator[dict]:
    """Yield {"caption": str, "meta": dict} per sample, images skipped (cheap)."""
    for path in paths:
        yield from _parquet_records(path) if fmt == "parquet" else _tar_records(path)


def _parquet_records(path: str) -> Iterator[dict]:
    """Records of a parquet shard; a damaged file gives the rows before the damage, with a warning
    naming it (data/parquet_blocks.py, as the training pipeline reads it)."""
    with fsspec.open(path, "rb") as f:
        for block in parquet_blocks(f, path, rows_per_block=4096):
            drop = [c for c in block.column_names if c in IMAGE_KEYS or c == "path"]
            for row in block.drop_columns(drop).to_pylist():
                text = next((row[c] for c in TEXT_KEYS if c in row), None)
                yield {"caption": text if isinstance(text, str) else "", "meta": row}


def _tar_records(path: str) -> Iterator[dict]:
    """Records of a webdataset tar; a damaged tar gives what was readable before the damage (the
    training pipeline skips and counts it the same way)."""
    with fsspec.open(path, "rb") as f:
        for sample in group_samples(readable_members(f, path)):
            text = next((sample[k] for k in TEXT_KEYS if k in sample), b"")
            try:
                meta = json.loads(sample["json"]) if "json" in sample else {}
            except ValueError:
                meta = {}
            yield {"caption": text.decode("utf-8", errors="replace").strip(), "meta": meta}


def sample_captions(paths: Sequence[str], *, fmt: str, limit: int) -> list[str]:
    captions = []
    for record in iter_records(paths, fmt=fmt):
        if record["caption"]:
            captions.append(record["caption"])
        if len(captions) >= limit:
            break
    return captions


def label_names(paths: Sequence[str], *, fmt: str) -> list[str]:
    """Class names indexed by label, from the `label`/`label_name` metadata of labelled shards; [] for
    shards without labels (image-caption sets, evaluated by retrieval instead)."""
    names: dict[int, str] = {}
    for record in iter_records(paths, fmt=fmt):
        meta = record["meta"]
        if meta.get("label") is not None and meta.get("label_name"):
            names[int(meta["label"])] = str(meta["label_name"])
    if not names:
        return []
    missing = [i for i in range(max(names) + 1) if i not in names]
    if missing:
        # Labels never seen in the eval set still need a name to be a zero-shot class.
        raise ValueError(f"eval shards name labels {sorted(names)[:10]}... but not {missing[:10]}; set eval.classnames")
    return [names[i] for i in range(len(names))]
