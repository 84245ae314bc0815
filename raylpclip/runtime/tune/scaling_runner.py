"""Running a data-scaling experiment (its plan: experiments/scaling_plan.py): one pretraining run per
(method, data size) point, one after another on the shared Ray instance, with results.csv, scaling.png
and summary.json rewritten after each point.
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import OmegaConf

from raylpclip.config import to_dict
from raylpclip.experiments import scaling_report as report
from raylpclip.experiments.demo_data import point_at, write_synthetic
from raylpclip.experiments.scaling_plan import ScalingExperiment, finished_summary, plan_points
from raylpclip.runtime.train.pretrain_driver import run_pretrain
from raylpclip.summary import write_summary


def _log(message: str) -> None:
    print(f"[raylpclip] scaling {message}", flush=True)


def run_scaling(exp: ScalingExperiment) -> dict:
    """Run (or resume) every point, rewriting results.csv, scaling.png and summary.json after each one,
    so a long experiment can be watched and a cut-short one still leaves its table."""
    start = time.perf_counter()
    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if exp.synthetic is not None:  # the demo's data, generated once into the experiment directory
        write_synthetic(exp.synthetic, exp.out_dir / "data")
        point_at(exp.base, exp.synthetic, exp.out_dir / "data")
    points = plan_points(exp)
    OmegaConf.save(OmegaConf.create({"base": to_dict(exp.base),
                                     "scaling": OmegaConf.to_container(OmegaConf.structured(exp.section))}),
                   out / "config.yaml")
    sizes = ", ".join(f"{f:g}: {next(p.shards for p in points if p.fraction == f)} shards / "
                      f"{next(p.train_samples for p in points if p.fraction == f)} samples"
                      for f in sorted(exp.section.fractions))
    budget = (f"{exp.section.epochs:g} epochs per size" if exp.section.epochs is not None
              else f"{points[0].cfg.train.steps} steps per point (compute-matched)")
    _log(f"{exp.name}: {len(points)} points ({len(exp.section.methods)} methods x {len(exp.section.fractions)} "
         f"sizes; {sizes}), {budget}, metric {exp.section.metric}; output {out}")
    rows, ran, skipped = [], 0, 0
    for i, point in enumerate(points, 1):
        tag = f"point {i}/{len(points)} {point.name}"
        summary = finished_summary(point)
        if summary is not None:
            skipped += 1
            _log(f"{tag}: finished before ({point.cfg.run_dir / 'summary.json'}), "
                 f"{exp.section.metric} {_fmt(summary.get(exp.section.metric))}; skipped")
        else:
            _log(f"{tag}: {point.shards} shards, {point.train_samples} samples, "
                 f"{point.cfg.train.steps} steps of {point.cfg.train.batch_size}")
            summary = run_pretrain(point.cfg)
            ran += 1
            _log(f"{tag}: {exp.section.metric} {_fmt(summary.get(exp.section.metric))} in {summary['wall_s']:.0f}s")
        rows.append(report.result_row(point, summary))
        result = _write_outputs(exp, rows, points_run=ran, points_skipped=skipped, wall_s=time.perf_counter() - start)
    return result


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write_outputs(exp: ScalingExperiment, rows: list[dict], *, points_run: int, points_skipped: int,
                   wall_s: float) -> dict:
    s = exp.section
    out = exp.out_dir
    csv_path = report.write_csv(rows, out / "results.csv")
    gains = report.gains(rows, metric=s.metric, baseline=s.baseline, treatment=s.treatment)
    plot_path = report.plot_scaling(rows, gains, out / "scaling.png", metric=s.metric, baseline=s.baseline,
                                    treatment=s.treatment, title=exp.name)
    summary = {
        "name": exp.name, "out_dir": str(out.resolve()), "metric": s.metric, "baseline": s.baseline,
        "treatment": s.treatment, "fractions": sorted(s.fractions), "methods": list(s.methods),
        "budget": {"epochs": s.epochs} if s.epochs is not None else {"steps": "fixed"},
        "points": rows, "gains": gains, "gain_grows_with_data": report.grows(gains),
        "complete": len(rows) == len(s.fractions) * len(s.methods),
        "points_run": points_run, "points_skipped": points_skipped, "wall_s": wall_s,
        "results_csv": str(csv_path.resolve()), "plot": str(plot_path.resolve()),
    }
    write_summary(out, summary)
    return summary
