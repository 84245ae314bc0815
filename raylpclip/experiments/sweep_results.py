"""A finished sweep as files: one CSV row per trial, the best trial, and metric-vs-parameter plots.
Pure Python and matplotlib (Agg): rows come in as plain dicts, whatever produced them."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Sequence

from raylpclip.experiments.search_expressions import Dim

DONE, STOPPED, ERROR, NO_METRIC = "done", "stopped early", "error", "no metric"


def trial_status(*, error: bool, metric: Any, step: Any, steps: int) -> str:
    """done: ran all its steps; stopped early: ASHA ended it at a rung; error: it raised; no metric:
    it never reported the sweep's metric."""
    if error:
        return ERROR
    if not is_number(metric):
        return NO_METRIC
    return DONE if (step or 0) >= steps else STOPPED


def error_line(text: str) -> str:
    """The line of a (Ray-wrapped) traceback that names the error: the last `SomethingError: ...`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return ((named or lines or [""])[-1])[:300]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def columns(dims: Sequence[Dim], metric: str) -> list[str]:
    return ["trial_id", "status", *[d.key for d in dims], metric, "step", "time_s", "checkpoint", "error"]


def write_csv(rows: Sequence[dict], path: Path, *, dims: Sequence[Dim], metric: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(dims, metric), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def best_row(rows: Sequence[dict], *, metric: str, mode: str) -> dict | None:
    """The best metric among trials that ran all their steps; among all that reported it when none did
    (a trial stopped early was judged on fewer steps)."""
    scored = [r for r in rows if is_number(r.get(metric))]
    finished = [r for r in scored if r["status"] == DONE] or scored
    if not finished:
        return None
    pick = max if mode == "max" else min
    return pick(finished, key=lambda r: r[metric])


def importance(rows: Sequence[dict], dim: Dim, metric: str) -> float:
    """Share of the metric's variance explained by grouping trials on this parameter (eta squared):
    by value for a choice, by lower/upper half for a range. 0 with fewer than 3 scored trials."""
    scored = [(r[dim.key], r[metric]) for r in rows if is_number(r.get(metric)) and r.get(dim.key) is not None]
    if len(scored) < 3:
        return 0.0
    if dim.kind == "choice":
        keys = [str(x) for x, _ in scored]
    else:
        median = sorted(x for x, _ in scored)[len(scored) // 2]
        keys = ["low" if x < median else "high" for x, _ in scored]
    values = [y for _, y in scored]
    mean = sum(values) / len(values)
    total = sum((y - mean) ** 2 for y in values)
    if total == 0:
        return 0.0
    groups: dict[str, list[float]] = {}
    for k, y in zip(keys, values):
        groups.setdefault(k, []).append(y)
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / total


def plot(rows: Sequence[dict], path: Path, *, dims: Sequence[Dim], metric: str, mode: str, title: str) -> Path:
    """One panel per swept parameter, most important first: each trial's metric against its value
    (log axis for loguniform, categories for choices); hollow markers for trials ASHA stopped early,
    a star for the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(dims, key=lambda d: -importance(rows, d, metric))
    best = best_row(rows, metric=metric, mode=mode)
    fig, axes = plt.subplots(1, len(ordered), figsize=(4.2 * len(ordered), 3.6), squeeze=False)
    for ax, dim in zip(axes[0], ordered):
        _panel(ax, rows, dim, metric, best)
        ax.set_title(f"{dim.key}  (importance {importance(rows, dim, metric):.2f})", fontsize=9)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax, rows: Sequence[dict], dim: Dim, metric: str, best: dict | None) -> None:
    categories = [str(v) for v in dim.args] if dim.kind == "choice" else []

    def x_of(value):
        return categories.index(str(value)) if categories else value

    for status, face in ((DONE, "C0"), (STOPPED, "none")):
        pts = [(x_of(r[dim.key]), r[metric]) for r in rows
               if r["status"] == status and is_number(r.get(metric)) and r.get(dim.key) is not None]
        if pts:
            ax.scatter(*zip(*pts), s=36, facecolors=face, edgecolors="C0", label=status)
    if best is not None and best.get(dim.key) is not None:
        ax.scatter([x_of(best[dim.key])], [best[metric]], marker="*", s=220, color="C3", label="best", zorder=3)
    if categories:
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    elif dim.kind == "loguniform":
        ax.set_xscale("log")
    ax.set_xlabel(dim.key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
