"""img2dataset parquet shards for Ray Data: one file per read task, rows in file order with the shard's
`path`, and each row's position when the reader is given its source's file list (row_positions.py).

Ray's own `read_parquet` cannot say which row of a file a row is, which a resumed run needs to skip
what it consumed; one reader for every use keeps training, evaluation and inference alike.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from raylpclip.data.parquet_blocks import parquet_blocks
from raylpclip.data.stream_position import RangeSet
from raylpclip.runtime.data.row_positions import RowPositions
from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK


class ParquetShards(RowPositions, FileBasedDatasource):
    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, paths: list[str], *, files: list[str] | None = None, skip: RangeSet | None = None,
                 counter=None, rows_per_block: int = ROWS_PER_BLOCK, read_ahead: bool = False, **kwargs):
        super().__init__(paths, **kwargs)
        self._init_positions(files, skip, counter)
        self._rows_per_block = rows_per_block  # (no read-ahead: parquet is read by random access)

    def get_name(self) -> str:
        return "ReadParquetShards"

    def _open_input_source(self, filesystem, path: str, **open_args):
        return filesystem.open_input_file(path)  # parquet needs random access (footer first)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        # A damaged file keeps the rows before the damage and counts as one bad_shard (data/parquet_blocks.py).
        blocks = parquet_blocks(f, path, rows_per_block=self._rows_per_block,
                                on_damage=lambda _exc: self._count_bad_shard(path))
        yield from self._positioned(blocks, path)
