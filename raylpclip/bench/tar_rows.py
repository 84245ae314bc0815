"""Sample rows read from webdataset tars, as the readers see them: one dict per sample, and batches of
them in the column form Ray Data hands `map_batches`."""

from __future__ import annotations

import itertools
import tarfile
from typing import Any, Iterator, Sequence

import fsspec
import numpy as np

from raylpclip.data.decode import IMAGE_KEYS
from raylpclip.data.tarstream import group_samples


def tar_rows(path: str) -> Iterator[dict[str, Any]]:
    """One dict per sample, `__key__`, `__url__` and one bytes entry per member extension, the members
    read with `tarfile` as webdataset's own loader does (the standard route's reader, on purpose)."""
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        members = ((info.name, tar.extractfile(info).read()) for info in tar if info.isreg())
        for row in group_samples(members):
            row["__url__"] = path
            yield row


def rows_to_batch(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> the column batch Ray Data hands `map_batches` (object arrays, None for a missing member)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    batch = {}
    for name in names:
        col = np.empty(len(rows), dtype=object)
        col[:] = [row.get(name) for row in rows]
        batch[name] = col
    return batch


def first_rows(files: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The first `n` sample rows in shard order, in memory, for the plain loops."""
    return list(itertools.islice((row for path in files for row in tar_rows(path)), n))


def image_bytes(rows: Sequence[dict[str, Any]]) -> list[bytes]:
    found = (next((row[k] for k in IMAGE_KEYS if row.get(k)), None) for row in rows)
    return [data for data in found if data is not None]
