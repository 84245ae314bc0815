"""`raylpclip shards folder|csv SOURCE OUT [options]`: users' images into img2dataset shards.

    raylpclip shards folder data/cifar10/train shards/cifar-train --image-size 32 --mismatch-fraction 0.3
    raylpclip shards csv flickr/captions.txt shards/flickr-eval --image-root flickr/images \\
        --holdout-fraction 0.2 --split eval --image-size 64

Every argument, the output directory and every image are checked before Ray starts; Ray tasks then read, encode
and write the shards in parallel. `summary.json` (counts, class names, options) goes into OUT, and
for an s3:// OUT also into a local directory; its local path is returned (and printed last).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec

from raylpclip.config import S3Config
from raylpclip.data.caption_csv import CAPTION_MODES, caption_csv_items
from raylpclip.data.caption_templates import DEFAULT_TEMPLATES, check_templates, read_lines
from raylpclip.data.image_folder import image_folder_items
from raylpclip.data.shard_files import FORMATS
from raylpclip.data.sources import SourceItem, SourceStats, shuffled
from raylpclip.data.storage import is_remote, s3_options
from raylpclip.summary import write_summary

DEFAULT_SUMMARY_DIR = "shards-summary"  # under the working directory, for s3:// outputs


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected an integer >= 1")
    return value


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="webdataset", help="img2dataset output format")
    p.add_argument("--samples-per-shard", type=_positive_int, default=1000)
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="downscale so the shorter side is this many pixels, keeping the aspect ratio "
                        "(smaller images are kept as they are); default: no resizing")
    p.add_argument("--seed", type=int, default=0, help="fixes templates, wrong captions, held-out split, order")
    p.add_argument("--no-shuffle", action="store_true",
                   help="keep the source order (default: seeded shuffle, so every shard mixes classes)")
    p.add_argument("--overwrite", action="store_true", help="replace shard files already in OUT")
    p.add_argument("--s3-endpoint", default="", help="S3-compatible endpoint URL for an s3:// OUT (MinIO, ...); "
                   "credentials come from the AWS environment variables or profile")
    p.add_argument("--summary-dir", default=None,
                   help=f"local directory for summary.json (default: OUT, or ./{DEFAULT_SUMMARY_DIR} for s3:// OUT)")
    p.add_argument("--parallelism", type=_positive_int, default=None,
                   help="writer tasks at once (default: the CPU count for a local Ray instance, "
                        "unlimited when joining a cluster)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="logical CPUs each writer task reserves")
    p.add_argument("--ray-address", default="", help="join this Ray cluster (default: RAY_ADDRESS, else local)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylpclip shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True, metavar="{folder,csv}")
    folder = sub.add_parser("folder", help="SRC/<class>/<image>: captions from class names and templates")
    folder.add_argument("src", help="folder with one subfolder per class (label = sorted subfolder index)")
    folder.add_argument("out", help="output directory or s3:// URL")
    folder.add_argument("--templates", default=None, help="file of caption templates, one per line, '{}' = class")
    folder.add_argument("--template", action="append", default=[], help="a caption template (repeatable)")
    folder.add_argument("--classnames", default=None,
                        help="file of class names, one per line in sorted-folder order (default: folder names)")
    folder.add_argument("--mismatch-fraction", type=float, default=0.0,
                        help="fraction of images captioned with a wrong class (noisy correspondence)")
    _common_options(folder)
    table = sub.add_parser("csv", help="a CSV of image path + caption, one or more rows per image")
    table.add_argument("csv", help="captions CSV with a header row")
    table.add_argument("out", help="output directory or s3:// URL")
    table.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the CSV's)")
    table.add_argument("--image-col", default="image")
    table.add_argument("--caption-col", default="caption")
    table.add_argument("--captions", choices=CAPTION_MODES, default="all",
                       help="all: one sample per caption row; first: one per image")
    table.add_argument("--holdout-fraction", type=float, default=0.0,
                       help="fraction of images (with all their captions) held out for evaluation")
    table.add_argument("--split", choices=("train", "eval"), default=None,
                       help="which side of --holdout-fraction to write (required with it)")
    _common_options(table)
    return parser


def storage_options(out: str, endpoint: str) -> dict[str, Any] | None:
    """fsspec options for writing to `out`: the same s3fs options (endpoint, timeouts, retries, and the
    driver's AWS credentials for tasks on other nodes) that training reads with."""
    if not out.startswith("s3://"):
        return None
    return s3_options(S3Config(endpoint_url=endpoint))


def _folder_items(ns: argparse.Namespace) -> tuple[list[SourceItem], dict[str, Any]]:
    templates = (read_lines(ns.templates) if ns.templates else []) + list(ns.template)
    templates = check_templates(templates or DEFAULT_TEMPLATES)
    classnames = read_lines(ns.classnames) if ns.classnames else None
    items = image_folder_items(ns.src, templates=templates, mismatch_fraction=ns.mismatch_fraction,
                               seed=ns.seed, classnames=classnames)
    names = {item.meta["label"]: item.meta["label_name"] for item in items}
    extra = {"src": str(Path(ns.src).resolve()), "templates": templates, "mismatch_fraction": ns.mismatch_fraction,
             "mismatched": sum(item.meta["caption_mismatched"] for item in items),
             "classnames": [names[i] for i in sorted(names)]}
    return items, extra


def _csv_items(ns: argparse.Namespace, stats: SourceStats) -> tuple[list[SourceItem], dict[str, Any]]:
    split = ns.split or "all"
    items = caption_csv_items(ns.csv, image_root=ns.image_root, image_col=ns.image_col, caption_col=ns.caption_col,
                              captions=ns.captions, holdout_fraction=ns.holdout_fraction, split=split,
                              seed=ns.seed, stats=stats)
    extra = {"src": str(Path(ns.csv).resolve()), "image_root": str(Path(ns.image_root or Path(ns.csv).parent).resolve()),
             "captions": ns.captions, "holdout_fraction": ns.holdout_fraction, "split": split,
             "images": len({item.meta["image_id"] for item in items})}
    return items, extra


def _write_remote_summary(out: str, summary: dict[str, Any], opts: dict[str, Any] | None) -> None:
    fs, path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/summary.json", **(opts or {}))
    with fs.open(path, "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def cmd_shards(args: list[str]) -> Path:
    """Parse, list the source, write its shards with Ray, write summary.json; returns its local path."""
    start = time.perf_counter()
    parser = build_parser()
    ns = parser.parse_args(args)
    remote = is_remote(ns.out)
    if ns.s3_endpoint and not remote:
        parser.error(f"--s3-endpoint is for an s3:// OUT; got {ns.out!r}")
    if ns.num_cpus <= 0:
        parser.error(f"--num-cpus {ns.num_cpus}; expected > 0")
    if ns.source == "csv" and (ns.holdout_fraction > 0) != (ns.split is not None):
        parser.error("--holdout-fraction and --split go together: --holdout-fraction F --split train|eval")
    listing = SourceStats()
    if ns.source == "folder":
        items, extra = _folder_items(ns)
    else:
        items, extra = _csv_items(ns, listing)
    if not items:
        raise ValueError(f"{extra['src']}: nothing to write (every row was skipped: {dict(listing.skipped)})")
    if not ns.no_shuffle:
        items = shuffled(items, seed=ns.seed)
    opts = storage_options(ns.out, ns.s3_endpoint)
    out = ns.out if remote else str(Path(ns.out).resolve())
    from raylpclip.runtime.data.shard_writing import write_items_on_ray  # Ray starts only for a good source

    report = write_items_on_ray(items, out, fmt=ns.format, samples_per_shard=ns.samples_per_shard,
                                image_size=ns.image_size, storage_options=opts, num_cpus=ns.num_cpus,
                                parallelism=ns.parallelism, overwrite=ns.overwrite, ray_address=ns.ray_address)
    skipped = SourceStats(skipped=Counter(listing.skipped), examples=listing.examples + report.skipped_examples)
    skipped.skipped.update(report.skipped)
    summary = {"command": "shards", "source": ns.source, **extra, "out": out, "format": report.fmt,
               "samples": report.samples, "shards": report.shards, "items": len(items),
               "skipped": dict(skipped.skipped), "skipped_examples": skipped.examples[:5],
               "samples_per_shard": ns.samples_per_shard, "image_size": ns.image_size, "seed": ns.seed,
               "shuffled": not ns.no_shuffle, "write_s": round(report.wall_s, 2),
               "wall_s": round(time.perf_counter() - start, 2)}
    print(f"[raylpclip] wrote {report.samples} samples in {report.shards} shards to {out} "
          f"({skipped.total_skipped} skipped{': ' + str(dict(skipped.skipped)) if skipped.skipped else ''}; "
          f"{report.wall_s:.1f}s writing, {time.perf_counter() - start:.1f}s in all)", flush=True)
    if remote:
        _write_remote_summary(out, summary, opts)
    summary_dir = ns.summary_dir or (Path.cwd() / DEFAULT_SUMMARY_DIR if remote else out)
    return write_summary(summary_dir, summary)
