"""Shard reads from S3 that survive a failing GET: 503 SlowDown, a connection reset half-way through an
object, a read that times out. Pure s3fs/pyarrow (no Ray): the driver builds the filesystem and Ray Data's
read tasks and decode actors use it, pickled.

A shard is read in ranged GETs of `data.s3.read_chunk_mb`. A GET that fails transiently is sent again from
the same byte offset after a backoff (data/storage.RetryPolicy, `data.s3.max_attempts` attempts in a row),
so a drop mid-object costs one chunk, not the shard, and never a sample: the bytes handed on are the
object's bytes in order. Every retry is reported to `on_retry` (the run counts them as `read_retries`).
Neither botocore nor s3fs retries by itself here (one attempt each), so that no retry goes uncounted.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs
import s3fs

from raylpclip.data.storage import RetryPolicy, is_transient, with_retries


class SingleTryS3FileSystem(s3fs.S3FileSystem):
    """s3fs making one attempt per call (its class default is 5, uncounted); a class of its own, not an
    attribute set on an instance, because fsspec caches and shares instances, and it pickles by class."""

    retries = 1


class ResumingObjectFile(io.RawIOBase):
    """A read-only, seekable view of one object of `size` bytes, fetched `chunk` bytes at a time by
    `fetch(start, end)` (end exclusive), each fetch retried from its own offset on transient errors."""

    def __init__(self, fetch: Callable[[int, int], bytes], path: str, size: int, *, policy: RetryPolicy,
                 on_retry: Callable[[str], None] | None, chunk: int):
        super().__init__()
        self._fetch, self._path, self._size = fetch, path, size
        self._policy, self._on_retry, self._chunk = policy, on_retry, chunk
        self._pos, self._start, self._buf = 0, 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"{self._path}: seek to {base + offset}, before the start")
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        return self._size

    def readinto(self, b) -> int:
        """As many bytes as `b` holds or the object has left, across chunks: pyarrow takes a short read
        for the end of the file."""
        view, done = memoryview(b).cast("B"), 0
        while done < len(view) and self._pos < self._size:
            if not self._start <= self._pos < self._start + len(self._buf):
                self._fill(self._pos)
            offset = self._pos - self._start
            n = min(len(view) - done, len(self._buf) - offset)
            view[done:done + n] = self._buf[offset:offset + n]
            self._pos += n
            done += n
        return done

    def _fill(self, start: int) -> None:
        end = min(self._size, start + self._chunk)
        what = f"GET {self._path} bytes {start}-{end - 1}"

        def get() -> bytes:
            data = self._fetch(start, end)
            if len(data) != end - start:  # final: the object is not the size it was listed with. An OSError:
                # a storage error, which the shard readers pass on instead of counting the shard as damaged
                raise OSError(f"{what} returned {len(data)} bytes, not {end - start}: did the object change "
                                 "while it was read?")
            return data

        try:
            self._buf = with_retries(get, what=what, policy=self._policy, on_retry=self._on_retry)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise OSError(f"{what} failed {self._policy.max_attempts} times in a row: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        self._start = start


class ResumingReadHandler(pafs.FSSpecHandler):
    """pyarrow's handler for an fsspec filesystem whose inputs are `ResumingObjectFile`s and whose
    metadata calls (stat, list) are retried alike. Writing is not what shards are read with: refused."""

    def __init__(self, fs, *, policy: RetryPolicy, on_retry: Callable[[str], None] | None, chunk: int):
        super().__init__(fs)
        self.policy, self.on_retry, self.chunk = policy, on_retry, chunk

    def _retried(self, what: str, op: Callable[[], Any]) -> Any:
        return with_retries(op, what=what, policy=self.policy, on_retry=self.on_retry)

    def get_type_name(self) -> str:
        return "resuming+" + super().get_type_name()

    def get_file_info(self, paths):
        return self._retried(f"stat {paths[:1]}", lambda: super(ResumingReadHandler, self).get_file_info(paths))

    def get_file_info_selector(self, selector):
        return self._retried(f"list {selector.base_dir}",
                             lambda: super(ResumingReadHandler, self).get_file_info_selector(selector))

    def _open(self, path: str) -> pa.PythonFile:
        info = self._retried(f"stat {path}", lambda: self.fs.info(path))
        if info.get("type") != "file":
            raise FileNotFoundError(f"{path}: not an object (a prefix?)")
        raw = ResumingObjectFile(lambda start, end: self.fs.cat_file(path, start=start, end=end), path,
                                 int(info["size"]), policy=self.policy, on_retry=self.on_retry, chunk=self.chunk)
        return pa.PythonFile(raw, mode="r")

    def open_input_stream(self, path):
        return self._open(path)

    def open_input_file(self, path):
        return self._open(path)

    def open_output_stream(self, path, metadata):
        raise OSError(f"shards are read, not written, through this filesystem ({path})")

    open_append_stream = open_output_stream


def resuming_s3(options: dict[str, Any], *, policy: RetryPolicy, on_retry: Callable[[str], None] | None,
                chunk: int, read_timeout: float) -> pafs.PyFileSystem:
    """Ray Data's filesystem for s3:// shards: s3fs with `options` (data/storage.s3_options), one attempt
    per request, reads resumed and counted as above."""
    config = dict(options.get("config_kwargs", {}), read_timeout=read_timeout,
                  retries={"total_max_attempts": 1, "mode": "standard"})
    fs = SingleTryS3FileSystem(**dict(options, config_kwargs=config))
    return pafs.PyFileSystem(ResumingReadHandler(fs, policy=policy, on_retry=on_retry, chunk=chunk))
