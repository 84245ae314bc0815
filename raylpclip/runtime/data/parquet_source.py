"""img2dataset parquet shards for Ray Data: one file per read task, rows in file order with the shard's
`path`, and each row's position when the reader is given its source's file list (row_positions.py).

Ray's own `read_parquet` cannot say which row of a file a row is, which a resumed run needs to skip
what it consumed; one reader for every use keeps training, evaluation and inference alike.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from raylpclip.data.stream_position import RangeSet
from raylpclip.runtime.data.row_positions import RowPositions
from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK


class ParquetShards(RowPositions, FileBasedDatasource):
    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, paths: list[str], *, files: list[str] | None = None, skip: RangeSet | None = None,
                 counter=None, rows_per_block: int = ROWS_PER_BLOCK, read_ahead: bool = False, **kwargs):
        super().__init__(paths, **kwargs)
        self._init_positions(files, skip)
        self._rows_per_block = rows_per_block  # (no read-ahead: parquet is read by random access)

    def get_name(self) -> str:
        return "ReadParquetShards"

    def _open_input_source(self, filesystem, path: str, **open_args):
        return filesystem.open_input_file(path)  # parquet needs random access (footer first)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        def blocks():
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self._rows_per_block):
                table = pa.Table.from_batches([batch])
                yield table.append_column("path", pa.array([path] * table.num_rows, pa.string()))

        yield from self._positioned(blocks(), path)
