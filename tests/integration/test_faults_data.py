"""Faults v2 on the data path: a Ray Data decode actor SIGKILLed mid-epoch, and a tiny object store. Each run is traced and compared with the session's uninterrupted reference run;
the rows go into the session's fault table (fault_runs.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.drills.worker_kills import TRACE_ENV, TraceRecords, wait_for
from tests.integration.fault_runs import BATCH, STEPS, assert_close_to_reference, overrides, run_traced

pytestmark = pytest.mark.ray
DECODER = "CountingDecoder"  # the decode actors' class (runtime/data/decode_pool.py), in their actor class name


def _decode_actor_pids() -> list[int]:
    """The live decode actors of this process's Ray instance: its descendants whose process title Ray set to
    their actor class (`ray::MapWorker(...CountingDecoder...)`)."""
    import psutil  # Ray's own dependency

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if DECODER in title and "MapWorker" in title and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return sorted(pids)


def test_a_decode_actor_killed_mid_epoch_costs_no_sample(reference, ray_session, synthetic_shards, tokenizer_dir,
                                                         tmp_path, monkeypatch, fault_table):
    """Ray Data restarts the actor and runs its unfinished tasks again; a task's output reaches training only
    once it is whole, so no sample is lost or trained twice."""
    probe = tmp_path / "probe"
    killed: dict = {}

    def kill_one():
        # Mid-epoch: training has begun (step 2) and the actors are still decoding the epoch.
        pids = wait_for(lambda: probe.is_dir() and TraceRecords.read(probe).max_step() >= 2 and _decode_actor_pids(),
                        timeout=600, poll=0.05, what="step 2 with a live decode actor")
        os.kill(pids[0], signal.SIGKILL)
        killed.update(pid=pids[0], step=TraceRecords.read(probe).max_step(), actors=len(pids))

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    summary, records = run_traced(overrides(synthetic_shards, tokenizer_dir, tmp_path, "decoder-kill"), probe,
                                  monkeypatch)
    killer.join(timeout=5)
    assert killed, "no decode actor was killed"
    assert_close_to_reference(summary, reference)
    assert records.replayed() == 0 and len(records.seen()) == STEPS * BATCH
    assert not any(w["start_step"] for w in records.workers)  # the Train workers never restarted
    fault_table.add(f"decode actor SIGKILL (1 of {killed['actors']}, at step {killed['step']})", summary,
                    reference["summary"], records, bound=0)


@pytest.mark.slow  # its own Ray instance in a subprocess: ~2 minutes, kept out of the default run's 30
def test_a_tiny_object_store_delivers_the_same_samples(reference, synthetic_shards, tokenizer_dir, tmp_path,
                                                       fault_table):
    """`ray.object_store_gb=0.1` (Ray's floor is about 0.07): Ray Data's backpressure holds the read-ahead within
    its share of the store, and what does not fit is spilled to disk (the row says how much the raylet spilled);
    no deadlock, every sample once. Its own Ray instance (a subprocess): a store's size is fixed at its start."""
    probe = tmp_path / "probe"
    cfg = overrides(synthetic_shards, tokenizer_dir, tmp_path, "small-store")
    env = dict(os.environ, **{TRACE_ENV: str(probe)})
    run = subprocess.run([sys.executable, "-m", "raylpclip", "pretrain", *cfg, "ray.num_cpus=6",
                          "ray.object_store_gb=0.1"], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "small-store" / "summary.json").read_text())
    records = TraceRecords.read(probe)
    assert_close_to_reference(summary, reference)
    assert records.replayed() == 0 and len(records.seen()) == STEPS * BATCH
    logs = re.search(r"Ray: logs in (\S+)", run.stdout)
    spilled = _spilled_mib(Path(logs[1])) if logs else None
    fault_table.add(f"object store of 0.1 GB ({'spilled ' + format(spilled, '.0f') + ' MiB' if spilled else 'no spill'})",
                    summary, reference["summary"], records, bound=0)


def _spilled_mib(logs: Path) -> float:
    """What the raylet reports having spilled (its "Spilled N MiB" lines), summed over its log files."""
    total = 0.0
    for path in logs.glob("raylet*.out"):
        for match in re.finditer(r"Spilled (\d+(?:\.\d+)?) MiB", path.read_text(errors="replace")):
            total = max(total, float(match[1]))  # the raylet reports a running total
    return total
