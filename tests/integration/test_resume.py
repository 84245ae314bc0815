"""A run killed after a checkpoint, re-run with the same name, resumes from that step (not from 0),
ends at the same final step, and exports a model that reloads with the same embeddings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import CLIPModel

from raylpclip.config import PretrainConfig, load_config
from raylpclip.engine.checkpoint import load_state
from raylpclip.models.clip import ClipTower
from raylpclip.models.factory import build_tower
from raylpclip.models.tokenizer import load_tokenizer, tokenize

from .conftest import small_run

pytestmark = pytest.mark.ray
STEPS = 40


def _kill_after_step(cmd: list[str], *, step: int, timeout: float = 300) -> None:
    """Run `cmd` in its own process group and SIGKILL the whole group (driver, Ray, workers) once
    progress passes `step`: as abrupt as losing the machine."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        m = re.search(rf"step (\d+)/{STEPS}", line)
        if (m and int(m.group(1)) >= step) or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert m and int(m.group(1)) >= step, "run never got past step %d:\n%s" % (step, "".join(seen[-30:]))


def test_killed_run_resumes_from_its_checkpoint(synthetic_shards, tmp_path):
    overrides = small_run(synthetic_shards, tmp_path, name="resume", steps=STEPS) + ["ray.num_cpus=6"]
    cmd = [sys.executable, "-m", "raylpclip", "pretrain", *overrides]
    _kill_after_step(cmd, step=25)  # checkpoints were taken at steps 10 and 20

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    resumed = re.search(r"resumed resume at step (\d+) \((\d+) samples seen\)", out)
    assert resumed, out[-4000:]
    step, seen = int(resumed.group(1)), int(resumed.group(2))
    assert step in (10, 20) and seen == step * 32  # from a checkpoint, not from 0
    assert f"step {STEPS}/{STEPS}" in out
    summary = json.loads((tmp_path / "resume" / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["samples_seen"] == STEPS * 32
    assert rerun.stdout.strip().splitlines()[-1].endswith("summary.json")
    _exported_model_matches_checkpoint(summary, overrides)


def _exported_model_matches_checkpoint(summary: dict, overrides: list[str]) -> None:
    cfg = load_config(PretrainConfig, None, overrides)
    tokenizer = load_tokenizer(summary["model_dir"])
    reference = build_tower(cfg.model, tokenizer=tokenizer)
    reference.load_state_dict(load_state(summary["checkpoint"])["task"]["model"])
    exported = ClipTower(CLIPModel.from_pretrained(summary["model_dir"], local_files_only=True))
    tokens = tokenize(tokenizer, ["a small red circle", "a blue star"], context_length=cfg.data.context_length)
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size)
    reference.eval(), exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported.encode_text(ids, mask), reference.encode_text(ids, mask))
        torch.testing.assert_close(exported.encode_image(images), reference.encode_image(images))
