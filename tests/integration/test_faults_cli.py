"""Inputs that cannot work end the command with one line on stderr and a non-zero exit code, before
any Ray instance starts: a missing shard path, an empty bucket, a run whose checkpoints are all
unreadable (a truncated one, and one that is a pickle which would run code when loaded)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import s3fs
import torch

from raylpclip.engine.checkpoint_state import MANIFEST_FILE, STATE_FILE, save_state
from tests.drills.checkpoint_damage import truncate

pytestmark = pytest.mark.ray  # subprocesses that import torch and Ray: seconds each


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylpclip", "pretrain", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})))


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr  # failed before any Ray work
    return lines[0]


def test_missing_shard_path(tmp_path):
    line = _one_line(_cli(f"data.train={tmp_path}/nowhere", f"output_dir={tmp_path}/runs"))
    assert line.startswith("raylpclip pretrain: error: no img2dataset shards") and f"{tmp_path}/nowhere" in line


def test_empty_bucket(s3_server, tmp_path):
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server}).mkdir("empty")
    line = _one_line(_cli("data.train=s3://empty/laion", f"data.s3.endpoint_url={s3_server}",
                          f"output_dir={tmp_path}/runs"))
    assert "error: no img2dataset shards" in line and "s3://empty/laion" in line


class Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unreadable_checkpoints(synthetic_shards, tmp_path):
    run = tmp_path / "runs" / "broken"
    truncated, evil = run / "checkpoint_2026-01-01_00-00-01", run / "checkpoint_2026-01-01_00-00-02"
    for step, d in ((10, truncated), (20, evil)):
        save_state(d, state={"w": torch.zeros(1000), "step": step}, meta={"step": step})
    truncate(truncated / STATE_FILE)
    proof = tmp_path / "pwned"
    with open(evil / STATE_FILE, "wb") as f:  # a "checkpoint" that is a pickle running code when loaded
        pickle.dump({"w": Payload(str(proof))}, f, protocol=2)
    (evil / MANIFEST_FILE).unlink()  # and no manifest to betray it
    line = _one_line(_cli(f"data.train={synthetic_shards['webdataset']}", f"output_dir={tmp_path}/runs", "name=broken"))
    assert line.startswith("raylpclip pretrain: error: run directory") and "none can be used" in line
    assert f"{truncated.name}: state.pt has" in line and "the manifest says" in line
    assert f"{evil.name}: cannot be loaded safely (weights_only=True): Unsupported global" in line
    assert not proof.exists()
