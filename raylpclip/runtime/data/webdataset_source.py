"""A webdataset reader for Ray Data that survives broken shards and never decodes a member.

Ray's own `read_webdataset` aborts the whole dataset on a truncated, empty or garbled tar (tarfile
raises mid-stream) and loses the rows it had gathered from that shard. Here the samples read before
the damage are kept, the shard is counted as `bad_shard` (with its path, so that the run's counter
counts it once however many epochs read it) and logged with its path, and reading goes on.
Members stay bytes: nothing from a shard is ever unpickled or torch.loaded. Rows are what
`read_webdataset(decoder=None)` gives: `__key__`, `__url__` and one binary column per extension
(`jpg`, `txt`, `json`, ...); a sample that lacks a member has null there. Given its source's file list,
the reader also gives each row its position (row_positions.py).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from raylpclip.data.readahead import ReadAhead
from raylpclip.data.stream_position import RangeSet
from raylpclip.data.tarstream import group_samples, readable_members
from raylpclip.runtime.data.row_positions import RowPositions

ROWS_PER_BLOCK = 256
TEXT_COLUMNS = ("__key__", "__url__")


def to_block(rows: list[dict]) -> pa.Table:
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.table({name: pa.array([row.get(name) for row in rows],
                                    type=pa.string() if name in TEXT_COLUMNS else pa.binary())
                     for name in names})


class WebDatasetShards(RowPositions, FileBasedDatasource):
    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths, *, files: list[str] | None = None, skip: RangeSet | None = None, counter=None,
                 rows_per_block: int = ROWS_PER_BLOCK, read_ahead: bool = False, **file_based_kwargs):
        super().__init__(paths, **file_based_kwargs)
        self._init_positions(files, skip, counter)
        self._rows_per_block = rows_per_block
        self._read_ahead = read_ahead

    def get_name(self) -> str:
        return "ReadWebDataset"

    def _read_stream(self, stream, path: str) -> Iterator[pa.Table]:
        yield from self._positioned(self._blocks(stream, path), path)

    def _blocks(self, stream, path: str) -> Iterator[pa.Table]:
        with ReadAhead(stream) if self._read_ahead else contextlib.nullcontext(stream) as source:
            rows = []
            for sample in group_samples(readable_members(source, path, on_damage=lambda _exc: self._count_bad_shard(path))):
                sample["__url__"] = path
                rows.append(sample)
                if len(rows) >= self._rows_per_block:
                    yield to_block(rows)
                    rows = []
            if rows:
                yield to_block(rows)
