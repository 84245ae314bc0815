"""The position every training row carries, and the filter that drops what a resumed run consumed.

A row's position is `(shard ordinal << 32) | row index in the shard` (data/stream_position.py), the
ordinal being the shard's index in its source's sorted file list. A reader mixes `RowPositions` in
and passes each block it reads from a shard through `_positioned`; a reader made without a file list
(eval sets, batch inference) leaves its rows as they are.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pyarrow as pa

from raylpclip import batch_schema
from raylpclip.data.decode import skip_id
from raylpclip.data.stream_position import RangeSet, pack


def path_key(path: str) -> str:
    """The same key for a shard whether spelled `s3://b/k`, `b/k` (what pyarrow passes) or a local path."""
    return os.path.normpath(path.split("://", 1)[-1]).lstrip("/")


class RowPositions:
    """Mixin: the ordinal of each file, and the filter applied to each block a file gives."""

    def _init_positions(self, files: list[str] | None, skip: RangeSet | None, counter=None) -> None:
        self._ordinals = None if files is None else {path_key(f): i for i, f in enumerate(files)}
        self._skip = skip if skip is not None and len(skip) else None
        self._counter = counter  # the run's skip counter (runtime/cluster/counters.py)

    def _count_bad_shard(self, path: str) -> None:
        """A shard damaged past reading (its readable rows before the damage are kept): one distinct bad_shard."""
        if self._counter is not None:
            self._counter.add.remote({"bad_shard": 1}, {"bad_shard": [skip_id(path_key(path), "")]})

    def _positioned(self, blocks: Iterator[pa.Table], path: str) -> Iterator[pa.Table]:
        if self._ordinals is None:
            yield from blocks
            return
        ordinal = self._ordinals.get(path_key(path))
        if ordinal is None:
            raise ValueError(f"shard {path} is not in this source's file list; positions need a fixed list")
        row = 0
        for table in blocks:
            positions = pack(ordinal, np.arange(row, row + table.num_rows))
            row += table.num_rows
            table = table.append_column(batch_schema.POSITION, pa.array(positions, pa.int64()))
            if self._skip is not None:
                table = table.filter(pa.array(~self._skip.contains(positions)))
            if table.num_rows:
                yield table
