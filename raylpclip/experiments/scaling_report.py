"""A scaling experiment's results: one row per (method, data size) point, the treatment's gain over the
baseline at each size, results.csv and the scaling plot. Pure Python + matplotlib (Agg), no Ray."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RETRIEVAL = tuple(f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10))
METRICS = ("acc1", "acc5", "mean_per_class_recall") + RETRIEVAL  # higher is better, all of them
COLUMNS = ("method", "fraction", "shards", "train_samples", "steps", "batch_size", "samples_seen", "epochs")
TAIL = ("wall_s", "run_dir")


def result_row(point: Any, summary: dict) -> dict:
    """A table row from a point (method, fraction, shards, train_samples, cfg) and its run's summary."""
    samples, seen = point.train_samples, summary.get("samples_seen")
    row = {
        "method": point.method, "fraction": point.fraction, "shards": point.shards, "train_samples": samples,
        "steps": summary.get("step", point.cfg.train.steps), "batch_size": point.cfg.train.batch_size,
        "samples_seen": seen, "epochs": round(seen / samples, 3) if samples and seen is not None else None,
    }
    row.update({m: summary[m] for m in METRICS if summary.get(m) is not None})
    row.update(chance_acc1=summary.get("chance_acc1"), wall_s=summary.get("wall_s"), run_dir=summary.get("run_dir"))
    return row


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """results.csv: the fixed columns, then every metric some row has (in METRICS order), wall_s, run_dir."""
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    columns = list(COLUMNS) + metrics + list(TAIL)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return path


def _size(row: dict) -> float:
    """The x of a point: its training samples, or its fraction when the shards carry no counts."""
    return row["train_samples"] if row.get("train_samples") else row["fraction"]


def gains(rows: Sequence[dict], *, metric: str, baseline: str, treatment: str) -> list[dict]:
    """treatment - baseline at every data size where both have the metric, smallest size first."""
    by = {(r["method"], r["fraction"]): r for r in rows}
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        base, treat = by.get((baseline, fraction)), by.get((treatment, fraction))
        if base is None or treat is None or base.get(metric) is None or treat.get(metric) is None:
            continue
        out.append({"fraction": fraction, "train_samples": base.get("train_samples"), baseline: base[metric],
                    treatment: treat[metric], "gain": treat[metric] - base[metric]})
    return out


def grows(gain_rows: Sequence[dict]) -> Optional[bool]:
    """Whether the gain strictly increases with every step up in data size; None with fewer than two sizes."""
    values = [g["gain"] for g in gain_rows]
    if len(values) < 2:
        return None
    return all(b > a for a, b in zip(values, values[1:]))


def plot_scaling(rows: Sequence[dict], gain_rows: Sequence[dict], path: str | Path, *, metric: str, baseline: str,
                 treatment: str, title: str = "") -> Path:
    """Two panels over training samples (log x): the metric per method, and treatment - baseline."""
    fig = Figure(figsize=(6.5, 6.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no backend selection, no global figure registry
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    counted = all(r.get("train_samples") for r in rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((_size(r), r[metric]) for r in rows if r["method"] == method and r.get(metric) is not None)
        if points:
            top.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    chance = next((r.get("chance_acc1") for r in rows if r.get("chance_acc1")), None)
    if chance and metric == "acc1":
        top.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3g})")
    top.set_ylabel(metric)
    top.set_title(f"{title}: {metric} vs training data" if title else f"{metric} vs training data")
    top.grid(alpha=0.3, which="both")
    if top.get_legend_handles_labels()[0]:
        top.legend()
    if gain_rows:
        xs = [_size(g) for g in gain_rows]
        ys = [g["gain"] for g in gain_rows]
        bottom.plot(xs, ys, marker="s", color="tab:green")
        for x, y in zip(xs, ys):
            bottom.annotate(f"{y:+.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    else:  # an experiment that has not finished both methods at any size yet
        bottom.text(0.5, 0.5, f"no size with both {baseline} and {treatment} yet", transform=bottom.transAxes,
                    ha="center", va="center", color="grey")
    bottom.axhline(0.0, color="grey", linewidth=0.8)
    bottom.set_ylabel(f"{treatment} - {baseline}")
    bottom.set_xlabel("training samples (log)" if counted else "fraction of training shards (log)")
    bottom.grid(alpha=0.3, which="both")
    sizes = sorted({_size(r) for r in rows})
    if sizes:
        top.set_xscale("log")
        lo, hi = sizes[0], sizes[-1]
        pad = 1.25 if hi > lo else 2.0
        top.set_xlim(lo / pad, hi * pad)
        bottom.set_xticks(sizes, [f"{s:g}" if not counted else _count(s) for s in sizes])
        bottom.minorticks_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _count(n: float) -> str:
    return f"{n / 1000:g}k" if n >= 1000 else f"{n:g}"

