"""A study's figures (matplotlib, Agg canvas without pyplot): zero-shot acc1 against data size per method
with intervals, and the gain; LP-CLIP's classifiers on clean and corrupted images; fine-tuning's ID
against OOD accuracy. Each returns its path, or None while the results it draws do not exist yet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _rows(table: Sequence[dict], **match) -> list[dict]:
    return [r for r in table if all(r.get(k) == v for k, v in match.items())]


def _err(row: dict) -> tuple[float, float]:
    if math.isnan(row["low"]):
        return 0.0, 0.0
    return row["mean"] - row["low"], row["high"] - row["mean"]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_scaling(table: Sequence[dict], plan, path: Path) -> Path | None:
    acc = _rows(table, kind="pretrain", metric="acc1")
    if not acc:
        return None
    fig = Figure(figsize=(6.5, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    samples = {r["size"]: r["mean"] for r in _rows(table, kind="pretrain", metric="train_samples")}
    for method in plan.cfg.methods:
        mine = sorted(_rows(acc, method=method), key=lambda r: r["size"])
        if mine:
            xs = [samples.get(r["size"], r["size"]) for r in mine]
            errs = list(zip(*[_err(r) for r in mine]))
            ax.errorbar(xs, [r["mean"] for r in mine], yerr=errs, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("training samples (log)")
    ax.set_ylabel("zero-shot acc1, ID test (mean, interval over seeds)")
    ax.set_title(f"{plan.cfg.name}: {plan.cfg.treatment} vs {plan.cfg.baseline}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def _bars(ax, names: list[str], groups: list[tuple[str, str, str]], table: Sequence[dict], group: str) -> None:
    width = 0.8 / max(1, len(groups))
    for g, (label, split, metric) in enumerate(groups):
        rows = [next(iter(_rows(table, kind="eval", group=group, classifier=n, split=split, metric=metric)), None)
                for n in names]
        xs = [i + g * width for i in range(len(names))]
        means = [r["mean"] if r else 0.0 for r in rows]
        errs = list(zip(*[_err(r) if r else (0.0, 0.0) for r in rows]))
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=label)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(names))], names, rotation=20, ha="right")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def plot_lpclip(table: Sequence[dict], path: Path, *, group: str) -> Path | None:
    """The classifiers of one LP-CLIP variant's evaluations (`group`: "probe-<variant>")."""
    names = list(dict.fromkeys(r["classifier"] for r in _rows(table, kind="eval", group=group)))
    if not names:
        return None
    fig = Figure(figsize=(7.5, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    acc, ece = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    _bars(acc, names, [("clean acc1", "test-clean", "clean_acc1"), ("corrupted acc1", "test-clean", "corrupted_acc1"),
                       ("held-out contexts acc1", "test-ood", "clean_acc1")], table, group)
    acc.set_title("LP-CLIP: accuracy (interval over seeds)")
    _bars(ece, names, [("clean ECE", "test-clean", "clean_ece")], table, group)
    ece.set_title("calibration (lower is better)")
    return _save(fig, path)


def plot_finetune(table: Sequence[dict], path: Path) -> Path | None:
    rows = _rows(table, kind="eval", group="finetune")
    names = list(dict.fromkeys(r["classifier"] for r in rows))
    if not names:
        return None
    fig = Figure(figsize=(6.5, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name in names:
        idd = next(iter(_rows(rows, classifier=name, split="test-id", metric="clean_acc1")), None)
        ctx = next(iter(_rows(rows, classifier=name, split="test-ood", metric="clean_acc1")), None)
        cor = next(iter(_rows(rows, classifier=name, split="test-clean", metric="corrupted_acc1")), None)
        if idd and ctx and cor:
            ood = (ctx["mean"] + cor["mean"]) / 2
            ax.errorbar([idd["mean"]], [ood], xerr=[[e] for e in _err(idd)], marker="o", capsize=3, label=name)
    ax.set_xlabel("ID acc1 (test set with training contexts)")
    ax.set_ylabel("OOD acc1 (mean of held-out contexts and corruptions)")
    ax.set_title("Fine-tuning: ID vs OOD (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
