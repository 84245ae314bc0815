"""data/parquet_blocks: a damaged parquet shard keeps the rows before the damage and is reported, once;
a failing storage is not taken for damage."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylpclip.data.parquet_blocks import parquet_blocks


def _parquet(rows: int = 12, row_group_size: int = 4, compression: str = "none") -> bytes:
    buf = io.BytesIO()
    table = pa.table({"key": [f"{i:09d}" for i in range(rows)], "txt": [f"caption {i} " * 20 for i in range(rows)]})
    pq.write_table(table, buf, row_group_size=row_group_size, compression=compression)
    return buf.getvalue()


def _read(data: bytes, rows_per_block: int = 256):
    damage = []
    blocks = list(parquet_blocks(io.BytesIO(data), "s3://b/00003.parquet", rows_per_block=rows_per_block,
                                 on_damage=damage.append))
    return [key for b in blocks for key in b.column("key").to_pylist()], blocks, damage


def test_a_whole_file_gives_its_rows_in_blocks_with_its_path():
    keys, blocks, damage = _read(_parquet(), rows_per_block=5)
    assert keys == [f"{i:09d}" for i in range(12)] and damage == []
    assert all(b.column("path").to_pylist() == ["s3://b/00003.parquet"] * b.num_rows for b in blocks)


@pytest.mark.parametrize("data", [b"", b"PAR1", b"not parquet at all" * 50, _parquet()[:-9], _parquet()[:300]])
def test_a_file_that_is_no_parquet_is_damage_not_an_error(data, caplog):
    keys, _blocks, damage = _read(data)
    assert keys == [] and len(damage) == 1
    assert "skipping the rest of shard s3://b/00003.parquet" in caplog.text


def test_damage_in_a_later_row_group_keeps_the_rows_before_it():
    data = bytearray(_parquet())
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    third = meta.row_group(2).column(1)  # the captions of rows 8-11
    start = third.dictionary_page_offset or third.data_page_offset
    data[start:start + 40] = b"\xff" * 40  # its page header: garbage
    keys, _blocks, damage = _read(bytes(data), rows_per_block=4)
    assert keys == [f"{i:09d}" for i in range(8)] and len(damage) == 1


def test_strings_that_are_not_utf8_are_damage():
    """Parquet does not check UTF-8; Ray Data's conversion of such a block for map_batches raised."""
    data = _parquet(rows=4, row_group_size=4)
    spot = data.index(b"caption 2 ")
    data = data[:spot] + b"\xff" + data[spot + 1:]  # a byte no UTF-8 text holds, inside a string
    keys, _blocks, damage = _read(data)
    assert keys == [] and len(damage) == 1 and isinstance(damage[0], pa.ArrowInvalid)


class _Resetting(io.BytesIO):
    """A storage stream whose connection drops after the footer is read."""

    reads = 0

    def read(self, n=-1):
        self.reads += 1
        if self.reads > 1:  # (the first read is the footer)
            raise ConnectionResetError("connection reset by peer")
        return super().read(n)


def test_a_failing_storage_raises_for_a_retry_and_is_not_counted_as_damage():
    damage = []
    with pytest.raises(ConnectionResetError):
        list(parquet_blocks(_Resetting(_parquet()), "s3://b/00003.parquet", rows_per_block=4, on_damage=damage.append))
    assert damage == []
