"""PNG figures for the robustness report: accuracy against corruption severity, reliability diagrams,
grouped bars.

Figures are built with matplotlib's object API on the Agg canvas, never through pyplot: no backend
needs selecting (headless Ray workers have no display), and no global figure registry keeps figures
alive between calls in a long-running process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new_figure(width: float, height: float, *, rows: int = 1, height_ratios: Sequence[float] | None = None):
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # attach the raster canvas explicitly: PNG output without pyplot
    grid = {"height_ratios": height_ratios} if height_ratios else None
    axes = fig.subplots(rows, 1, sharex=rows > 1, gridspec_kw=grid)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_accuracy_vs_severity(
    results: Mapping[str, Mapping[int, float]],
    path: str | Path,
    *,
    title: str = "Accuracy under corruption",
    ylabel: str = "top-1 accuracy",
) -> Path:
    """results: method -> {severity: accuracy}, severity 0 meaning the clean test set -> one line per
    method. Severities a method lacks are simply not drawn. Returns `path`."""
    if not results:
        raise ValueError("plot_accuracy_vs_severity needs at least one method")
    fig, ax = _new_figure(6.0, 4.0)
    severities = sorted({int(s) for by_severity in results.values() for s in by_severity})
    for method, by_severity in results.items():
        xs = sorted(int(s) for s in by_severity)
        ax.plot(xs, [by_severity[s] for s in xs], marker="o", label=method)
    ax.set_xticks(severities, ["clean" if s == 0 else str(s) for s in severities])
    ax.set_xlabel("corruption severity")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _ece_from_bins(bins: Mapping[str, Sequence[float]]) -> float:
    """ECE from `reliability_bins` output: sum |acc - conf| * count / total over non-empty bins."""
    total = sum(bins["count"])
    gaps = (abs(a - c) * n for a, c, n in zip(bins["accuracy"], bins["confidence"], bins["count"]) if n > 0)
    return sum(gaps) / total if total else math.nan


def plot_reliability(
    bins_by_method: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str = "Reliability diagram",
) -> Path:
    """bins_by_method: method -> `raylpclip.eval.calibration.reliability_bins(...)` output. Top: accuracy
    against mean confidence per non-empty bin, the diagonal being perfect calibration, ECE in the
    legend; bottom: the share of samples in each bin, since a gap in a near-empty bin means little."""
    if not bins_by_method:
        raise ValueError("plot_reliability needs at least one method")
    fig, (top, bottom) = _new_figure(5.5, 6.0, rows=2, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    n_methods = len(bins_by_method)
    for i, (method, bins) in enumerate(bins_by_method.items()):
        keep = [j for j, n in enumerate(bins["count"]) if n > 0]
        (line,) = top.plot([bins["confidence"][j] for j in keep], [bins["accuracy"][j] for j in keep], marker="o",
                           label=f"{method} (ECE {_ece_from_bins(bins):.3f})")
        edges, total = bins["edges"], sum(bins["count"]) or 1
        # Side-by-side bars inside each bin, one slot per method.
        width = [(hi - lo) / n_methods for lo, hi in zip(edges[:-1], edges[1:])]
        left = [lo + i * w for lo, w in zip(edges[:-1], width)]
        bottom.bar(left, [n / total for n in bins["count"]], width=width, align="edge", alpha=0.7,
                   color=line.get_color())
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)  # room for markers at accuracy 0 and 1
    top.set_ylabel("accuracy")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("share")
    return _save(fig, path)


def plot_table_bars(
    table: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "top-1 accuracy",
) -> Path:
    """table: group (e.g. corruption) -> {method: value} -> grouped bars, one colour per method.
    Missing (group, method) cells leave a gap. Returns `path`."""
    if not table:
        raise ValueError("plot_table_bars needs at least one group")
    groups = list(table)
    methods = list(dict.fromkeys(m for row in table.values() for m in row))  # first-seen order
    width = 0.8 / len(methods)
    fig, ax = _new_figure(max(6.0, 0.6 * len(groups) * max(1, len(methods) / 2)), 4.0)
    for i, method in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g, name in enumerate(groups) if method in table[name]]
        ax.bar(xs, [table[name][method] for name in groups if method in table[name]], width=width, label=method)
    ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)
