"""Parquet shards of the fuzzed corpus (shard_fuzz.py) whose columns have the wrong types or nulls, each
with the samples a correct reader delivers (good) and counts (bad)."""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from raylpclip.data.shard_writer import _parquet_bytes
from tests.drills.fuzz_payloads import Item, _with


def _valid_utf8(data: bytes | None) -> bool:
    try:
        data is None or data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def table_bytes(columns: dict[str, pa.Array], row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=row_group_size)
    return buf.getvalue()


def columns_of(items: list[Item]) -> dict[str, pa.Array]:
    """img2dataset's parquet layout, reduced: key, jpg, txt (binary where a caption is not UTF-8), label."""
    txt = [it.txt for it in items]
    text_type = pa.string() if all(_valid_utf8(t) for t in txt) else pa.binary()
    return {"key": pa.array([it.key for it in items], pa.string()),
            "jpg": pa.array([it.jpg for it in items], pa.binary()),
            "txt": pa.array([t if text_type == pa.binary() or t is None else t.decode() for t in txt], text_type),
            "label": pa.array([it.label if it.label is not None else None for it in items], pa.int64())}


def parquet_base(items: list[Item]) -> bytes:
    """The shard as shard_writer.write_shard writes a parquet one."""
    metas = [json.loads(it.json) for it in items]
    leading = {"key": pa.array([it.key for it in items], pa.string()), "jpg": pa.array([it.jpg for it in items]),
               "txt": pa.array([it.caption for it in items], pa.string())}
    return _parquet_bytes(metas, leading=leading)


def parquet_of(items: list[Item]) -> bytes:
    return table_bytes(columns_of(items))


def _some(rng: random.Random, n: int) -> set[int]:
    return set(rng.sample(range(n), rng.randint(1, n - 1)))


def retyped(items: list[Item], rng: random.Random) -> tuple[str, bytes, dict[str, Item], set[str]]:
    """(variant, parquet bytes, good samples by key, bad keys) for one variant of wrong types or nulls."""
    variant = rng.choice(VARIANTS)
    cols, n = columns_of(items), len(items)
    good: dict[str, Item] = {it.key: it for it in items}
    bad: set[str] = set()

    def make_bad(rows) -> None:
        for i in rows:
            bad.add(items[i].key)
            good.pop(items[i].key, None)

    rows = _some(rng, n)
    if variant == "txt_int":  # numbers where captions belong: not captions
        cols["txt"] = pa.array(list(range(n)), pa.int64())
        make_bad(range(n))
    elif variant == "txt_null_caption_kept":  # the next caption column is read where txt is null
        cols["caption"] = cols["txt"]
        cols["txt"] = pa.array([None if i in rows else it.caption for i, it in enumerate(items)], pa.string())
    elif variant == "txt_and_caption_null":
        cols["txt"] = cols["caption"] = pa.array([None if i in rows else it.caption for i, it in enumerate(items)])
        make_bad(rows)
    elif variant == "txt_null_type":
        cols["txt"] = pa.nulls(n)
        make_bad(range(n))
    elif variant == "txt_binary_one_bad":
        cols["txt"] = pa.array([b"caf\xe9" if i in rows else it.txt for i, it in enumerate(items)], pa.binary())
        make_bad(rows)
    elif variant == "caption_list":
        del cols["txt"]
        cols["caption"] = pa.array([[it.caption] for it in items], pa.list_(pa.string()))
        make_bad(range(n))
    elif variant == "txt_dictionary":
        cols["txt"] = cols["txt"].dictionary_encode()
    elif variant == "jpg_string":
        cols["jpg"] = pa.array([it.jpg.decode("latin-1") for it in items], pa.string())
        make_bad(range(n))
    elif variant == "jpg_null_rows":
        cols["jpg"] = pa.array([None if i in rows else it.jpg for i, it in enumerate(items)], pa.binary())
        make_bad(rows)
    elif variant == "jpg_null_type":
        cols["jpg"] = pa.nulls(n)
        make_bad(range(n))
    elif variant == "image_column_renamed":
        cols["image"] = cols.pop("jpg")
        make_bad(range(n))
    elif variant == "large_types":
        cols["jpg"], cols["txt"] = cols["jpg"].cast(pa.large_binary()), cols["txt"].cast(pa.large_string())
    elif variant == "label_text":
        cols["label"] = pa.array([str(it.label) if i in rows else "cat" for i, it in enumerate(items)])
        good = {k: _with(it, label=it.label if i in rows else -1) for i, (k, it) in enumerate(good.items())}
    elif variant in ("label_null", "label_huge", "label_inf"):
        values = {"label_null": None, "label_huge": 2**63 + 5, "label_inf": float("inf")}[variant]
        kind = {"label_null": pa.int64(), "label_huge": pa.uint64(), "label_inf": pa.float64()}[variant]
        cols["label"] = pa.array([values if i in rows else it.label for i, it in enumerate(items)], kind)
        good = {k: _with(it, label=-1 if i in rows else it.label) for i, (k, it) in enumerate(good.items())}
    elif variant == "key_int":
        cols["key"] = pa.array([int(it.key) for it in items], pa.int64())
        good = {str(int(k)): _with(it, key=str(int(k))) for k, it in good.items()}
    elif variant == "key_missing":  # rows are then named by their place in the block
        del cols["key"]
        good = {str(i): _with(it, key=str(i)) for i, it in enumerate(good.values())}
    elif variant == "empty":
        cols = {name: col.slice(0, 0) for name, col in cols.items()}
        good = {}
    elif variant == "row_groups":
        return variant, table_bytes(cols, row_group_size=3), good, bad
    return variant, table_bytes(cols), good, bad


VARIANTS = ("txt_int", "txt_null_caption_kept", "txt_and_caption_null", "txt_null_type", "txt_binary_one_bad",
            "caption_list", "txt_dictionary", "jpg_string", "jpg_null_rows", "jpg_null_type", "image_column_renamed",
            "large_types", "label_text", "label_null", "label_huge", "label_inf", "key_int", "key_missing", "empty",
            "row_groups")
