"""`raylpclip bench train` end to end, tiny: the plain loop, the 1-worker and the 2-worker pretraining
runs with their clocks, and summary.json with the issue's keys. Values are checked to be sane, never
fast: a few steps on a shared machine time nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylpclip.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_bench_train_writes_the_summary(ray_session, tmp_path, capsys):
    code = main(["bench", "train", f"output_dir={tmp_path}", "bench.rounds=1", "bench.warmup_steps=2",
                 "bench.timed_steps=3", "bench.windows=1", "bench.window_steps=3", "bench.memory_batches=2",
                 "bench.checkpoints=1", "bench.threads=2", "train.batch_size=16", "train.log_every=2",
                 "model.vocab_size=300", "data.shuffle_buffer=32", "data.decode_batch_size=32"])
    out = capsys.readouterr().out
    assert code == 0
    path = Path(out.strip().splitlines()[-1])
    assert path == tmp_path / "bench-train" / "summary.json"
    s = json.loads(path.read_text())
    for key in ("samples_per_s", "compute_limit_samples_per_s", "two_worker_samples_per_s", "step_time_s",
                "compute_limit_step_time_s", "psd_step_time_s", "clip_step_time_s", "two_worker_step_time_s",
                "checkpoint_report_s"):
        assert s[key] > 0, key
    assert 0 < s["ratio_vs_compute_limit"] < 10 and 0 < s["two_worker_ratio"] < 10
    assert 0 <= s["data_wait_fraction"] <= 1 and -1 < s["psd_overhead"] < 1
    assert s["psd_loss_s"] > 0 and s["clip_loss_s"] > 0
    # Every worker process (a Ray worker with torch and transformers loaded) holds > 100 MB at its peak.
    assert s["peak_memory_mb"] > 100 and len(s["peak_memory_mb_per_worker"]["two_workers"]) == 2
    assert s["rounds"]["load_avg"][0] >= 0 and s["threads"] == 2 and s["batch_size"] == 16
    # The data (generated) was enough for every timed step to stay within one epoch: no sample skipped.
    assert s["skipped"] == {} and Path(s["run_dir"], "data").is_dir()
    assert "ratio_vs_compute_limit" in out and "pipeline: 2 workers x 1 thread(s)" in out
