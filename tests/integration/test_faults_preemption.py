"""Faults v2, preemption: SIGTERM to the driver of a running `raylpclip pretrain` (what Kubernetes and
`ray job stop` send, a spot VM's shutdown) makes the workers checkpoint after their current step and stop,
the command exits 143 within the grace period, and the same command resumes at that step: no sample trained
twice, none skipped. Rows go into the session's fault table (fault_runs.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.drills.checkpoint_damage import persisted_steps
from tests.drills.worker_kills import TRACE_ENV, TraceRecords, wait_for
from tests.integration.fault_runs import BATCH, EVERY, STEPS, assert_close_to_reference, overrides, run_traced

pytestmark = pytest.mark.ray
GRACE_S = 60


def test_sigterm_to_the_driver_checkpoints_the_step_and_the_rerun_loses_nothing(
        reference, synthetic_shards, tokenizer_dir, tmp_path, monkeypatch, fault_table):
    probe = tmp_path / "probe"
    cfg = overrides(synthetic_shards, tokenizer_dir, tmp_path, "sigterm", f"train.stop_grace_s={GRACE_S}")
    env = dict(os.environ, **{TRACE_ENV: str(probe)})
    proc = subprocess.Popen([sys.executable, "-m", "raylpclip", "pretrain", *cfg, "ray.num_cpus=6"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    lines: list[str] = []
    # Read as it comes: a pipe nobody reads fills up and blocks the driver's next print.
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # Just past the checkpoint of step 10: SIGTERM lands between checkpoints.
        wait_for(lambda: probe.is_dir() and TraceRecords.read(probe).max_step() >= EVERY + 1, timeout=600,
                 poll=0.05, what=f"step {EVERY + 1}")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the driver alone, as `kill <pid>` or the kubelet would
        proc.wait(timeout=GRACE_S + 60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    out = "".join(lines)
    said = "".join(line for line in lines if "[raylpclip]" in line)  # our lines, for a failure's message
    assert proc.returncode == 143, said[-3000:]
    assert seconds < GRACE_S, (seconds, said[-3000:])
    stopped = int(re.search(rf"stopped at step (\d+) of {STEPS} \(SIGTERM\)", out)[1])
    # After the step in flight; how many more steps pass depends on the machine's load (a step is ~0.1 s here).
    assert EVERY < stopped < STEPS and stopped in persisted_steps(tmp_path / "sigterm"), said[-3000:]
    assert f"SIGTERM: checkpointing step {stopped} and stopping" in out

    summary, records = run_traced(cfg, probe, monkeypatch)  # the same command again: resumes at that step
    assert {w["start_step"] for w in records.workers if w["start_step"] > 0} == {stopped}
    assert records.replayed() == 0  # nothing between the last periodic checkpoint and the stop is trained again
    assert len(records.seen()) == STEPS * BATCH  # and nothing is skipped
    assert_close_to_reference(summary, reference)
    fault_table.add(f"SIGTERM to the driver (at step {stopped}; exit 143 after {seconds:.1f} s, grace {GRACE_S} s), "
                    "same command re-run", summary, reference["summary"], records, resumed_from=stopped, bound=0)
