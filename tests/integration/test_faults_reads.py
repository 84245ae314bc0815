"""Faults v2: storage failing while shards are READ. The session's synthetic shards (both layouts) are
copied to a real S3 API (moto_server on 127.0.0.1) and read through the fault proxy, which fails one GET
of a shard object in two (three for the training run) in turn with 503 SlowDown, a connection reset
half-way through the body, or a stall past the client's read timeout. Reads resume at the failed chunk's offset (data/object_reads.py).

- every sample of both layouts is delivered exactly once, with the same bytes as the local copy's, and
  each injected fault is one counted retry;
- a pretraining run from those shards finishes like the uninterrupted reference (its fault-table row).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
import s3fs

from raylpclip.config import S3Config
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import arrow_filesystem, configure_s3
from raylpclip.runtime.data.shard_reader import read_shards
from tests.drills.fault_proxy import FaultProxy
from tests.integration.fault_runs import assert_close_to_reference, overrides, run_traced

pytestmark = pytest.mark.ray
READ_TIMEOUT_S, STALL_S = 1.0, 3.0
CHUNK_MB = 0.25  # several ranged GETs per shard, so that resets land mid-object at several offsets
URL_COLUMNS = ("__url__", "path")  # the shard's path: s3:// here, a local path there


class EveryNthGet:
    """A FaultProxy rule: one GET of a shard object in `n` fails, with 503, reset, stall in turn."""

    def __init__(self, n: int, pattern: str = r"\.(tar|parquet)$"):
        self.n, self.regex, self.faults = n, re.compile(pattern), itertools.cycle(("503", "reset", "stall"))
        self.gets, self.lock = 0, threading.Lock()

    def __call__(self, method: str, path: str) -> bool | str:
        if method != "GET" or not self.regex.search(path.split("?")[0]):
            return False
        with self.lock:
            self.gets += 1
            return next(self.faults) if self.gets % self.n == 1 else False


@pytest.fixture(scope="module")
def s3_copies(s3_server, synthetic_shards) -> dict[str, str]:
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("reads")
    for layout in ("webdataset", "parquet"):
        for f in sorted(Path(synthetic_shards[layout]).iterdir()):
            fs.put_file(str(f), f"reads/{layout}/{f.name}")
    configure_s3(S3Config(endpoint_url=s3_server))  # listing and _stats.json from the driver: direct
    return {layout: f"s3://reads/{layout}" for layout in ("webdataset", "parquet")}


def _rows(files: list[str], fmt: str, filesystem, counter=None) -> Counter:
    """Each row read (its position and a digest of everything but its shard's path), with multiplicity."""
    read, _plan = read_shards(files, fmt=fmt, filesystem=filesystem, positions=True, counter=counter)
    rows = Counter()
    for row in read.iter_rows():
        digest = hashlib.sha1(repr(sorted((k, v) for k, v in row.items() if k not in URL_COLUMNS)).encode())
        rows[digest.hexdigest()] += 1
    return rows


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_every_sample_is_delivered_once_through_failing_gets(ray_session, s3_server, s3_copies, synthetic_shards,
                                                            fmt):
    from raylpclip.runtime.cluster import counters
    from raylpclip.runtime.train.trainer_factory import StorageRetries

    local_files, _ = resolve_shards(str(synthetic_shards[fmt]))
    expected = _rows(local_files, fmt, None)
    files, _ = resolve_shards(s3_copies[fmt])
    counter = counters.new_counter()
    with FaultProxy(s3_server, fail=EveryNthGet(2), stall_s=STALL_S) as proxy:
        cfg = S3Config(endpoint_url=proxy.url, read_timeout=READ_TIMEOUT_S, read_chunk_mb=CHUNK_MB)
        filesystem = arrow_filesystem(files, cfg, on_retry=StorageRetries(counter, reason="read_retries"))
        got = _rows(files, fmt, filesystem, counter)
    assert sum(expected.values()) == 1500 and max(expected.values()) == 1
    assert got == expected  # every sample once, byte for byte
    assert min(proxy.by_fault[f] for f in ("503", "reset", "stall")) >= 1, proxy.by_fault
    totals = counters.totals(counter)
    assert totals.get("read_retries") == proxy.total_injected  # each fault retried once, each retry counted
    assert "bad_shard" not in totals  # a failed GET is not damage
    print(f"\n{fmt}: 1500 samples delivered once through {proxy.total_injected} failed GETs "
          f"({dict(proxy.by_fault)}), {totals['read_retries']} read retries counted")


def test_pretraining_from_s3_through_failing_gets(reference, s3_server, s3_copies, tokenizer_dir, tmp_path,
                                                  monkeypatch, fault_table):
    with FaultProxy(s3_server, fail=EveryNthGet(3), stall_s=STALL_S) as proxy:
        cfg = overrides({"webdataset": s3_copies["webdataset"]}, tokenizer_dir, tmp_path, "read-errors",
                        f"data.s3.endpoint_url={proxy.url}", f"data.s3.read_timeout={READ_TIMEOUT_S}",
                        f"data.s3.read_chunk_mb={CHUNK_MB}")
        summary, records = run_traced(cfg, tmp_path / "probe", monkeypatch)
    assert proxy.total_injected >= 3 and summary["read_retries"] == proxy.total_injected
    assert summary["skipped"] == {}
    assert_close_to_reference(summary, reference)
    assert records.replayed() == 0
    faults = ", ".join(f"{n} {kind}" for kind, n in sorted(proxy.by_fault.items()))
    fault_table.add(f"S3 shard reads, {proxy.total_injected} GETs failed ({faults})", summary,
                    reference["summary"], records, bound=0)
