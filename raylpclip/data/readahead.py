"""A stream read ahead in a background thread, so that its reader works while the storage answers.

A decode actor that reads its own shards (runtime/datasets.ReadPlan) would otherwise wait for every
chunk of a remote shard before decoding the samples in it. pyarrow's and s3fs's reads release the GIL
while they wait, so one thread a few chunks ahead hides that wait behind the decoding.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import BinaryIO

CHUNK_BYTES = 4 << 20
DEPTH = 4  # chunks held ahead: 16 MB per open shard


class ReadAhead(io.RawIOBase):
    """Wraps a readable stream; `read(n)` gives exactly n bytes until the end, as a file does. The wrapped
    stream's errors come out of `read`, where the reader would have met them."""

    def __init__(self, stream: BinaryIO, *, chunk_bytes: int = CHUNK_BYTES, depth: int = DEPTH):
        self._stream, self._chunk_bytes = stream, chunk_bytes
        self._chunks: queue.Queue = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._current, self._pos, self._ended = b"", 0, False
        self._thread = threading.Thread(target=self._fill, name="shard-read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while True:
                chunk = self._stream.read(self._chunk_bytes)
                if not self._put(chunk) or not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self._put(exc)

    def _put(self, item) -> bool:
        """Queue `item`, waiting for room; False once the reader has closed (nobody will take it)."""
        while not self._closing.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next_chunk(self) -> bool:
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._current, self._pos, self._ended = item, 0, not item
        return bool(item)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size is not None and size >= 0 else float("inf")
        while wanted > 0:
            if self._pos >= len(self._current) and (self._ended or not self._next_chunk()):
                break
            take = int(min(wanted, len(self._current) - self._pos))
            parts.append(memoryview(self._current)[self._pos:self._pos + take])
            self._pos += take
            wanted -= take
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue or in a read: that read ends it)."""
        if not self.closed:
            self._closing.set()
            while True:  # make room, so a blocked put sees the flag
                try:
                    self._chunks.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=5)
        super().close()
