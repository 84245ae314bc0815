"""A run's training curves as one PNG: a panel per figure the run reported (loss, learning rate, PSD's
a_t, logit scale, throughput, data wait, evaluation, LP-CLIP's rounds), against the step.

The rows are metrics.jsonl's (engine/metrics_log.py). A panel is drawn only when some row has one of
its metrics: a fine-tuning run has no a_t, a probe has rounds instead of steps. Evaluation metrics sit
on fewer rows than training ones (every eval_every steps), so every curve takes only the rows that
have its metric, with markers where the points are few. Drawn on the Agg canvas without pyplot, as
robustness_plots.py is (headless workers, no global figure registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

EVAL_KEYS = ("acc1", "acc5", "mean_per_class_recall", "ece")


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    wants: Callable[[str], bool]  # which metrics it draws
    log_y: bool = False
    percent: bool = False  # a fraction shown in %


PANELS = (
    Panel("loss", "loss", lambda k: k == "loss" or k.endswith("_loss") or k == "context_kl"),
    Panel("learning rate", "lr", lambda k: k == "lr", log_y=True),
    Panel("PSD a_t", "a_t", lambda k: k == "psd_alpha"),
    Panel("logit scale", "scale", lambda k: k == "logit_scale"),
    Panel("throughput", "samples/s", lambda k: k in ("samples_per_s", "train_samples_per_s")),
    Panel("data wait", "% of step time", lambda k: k == "data_wait_fraction", percent=True),
    Panel("evaluation", "score", lambda k: k in EVAL_KEYS or "retrieval_recall@" in k or k == "train_acc1"),
    Panel("LP-CLIP rounds", "share of samples", lambda k: k == "coverage" or k.startswith("pseudo_label_")),
)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows
              if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
    return [s for s, _ in points], [float(v) for _, v in points]


def panels_for(rows: Sequence[dict[str, Any]]) -> list[tuple[Panel, list[str]]]:
    """The panels these rows fill, each with its metrics (in a stable order)."""
    keys = sorted({k for row in rows for k in row if k != "step" and _series(rows, k)[0]})
    out = []
    for panel in PANELS:
        mine = [k for k in keys if panel.wants(k)]
        if mine:
            out.append((panel, mine))
    return out


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> list[str]:
    """Write the curves of `rows` (dicts with an int "step") to `path` as PNG; returns the panel titles
    drawn. Raises ValueError when no row has a metric to draw."""
    chosen = panels_for(rows)
    # A probe's steps are its LP-CLIP rounds; trainers report optimizer steps (with a learning rate).
    step_label = "LP-CLIP round" if [p.title for p, _ in chosen] == ["LP-CLIP rounds"] else "step"
    if not chosen:
        raise ValueError("no metric to plot: the rows have no loss, lr, throughput, evaluation or round figures")
    cols = 2 if len(chosen) > 1 else 1
    nrows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(6.0 * cols, 3.0 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the raster canvas, attached explicitly: PNG output without pyplot
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    # One step axis for every panel, so that an eval point sits under the training step it followed.
    first, last = min(row["step"] for row in rows), max(row["step"] for row in rows)
    for ax, (panel, keys) in zip(axes, chosen):
        for key in keys:
            steps, values = _series(rows, key)
            if panel.percent:
                values = [100 * v for v in values]
            ax.plot(steps, values, label=key, marker="o" if len(steps) <= 30 else None, markersize=3)
        if panel.log_y and all(v > 0 for k in keys for v in _series(rows, k)[1]):
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.set_xlabel(step_label)
        if first < last:
            pad = 0.02 * (last - first)  # the end points' markers whole
            ax.set_xlim(first - pad, last + pad)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return [panel.title for panel, _ in chosen]
