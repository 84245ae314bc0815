"""`raylpclip plot RUN_DIR`: a run's training curves, drawn from its metrics.jsonl (which every pretrain,
finetune, probe and sweep-trial run writes: engine/metrics_log.py) into RUN_DIR/curves.png.

Pretraining and fine-tuning draw the same figure when they finish; this command draws it again at any
time, e.g. while a run is going on or after a resume. Its summary.json goes to RUN_DIR/plot/, since
RUN_DIR/summary.json is the run's own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raylpclip.engine.metrics_log import METRICS_FILE, read_metrics
from raylpclip.eval.curve_plots import plot_curves
from raylpclip.summary import write_summary

CURVES_FILE = "curves.png"


def plot_run(run_dir: str | Path) -> dict:
    """Draw RUN_DIR/curves.png from RUN_DIR/metrics.jsonl; what was drawn, for summary.json. Raises
    FileNotFoundError when the run has no curves there, ValueError when they hold nothing to draw."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"no training curves in {run_dir}: {METRICS_FILE} is missing or empty (rank 0 "
                                "writes it into the run directory; on a cluster that must be a shared path)")
    path = run_dir / CURVES_FILE
    panels = plot_curves(rows, path, title=run_dir.name)
    return {"run_dir": str(run_dir.resolve()), "curves": str(path.resolve()), "panels": panels,
            "rows": len(rows), "first_step": rows[0]["step"], "last_step": rows[-1]["step"],
            "metrics": sorted({k for row in rows for k in row if k != "step"})}


def draw_run_curves(run_dir: str | Path) -> Path | None:
    """The trainers' last step: curves.png, named in one line. A figure that cannot be drawn (no curves in
    this directory, e.g. rank 0 ran on another node without a shared run directory) is said in one line
    and does not fail the run that has just trained."""
    try:
        drawn = plot_run(run_dir)
    except (OSError, ValueError) as exc:
        print(f"[raylpclip] no curves.png: {exc}", flush=True)
        return None
    print(f"[raylpclip] training curves: {drawn['curves']} (tensorboard --logdir {drawn['run_dir']})", flush=True)
    return Path(drawn["curves"])


def cmd_plot(args: list[str]) -> Path:
    parser = argparse.ArgumentParser(prog="raylpclip plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory (<output_dir>/<name>) holding metrics.jsonl")
    ns = parser.parse_args(args)
    drawn = plot_run(ns.run_dir)
    print(f"[raylpclip] {', '.join(drawn['panels'])} over steps {drawn['first_step']}..{drawn['last_step']} "
          f"({drawn['rows']} reports)")
    print(f"[raylpclip] curves: {drawn['curves']}", flush=True)
    return write_summary(Path(ns.run_dir) / "plot", drawn)
