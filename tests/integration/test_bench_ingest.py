"""`raylpclip bench ingest` end to end on a tiny synthetic set: all four routes run and summary.json has
the issue's keys. Rates are only checked to be positive: a tiny set on a shared machine times nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylpclip.cli import main

pytestmark = pytest.mark.ray


def test_bench_ingest_writes_the_summary(ray_session, tmp_path, capsys):
    code = main(["bench", "ingest", f"output_dir={tmp_path}", "synthetic.samples=384", "synthetic.samples_per_shard=96",
                 "synthetic.image_size=32", "data.image_size=32", "batch_size=32", "warmup_batches=2",
                 "data.shuffle_buffer=64", "data.decode_batch_size=64", "reference_samples=200", "vocab_size=300",
                 "rounds=1"])
    out = capsys.readouterr().out
    assert code == 0
    path = Path(out.strip().splitlines()[-1])
    assert path == tmp_path / "bench-ingest" / "summary.json"
    summary = json.loads(path.read_text())
    for key in ("samples_per_s", "ratio_vs_decode_limit", "ratio_vs_dataloader", "decode_limit_per_cpu_samples_per_s",
                "decode_limit_samples_per_s", "batch_decoder_limit_samples_per_s", "dataloader_samples_per_s",
                "ours_samples_per_s"):
        assert summary[key] > 0, key
    assert summary["cpus"] >= 1 and summary["samples"] == 384 and summary["image_size"] == 32
    # 384 samples: 12 batches of 32; the last 2 are the shuffle buffer's, the 3 before them the untimed
    # tail's (0.3 of 384 = 115 samples); batches 3..7 are timed.
    assert summary["timed_samples"]["ours"] == summary["timed_samples"]["dataloader"] == 5 * 32
    assert summary["untimed_tail"] == 0.3
    assert "ours / DataLoader" in out
