"""Checkpoints commit with a manifest; a damaged one is never picked: the worker falls back to the
newest good one with a warning, the driver fails in one line when none is usable."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from raylpclip.engine.checkpoint_choice import choose, list_checkpoints, preflight
from raylpclip.engine.checkpoint_state import (MANIFEST_FILE, STATE_FILE, CheckpointError, check_checkpoint, load_state,
                                               save_state, verify_state)
from tests.drills.checkpoint_damage import truncate

LOCAL = pafs.LocalFileSystem()


def _save(run: Path, step: int) -> Path:
    d = run / f"checkpoint_{step:04d}"
    save_state(d, state={"w": torch.full((64,), float(step)), "step": step}, meta={"step": step},
               extra={"data_position.json": json.dumps({"step": step}).encode()})
    return d


class Payload:
    """Unpickling this creates a file: proof of code execution."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(d: Path, proof: Path) -> None:
    """Replace a checkpoint with a pickle that runs code, and a manifest that matches it."""
    with open(d / STATE_FILE, "wb") as f:
        pickle.dump({"w": Payload(proof)}, f, protocol=2)  # torch.save's protocol
    (d / MANIFEST_FILE).unlink()


def test_manifest_records_every_file_and_catches_damage(tmp_path):
    d = _save(tmp_path, 10)
    files = json.loads((d / MANIFEST_FILE).read_text())["files"]
    assert set(files) == {"state.pt", "meta.json", "data_position.json"}
    assert check_checkpoint(d) is None and not list(d.glob("*.tmp"))
    original = (d / "data_position.json").read_bytes()
    (d / "data_position.json").write_bytes(b'{"step": 99}')  # same size, other bytes
    assert "data_position.json does not match its sha256" in check_checkpoint(d)
    (d / "data_position.json").write_bytes(original)
    truncate(d / STATE_FILE)
    assert "state.pt has" in check_checkpoint(d, digests=False)
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        load_state(d)
    (d / STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no state.pt"):
        load_state(d)


def test_extra_files_cannot_escape_the_checkpoint(tmp_path):
    for name in ("../x.json", "state.pt", "manifest.json", ".hidden"):
        with pytest.raises(ValueError, match="plain new file name"):
            save_state(tmp_path / "c", state={}, meta={}, extra={name: b"x"})
    assert not (tmp_path / "x.json").exists()


def test_choose_falls_back_past_a_truncated_latest_with_a_warning(tmp_path):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    latest = _save(tmp_path, 30)
    truncate(latest / STATE_FILE)
    warnings = []
    found, state = choose(LOCAL, str(tmp_path), registered=str(latest), load=load_state, warn=warnings.append)
    assert found.step == 20 and state["step"] == 20
    assert len(warnings) == 1 and "checkpoint_0030: state.pt has" in warnings[0] and "step 20" in warnings[0]


def test_choose_skips_a_checkpoint_that_fails_its_full_check(tmp_path):
    _save(tmp_path, 10)
    latest = _save(tmp_path, 20)
    blob = bytearray((latest / STATE_FILE).read_bytes())
    blob[-100] ^= 0xFF  # corrupted in place: the size still matches, the digest does not
    (latest / STATE_FILE).write_bytes(bytes(blob))
    found, _ = choose(LOCAL, str(tmp_path), registered=str(latest), load=load_state, warn=lambda line: None)
    assert found.step == 10


def test_choose_takes_a_complete_checkpoint_ray_never_registered(tmp_path):
    """Uploaded whole, then the worker group died before the controller registered it: still the
    newest complete state, so the run resumes from it (and says why it is not Ray's latest)."""
    registered = _save(tmp_path, 10)
    _save(tmp_path, 20)
    warnings = []
    found, state = choose(LOCAL, str(tmp_path), registered=str(registered), load=load_state, warn=warnings.append)
    assert found.step == 20 and state["step"] == 20
    assert len(warnings) == 1 and "newer than Ray Train's latest registered checkpoint (checkpoint_0010)" in warnings[0]
    warnings.clear()
    found, _ = choose(LOCAL, str(tmp_path), registered=None, load=load_state, warn=warnings.append)
    assert found.step == 20 and "registered checkpoint (none)" in warnings[0]


def test_choose_with_no_checkpoint_starts_fresh(tmp_path):
    assert choose(LOCAL, str(tmp_path / "run"), registered=None, load=load_state, warn=pytest.fail) is None


def test_a_partly_uploaded_newer_checkpoint_is_passed_over(tmp_path):
    registered = _save(tmp_path, 10)
    partial = _save(tmp_path, 20)
    (partial / STATE_FILE).unlink()  # the upload copied the other files first
    warnings = []
    found, _ = choose(LOCAL, str(tmp_path), registered=str(registered), load=load_state, warn=warnings.append)
    assert found.step == 10 and "checkpoint_0020: no state.pt" in warnings[0]


def test_choose_with_nothing_usable_names_every_checkpoint(tmp_path):
    a, b = _save(tmp_path, 10), _save(tmp_path, 20)
    (a / STATE_FILE).unlink()
    truncate(b / STATE_FILE)
    with pytest.raises(CheckpointError) as err:
        choose(LOCAL, str(tmp_path), registered=str(b), load=load_state, warn=lambda line: None)
    message = str(err.value)
    assert "none of the 2 checkpoints" in message and "checkpoint_0010: no state.pt" in message
    assert "checkpoint_0020: state.pt has" in message and "\n" not in message


def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    proof = tmp_path / "pwned"
    d = _save(tmp_path / "run", 10)
    _malicious(d, proof)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*Unsupported global"):
        load_state(d)
    with pytest.raises(CheckpointError, match="weights_only"):
        verify_state(d)
    with pytest.raises(CheckpointError, match="none can be used"):
        preflight(LOCAL, str(tmp_path / "run"), warn=lambda line: None, verify=verify_state)
    assert not proof.exists()


def test_preflight_warns_about_a_broken_newest_and_passes_a_clean_run(tmp_path):
    run = tmp_path / "run"
    preflight(LOCAL, str(run), warn=pytest.fail)  # no run directory yet: nothing to say
    _save(run, 10)
    newest = _save(run, 20)
    preflight(LOCAL, str(run), warn=pytest.fail, verify=verify_state)
    truncate(newest / STATE_FILE)
    warnings = []
    preflight(LOCAL, str(run), warn=warnings.append, verify=verify_state)
    assert len(warnings) == 1 and "resumes from checkpoint_0010 (step 10)" in warnings[0]
    assert [f.step for f in list_checkpoints(LOCAL, str(run))] == [20, 10]


def test_checkpoints_from_before_manifests_still_load(tmp_path):
    d = _save(tmp_path, 10)
    (d / MANIFEST_FILE).unlink()
    assert check_checkpoint(d) is None and load_state(d)["step"] == 10
    shutil.copy(d / STATE_FILE, tmp_path / "copy.pt")
    truncate(d / STATE_FILE)
    with pytest.raises(CheckpointError):  # no manifest to compare with, torch.load still notices
        load_state(d)


def test_a_full_disk_is_named_with_the_checkpoint_the_rerun_resumes_from(tmp_path):
    """What `raylpclip pretrain` says when a checkpoint write found the disk full (the drill:
    tests/integration/test_faults_disk.py): the line with errno 28, and the newest whole checkpoint."""
    from raylpclip.runtime.train.trainer_factory import NO_SPACE, _first_line, _resume_hint

    run = tmp_path / "run"
    _save(run, 10)
    truncate(_save(run, 20) / STATE_FILE)  # the write that ran out of space
    worker = OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    wrapped = RuntimeError("Training failed due to worker errors")
    wrapped.worker_failures = {0: RuntimeError("upload failed\nTraceback ...")}
    wrapped.worker_failures[0].__cause__ = worker
    assert _first_line(wrapped, NO_SPACE) == str(worker)
    assert _first_line(RuntimeError("[Errno 2] No such file or directory"), NO_SPACE) is None
    hint = _resume_hint((LOCAL, str(run)))
    assert "checkpoint_0010 (step 10) is whole and is where it resumes" in hint and "Free space" in hint
    assert "starts over" in _resume_hint((LOCAL, str(tmp_path / "empty")))
