"""`raylpclip shards folder|csv|contexts|procedural [SOURCE] OUT [options]`: images into img2dataset shards.

    raylpclip shards folder data/cifar10/train shards/cifar-train --image-size 32 --mismatch-fraction 0.3
    raylpclip shards csv flickr/captions.txt shards/flickr-eval --image-root flickr/images \\
        --holdout-fraction 0.2 --split eval --image-size 64
    raylpclip shards contexts data/cifar10/train shards/ctx-train --contexts blurry,grayscale,dark,close-up \\
        --contexts-per-image 0.3,0.45,0.25 --mention-p 0.8 --mismatch-fraction 0.2
    raylpclip shards procedural shards/shapes --samples 20000 --styles plain,outline,pixel --caption-mode subset

Every argument, the output directory and every image are checked before Ray starts; Ray tasks then read, encode
and write the shards in parallel. `summary.json` (counts, class names, options) goes into OUT, and
for an s3:// OUT also into a local directory; its local path is returned (and printed last).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raylpclip.commands import world_shards
from raylpclip.commands.shard_output import (
    WriteOptions,
    add_common_options,
    add_resize_option,
    check_options,
    write_source,
)
from raylpclip.data.caption_csv import CAPTION_MODES, caption_csv_items
from raylpclip.data.caption_templates import DEFAULT_TEMPLATES, check_templates, read_lines
from raylpclip.data.image_folder import image_folder_items
from raylpclip.data.sources import SourceItem, SourceStats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylpclip shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True, metavar="{folder,csv,contexts,procedural}")
    folder = sub.add_parser("folder", help="SRC/<class>/<image>: captions from class names and templates")
    folder.add_argument("src", help="folder with one subfolder per class (label = sorted subfolder index)")
    folder.add_argument("out", help="output directory or s3:// URL")
    folder.add_argument("--templates", default=None, help="file of caption templates, one per line, '{}' = class")
    folder.add_argument("--template", action="append", default=[], help="a caption template (repeatable)")
    folder.add_argument("--classnames", default=None,
                        help="file of class names, one per line in sorted-folder order (default: folder names)")
    folder.add_argument("--mismatch-fraction", type=float, default=0.0,
                        help="fraction of images captioned with a wrong class (noisy correspondence)")
    add_resize_option(folder)
    add_common_options(folder)
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
    add_resize_option(table)
    add_common_options(table)
    world_shards.add_parsers(sub)
    return parser


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


def cmd_shards(args: list[str]) -> Path:
    """Parse, list the source, write its shards with Ray, write summary.json; returns its local path."""
    start = time.perf_counter()
    parser = build_parser()
    ns = parser.parse_args(args)
    options = WriteOptions.from_args(ns)
    try:
        check_options(ns.out, options)
    except ValueError as err:
        parser.error(str(err))
    if ns.source in world_shards.SOURCES:
        return world_shards.run(ns, options, start=start)
    if ns.source == "csv" and (ns.holdout_fraction > 0) != (ns.split is not None):
        parser.error("--holdout-fraction and --split go together: --holdout-fraction F --split train|eval")
    listing = SourceStats()
    if ns.source == "folder":
        items, extra = _folder_items(ns)
    else:
        items, extra = _csv_items(ns, listing)
    path, _ = write_source(items, extra, source=ns.source, out=ns.out, image_size=ns.image_size, seed=ns.seed,
                           options=options, listing=listing, start=start)
    return path
