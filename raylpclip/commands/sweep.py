"""`raylpclip sweep CONFIG.yaml [key=value ...]`: a Ray Tune sweep of PSD pretraining.

CONFIG is a pretrain config (inline keys or `base: other.yaml`) with a `sweep:` section whose `space`
maps config keys to search expressions (see raylpclip/experiments/sweep_space.py). Overrides: `sweep.num_samples=4`,
`train.steps=200`, ... Re-running the same command (same name) resumes the sweep.
"""

from __future__ import annotations

from pathlib import Path

from raylpclip.config import config_args
from raylpclip.experiments.sweep_space import load_sweep


def cmd_sweep(args: list[str]) -> Path:
    spec = load_sweep(*config_args(args))  # all config errors before Ray starts
    from raylpclip.runtime.tune.sweep_runner import run_sweep

    summary = run_sweep(spec)
    counts = ", ".join(f"{n} {status}" for status, n in summary["status_counts"].items() if n)
    print(f"[raylpclip] sweep {summary['name']}: {summary['trials']} trials ({counts}), {summary['wall_s']:.0f}s wall")
    if summary["best_config"]:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in summary["best_values"].items())
        print(f"[raylpclip] best {summary['metric']} {summary['best_metric']:.4f} (trial {summary['best_trial']}: {values})")
        print(f"[raylpclip] best config: {summary['best_config']}  (raylpclip pretrain {summary['best_config']})")
    else:
        print(f"[raylpclip] no trial reported {summary['metric']}; see {summary['results_csv']}")
    print(f"[raylpclip] results: {summary['results_csv']}, plot: {summary['plot']}")
    return Path(summary["run_dir"]) / "summary.json"
