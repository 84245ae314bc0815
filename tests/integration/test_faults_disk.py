"""Faults v2, a full disk: the run's storage (its output_dir) is a tmpfs with room for one checkpoint and a
half, so the second checkpoint's write runs out of space mid-write. The command must stop with a clear
error (exit 1, naming the full disk and the checkpoint that is intact), leave the previous checkpoint
whole, and, once there is room again, the same command resumes from it and finishes like the reference.
Needs a tmpfs mount (root, as on CI's machine); skipped where mounting is not allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.drills.checkpoint_damage import persisted_steps
from tests.drills.worker_kills import TRACE_ENV, TraceRecords
from tests.integration.fault_runs import BATCH, EVERY, assert_close_to_reference, overrides, run_traced

pytestmark = pytest.mark.ray


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def small_disk(tmp_path, reference):
    """A tmpfs holding the reference run's files and one checkpoint and a half: the second checkpoint
    cannot be written whole."""
    checkpoint = _tree_bytes(sorted(reference["run_dir"].glob("checkpoint_*"))[0])
    other = _tree_bytes(reference["run_dir"]) - sum(_tree_bytes(d) for d in reference["run_dir"].glob("checkpoint_*"))
    size = other + int(1.5 * checkpoint)
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:200]})")
    try:
        yield mount, size, checkpoint
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # ~1.5 min: two runs; `pytest -m slow tests/integration/test_faults_disk.py` adds its row
def test_a_full_disk_stops_with_a_clear_error_and_the_rerun_resumes(reference, synthetic_shards, tokenizer_dir,
                                                                    small_disk, tmp_path, monkeypatch, fault_table):
    mount, size, checkpoint = small_disk
    cfg = overrides(synthetic_shards, tokenizer_dir, mount, "disk-full")
    probe = tmp_path / "probe"
    proc = subprocess.run([sys.executable, "-m", "raylpclip", "pretrain", *cfg], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **{TRACE_ENV: str(probe)}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    run_dir = mount / "disk-full"
    assert persisted_steps(run_dir) == {EVERY}  # the first checkpoint is whole
    error = proc.stderr.strip().splitlines()[-1]  # the command's last word, after the worker's traceback
    assert error.startswith("raylpclip pretrain: error: run disk-full stopped: no space left for its checkpoints"), \
        error
    assert "[Errno 28]" in error and f"(step {EVERY}) is whole and is where it resumes" in error, error
    # Uploads are asynchronous: the failed write surfaces at a later report, and the steps trained since
    # the last whole checkpoint are trained again by the re-run.
    stopped_at = TraceRecords.read(probe).max_step()

    # Room again (as a user would free or grow the disk); the same command resumes from step 10.
    subprocess.run(["mount", "-o", f"remount,size={size + 4 * checkpoint}", str(mount)], check=True)
    summary, records = run_traced(cfg, probe, monkeypatch)
    assert {w["start_step"] for w in records.workers if w["start_step"] > 0} == {EVERY}
    assert records.replayed() <= (stopped_at - EVERY) * BATCH
    assert_close_to_reference(summary, reference)
    fault_table.add(f"disk full mid-checkpoint (tmpfs of {size / 2**20:.1f} MiB, checkpoint {checkpoint / 2**20:.1f} "
                    f"MiB; stopped at step {stopped_at}, exit 1), same command re-run with room", summary,
                    reference["summary"], records, resumed_from=EVERY, bound=(stopped_at - EVERY) * BATCH)
    print(f"\n{error}")
