"""`raylpclip sweep` on the shared local Ray instance: two tiny trials, ASHA stopping the worse one at
its first rung, the outputs, and a re-run that resumes instead of training again."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from raylpclip.config import PretrainConfig, load_config
from raylpclip.experiments.sweep_space import load_sweep
from raylpclip.runtime.tune.sweep_runner import run_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A tiny trial: 1 worker, 8 steps of 16, a 1-layer CLIP. The metric is the PSD weight a_t that every
# report carries (mean over the report's window of a linear ramp a_max * step / steps): known in advance,
# so which trial ASHA stops is known too. Grid order is the list order, one trial at a time.
SWEEP = """
name: asha
output_dir: {out}
data: {{train: {train}, decode_batch_size: 64, decode_concurrency: 1, shuffle_buffer: 64}}
model:
  vocab_size: 400
  overrides: {{vision.patch_size: 16, vision.num_hidden_layers: 1, text.num_hidden_layers: 1}}
optim: {{warmup_steps: 2}}
train: {{steps: 8, batch_size: 16, num_workers: 1, checkpoint_every: 4, log_every: 2}}
sweep:
  metric: psd_alpha
  mode: max
  search: grid
  num_samples: 1
  max_concurrent_trials: 1
  grace_period: 4
  space:
    psd.a_max: [0.9, 0.1]
    psd.ramp: linear
"""


def _rows(path: Path) -> dict[float, dict]:
    with path.open() as f:
        return {float(r["psd.a_max"]): r for r in csv.DictReader(f)}


def _trial_results(sweep_dir: Path) -> dict[str, str]:
    """Each Tune trial directory's result.json (one line per result Tune received)."""
    return {p.parent.name: p.read_text() for p in sorted(sweep_dir.glob("sweep_trial_*/result.json"))}


def _live_placement_groups(ray) -> set[str]:
    return {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"}


def test_sweep_asha_outputs_and_resume(ray_session, synthetic_shards, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP.format(out=tmp_path / "out", train=synthetic_shards["webdataset"]))
    groups_before = _live_placement_groups(ray_session)
    summary = run_sweep(load_sweep(str(config)))
    sweep_dir = tmp_path / "out" / "asha"

    rows = _rows(sweep_dir / "results.csv")
    assert sorted(rows) == [0.1, 0.9] and summary["trials"] == 2
    # The last report of a full trial covers steps 6 and 7 (0-based): a_t = 0.9 * 6.5 / 8.
    assert rows[0.9]["status"] == "done" and int(rows[0.9]["step"]) == 8
    assert float(rows[0.9]["psd_alpha"]) == pytest.approx(0.9 * 6.5 / 8, rel=1e-5)
    # At the rung (step 4) the first trial recorded 0.9 * 2.5 / 8; the second's 0.1 * 2.5 / 8 is below it.
    assert rows[0.1]["status"] == "stopped early" and int(rows[0.1]["step"]) == 4
    assert float(rows[0.1]["psd_alpha"]) == pytest.approx(0.1 * 2.5 / 8, rel=1e-5)
    assert summary["asha"] == {"max_t": 8, "grace_period": 4, "reduction_factor": 2}
    assert summary["status_counts"] == {"done": 1, "stopped early": 1, "error": 0, "no metric": 0}
    assert summary["best_metric"] == pytest.approx(0.9 * 6.5 / 8, rel=1e-5)

    best = load_config(PretrainConfig, summary["best_config"])  # ready for `raylpclip pretrain best.yaml`
    assert (best.name, best.psd.a_max, best.train.steps) == ("asha-best", 0.9, 8)
    assert best.data.train == str(synthetic_shards["webdataset"])
    assert Path(best.model.tokenizer) == sweep_dir / "tokenizer"  # trained once, shared by the trials
    assert (sweep_dir / "sweep.png").stat().st_size > 0
    assert json.loads((sweep_dir / "summary.json").read_text())["best_trial"] == summary["best_trial"]
    for trial_dir in sweep_dir.glob("sweep_trial_*"):  # per-trial TensorBoard logs
        assert list(trial_dir.glob("events.out.tfevents.*")), trial_dir
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == sorted(r["trial_id"] for r in rows.values())
    out = capsys.readouterr().out
    assert f"trial {rows[0.9]['trial_id']} finished at step 8" in out
    # The stopped trial's Train controller died with its trial; Ray Train's cleaner frees its workers'
    # placement group (it polls every second): nothing stays reserved on the shared instance.
    deadline = time.monotonic() + 60
    while _live_placement_groups(ray_session) - groups_before and time.monotonic() < deadline:
        time.sleep(1)
    assert not _live_placement_groups(ray_session) - groups_before

    # The same command again: Tune restores the experiment; no trial trains or reports again.
    before = _trial_results(sweep_dir)
    checkpoints = sorted(str(p) for p in (sweep_dir / "trials").glob("*/checkpoint_*"))
    again = run_sweep(load_sweep(str(config)))
    assert "resuming sweep asha" in capsys.readouterr().out
    assert _trial_results(sweep_dir) == before
    assert sorted(str(p) for p in (sweep_dir / "trials").glob("*/checkpoint_*")) == checkpoints
    assert _rows(sweep_dir / "results.csv") == rows
    assert again["best_metric"] == summary["best_metric"] and again["trials"] == 2
