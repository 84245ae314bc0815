"""Where shards live: local paths or s3:// through s3fs, with the endpoint, region and retry policy of
`data.s3`. Pure fsspec/pyarrow (no Ray): the driver lists and inspects shards with it, and hands Ray
Data the same filesystem for reading."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pyarrow.fs as pafs

from raylpclip.config import S3Config


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def s3_options(cfg: S3Config) -> dict[str, Any]:
    """s3fs constructor kwargs for `cfg`.

    Credentials are read from the environment of the process that calls this (the driver) and put into
    the kwargs, because the filesystem object is pickled to Ray's read tasks on other processes and
    nodes, whose environment may lack them. They never enter the saved config.
    """
    opts: dict[str, Any] = {
        "anon": cfg.anon,
        "config_kwargs": {"connect_timeout": cfg.connect_timeout, "read_timeout": 60,
                          "retries": {"max_attempts": cfg.max_attempts, "mode": "standard"}},
        "client_kwargs": {},
    }
    if cfg.endpoint_url:
        opts["client_kwargs"]["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        opts["client_kwargs"]["region_name"] = cfg.region
    if cfg.profile:
        opts["profile"] = cfg.profile
    if not cfg.anon and os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        opts["secret"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            opts["token"] = os.environ["AWS_SESSION_TOKEN"]
    return opts


def configure_s3(cfg: S3Config) -> None:
    """Make `cfg` the default for every s3:// URL this process opens through fsspec (listing, stats,
    metadata, writing), so the helpers that take plain URLs need no filesystem argument."""
    fsspec.config.conf["s3"] = s3_options(cfg)


def arrow_filesystem(paths: list[str], cfg: S3Config) -> pafs.FileSystem | None:
    """The filesystem Ray Data reads `paths` with: s3fs (wrapped for pyarrow) for s3://, None (Ray's
    default) for local paths."""
    remote = {p.split("://", 1)[0] for p in paths if is_remote(p)}
    if not remote:
        return None
    if len(remote) > 1 or not all(is_remote(p) for p in paths):
        raise ValueError(f"one read mixes filesystems ({sorted(remote)} and local paths); give each its own source")
    if remote != {"s3"}:
        return None  # gs://, hdfs://, ...: pyarrow's own filesystems, resolved by Ray
    import s3fs

    return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem(**s3_options(cfg))))
