"""Captions and labels read straight from shards before Ray starts (data/metadata.py: tokenizer training,
the eval set's class names): both layouts alike, and a damaged shard gives what came before the damage,
as the training pipeline reads it, instead of ending the command."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from raylpclip.data.metadata import iter_records, sample_captions
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples


def _shards(tmp_path, fmt: str) -> list[str]:
    return write_shards(generate_samples(60, spec=SyntheticSpec(), seed=3), str(tmp_path / fmt), fmt=fmt,
                        samples_per_shard=30)


def test_both_layouts_give_the_same_records(tmp_path):
    tar, parquet = _shards(tmp_path, "webdataset"), _shards(tmp_path, "parquet")
    from_tar, from_parquet = list(iter_records(tar, fmt="webdataset")), list(iter_records(parquet, fmt="parquet"))
    assert len(from_tar) == len(from_parquet) == 60
    assert [r["caption"] for r in from_tar] == [r["caption"] for r in from_parquet]
    assert [r["meta"]["label"] for r in from_tar] == [r["meta"]["label"] for r in from_parquet]
    assert "jpg" not in from_parquet[0]["meta"] and "path" not in from_parquet[0]["meta"]


def test_a_damaged_parquet_keeps_its_rows_before_the_damage(tmp_path, caplog):
    good = _shards(tmp_path, "parquet")
    damaged = tmp_path / "damaged.parquet"
    table = pq.read_table(good[0])
    pq.write_table(table, damaged, row_group_size=10)  # 3 row groups
    data = damaged.read_bytes()
    footer = data[-8 - int.from_bytes(data[-8:-4], "little"):]  # the metadata: keep it, break a page
    starts = sorted(rg.column(0).data_page_offset for rg in (pq.ParquetFile(damaged).metadata.row_group(i)
                                                             for i in range(3)))
    broken = bytearray(data)
    broken[starts[2]:starts[2] + 64] = b"\xff" * 64  # the third row group's first page
    damaged.write_bytes(bytes(broken[:len(data) - len(footer)]) + footer)
    with caplog.at_level(logging.WARNING):
        records = list(iter_records([str(damaged), good[1]], fmt="parquet"))
    # pyarrow may read ahead past the first row groups before it hits the damage: what it yielded is kept
    kept = len(records) - 30
    assert 0 <= kept < 30 and records[kept:] == list(iter_records([good[1]], fmt="parquet"))  # the next one whole
    assert "skipping the rest of shard" in caplog.text and "damaged.parquet" in caplog.text
    assert len(sample_captions([str(damaged), good[1]], fmt="parquet", limit=100)) == len(records)


def test_a_cut_tar_keeps_its_samples_before_the_cut(tmp_path, caplog):
    tar = _shards(tmp_path, "webdataset")
    data = open(tar[0], "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING):
        records = list(iter_records([str(cut)], fmt="webdataset"))
    assert 5 < len(records) < 30 and "cut.tar" in caplog.text
    whole = list(iter_records(tar[:1], fmt="webdataset"))
    assert records[:-1] == whole[:len(records) - 1]  # the last may have lost its caption to the cut
