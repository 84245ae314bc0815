"""A tiny scaling experiment on the shared Ray instance: 2 data sizes x 2 methods, grown in two runs (the
second skips the finished points), then a third run that finds everything done."""

from __future__ import annotations

import csv
import json

import pytest

from raylpclip.experiments.scaling_plan import load_scaling
from raylpclip.runtime.tune.scaling_runner import run_scaling

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _experiment(shards, out, fractions):
    return load_scaling(None, [
        "name=tiny", f"output_dir={out}", f"data.train={shards['webdataset']}", f"data.eval={shards['eval']}",
        "data.eval_max_samples=144", "data.decode_batch_size=100", "model.vocab_size=400",
        "train.steps=4", "train.batch_size=32", "train.checkpoint_every=4", "train.log_every=2", "optim.warmup_steps=1",
        f"scaling.fractions={fractions}", "scaling.seed=0",
    ])


def test_scaling_runs_points_writes_table_and_plot_and_skips_finished(ray_session, synthetic_shards, tmp_path, capsys):
    # Run 1: the smallest size only (1 of the 3 shards of 500 samples), both methods.
    first = run_scaling(_experiment(synthetic_shards, tmp_path, "[0.34]"))
    assert (first["points_run"], first["points_skipped"], len(first["points"])) == (2, 0, 2)
    assert first["gain_grows_with_data"] is None  # one size: nothing to compare yet
    small_summary = tmp_path / "tiny" / "psd-f0.34" / "summary.json"
    stamp = small_summary.stat().st_mtime_ns

    # Run 2: the experiment grown to the full set; the two finished points are not trained again.
    second = run_scaling(_experiment(synthetic_shards, tmp_path, "[0.34,1.0]"))
    assert (second["points_run"], second["points_skipped"]) == (2, 2)
    assert small_summary.stat().st_mtime_ns == stamp
    out = tmp_path / "tiny"
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], r["fraction"], r["train_samples"], r["steps"]) for r in table] == [
        ("clip", "0.34", "500", "4"), ("psd", "0.34", "500", "4"), ("clip", "1.0", "1500", "4"), ("psd", "1.0", "1500", "4")]
    for row in table:
        assert 0.0 <= float(row["acc1"]) <= 1.0
        assert json.loads((out / f"{row['method']}-f{float(row['fraction']):g}" / "summary.json").read_text())["acc1"] \
            == pytest.approx(float(row["acc1"]))
    assert table[0]["epochs"] == f"{4 * 32 / 500:g}"  # 128 samples seen of 500
    by = {(r["method"], r["fraction"]): float(r["acc1"]) for r in table}
    assert [g["gain"] for g in second["gains"]] == pytest.approx([by["psd", "0.34"] - by["clip", "0.34"],
                                                                   by["psd", "1.0"] - by["clip", "1.0"]])
    assert second["gain_grows_with_data"] == (second["gains"][1]["gain"] > second["gains"][0]["gain"])
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["complete"] is True and len(saved["points"]) == 4

    # Run 3: everything is finished; only the table, plot and summary are rewritten.
    capsys.readouterr()
    third = run_scaling(_experiment(synthetic_shards, tmp_path, "[0.34,1.0]"))
    assert (third["points_run"], third["points_skipped"]) == (0, 4)
    assert third["gains"] == second["gains"]
    assert capsys.readouterr().out.count("; skipped") == 4
