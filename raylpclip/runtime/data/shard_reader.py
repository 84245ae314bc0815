"""The one shard reader: img2dataset shards (webdataset tars or parquet, local or s3://) as a Ray Data
dataset of raw rows, for training, evaluation and batch inference alike.

Training reads with positions: every row says where it sits (row_positions.py), and a resumed run
leaves out what it consumed before anything is decoded: shards consumed whole are not opened at all,
consumed rows of the others are dropped as they are read. Evaluation and inference read without.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import ray
from ray.data import Dataset, FileShuffleConfig

from raylpclip.config import DataConfig, S3Config
from raylpclip.data.shard_files import stats_path
from raylpclip.data.storage import arrow_filesystem
from raylpclip.data.stream_position import RangeSet, shard_of
from raylpclip.runtime.data.parquet_source import ParquetShards
from raylpclip.runtime.data.read_plan import ReadPlan, read_plan
from raylpclip.runtime.data.webdataset_source import WebDatasetShards


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


def read_shards(files: list[str], *, fmt: str, s3: S3Config | None = None, filesystem: pafs.FileSystem | None = None,
                shuffle_seed: int | None = None, counter=None, positions: bool = False, skip: RangeSet | None = None,
                decode: DataConfig | None = None) -> tuple[Dataset, ReadPlan] | None:
    """Stream a source's shards (`files`: its whole sorted list, which fixes the ordinals of positions),
    with the plan of where they are read; None when `skip` leaves no shard.

    `positions`: rows carry their position, and `skip` (positions) is left out. Shard order is
    reshuffled every execution when a seed is given. Rows keep the path of their shard (`__url__` /
    `path`) so that errors can name it. `filesystem`: the one the driver made (it carries the driver's S3
    credentials to workers that may lack them); default: built here from `s3`. `decode`: the settings of
    the decode actors that follow, which may read the shards themselves (read_plan.py)."""
    filesystem = filesystem if filesystem is not None else arrow_filesystem(files, s3 or S3Config())
    paths = unconsumed_files(files, skip, filesystem) if positions else list(files)
    if not paths:
        return None
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    plan = read_plan(len(paths), decode)  # the shards read: one read task each, if the actors read
    kwargs = dict(files=files if positions else None, skip=skip if positions else None, filesystem=filesystem,
                  shuffle=shuffle, counter=counter, **plan.datasource_args(filesystem))
    source = WebDatasetShards(paths, **kwargs) if fmt == "webdataset" else ParquetShards(paths, **kwargs)
    return ray.data.read_datasource(source, **plan.read_args), plan
