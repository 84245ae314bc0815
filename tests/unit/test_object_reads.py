"""Shard reads that resume after a failed GET (data/object_reads.py), against a fake object store whose
GETs fail as S3's do under s3fs: 503 SlowDown (an OSError), a body cut short by a reset (aiohttp's
ClientPayloadError, not an OSError), a read timeout. The bytes handed on must be the object's, in order;
each retry counted; a persistent failure named; a final error (403) not retried. The same against a real
S3 server through the fault proxy: tests/integration/test_faults_reads.py."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylpclip.data.object_reads import ResumingObjectFile
from raylpclip.data.storage import RetryPolicy, is_transient

NO_WAIT = RetryPolicy(max_attempts=4, base_s=0.0, cap_s=0.0)


class ClientPayloadError(Exception):
    """What aiohttp raises when a connection is reset mid-body (matched by name, as s3fs passes it on)."""


class Store:
    """One object; `faults[k]` is raised by the k-th GET (0-based) instead of answering."""

    def __init__(self, data: bytes, faults: dict[int, BaseException] | None = None):
        self.data, self.faults, self.gets = data, dict(faults or {}), []

    def fetch(self, start: int, end: int) -> bytes:
        k = len(self.gets)
        self.gets.append((start, end))
        if k in self.faults:
            raise self.faults[k]
        return self.data[start:end]


def _open(store: Store, retries: list, *, chunk: int = 1000, policy: RetryPolicy = NO_WAIT) -> ResumingObjectFile:
    return ResumingObjectFile(store.fetch, "s3://bucket/shard-00001.tar", len(store.data), policy=policy,
                              on_retry=retries.append, chunk=chunk)


def test_failed_gets_resume_at_their_offset_and_every_retry_is_counted():
    data = np.random.default_rng(0).bytes(4500)
    faults = {1: ClientPayloadError("Response payload is not completed: ConnectionResetError(104)"),
              3: OSError(16, "Please reduce your request rate."),
              4: OSError("Read timeout on endpoint URL")}
    store, retries = Store(data, faults), []
    got = _open(store, retries).read()
    assert got == data
    # chunk 0 ok; chunk 1000-1999 failed once then ok; chunk 2000-2999 failed twice then ok; the rest ok
    assert store.gets == [(0, 1000), (1000, 2000), (1000, 2000), (2000, 3000), (2000, 3000), (2000, 3000),
                          (3000, 4000), (4000, 4500)]
    assert len(retries) == 3 and retries[0].startswith("GET s3://bucket/shard-00001.tar bytes 1000-1999")


def test_a_failure_that_persists_names_the_object_and_its_bytes():
    store, retries = Store(b"x" * 3000, {k: OSError(16, "Please reduce your request rate.") for k in range(1, 9)}), []
    f = _open(store, retries)
    assert f.read(1000) == b"x" * 1000
    with pytest.raises(OSError, match=r"GET s3://bucket/shard-00001.tar bytes 1000-1999 failed 4 times in a row"):
        f.read(1000)
    assert len(retries) == 3  # attempts 1-3 retried, the 4th raised


def test_a_final_error_is_not_retried():
    store, retries = Store(b"x" * 3000, {0: PermissionError("Access Denied")}), []
    with pytest.raises(PermissionError, match="Access Denied"):
        _open(store, retries).read()
    assert retries == [] and len(store.gets) == 1


def test_an_object_shorter_than_listed_is_an_error_not_a_retry():
    store, retries = Store(b"x" * 1500), []
    f = ResumingObjectFile(store.fetch, "s3://b/s.tar", 2000, policy=NO_WAIT, on_retry=retries.append, chunk=1000)
    with pytest.raises(OSError, match=r"bytes 1000-1999 returned 500 bytes, not 1000"):
        f.read()
    assert retries == []


def test_parquet_reads_by_seeking_through_failures():
    table = pa.table({"key": [f"{i:05d}" for i in range(300)], "txt": [f"caption {i}" * 3 for i in range(300)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=50)
    data = sink.getvalue()
    faults = {k: ClientPayloadError("Response payload is not completed") for k in range(0, 40, 3)}
    store, retries = Store(data, faults), []
    got = pq.read_table(pa.PythonFile(_open(store, retries, chunk=512), mode="r"))
    assert got.equals(table) and len(retries) == sum(k < len(store.gets) for k in faults) >= 5
    assert any(start > 0 and start != prev_end for (start, _), (_, prev_end) in zip(store.gets[1:], store.gets))


def test_transient_errors_of_the_http_stack_under_s3fs():
    assert is_transient(ClientPayloadError("Response payload is not completed"))
    assert is_transient(OSError(16, "Please reduce your request rate."))
    assert is_transient(OSError("Read timeout on endpoint URL: http://127.0.0.1:9/b/k"))
    assert not is_transient(PermissionError("Access Denied"))
    assert not is_transient(ValueError("Read timeout"))  # neither an OSError nor a known type
