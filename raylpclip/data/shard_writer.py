"""Write shards in the exact layouts img2dataset produces (webdataset or parquet).

Writing the same layout as img2dataset means the readers never care whether shards came from the
synthetic generator or from a real download of LAION/CC: same file names, same key scheme, same
`.json`/parquet metadata, same `_stats.json`. Finding written shards again is raylpclip.data.shard_files.

Paths may be local or any fsspec URL (`s3://bucket/prefix`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import time
from typing import Any, Iterable, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from raylpclip.data.sample import Sample
from raylpclip.data.shard_files import check_fmt

OOM_SHARD_COUNT = 5  # img2dataset's default: shard names 00000, 00001, ...
TAR_MTIME = 0  # fixed so that the same samples give byte-identical tars
# The fields img2dataset writes for every sample; a sample's meta may not reuse them (except `url`).
WRITER_FIELDS = ("key", "caption", "url", "status", "error_message", "width", "height",
                 "original_width", "original_height", "exif", "sha256")
WRITER_TYPES = {"key": pa.string(), "caption": pa.string(), "url": pa.string(), "status": pa.string(),
                "error_message": pa.string(), "width": pa.int64(), "height": pa.int64(),
                "original_width": pa.int64(), "original_height": pa.int64(), "exif": pa.string(),
                "sha256": pa.string()}


def oom_sample_per_shard(samples_per_shard: int) -> int:
    """Digits for the in-shard index: img2dataset's `math.ceil(math.log10(number_sample_per_shard))`.

    So 10000 -> 4 and 1000 -> 3 (indices 0..999 fit in 3 digits); 1001 -> 4.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}; expected >= 1")
    return math.ceil(math.log10(samples_per_shard))


def oom_shard_count(shard_count: int | None) -> int:
    """Digits for the shard id: img2dataset's default 5, widened only if more shards than fit."""
    if shard_count is None or shard_count <= 1:
        return OOM_SHARD_COUNT
    return max(OOM_SHARD_COUNT, math.ceil(math.log10(shard_count)))


def sample_key(shard_id: int, index: int, *, samples_per_shard: int, shard_digits: int = OOM_SHARD_COUNT) -> str:
    """img2dataset's `compute_key`: shard id then in-shard index, zero-padded (e.g. "000000042")."""
    digits = oom_sample_per_shard(samples_per_shard)
    return f"{shard_id * 10**digits + index:0{shard_digits + digits}d}"


def _metadata(sample: Sample, key: str) -> dict[str, Any]:
    """img2dataset's per-sample metadata, then the sample's own meta fields."""
    clash = sorted(set(sample.meta) & (set(WRITER_FIELDS) - {"url"}))
    if clash:
        raise ValueError(f"sample meta fields {clash} are reserved for the shard writer ({WRITER_FIELDS})")
    width, height = Image.open(io.BytesIO(sample.jpg)).size  # header only, no pixel decode
    meta = {"key": key, "caption": sample.caption, "url": sample.meta.get("url"), "status": "success",
            "error_message": None, "width": width, "height": height, "original_width": width,
            "original_height": height, "exif": None, "sha256": hashlib.sha256(sample.jpg).hexdigest()}
    meta.update((k, v) for k, v in sample.meta.items() if k != "url")
    return meta


def _tar_bytes(samples: Sequence[Sample], metas: Sequence[dict[str, Any]]) -> bytes:
    """Members `<key>.jpg`, `<key>.json`, `<key>.txt` per sample, in webdataset TarWriter's sorted
    extension order, with its mode/owner and a fixed mtime."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample, meta in zip(samples, metas):
            parts = {"jpg": sample.jpg, "json": json.dumps(meta, indent=4).encode("utf-8"),
                     "txt": sample.caption.encode("utf-8")}
            for ext in sorted(parts):
                info = tarfile.TarInfo(f"{meta['key']}.{ext}")
                info.size, info.mtime, info.mode = len(parts[ext]), TAR_MTIME, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(parts[ext]))
    return buf.getvalue()


def _column(name: str, values: list[Any]) -> pa.Array:
    if name in WRITER_TYPES:
        return pa.array(values, type=WRITER_TYPES[name])
    if any(isinstance(v, (dict, list, tuple)) for v in values):
        # Nested meta becomes a JSON string column: a schema that stays the same in every shard.
        values = [None if v is None else json.dumps(v) for v in values]
    array = pa.array(values)
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


def _parquet_bytes(metas: Sequence[dict[str, Any]], *, leading: dict[str, pa.Array] | None = None) -> bytes:
    names = list(dict.fromkeys(k for meta in metas for k in meta))
    names = names or list(WRITER_FIELDS)
    columns = dict(leading or {})
    for name in names:
        if name not in columns:
            columns[name] = _column(name, [meta.get(name) for meta in metas])
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _join(out_dir: str, name: str) -> str:
    return f"{out_dir.rstrip('/')}/{name}"


def _write_bytes(path: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write in one go; on local disk via `<path>.tmp` + rename, so a crash never leaves a
    truncated file under the final name (an object-store PUT is all-or-nothing already)."""
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(fs_path) or ".", exist_ok=True)
        with open(fs_path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(fs_path + ".tmp", fs_path)
    else:
        with fs.open(fs_path, "wb") as f:
            f.write(data)


def write_shard(samples: Sequence[Sample], out_dir: str, *, shard_id: int, fmt: str = "webdataset",
                samples_per_shard: int, shard_count: int | None = None,
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one shard (`{shard_id:05d}.tar` + `.parquet`, or `.parquet`) and its `_stats.json`.

    Keys are assigned here from (shard_id, position); `Sample.key` is ignored. Returns the stats.
    `storage_options` go to fsspec (e.g. `{"client_kwargs": {"endpoint_url": ...}}` for an S3 endpoint).
    """
    check_fmt(fmt)
    if len(samples) > samples_per_shard:
        raise ValueError(f"{len(samples)} samples do not fit a shard of samples_per_shard={samples_per_shard}")
    start_time = time.time()
    shard_digits = oom_shard_count(shard_count)
    name = f"{shard_id:0{shard_digits}d}"
    metas = [_metadata(s, sample_key(shard_id, i, samples_per_shard=samples_per_shard, shard_digits=shard_digits))
             for i, s in enumerate(samples)]
    if fmt == "webdataset":
        _write_bytes(_join(out_dir, f"{name}.tar"), _tar_bytes(samples, metas), storage_options)
        _write_bytes(_join(out_dir, f"{name}.parquet"), _parquet_bytes(metas), storage_options)
    else:
        leading = {"key": pa.array([m["key"] for m in metas], pa.string()),
                   "jpg": pa.array([s.jpg for s in samples], pa.binary()),
                   "txt": pa.array([s.caption for s in samples], pa.string())}
        _write_bytes(_join(out_dir, f"{name}.parquet"), _parquet_bytes(metas, leading=leading), storage_options)
    end_time = time.time()
    stats = {"count": len(samples), "successes": len(samples), "failed_to_download": 0,
             "failed_to_resize": 0, "duration": end_time - start_time, "start_time": start_time,
             "end_time": end_time, "status_dict": {"success": len(samples)} if samples else {}}
    # Stats go last: like img2dataset, their presence means the shard is complete.
    _write_bytes(_join(out_dir, f"{name}_stats.json"), json.dumps(stats, indent=4).encode("utf-8"), storage_options)
    return stats


def write_shards(samples: Iterable[Sample], out_dir: str, *, fmt: str = "webdataset",
                 samples_per_shard: int = 1000, start_shard: int = 0) -> list[str]:
    """Cut a stream of samples into shards numbered from `start_shard`; returns the data files
    (`.tar` for webdataset, `.parquet` for parquet)."""
    check_fmt(fmt)
    oom_sample_per_shard(samples_per_shard)  # validate before consuming the stream
    paths, batch, shard_id = [], [], start_shard
    ext = "tar" if fmt == "webdataset" else "parquet"
    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            write_shard(batch, out_dir, shard_id=shard_id, fmt=fmt, samples_per_shard=samples_per_shard)
            paths.append(_join(out_dir, f"{shard_id:0{OOM_SHARD_COUNT}d}.{ext}"))
            batch, shard_id = [], shard_id + 1
    if batch:
        write_shard(batch, out_dir, shard_id=shard_id, fmt=fmt, samples_per_shard=samples_per_shard)
        paths.append(_join(out_dir, f"{shard_id:0{OOM_SHARD_COUNT}d}.{ext}"))
    return paths
