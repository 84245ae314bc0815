"""A finished sweep as files: statuses, the CSV table, the best trial, parameter importance, the plot."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from raylpclip.experiments import sweep_results as sr
from raylpclip.experiments.search_expressions import Dim

DIMS = [Dim("optim.lr", "loguniform", [1e-4, 1e-2]), Dim("psd.a_max", "choice", [0.0, 0.5])]


def _row(tid, lr, a, acc, status=sr.DONE, step=100):
    return {"trial_id": tid, "status": status, "optim.lr": lr, "psd.a_max": a, "acc1": acc, "step": step,
            "time_s": 1.0, "checkpoint": f"/ck/{tid}", "error": None}


ROWS = [_row("t0", 1e-4, 0.0, 0.20), _row("t1", 1e-3, 0.5, 0.40), _row("t2", 1e-2, 0.5, 0.35),
        _row("t3", 3e-3, 0.0, 0.55, status=sr.STOPPED, step=50), _row("t4", 5e-4, 0.5, None, status=sr.ERROR)]


def test_trial_status():
    assert sr.trial_status(error=True, metric=0.5, step=100, steps=100) == sr.ERROR
    assert sr.trial_status(error=False, metric=None, step=100, steps=100) == sr.NO_METRIC
    assert sr.trial_status(error=False, metric=float("nan"), step=100, steps=100) == sr.NO_METRIC
    assert sr.trial_status(error=False, metric=0.3, step=40, steps=100) == sr.STOPPED
    assert sr.trial_status(error=False, metric=0.3, step=100, steps=100) == sr.DONE


def test_best_prefers_trials_that_ran_all_their_steps():
    # t3 has the highest acc1 but ASHA stopped it at step 50: it was judged on fewer steps.
    assert sr.best_row(ROWS, metric="acc1", mode="max")["trial_id"] == "t1"
    assert sr.best_row(ROWS, metric="acc1", mode="min")["trial_id"] == "t0"
    only_stopped = [ROWS[3], ROWS[4]]
    assert sr.best_row(only_stopped, metric="acc1", mode="max")["trial_id"] == "t3"
    assert sr.best_row([ROWS[4]], metric="acc1", mode="max") is None


def test_csv_has_one_row_per_trial(tmp_path):
    path = sr.write_csv(ROWS, tmp_path / "results.csv", dims=DIMS, metric="acc1")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trial_id", "status", "optim.lr", "psd.a_max", "acc1", "step", "time_s", "checkpoint",
                             "error"]
    assert [r["trial_id"] for r in rows] == ["t0", "t1", "t2", "t3", "t4"]
    assert rows[3]["status"] == "stopped early" and rows[4]["acc1"] == "" and rows[4]["status"] == "error"
    assert float(rows[1]["optim.lr"]) == 1e-3 and float(rows[1]["acc1"]) == 0.40


def test_importance_is_the_share_of_variance_between_groups():
    rows = [_row(f"t{i}", lr, a, acc) for i, (lr, a, acc) in
            enumerate([(1e-4, 0.0, 0.1), (2e-4, 0.0, 0.3), (1e-3, 0.5, 0.5), (2e-3, 0.5, 0.7)])]
    # a_max groups {0.1, 0.3} and {0.5, 0.7}; overall mean 0.4, group means 0.2 and 0.6:
    # between = 2*(0.2-0.4)^2 + 2*(0.6-0.4)^2 = 0.16, total = 0.09+0.01+0.01+0.09 = 0.2
    assert sr.importance(rows, DIMS[1], "acc1") == pytest.approx(0.16 / 0.2)
    # lr split at its median (1e-3): the same halves
    assert sr.importance(rows, DIMS[0], "acc1") == pytest.approx(0.8)
    flat = [dict(r, acc1=0.3) for r in rows]
    assert sr.importance(flat, DIMS[1], "acc1") == 0.0
    assert sr.importance(rows[:2], DIMS[1], "acc1") == 0.0  # too few trials to say


def test_plot_writes_a_png_with_one_panel_per_parameter(tmp_path):
    path = sr.plot(ROWS, tmp_path / "sweep.png", dims=DIMS, metric="acc1", mode="max", title="t")
    with Image.open(path) as img:
        width, height = img.size
    assert img.format == "PNG" and width > 1.8 * height  # two panels side by side


def test_error_line_names_the_error_not_ray_advice():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
            "ray.exceptions.OutOfMemoryError: 7 worker(s) were killed due to low memory\n\n"
            "Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/...\n")
    assert sr.error_line(text) == "ray.exceptions.OutOfMemoryError: 7 worker(s) were killed due to low memory"
    assert sr.error_line("no traceback here\nsecond line") == "second line"
    assert sr.error_line("") == ""
