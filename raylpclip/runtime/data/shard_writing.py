"""Writing img2dataset shards from a source's items with parallel Ray tasks.

The driver cuts the item list into shard-sized chunks; each task reads and encodes one chunk's
images (applying an item's edit, or drawing a GeneratedItem from its index) and writes shard `i`
with `raylpclip.data.shard_writer.write_shard`. A shard's contents depend only on its chunk, so a
retried task rewrites the same bytes under the same names.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import fsspec
import ray
from fsspec.implementations.local import LocalFileSystem

from raylpclip.config import RayConfig
from raylpclip.data.shard_files import check_fmt
from raylpclip.data.shard_writer import oom_sample_per_shard, write_shard
from raylpclip.data.sources import GeneratedItem, SourceItem, SourceStats, iter_samples
from raylpclip.runtime.cluster.session import ensure_ray

# Files a shard writer leaves in its output directory (img2dataset's names) and our summary.
SHARD_FILE = re.compile(r"^\d+(\.tar|\.parquet|_stats\.json)$")
PROGRESS_LINES = 20  # progress is printed about this many times per run, whatever the shard count
Item = SourceItem | GeneratedItem  # what a writer task loads


@dataclass
class WriteReport:
    """What a write produced; `skipped` counts images left out, by reason."""

    out: str
    fmt: str
    shards: int
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def chunk(items: Sequence[Item], samples_per_shard: int) -> list[list[Item]]:
    """Consecutive chunks of at most `samples_per_shard` items; chunk i becomes shard i."""
    oom_sample_per_shard(samples_per_shard)  # validates >= 1
    return [list(items[i:i + samples_per_shard]) for i in range(0, len(items), samples_per_shard)]


def _write_chunk(items: list[Item], out_dir: str, *, shard_id: int, shard_count: int, fmt: str,
                 samples_per_shard: int, image_size: int | None,
                 storage_options: dict[str, Any] | None) -> SourceStats:
    """Read, encode and write one shard; returns its counts (unreadable images are skipped, so a
    shard may hold fewer samples than its chunk, exactly as img2dataset's failed downloads do)."""
    stats = SourceStats()
    samples = list(iter_samples(items, image_size=image_size, stats=stats))
    write_shard(samples, out_dir, shard_id=shard_id, fmt=fmt, samples_per_shard=samples_per_shard,
                shard_count=shard_count, storage_options=storage_options)
    return stats


# Retries are safe: a shard's files are rewritten whole under the same names (see module doc).
_write_chunk_task = ray.remote(max_retries=3)(_write_chunk)


def existing_shard_files(out_dir: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Shard files (`00012.tar`, `00012.parquet`, `00012_stats.json`) already in `out_dir`."""
    fs, path = fsspec.core.url_to_fs(out_dir, **(storage_options or {}))
    if not fs.isdir(path):
        return []
    return sorted(p for p in fs.ls(path, detail=False) if SHARD_FILE.match(p.rstrip("/").rsplit("/", 1)[-1]))


def prepare_out_dir(out_dir: str, *, overwrite: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse to mix new shards with old ones (readers take every shard in a directory), or with
    `overwrite` delete the old shard files first (nothing else in the directory is touched)."""
    old = existing_shard_files(out_dir, storage_options=storage_options)
    if old and not overwrite:
        raise ValueError(f"{out_dir!r} already holds {len(old)} shard files (e.g. {old[0]}); "
                         "choose an empty output directory or pass --overwrite")
    fs, path = fsspec.core.url_to_fs(out_dir, **(storage_options or {}))
    if old:
        fs.rm(old)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(path, exist_ok=True)


def _progress_every(total: int) -> int:
    return max(1, total // PROGRESS_LINES)


def write_items(items: Sequence[Item], out_dir: str, *, fmt: str = "webdataset",
                samples_per_shard: int = 1000, image_size: int | None = None,
                storage_options: dict[str, Any] | None = None, num_cpus: float = 1.0,
                max_in_flight: int | None = None, overwrite: bool = False,
                log: Callable[[str], None] = lambda line: print(line, flush=True)) -> WriteReport:
    """Write `items` as shards 0..N-1 into `out_dir` (local or fsspec URL) with Ray tasks; Ray must
    be initialised. Items are written in the order given (shuffle them first for training sets).

    `num_cpus` is what each task reserves; `max_in_flight` caps the tasks running at once (None: as
    many as Ray schedules). Progress ("shards written / total") goes to `log`.
    """
    check_fmt(fmt)
    chunks = chunk(items, samples_per_shard)
    if not chunks:
        raise ValueError("no items to write")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight={max_in_flight}; expected >= 1 or None")
    prepare_out_dir(out_dir, overwrite=overwrite, storage_options=storage_options)
    start = time.perf_counter()
    task = _write_chunk_task.options(num_cpus=num_cpus)
    pending: dict[ray.ObjectRef, int] = {}
    queue = list(range(len(chunks)))
    total, done, every = SourceStats(), 0, _progress_every(len(chunks))
    log(f"[raylpclip] writing {len(items)} samples as {len(chunks)} {fmt} shards to {out_dir}")
    while queue or pending:
        while queue and (max_in_flight is None or len(pending) < max_in_flight):
            shard_id = queue.pop(0)
            ref = task.remote(chunks[shard_id], out_dir, shard_id=shard_id, shard_count=len(chunks), fmt=fmt,
                              samples_per_shard=samples_per_shard, image_size=image_size,
                              storage_options=storage_options)
            pending[ref] = shard_id
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard_id = pending.pop(ready[0])
        try:
            total.merge(ray.get(ready[0]))
        except Exception as err:
            for ref in pending:  # the run has failed: stop the other writers instead of finishing them
                ray.cancel(ref)
            raise RuntimeError(f"writing shard {shard_id} of {len(chunks)} to {out_dir!r} failed: {err}") from err
        done += 1
        if done % every == 0 or done == len(chunks):
            elapsed = time.perf_counter() - start
            log(f"[raylpclip] shards {done}/{len(chunks)} written, {total.samples} samples, "
                f"{total.total_skipped} skipped, {elapsed:.1f}s")
    return WriteReport(out=out_dir, fmt=fmt, shards=len(chunks), samples=total.samples,
                       skipped=dict(total.skipped), skipped_examples=list(total.examples),
                       wall_s=time.perf_counter() - start)


def write_items_on_ray(items: Sequence[Item], out_dir: str, *, parallelism: int | None = None,
                       ray_address: str = "", **write_options: Any) -> WriteReport:
    """`write_items` on the Ray cluster at `ray_address` (or RAY_ADDRESS), else on a local instance
    started for it and stopped again afterwards. `parallelism`: writer tasks at once (default: the CPU
    count locally, unlimited on a cluster)."""
    # The output directory is checked before Ray starts: a refused OUT fails in a second.
    prepare_out_dir(out_dir, overwrite=write_options.get("overwrite", False),
                    storage_options=write_options.get("storage_options"))
    joined = bool(ray_address or os.environ.get("RAY_ADDRESS"))
    started_here = not ray.is_initialized()
    # No dashboard: nothing here queries Train state, and it costs a process and seconds to start.
    ensure_ray(RayConfig(address=ray_address, dashboard=False))
    # A local instance advertises more logical CPUs than cores (see ensure_ray); encoding is
    # CPU-bound, so more tasks than cores would only add worker processes.
    parallelism = parallelism or (None if joined else (os.cpu_count() or 1))
    try:
        return write_items(items, out_dir, max_in_flight=parallelism, **write_options)
    finally:
        if started_here:
            ray.shutdown()
