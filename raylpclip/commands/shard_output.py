"""What every `raylpclip shards` source shares: the writing options, and one path from a source's items
to shards (the Ray writer, raylpclip.runtime.data.shard_writing) and summary.json. The command line and
the Python entry points (raylpclip.commands.world_shards.write_context_split, ...) both go through
`write_source`, so a split written by the study runner is the split the command would write.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import fsspec

from raylpclip.config import S3Config
from raylpclip.data.shard_files import FORMATS, check_fmt
from raylpclip.data.sources import GeneratedItem, SourceItem, SourceStats, shuffled
from raylpclip.data.storage import is_remote, s3_options
from raylpclip.summary import write_summary

DEFAULT_SUMMARY_DIR = "shards-summary"  # under the working directory, for s3:// outputs


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected an integer >= 1")
    return value


@dataclass
class WriteOptions:
    """How a source's items are written (not what they are): the options every source shares."""

    fmt: str = "webdataset"
    samples_per_shard: int = 1000
    shuffle: bool = True  # a seeded shuffle before sharding, so every shard mixes classes
    overwrite: bool = False
    s3_endpoint: str = ""
    summary_dir: str | None = None
    parallelism: int | None = None
    num_cpus: float = 1.0
    ray_address: str = ""

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> WriteOptions:
        return cls(fmt=ns.format, samples_per_shard=ns.samples_per_shard, shuffle=not getattr(ns, "no_shuffle", False),
                   overwrite=ns.overwrite, s3_endpoint=ns.s3_endpoint, summary_dir=ns.summary_dir,
                   parallelism=ns.parallelism, num_cpus=ns.num_cpus, ray_address=ns.ray_address)


def add_common_options(p: argparse.ArgumentParser, *, shuffle: bool = True) -> None:
    """The options of every source (`shuffle=False`: a source whose order is already random)."""
    p.add_argument("--format", choices=FORMATS, default="webdataset", help="img2dataset output format")
    p.add_argument("--samples-per-shard", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="fixes every random choice of the source, and the order")
    if shuffle:
        p.add_argument("--no-shuffle", action="store_true",
                       help="keep the source order (default: seeded shuffle, so every shard mixes classes)")
    p.add_argument("--overwrite", action="store_true", help="replace shard files already in OUT")
    p.add_argument("--s3-endpoint", default="", help="S3-compatible endpoint URL for an s3:// OUT (MinIO, ...); "
                   "credentials come from the AWS environment variables or profile")
    p.add_argument("--summary-dir", default=None,
                   help=f"local directory for summary.json (default: OUT, or ./{DEFAULT_SUMMARY_DIR} for s3:// OUT)")
    p.add_argument("--parallelism", type=positive_int, default=None,
                   help="writer tasks at once (default: the CPU count for a local Ray instance, "
                        "unlimited when joining a cluster)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="logical CPUs each writer task reserves")
    p.add_argument("--ray-address", default="", help="join this Ray cluster (default: RAY_ADDRESS, else local)")


def add_resize_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="downscale so the shorter side is this many pixels, keeping the aspect ratio "
                        "(smaller images are kept as they are); default: no resizing")


def storage_options(out: str, endpoint: str) -> dict[str, Any] | None:
    """fsspec options for writing to `out`: the same s3fs options (endpoint, timeouts, retries, and the
    driver's AWS credentials for tasks on other nodes) that training reads with."""
    if not out.startswith("s3://"):
        return None
    return s3_options(S3Config(endpoint_url=endpoint))


def check_options(out: str, options: WriteOptions) -> None:
    """The options that argparse cannot check alone; errors name the option."""
    check_fmt(options.fmt)
    if options.s3_endpoint and not is_remote(out):
        raise ValueError(f"--s3-endpoint is for an s3:// OUT; got {out!r}")
    if options.num_cpus <= 0:
        raise ValueError(f"--num-cpus {options.num_cpus}; expected > 0")
    if options.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard {options.samples_per_shard}; expected an integer >= 1")


def _write_remote_summary(out: str, summary: dict[str, Any], opts: dict[str, Any] | None) -> None:
    fs, path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/summary.json", **(opts or {}))
    with fs.open(path, "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def write_source(items: Sequence[SourceItem | GeneratedItem], extra: dict[str, Any], *, source: str, out: str,
                 image_size: int | None, seed: int, options: WriteOptions, listing: SourceStats | None = None,
                 start: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Write `items` as shards into `out` with Ray tasks, then summary.json: the run's counts and
    options, updated with the source's `extra`. Returns (summary.json's local path, the summary)."""
    start = time.perf_counter() if start is None else start
    check_options(out, options)
    listing = listing or SourceStats()
    if not items:
        raise ValueError(f"{extra['src']}: nothing to write (every row was skipped: {dict(listing.skipped)})")
    if options.shuffle:
        items = shuffled(items, seed=seed)
    remote = is_remote(out)
    opts = storage_options(out, options.s3_endpoint)
    out = out if remote else str(Path(out).resolve())
    from raylpclip.runtime.data.shard_writing import write_items_on_ray  # Ray starts only for a good source

    report = write_items_on_ray(items, out, fmt=options.fmt, samples_per_shard=options.samples_per_shard,
                                image_size=image_size, storage_options=opts, num_cpus=options.num_cpus,
                                parallelism=options.parallelism, overwrite=options.overwrite,
                                ray_address=options.ray_address)
    skipped = SourceStats(skipped=Counter(listing.skipped), examples=listing.examples + report.skipped_examples)
    skipped.skipped.update(report.skipped)
    summary = {"command": "shards", "source": source, "out": out, "format": report.fmt,
               "samples": report.samples, "shards": report.shards, "items": len(items),
               "skipped": dict(skipped.skipped), "skipped_examples": skipped.examples[:5],
               "samples_per_shard": options.samples_per_shard, "image_size": image_size, "seed": seed,
               "shuffled": options.shuffle, "write_s": round(report.wall_s, 2),
               "wall_s": round(time.perf_counter() - start, 2)}
    summary.update(extra)
    print(f"[raylpclip] wrote {report.samples} samples in {report.shards} shards to {out} "
          f"({skipped.total_skipped} skipped{': ' + str(dict(skipped.skipped)) if skipped.skipped else ''}; "
          f"{report.wall_s:.1f}s writing, {time.perf_counter() - start:.1f}s in all)", flush=True)
    if remote:
        _write_remote_summary(out, summary, opts)
    summary_dir = options.summary_dir or (Path.cwd() / DEFAULT_SUMMARY_DIR if remote else out)
    return write_summary(summary_dir, summary), summary
