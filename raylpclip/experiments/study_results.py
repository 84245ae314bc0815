"""A study's numbers: one long table (results.csv) with a row per (cell, classifier, split, metric), built
from the finished cells' summary.json files, and its means with intervals over seeds. Pure Python/numpy.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from raylpclip.experiments.study_plan import Cell, StudyPlan
from raylpclip.experiments.study_stats import t_quantile

COLUMNS = ("kind", "group", "seed", "size", "method", "classifier", "split", "metric", "value", "cell")
PRETRAIN_METRICS = ("acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "image_retrieval_recall@5",
                    "image_retrieval_recall@10", "text_retrieval_recall@1", "text_retrieval_recall@5",
                    "text_retrieval_recall@10", "train_samples", "wall_s")
HEADROOM_METRICS = tuple(f"{m}_{k}" for m in ("clean", "id")
                         for k in ("zeroshot_acc1", "supervised_probe_acc1", "margin", "probe_train_acc1"))
EVAL_METRICS = ("acc1", "ece", "nll", "auroc")


def summary_of(cell: Cell) -> dict | None:
    path = Path(cell.config.run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(cell: Cell, metric: str, value: Any, **extra: Any) -> dict:
    tags = cell.tags
    return {"kind": cell.kind, "group": tags.get("group", ""), "seed": tags.get("seed"), "size": tags.get("size"), "method": tags.get("method", ""),
            "classifier": extra.get("classifier", ""), "split": extra.get("split", tags.get("split", "")),
            "metric": metric, "value": float(value), "cell": cell.id}


def cell_rows(cell: Cell, summary: dict) -> list[dict]:
    if cell.kind == "pretrain":
        return [_row(cell, m, summary[m], split="test-id") for m in PRETRAIN_METRICS if summary.get(m) is not None]
    if cell.kind == "headroom":
        rows = [_row(cell, m, summary[m], split="test-clean" if m.startswith("clean") else "test-id")
                for m in HEADROOM_METRICS if m in summary]
        for group in ("context_cosine", "openai_templates_cosine"):
            rows += [_row(cell, f"{group}_{k}", v) for k, v in (summary.get(group) or {}).items()]
        return rows
    if cell.kind == "eval":
        rows = []
        for classifier, table in (summary.get("table") or {}).items():
            for m in EVAL_METRICS:
                for part in ("clean", "corrupted"):
                    value = table.get(f"{part}_{m}")
                    if value is not None and not (isinstance(value, float) and math.isnan(value)):
                        rows.append(_row(cell, f"{part}_{m}", value, classifier=classifier))
        return rows
    return []  # probe and finetune cells: their classifiers are measured by the eval cells


def collect(plan: StudyPlan) -> list[dict]:
    rows = []
    for cell in plan.cells:
        summary = summary_of(cell)
        if summary is not None:
            rows += cell_rows(cell, summary)
    return rows


def write_rows(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path


def values(rows: Iterable[dict], **match: Any) -> dict[int, float]:
    """seed -> value of the rows matching every given column."""
    return {r["seed"]: r["value"] for r in rows if all(r.get(k) == v for k, v in match.items())}


def mean_interval(samples: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t interval over seeds; (x, nan, nan) with fewer than 2 values."""
    x = np.asarray(samples, float)
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan, math.nan
    half = t_quantile(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


AGGREGATE_KEYS = ("kind", "group", "size", "method", "classifier", "split", "metric")


def aggregate(rows: Sequence[dict], level: float = 0.95) -> list[dict]:
    """Mean and interval over seeds of every (kind, group, size, method, classifier, split, metric)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in AGGREGATE_KEYS)].append(r["value"])
    out = []
    for key, xs in groups.items():
        mean, low, high = mean_interval(xs, level)
        out.append({**dict(zip(AGGREGATE_KEYS, key)), "seeds": len(xs), "mean": mean, "low": low, "high": high})
    return out


def predictions(plan: StudyPlan, cell_id: str) -> dict[str, np.ndarray] | None:
    """An eval cell's per-image predictions (eval/robustness_report.py), or None before it ran."""
    path = Path(plan.cell(cell_id).config.run_dir) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def correct(preds: dict[str, np.ndarray], classifier: str, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, 1.0 where `classifier` was right on `view`) from an eval cell's predictions."""
    ids, labels = preds[f"{classifier}|image_id"], preds[f"{classifier}|label"]
    return ids, (preds[f"{classifier}|{view}|pred"] == labels).astype(float)


def paired_by_image(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The per-image values of two classifiers on the images both saw, matched by image id."""
    ids_a, va = a
    ids_b, vb = b
    common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
    return va[ia], vb[ib]
