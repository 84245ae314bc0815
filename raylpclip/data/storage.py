"""Where shards live: local paths or s3:// through s3fs, with the endpoint, region and retry policy of
`data.s3`. Pure fsspec/pyarrow (no Ray): the driver lists and inspects shards with it, and hands Ray
Data the same filesystem for reading."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

from raylpclip.config import S3Config

T = TypeVar("T")


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


def arrow_filesystem(paths: list[str], cfg: S3Config, *,
                     on_retry: Callable[[str], None] | None = None) -> pafs.FileSystem | None:
    """The filesystem Ray Data reads `paths` with: for s3://, s3fs whose reads resume after a failed GET
    (data/object_reads.py; each retry reported to `on_retry`); None (Ray's default) for local paths."""
    remote = {p.split("://", 1)[0] for p in paths if is_remote(p)}
    if not remote:
        return None
    if len(remote) > 1 or not all(is_remote(p) for p in paths):
        raise ValueError(f"one read mixes filesystems ({sorted(remote)} and local paths); give each its own source")
    if remote != {"s3"}:
        return None  # gs://, hdfs://, ...: pyarrow's own filesystems, resolved by Ray
    from raylpclip.data.object_reads import resuming_s3  # imports s3fs: only where shards are remote

    return resuming_s3(s3_options(cfg), policy=RetryPolicy(max_attempts=cfg.max_attempts), on_retry=on_retry,
                       chunk=int(cfg.read_chunk_mb * 2**20), read_timeout=cfg.read_timeout)


# ---------------------------------------------------------------------------------------------------
# Run storage (`ray.storage_path` on s3://): checkpoints and Ray Train's run state, whole objects.

# Messages of errors worth another attempt: throttling, 5xx, timeouts, dropped connections (AWS SDK
# error names and HTTP codes as pyarrow reports them). Anything else (403, 404, bad request) is final.
TRANSIENT = re.compile(
    r"SLOW_?DOWN|SlowDown|[Rr]educe your request rate|THROTTL|Throttl"
    r"|INTERNAL_FAILURE|InternalError|SERVICE_UNAVAILABLE|ServiceUnavailable"
    r"|REQUEST_TIMEOUT|RequestTimeout|NETWORK_CONNECTION|[Cc]onnection (reset|refused|aborted)|[Tt]imed? ?out"
    r"|response code:? 5\d\d|HTTP (status )?5\d\d|curlCode: (7|28|52|55|56)"
)


# Errors of the HTTP stack under s3fs that are transient whatever they say, and that are not OSErrors: a
# body cut short by a reset connection (aiohttp), a reply that could not be parsed (botocore).
TRANSIENT_TYPES = frozenset({"ClientPayloadError", "ServerDisconnectedError", "ClientOSError", "IncompleteRead",
                             "ResponseParserError", "ReadTimeoutError", "ConnectTimeoutError", "ConnectionClosedError"})


def is_transient(exc: BaseException) -> bool:
    if type(exc).__name__ in TRANSIENT_TYPES:
        return True
    return isinstance(exc, (OSError, ConnectionError)) and bool(TRANSIENT.search(str(exc)))


@dataclass
class RetryPolicy:
    """Exponential backoff: attempt k (from 1) waits base * 2**(k-1), at most `cap`, with jitter."""

    max_attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def with_retries(op: Callable[[], T], *, what: str, policy: RetryPolicy,
                 on_retry: Callable[[str], None] | None = None) -> T:
    """op(), retried on transient errors; each retry goes to `on_retry` (the run counts them)."""
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return op()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.max_attempts:
                raise
            line = f"{what}: {str(exc).splitlines()[0][:160]}"
            if on_retry is not None:
                on_retry(line)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# Uploads that failed for good. pyarrow's copy_files (what Ray Train persists checkpoints with) drops
# an exception raised in a Python stream's close(), so the failure is also kept here for the caller to
# raise (RayHooks checks after each report); the manifest check catches the incomplete checkpoint anyway.
FAILED_UPLOADS: list[str] = []


def take_failed_uploads() -> list[str]:
    failed = list(FAILED_UPLOADS)
    FAILED_UPLOADS.clear()
    return failed


class _UploadOnClose(io.RawIOBase):
    """A write stream spooled to a temp file and uploaded whole, with retries, when closed: an object
    store PUT either lands completely or not at all, and a failed one can be sent again."""

    def __init__(self, upload: Callable[[IO[bytes]], None], path: str):
        self._spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        self._upload, self._path = upload, path

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._spool.write(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._upload(self._spool)
            except Exception as exc:
                FAILED_UPLOADS.append(f"{self._path}: {str(exc).splitlines()[0][:200]}")
                raise
            finally:
                self._spool.close()
                super().close()


class RetryingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem whose every call (and every whole-object read or write) is retried on
    transient errors with backoff, and counted through `on_retry`. The wrapped filesystem should not
    retry by itself (max_attempts=1), so that no retry goes uncounted."""

    def __init__(self, inner: pafs.FileSystem, *, policy: RetryPolicy, on_retry: Callable[[str], None] | None = None):
        self.inner, self.policy, self.on_retry = inner, policy, on_retry

    def __eq__(self, other):
        return isinstance(other, RetryingHandler) and self.inner.equals(other.inner)

    # The handler travels pickled to Ray Train's controller and workers, and pyarrow's S3FileSystem
    # pickles without its retry_strategy: it would come back retrying by itself (the SDK's 3 attempts),
    # so that a throttled upload succeeds without this handler ever seeing, or counting, the error.
    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self.inner, pafs.S3FileSystem):
            state["inner"] = ("s3", self.inner.__reduce__()[1][0])  # its constructor arguments
        return state

    def __setstate__(self, state):
        if isinstance(state["inner"], tuple):
            state["inner"] = single_try_s3(state["inner"][1])
        self.__dict__.update(state)

    def __ne__(self, other):
        return not self == other

    def _call(self, what: str, op: Callable[[], T]) -> T:
        return with_retries(op, what=what, policy=self.policy, on_retry=self.on_retry)

    def get_type_name(self) -> str:
        return f"retrying+{self.inner.type_name}"

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self._call(f"stat {paths[:1]}", lambda: self.inner.get_file_info(paths))

    def get_file_info_selector(self, selector):
        return self._call(f"list {selector.base_dir}", lambda: self.inner.get_file_info(selector))

    def create_dir(self, path, recursive):
        self._call(f"mkdir {path}", lambda: self.inner.create_dir(path, recursive=recursive))

    def delete_dir(self, path):
        self._call(f"rmdir {path}", lambda: self.inner.delete_dir(path))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._call(f"rm {path}/*", lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the storage root")

    def delete_file(self, path):
        self._call(f"rm {path}", lambda: self.inner.delete_file(path))

    def move(self, src, dest):
        self._call(f"mv {src}", lambda: self.inner.move(src, dest))

    def copy_file(self, src, dest):
        self._call(f"cp {src}", lambda: self.inner.copy_file(src, dest))

    def _read_whole(self, path) -> pa.Buffer:
        def read():
            with self.inner.open_input_stream(path) as f:
                return f.read_buffer()
        return self._call(f"GET {path}", read)

    def open_input_stream(self, path):
        return pa.BufferReader(self._read_whole(path))

    def open_input_file(self, path):
        return pa.BufferReader(self._read_whole(path))

    def open_output_stream(self, path, metadata):
        def upload(spool):
            def put():
                spool.seek(0)
                with self.inner.open_output_stream(path, metadata=metadata) as out:
                    shutil.copyfileobj(spool, out, 8 << 20)
            self._call(f"PUT {path}", put)
        return pa.PythonFile(_UploadOnClose(upload, path), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError(f"append is not supported on run storage ({path})")


def single_try_s3(kwargs: dict[str, Any]) -> pafs.S3FileSystem:
    """pyarrow's S3 client making one attempt per request: RetryingHandler does the retrying, and counts it."""
    return pafs.S3FileSystem(**kwargs, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))


def storage_filesystem(storage_path: str, cfg: S3Config, *,
                       on_retry: Callable[[str], None] | None = None) -> pafs.FileSystem | None:
    """The filesystem Ray Train keeps a run's checkpoints in: for s3://, pyarrow's S3 client (endpoint,
    region and credentials as for shards, from `cfg` and the driver's environment) behind
    `RetryingHandler` (cfg.max_attempts attempts with backoff, each retry reported to `on_retry`);
    None (Ray's default) for local paths."""
    if not storage_path.startswith("s3://"):
        return None
    kwargs: dict[str, Any] = {"connect_timeout": cfg.connect_timeout, "request_timeout": 60}
    if cfg.endpoint_url:
        scheme, _, host = cfg.endpoint_url.partition("://")
        kwargs.update(scheme=scheme, endpoint_override=host.rstrip("/"))
    if cfg.region:
        kwargs["region"] = cfg.region
    if cfg.anon:
        kwargs["anonymous"] = True
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # Into the filesystem object (pickled to Ray's controller and workers), never into the config.
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                      session_token=os.environ.get("AWS_SESSION_TOKEN"))
    inner = single_try_s3(kwargs)
    return pafs.PyFileSystem(RetryingHandler(inner, policy=RetryPolicy(max_attempts=cfg.max_attempts),
                                             on_retry=on_retry))
