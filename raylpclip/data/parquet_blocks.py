"""The rows of a parquet shard in blocks, stopping where the file breaks: the read of the Ray Data parquet
reader (runtime/data/parquet_source.py), without Ray, so that it can be tested and fuzzed alone.

A damaged parquet file (cut short, random bytes, a flipped bit in its footer or in a page) makes pyarrow
raise, at the open or at any row group, errors of every kind: ArrowInvalid ("magic bytes not found"),
OSError ("Couldn't deserialize thrift", "Corrupt snappy compressed data"), even UnicodeDecodeError from
the schema's metadata; or it reads strings that are not UTF-8, which each block is checked for. One
such shard would end the whole Ray Data read; here the rows before the damage are kept and the damage
is logged with the path and reported to `on_damage` (counted as `bad_shard`, as for a tar). What the
storage raises is not damage: a reset connection raises on, to be retried, never mistaken for a bad
shard, so reads go through `_Watched`, which tells the two apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


class _Watched:
    """A read-only file that remembers what its reads raised (pyarrow passes a Python file's exception
    through unchanged, so an error that is not one of these came from parsing the bytes). A seek only
    moves a position (the storage is touched at the next read), so what a seek raises is a position out
    of the file, taken from damaged metadata: not watched."""

    def __init__(self, f):
        self.f, self.errors = f, []

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass  # the caller's file: the caller closes it


def parquet_blocks(f, path: str, *, rows_per_block: int,
                   on_damage: Callable[[Exception], None] | None = None) -> Iterator[pa.Table]:
    """Blocks of up to `rows_per_block` rows of the parquet file `f` (a seekable file object), each with
    the shard's `path` as a column, in file order, up to the first damage."""
    watched = _Watched(f)
    try:
        for batch in pq.ParquetFile(pa.PythonFile(watched, mode="r")).iter_batches(batch_size=rows_per_block):
            table = pa.Table.from_batches([batch])
            # Parquet does not check that strings are UTF-8: a flipped bit in a string column came through,
            # and Ray Data's conversion of the block for map_batches raised ("Wrapping ... failed").
            table.validate(full=True)
            yield table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
    except Exception as exc:  # pyarrow's errors on damaged bytes have no common type
        if watched.errors:
            raise  # the storage failed, not the file
        log.warning("skipping the rest of shard %s: %s: %s (not a readable parquet file from here on)",
                    path, type(exc).__name__, exc)
        if on_damage is not None:
            on_damage(exc)
