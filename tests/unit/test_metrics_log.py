"""A run's curves (engine/metrics_log.py) and the Train hooks that write them: rank 0 only, every reported
number in metrics.jsonl and in TensorBoard's event files (read back by TensorBoard's own reader), and a
resumed run continuing both without a repeated step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raylpclip.engine.loop import LoopState
from raylpclip.engine.metrics_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLog, read_metrics
from raylpclip.runtime.train import worker_hooks
from raylpclip.runtime.train.worker_setup import WorkerPlace


def _report(step: int, **extra) -> dict:
    """What a pretraining report carries (engine/loop.py's window plus the hooks' own figures)."""
    return {"loss": 4.0 / step, "contrastive_loss": 3.0 / step, "lr": 1e-3 * step, "psd_alpha": 0.01 * step,
            "logit_scale": 14.0 + step, "samples_per_s": 100.0 + step, "data_wait_fraction": 0.5 / step,
            "step_time_s": 0.25, "epoch": step / 40, "samples_seen": 32 * step, "train_samples_per_s": 90.0,
            "skipped_decode": 2, "storage_retries": 0, **extra}


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value}, as TensorBoard shows them (its purge of steps hidden by a restart applied)."""
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: repeated steps {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def assert_same_values(run_dir) -> None:
    """Every number of metrics.jsonl is a TensorBoard scalar of the same name, step and value, and back."""
    rows = read_metrics(run_dir)
    scalars = tensorboard_scalars(run_dir)
    from_jsonl = {(k, row["step"]): v for row in rows for k, v in row.items() if k != "step" and v is not None}
    from_tb = {(tag, step): v for tag, values in scalars.items() for step, v in values.items()}
    assert from_jsonl.keys() == from_tb.keys()
    for key, value in from_jsonl.items():
        assert from_tb[key] == pytest.approx(value, rel=1e-6), key  # TensorBoard keeps float32


def test_every_number_lands_in_both_files_under_its_own_name(tmp_path):
    log = MetricsLog(tmp_path, start_step=0)
    assert log.write(5, {**_report(5), "step": 5})  # the step given twice is written once
    assert log.write(10, _report(10, acc1=0.25, acc5=0.5, tensor=torch.tensor(1.5), f32=np.float32(0.125),
                                 text="left out", listed=[1, 2], nan=float("nan")))
    log.close()
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]
    assert rows[0] == {"step": 5, **_report(5)}
    assert rows[1]["acc1"] == 0.25 and rows[1]["tensor"] == 1.5 and rows[1]["f32"] == 0.125
    assert rows[1]["nan"] is None  # JSON has no NaN: null marks the missing number
    assert "text" not in rows[1] and "listed" not in rows[1] and "acc1" not in rows[0]
    scalars = tensorboard_scalars(tmp_path)
    assert set(scalars) == set(_report(5)) | {"acc1", "acc5", "tensor", "f32"}  # no "step", no NaN
    assert scalars["acc1"] == {10: pytest.approx(0.25)}
    assert scalars["loss"] == {5: pytest.approx(0.8), 10: pytest.approx(0.4)}
    assert_same_values(tmp_path)


def test_a_resume_drops_the_steps_after_its_checkpoint_and_repeats_none(tmp_path):
    first = MetricsLog(tmp_path, start_step=0)
    for step in (5, 10, 15, 20):
        first.write(step, _report(step))
    first.close()  # say the run died after step 20 with its newest checkpoint at step 10
    resumed = MetricsLog(tmp_path, start_step=10)  # in the same second: the two event files must both stay
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    assert not resumed.write(10, _report(10, loss=99.0))  # already logged: skipped
    for step in (15, 20, 25):
        assert resumed.write(step, _report(step, loss=100.0 + step))
    resumed.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
    assert [r["loss"] for r in rows] == [0.8, 0.4, 115.0, 120.0, 125.0]
    assert len(list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    scalars = tensorboard_scalars(tmp_path)  # the first file's steps 15 and 20 are hidden by the restart
    assert scalars["loss"] == pytest.approx({5: 0.8, 10: 0.4, 15: 115.0, 20: 120.0, 25: 125.0})
    assert_same_values(tmp_path)


def test_rerunning_a_finished_run_adds_nothing(tmp_path):
    log = MetricsLog(tmp_path, start_step=0)
    log.write(10, _report(10))
    log.close()
    again = MetricsLog(tmp_path, start_step=10)
    assert not again.write(10, {"acc1": 0.3})  # the final report a finished run makes again
    again.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [10]
    assert "acc1" not in tensorboard_scalars(tmp_path)


def test_a_line_cut_short_by_a_crash_is_dropped_not_glued_to_the_next(tmp_path):
    log = MetricsLog(tmp_path, start_step=0)
    log.write(5, _report(5))
    log.close()
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write('{"step": 10, "loss": 0.')  # the process died mid-line
    resumed = MetricsLog(tmp_path, start_step=10)
    resumed.write(15, _report(15))
    resumed.close()
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 15]


def test_a_fresh_start_clears_curves_of_an_earlier_attempt(tmp_path):
    """A run that died before its first checkpoint starts again at 0: its old steps are all recomputed."""
    log = MetricsLog(tmp_path, start_step=0)
    log.write(5, _report(5, loss=7.0))
    log.close()
    again = MetricsLog(tmp_path, start_step=0)
    again.write(5, _report(5, loss=6.0))
    again.close()
    assert [r["loss"] for r in read_metrics(tmp_path)] == [6.0]
    assert tensorboard_scalars(tmp_path)["loss"] == {5: pytest.approx(6.0)}


class _Cfg:
    """The part of a run config the hooks read."""

    def __init__(self, run_dir, *, eval_set="", storage_path=""):
        self.name, self.run_dir = run_dir.name, run_dir
        self.data = type("D", (), {"eval": eval_set})()
        self.train = type("T", (), {"async_checkpoint": False})()
        self.ray = type("R", (), {"storage_path": storage_path})()


class _Hooks(worker_hooks.WorkerHooks):
    def evaluate(self, towers: dict, *, final: bool) -> dict:
        return {"acc1": 0.5} if final else {}

    def line(self, state, m):
        return f"step {state.step}"


def _hooks(run_dir, rank: int, start: int = 0) -> _Hooks:
    return _Hooks(task=None, optimizer=None, scheduler=None, cfg=_Cfg(run_dir, eval_set="eval"),
                  place=WorkerPlace(rank=rank, world=2, device=torch.device("cpu")), start=LoopState(start, 32 * start),
                  train_samples=320)


def test_only_rank_0_writes_curves_with_the_hooks_figures(tmp_path, monkeypatch):
    reported = []
    monkeypatch.setattr(worker_hooks.ray.train, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    run_dir = tmp_path / "run"
    ranks = [_hooks(run_dir, rank) for rank in (0, 1)]
    for step in (5, 10):
        for hooks in ranks:
            hooks.report(LoopState(step, 32 * step), {"loss": 1.0 / step, "lr": 0.1}, save=False,
                         evaluate=step == 10, final=step == 10)
    assert ranks[1].curves is None and ranks[0].curves is None  # rank 1 never had one; rank 0 closed at the end
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10]
    assert rows[1]["acc1"] == 0.5 and rows[1]["epoch"] == 1.0 and rows[1]["samples_seen"] == 320
    assert set(rows[0]) == {"step", "loss", "lr", "samples_seen", "train_samples_per_s", "epoch"}
    assert len(reported) == 4  # every rank still reports to Ray Train
    assert_same_values(run_dir)
    resumed = _hooks(run_dir, 0, start=5)  # a restart from the step-5 checkpoint recomputes step 10
    resumed.report(LoopState(10, 320), {"loss": 0.05}, save=False, evaluate=False, final=True)
    assert [(r["step"], r["loss"]) for r in read_metrics(run_dir)] == [(5, 0.2), (10, 0.05)]
    assert_same_values(run_dir)


def test_the_run_directory_a_worker_writes_to(tmp_path, monkeypatch):
    """Train workers run in Ray's own working directory: a relative output_dir is placed by the driver's
    Train storage; with a separate ray.storage_path it cannot be, and nothing is written."""
    assert worker_hooks.curves_dir(_Cfg(tmp_path / "abs")) == tmp_path / "abs"
    monkeypatch.setattr(worker_hooks, "train_storage_dir", lambda: tmp_path / "resolved")
    relative = _Cfg(tmp_path / "abs")
    relative.run_dir = relative.run_dir.relative_to(tmp_path)
    assert worker_hooks.curves_dir(relative) == tmp_path / "resolved" / "abs"
    relative.ray.storage_path = "s3://bucket/runs"
    assert worker_hooks.curves_dir(relative) is None
    assert worker_hooks.open_curves(None, start_step=0) is None
