"""The data-stream position: interval sets of consumed samples, merging workers' news, and the
readers' per-row positions and skips (pure pyarrow here; the Ray readers are tested end to end)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raylpclip import batch_schema
from raylpclip.data.stream_position import (PositionTracker, RangeSet, SourcePosition, dumps, files_fingerprint, loads,
                                            merge, pack, shard_of)
from raylpclip.runtime.data.row_positions import RowPositions, path_key


def test_rangeset_from_positions_by_hand():
    s = RangeSet.of([5, 3, 4, 9, 10, 4, 20])
    assert s.to_json() == [[3, 6], [9, 11], [20, 21]]
    assert len(s) == 6 and s.intervals == 3
    assert s.contains([2, 3, 5, 6, 8, 9, 10, 11, 20, 21]).tolist() == [
        False, True, True, False, False, True, True, False, True, False]


def test_union_merges_overlapping_and_touching_intervals():
    a = RangeSet.from_json([[0, 4], [10, 12]])
    b = RangeSet.from_json([[4, 6], [11, 15], [30, 31]])
    assert a.union(b).to_json() == [[0, 6], [10, 15], [30, 31]]
    assert a.union(RangeSet()) == a and RangeSet().union(b) == b
    contained = RangeSet.from_json([[0, 100]]).union(RangeSet.from_json([[5, 10], [50, 60]]))
    assert contained.to_json() == [[0, 100]]


def test_union_of_random_sets_equals_set_union():
    rng = np.random.default_rng(0)
    x, y = rng.choice(500, 200, replace=False), rng.choice(500, 300, replace=False)
    got = RangeSet.of(x).union(RangeSet.of(y))
    assert got == RangeSet.of(np.concatenate([x, y]))
    assert len(got) == len(set(x) | set(y))


def test_positions_pack_shard_and_row():
    p = pack(3, np.array([0, 7]))
    assert p.tolist() == [3 * 2**32, 3 * 2**32 + 7] and shard_of(p).tolist() == [3, 3]
    s = RangeSet.of(pack(2, np.arange(100)))
    assert s.covers_shard(2, 100) and not s.covers_shard(2, 101) and not s.covers_shard(1, 1)


def test_merge_unions_workers_and_drops_a_finished_epoch():
    start = SourcePosition(epoch=0, consumed=RangeSet.of([0, 1, 2]), fingerprint="f")
    w0, w1 = PositionTracker(start), PositionTracker(start)
    w0.consumed([3, 4])
    w1.consumed([10, 11])
    pos = merge(start, [w0.take_news(), w1.take_news()])
    assert (pos.epoch, pos.consumed.to_json(), pos.fingerprint) == (0, [[0, 5], [10, 12]], "f")
    # The epoch ends within the next interval: the old epoch's tail is done with, only the new epoch counts.
    w0.consumed([5])
    w0.next_epoch()
    w0.consumed([100])
    w1.consumed([6])
    w1.next_epoch()
    w1.consumed([200])
    pos = merge(pos, [w0.take_news(), w1.take_news()])
    assert (pos.epoch, pos.consumed.to_json()) == (1, [[100, 101], [200, 201]])
    assert w0.take_news() == {}


def test_position_file_round_trip_and_version_check():
    positions = [SourcePosition(2, RangeSet.from_json([[0, 10]]), "abc"), SourcePosition()]
    step, back = loads(dumps(positions, step=40))
    assert step == 40 and [(p.epoch, p.consumed, p.fingerprint) for p in back] == [
        (2, RangeSet.from_json([[0, 10]]), "abc"), (0, RangeSet(), "")]
    with pytest.raises(ValueError, match="format"):
        loads(b'{"version": 99, "step": 1, "sources": []}')
    assert files_fingerprint(["a", "b"]) != files_fingerprint(["b", "a"])


def test_reader_positions_rows_and_skips_consumed_ones():
    reader = RowPositions()
    files = ["s3://bucket/data/00000.tar", "s3://bucket/data/00001.tar"]
    reader._init_positions(files, RangeSet.of(pack(1, np.array([0, 1, 2, 5]))))
    blocks = [pa.table({"__key__": [f"k{i}" for i in range(4)]}), pa.table({"__key__": ["k4", "k5", "k6"]})]
    # pyarrow hands the reader `bucket/data/00001.tar` (no scheme): the same shard, ordinal 1.
    out = list(reader._positioned(iter(blocks), "bucket/data/00001.tar"))
    assert [t.column("__key__").to_pylist() for t in out] == [["k3"], ["k4", "k6"]]
    assert [t.column(batch_schema.POSITION).to_pylist() for t in out] == [
        [2**32 + 3], [2**32 + 4, 2**32 + 6]]
    untouched = list(reader._positioned(iter(blocks[:1]), "/bucket/data/00000.tar"))
    assert untouched[0].column(batch_schema.POSITION).to_pylist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not in this source's file list"):
        list(reader._positioned(iter(blocks), "bucket/other/00000.tar"))
    assert path_key("s3://b/k/x.tar") == path_key("b/k/x.tar") == path_key("/b/k/x.tar")


def test_parquet_reader_positions_rows_in_file_order(tmp_path):
    import pyarrow.parquet as pq

    from raylpclip.runtime.data.parquet_source import ParquetShards

    path = tmp_path / "00001.parquet"
    pq.write_table(pa.table({"key": [f"{i:04d}" for i in range(600)], "txt": ["x"] * 600}), path, row_group_size=250)
    reader = ParquetShards([str(path)], files=[str(tmp_path / "00000.parquet"), str(path)],
                               skip=RangeSet.of(pack(1, np.arange(0, 300))), rows_per_block=128)
    with open(path, "rb") as f:
        tables = list(reader._read_stream(pa.PythonFile(f, mode="r"), str(path)))
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    assert keys == [f"{i:04d}" for i in range(300, 600)]
    assert [p - 2**32 for t in tables for p in t.column(batch_schema.POSITION).to_pylist()] == list(range(300, 600))
    assert {p for t in tables for p in t.column("path").to_pylist()} == {str(path)}
