"""Find shards in img2dataset's layouts (webdataset `.tar` or `.parquet` files, each with a `_stats.json`
beside it): list them from a directory, glob or brace range, tell the format, and count their samples.
Writing them is raylpclip.data.shard_writer.

Paths may be local or any fsspec URL (`s3://bucket/prefix`).
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem

FORMATS = ("webdataset", "parquet")


def check_fmt(fmt: str) -> None:
    """Raise ValueError unless `fmt` is one of FORMATS."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}; expected one of {FORMATS}")


def _expand_braces(pattern: str) -> list[str]:
    """Shell-style `{00000..00012}` (zero-padded ranges) and `{a,b}` alternatives, nested left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


def list_shards(path: str, fmt: str) -> list[str]:
    """Sorted shard files (`.tar` for webdataset, `.parquet` for parquet) named by a directory, a
    glob, or a brace range such as `/data/{00000..00012}.tar`; local or fsspec URL."""
    check_fmt(fmt)
    ext = ".tar" if fmt == "webdataset" else ".parquet"
    patterns = _expand_braces(path)
    try:
        return _list_shards(patterns, path, fmt, ext)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # unreachable endpoint, denied access, ...: one line naming the place
        raise ConnectionError(f"cannot list shards at {path!r}: {type(exc).__name__}: {exc}") from None


def _list_shards(patterns: list[str], path: str, fmt: str, ext: str) -> list[str]:
    fs, _ = fsspec.core.url_to_fs(patterns[0])
    found: set[str] = set()
    literal: dict[str, set[str]] = {}
    for pattern in patterns:
        stripped = fsspec.core.url_to_fs(pattern)[1]
        if re.search(r"[*?\[]", stripped):
            found.update(fs.glob(stripped))
        elif len(patterns) == 1 and fs.isdir(stripped):
            found.update(fs.glob(f"{stripped.rstrip('/')}/*{ext}"))
        else:
            literal.setdefault(stripped.rsplit("/", 1)[0], set()).add(stripped)
    # One listing per directory instead of one existence check per brace-expanded name (S3 round trips).
    for parent, names in literal.items():
        try:
            found.update(names & set(fs.ls(parent, detail=False)))
        except FileNotFoundError:
            continue
    shards = sorted(p for p in found if p.endswith(ext))
    if not shards:
        raise FileNotFoundError(f"no *{ext} shards for fmt={fmt!r} at {path!r}; expected a directory, "
                                f"a glob or a brace range (e.g. 'dir/{{00000..00009}}{ext}') of {ext} files")
    if isinstance(fs, LocalFileSystem):
        return shards
    # Give back URLs in the caller's spelling (`s3://bucket/key`), which fsspec maps to the same paths.
    protocol = patterns[0].split("://", 1)[0]
    return [f"{protocol}://{p.lstrip('/')}" for p in shards]


def resolve_shards(path: str, fmt: str = "auto") -> tuple[list[str], str]:
    """(shards, format) for `path`; fmt="auto" picks webdataset when `.tar` shards are there, else
    parquet. Both layouts also hold `.parquet` files (webdataset's are metadata), so tars win."""
    if fmt != "auto":
        return list_shards(path, fmt), fmt
    try:
        return list_shards(path, "webdataset"), "webdataset"
    except FileNotFoundError:
        pass
    try:
        return list_shards(path, "parquet"), "parquet"
    except FileNotFoundError:
        raise FileNotFoundError(f"no img2dataset shards (*.tar or *.parquet) at {path!r}; expected a "
                                "directory, a glob or a brace range such as 'dir/{00000..00009}.tar'") from None


def stats_path(shard: str) -> str:
    """The `_stats.json` beside a shard file (`00012.tar` -> `00012_stats.json`)."""
    return re.sub(r"\.(tar|parquet)$", "", shard) + "_stats.json"


def read_stats(paths_or_dir: str | Sequence[str]) -> int | None:
    """Total successful samples from the `_stats.json` beside each shard, or None if any is missing.

    Accepts a directory (all `*_stats.json` in it), a glob/brace pattern, or a list of shard paths.
    Uses `successes`, not `count`: img2dataset's `count` includes samples that failed to download
    and are not in the shard.
    """
    if isinstance(paths_or_dir, str):
        fs, stripped = fsspec.core.url_to_fs(paths_or_dir)
        if fs.isdir(stripped):
            stats_files = fs.glob(f"{stripped.rstrip('/')}/*_stats.json")
        else:
            try:
                shards, _ = resolve_shards(paths_or_dir)
            except FileNotFoundError:
                return None
            stats_files = [stats_path(fsspec.core.url_to_fs(p)[1]) for p in shards]
    else:
        if not paths_or_dir:
            return None
        fs = fsspec.core.url_to_fs(paths_or_dir[0])[0]
        stats_files = [stats_path(fsspec.core.url_to_fs(p)[1]) for p in paths_or_dir]
    if not stats_files:
        return None
    # One batched fetch: object stores serve the many small files concurrently.
    try:
        contents = fs.cat(stats_files, on_error="return")
    except FileNotFoundError:
        return None
    total = 0
    for stats_file in stats_files:
        data = contents.get(stats_file)
        if data is None or isinstance(data, Exception):
            return None
        try:
            total += int(json.loads(data)["successes"])
        except (KeyError, TypeError, ValueError):
            return None
    return total
