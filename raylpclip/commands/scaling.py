"""`raylpclip scaling CONFIG.yaml [key=value ...]`: one pretraining recipe at several data sizes and
methods (CLIP vs PSD), then results.csv, scaling.png and summary.json in `<output_dir>/<name>/`.

Keys: the pretraining config (inline or `base: recipe.yaml`), `scaling.*` (fractions, methods, metric,
baseline, treatment, steps: fixed | epochs: N, seed) and an optional `synthetic.*` section.
Re-running the same command skips finished points and resumes the rest.
"""

from __future__ import annotations

from pathlib import Path

from raylpclip.config import config_args
from raylpclip.experiments.scaling_plan import load_scaling


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def print_table(summary: dict) -> None:
    metric = summary["metric"]
    print(f"[raylpclip] scaling {summary['name']}: {metric} by method and training samples")
    print(f"  {'method':<12}{'fraction':>9}{'samples':>9}{'steps':>7}{'epochs':>8}{metric:>10}{'wall_s':>8}")
    for r in summary["points"]:
        print(f"  {r['method']:<12}{r['fraction']:>9g}{r['train_samples'] or '?':>9}{r['steps']:>7}"
              f"{r['epochs'] if r['epochs'] is not None else '?':>8}{_fmt(r.get(metric)):>10}{r['wall_s'] or 0:>8.0f}")
    for g in summary["gains"]:
        print(f"[raylpclip] {summary['treatment']} - {summary['baseline']} at {g['train_samples']} samples "
              f"(fraction {g['fraction']:g}): {g['gain']:+.4f}")
    grows = summary["gain_grows_with_data"]
    verdict = {True: "yes", False: "no", None: "undetermined (fewer than two sizes)"}[grows]
    print(f"[raylpclip] gain grows monotonically with data: {verdict}")
    print(f"[raylpclip] table: {summary['results_csv']}  plot: {summary['plot']}")


def cmd_scaling(args: list[str]) -> Path:
    experiment = load_scaling(*config_args(args))
    from raylpclip.runtime.tune.scaling_runner import run_scaling  # Ray is imported only once the config is good

    summary = run_scaling(experiment)
    print_table(summary)
    return Path(summary["out_dir"]) / "summary.json"
