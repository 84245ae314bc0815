"""ReadAhead: a stream read in a background thread gives the reader exactly what the stream holds."""

from __future__ import annotations

import io
import tarfile
import threading

import numpy as np
import pytest

from raylpclip.data.readahead import ReadAhead
from raylpclip.data.tarstream import regular_members


@pytest.mark.parametrize("chunk_bytes", [1, 7, 512, 1 << 20])
def test_reads_of_any_size_give_the_stream_in_order(chunk_bytes):
    data = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    sizes = np.random.default_rng(1).integers(0, 3000, 40)
    with ReadAhead(io.BytesIO(data), chunk_bytes=chunk_bytes, depth=2) as stream:
        got = [stream.read(int(n)) for n in sizes]
        rest = stream.read()
    ends = np.minimum(np.cumsum(sizes), len(data))
    starts = np.concatenate([[0], ends[:-1]])
    assert [len(g) for g in got] == list(ends - starts)  # exactly n bytes until the end, as a file gives
    assert b"".join(got) + rest == data
    assert stream.closed


def test_the_streams_error_comes_out_of_read_after_the_bytes_before_it():
    class Failing(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def read(self, n=-1):
            if self.sent >= 1000:
                raise OSError("connection reset by peer (s3://b/00001.tar)")
            self.sent += 100
            return b"x" * 100

    with ReadAhead(Failing(), chunk_bytes=100) as stream:
        assert stream.read(1000) == b"x" * 1000
        with pytest.raises(OSError, match="connection reset by peer"):
            stream.read(1)


def test_close_stops_the_thread_while_it_waits_for_room():
    endless = type("Endless", (io.RawIOBase,), {"readable": lambda self: True, "read": lambda self, n=-1: b"y" * n})()
    stream = ReadAhead(endless, chunk_bytes=64, depth=2)
    assert stream.read(10) == b"y" * 10  # the thread then blocks on a full queue
    stream.close()
    assert not any(t.name == "shard-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_a_tar_read_through_it_gives_the_same_members():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(30):
            payload = bytes([i]) * (i * 97 + 1)
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    direct = list(regular_members(io.BytesIO(buf.getvalue())))
    with ReadAhead(io.BytesIO(buf.getvalue()), chunk_bytes=1000) as stream:
        assert list(regular_members(stream)) == direct and len(direct) == 30
