"""Training readers whose rows carry their `position` (shard ordinal, row in shard), and that can skip
the positions a resumed run has already consumed, before anything is decoded.

Both formats: webdataset tars through the tolerant reader, parquet shards read file by file (Ray's
`read_parquet` cannot say which row of a file a row is). Shards a resumed run has consumed whole are
not opened at all; in the others, consumed rows are dropped as they are read.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import Dataset, FileShuffleConfig
from ray.data.datasource import FileBasedDatasource

from raylpclip import batch_schema
from raylpclip.config import DataConfig, S3Config
from raylpclip.data.shard_files import stats_path
from raylpclip.data.storage import arrow_filesystem
from raylpclip.runtime.data.decode_pool import ReadPlan, decoded, read_plan
from raylpclip.data.stream_position import RangeSet, pack, shard_of
from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK, TolerantWebDatasetDatasource


def path_key(path: str) -> str:
    """The same key for a shard whether spelled `s3://b/k`, `b/k` (what pyarrow passes) or a local path."""
    return os.path.normpath(path.split("://", 1)[-1]).lstrip("/")


class _Positions:
    """Mixin: the ordinal of each file, and the filter applied to each block a file gives."""

    def _init_positions(self, files: list[str], skip: RangeSet | None) -> None:
        self._ordinals = {path_key(f): i for i, f in enumerate(files)}
        self._skip = skip if skip is not None and len(skip) else None

    def _positioned(self, blocks: Iterator[pa.Table], path: str) -> Iterator[pa.Table]:
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


class PositionedWebDataset(_Positions, TolerantWebDatasetDatasource):
    def __init__(self, paths: list[str], *, files: list[str], skip: RangeSet | None = None, **kwargs):
        super().__init__(paths, **kwargs)
        self._init_positions(files, skip)

    def _read_stream(self, stream, path: str) -> Iterator[pa.Table]:
        yield from self._positioned(super()._read_stream(stream, path), path)


class PositionedParquet(_Positions, FileBasedDatasource):
    """img2dataset parquet shards, one file per read task, rows in file order, plus `path`."""

    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, paths: list[str], *, files: list[str], skip: RangeSet | None = None,
                 rows_per_block: int = ROWS_PER_BLOCK, read_ahead: bool = False, **kwargs):
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


def shard_counts(files: list[str], filesystem: pafs.FileSystem | None = None) -> list[int | None]:
    """Samples in each shard per its img2dataset `_stats.json`, None where unknown or unreadable (the
    shard is then read and its consumed rows dropped, which is slower but as correct)."""
    fs = filesystem or pafs.LocalFileSystem()
    counts = []
    for f in files:
        try:
            with fs.open_input_stream(stats_path(f.split("://", 1)[-1])) as stream:
                counts.append(int(json.loads(stream.read())["successes"]))
        except Exception:  # noqa: BLE001 - missing, unreadable, unreachable: unknown
            counts.append(None)
    return counts


def unconsumed_files(files: list[str], skip: RangeSet | None, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """`files` without the shards whose every sample (per their `_stats.json`) is in `skip`."""
    if skip is None or not len(skip):
        return list(files)
    touched = sorted({int(o) for o in shard_of(skip.starts)} & set(range(len(files))))
    counts = dict(zip(touched, shard_counts([files[i] for i in touched], filesystem)))
    return [f for i, f in enumerate(files) if counts.get(i) is None or not skip.covers_shard(i, counts[i])]


def read_positioned(files: list[str], *, fmt: str, s3: S3Config | None = None, shuffle_seed: int | None = None,
                    counter=None, skip: RangeSet | None = None, filesystem: pafs.FileSystem | None = None,
                    decode: DataConfig | None = None) -> tuple[Dataset, ReadPlan] | None:
    """Stream a source's shards (`files`: its whole sorted list, which fixes the ordinals), leaving
    out the positions in `skip`; None when `skip` leaves no shard. Shard order is reshuffled every
    execution when a seed is given. `filesystem`: the one the driver made (it carries the driver's S3
    credentials to workers that may lack them); default: built here from `s3`. `decode`: the settings of
    the decode actors that follow, which may read the shards themselves; the plan returned says so
    (runtime/datasets.read_plan)."""
    filesystem = filesystem if filesystem is not None else arrow_filesystem(files, s3 or S3Config())
    paths = unconsumed_files(files, skip, filesystem)
    if not paths:
        return None
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    plan = read_plan(len(paths), decode)  # the shards read: one read task each, if the actors read
    kwargs = dict(files=files, skip=skip, filesystem=filesystem, shuffle=shuffle, **plan.datasource_args(filesystem))
    source = PositionedWebDataset(paths, counter=counter, **kwargs) if fmt == "webdataset" else PositionedParquet(paths, **kwargs)
    return ray.data.read_datasource(source, **plan.read_args), plan


def train_source(files: list[str], *, fmt: str, cfg: DataConfig, tokenizer, counter=None, skip: RangeSet | None = None,
                 shuffle_seed: int | None = None, filesystem: pafs.FileSystem | None = None) -> Dataset | None:
    """One training source, decoded, rows positioned (and `skip` left out; None when nothing is left)."""
    seed = cfg.shuffle_seed if shuffle_seed is None else shuffle_seed
    read = read_positioned(files, fmt=fmt, s3=cfg.s3, shuffle_seed=seed, counter=counter, skip=skip,
                           filesystem=filesystem, decode=cfg)
    if read is None:
        return None
    ds, plan = read
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=True, counter=counter, plan=plan)
