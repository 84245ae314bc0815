"""The robustness evaluation's numbers and report, from the logits and features batch inference
gathered: per classifier and view acc1, acc5, mean_per_class_recall, ece (15 bins), nll, auroc (or
retrieval recall@1/5/10 on caption test sets), `results.csv` (every classifier x view), `table.csv`
(clean vs mean corrupted per classifier) and PNG plots. Pure numpy/torch/matplotlib; the Ray Data
pass that gathers the inputs is runtime/data/robustness_eval.py.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX, LOGITS_PREFIX, TEXT_FEATURES
from raylpclip.config import RobustnessConfig
from raylpclip.data.views import CLEAN, corruption_views, parse_view
from raylpclip.eval.calibration import reliability_bins, robustness_metrics
from raylpclip.eval.metrics import retrieval_metrics
from raylpclip.eval.robustness_plots import plot_accuracy_vs_severity, plot_reliability, plot_table_bars
from raylpclip.models.classifier import Classifier

METRICS = ("acc1", "acc5", "mean_per_class_recall", "ece", "nll", "auroc")
RETRIEVAL_METRICS = tuple(f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10))


@dataclass
class EvalOutput:
    rows: list[dict]  # one per (classifier, view)
    reliability: dict[str, dict]  # classifier -> clean reliability bins
    samples: int
    mode: str  # classification | retrieval
    # Per test image (what paired comparisons resample): "<classifier>|image_id" and "|label" in the order
    # of that classifier's encoder pass, "<classifier>|<view>|pred" / "|conf" (predicted class, its probability).
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


def views_for(cfg: RobustnessConfig) -> list[str]:
    return [CLEAN] + corruption_views(cfg.corruptions, cfg.severities)


def view_row(name: str, view: str, metrics: dict) -> dict:
    parsed = parse_view(view)
    return {"classifier": name, "view": view, "corruption": parsed[0] if parsed else "",
            "severity": parsed[1] if parsed else 0, **metrics}


def classification_rows(members: dict[str, Classifier], parts, views, n_bins,
                        predictions: dict[str, np.ndarray] | None = None) -> tuple[list[dict], dict]:
    """Metric rows per (classifier, view) and clean reliability bins; per-image predictions go into
    `predictions` when given."""
    labels = torch.from_numpy(np.concatenate(parts[batch_schema.LABEL]))
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} test images have no `label` in their metadata; classification "
                         f"needs labelled test shards (captions only: leave classnames empty for a retrieval eval)")
    rows, reliability = [], {}
    for view in views:
        logits = torch.from_numpy(np.concatenate(parts[LOGITS_PREFIX + view]))  # (N, H, C)
        for h, name in enumerate(members):
            rows.append(view_row(name, view, robustness_metrics(logits[:, h], labels, n_bins=n_bins)))
            if predictions is not None:
                conf, pred = logits[:, h].double().softmax(1).max(1)
                predictions[f"{name}|{view}|pred"] = pred.numpy().astype(np.int16)
                predictions[f"{name}|{view}|conf"] = conf.numpy().astype(np.float32)
            if view == CLEAN:
                reliability[name] = reliability_bins(logits[:, h].double().softmax(1), labels, n_bins=n_bins)
    return rows, reliability


def retrieval_rows(name: str, parts, views) -> list[dict]:
    ids = torch.from_numpy(np.concatenate(parts[batch_schema.IMAGE_ID]))
    unique, text_to_image = torch.unique(ids, return_inverse=True)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, text_to_image, torch.arange(ids.numel()), reduce="amin")
    texts = torch.from_numpy(np.concatenate(parts[TEXT_FEATURES]))
    rows = []
    for view in views:
        images = torch.from_numpy(np.concatenate(parts[FEATURE_PREFIX + view]))[first]
        rows.append(view_row(name, view, retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10))))
    return rows


def summary_table(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """Per classifier: clean_<m> and corrupted_<m> (mean over every corrupted view) for each metric."""
    out = []
    for name in dict.fromkeys(r["classifier"] for r in rows):
        mine = [r for r in rows if r["classifier"] == name]
        clean = next(r for r in mine if r["view"] == CLEAN)
        corrupted = [r for r in mine if r["view"] != CLEAN]
        entry = {"classifier": name}
        for m in metrics:
            entry[f"clean_{m}"] = clean[m]
            entry[f"corrupted_{m}"] = float(np.mean([r[m] for r in corrupted])) if corrupted else math.nan
        out.append(entry)
    return out


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_plots(output: EvalOutput, out_dir: Path) -> list[Path]:
    metric = "acc1" if output.mode == "classification" else "image_retrieval_recall@5"
    by_severity: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_corruption: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in output.rows:
        by_severity[r["classifier"]][r["severity"]].append(r[metric])
        if r["corruption"]:
            by_corruption[r["corruption"]][r["classifier"]].append(r[metric])
    paths = [plot_accuracy_vs_severity(
        {c: {s: float(np.mean(v)) for s, v in sev.items()} for c, sev in by_severity.items()},
        out_dir / "accuracy_vs_severity.png", ylabel=metric, title=f"{metric}: clean and mean over corruptions")]
    if by_corruption:
        paths.append(plot_table_bars({k: {c: float(np.mean(v)) for c, v in per.items()} for k, per in by_corruption.items()},
                                     out_dir / "corruptions.png", ylabel=metric, title=f"{metric} per corruption (mean over severities)"))
    if output.reliability:
        paths.append(plot_reliability(output.reliability, out_dir / "reliability.png", title="Reliability on the clean test set"))
    return paths


def print_table(table: Sequence[dict], metrics: Sequence[str]) -> None:
    width = max(len(r["classifier"]) for r in table)
    header = "".join(f"{'clean ' + m:>14}{'corr ' + m:>14}" for m in metrics)
    print(f"[raylpclip] {'classifier':<{width}}{header}")
    for r in table:
        cells = "".join(f"{r[f'clean_{m}']:>14.4f}{r[f'corrupted_{m}']:>14.4f}" for m in metrics)
        print(f"[raylpclip] {r['classifier']:<{width}}{cells}")


def report(output: EvalOutput, out_dir: Path, *, save_predictions: bool = False) -> dict:
    """Write results.csv, table.csv and the plots (and predictions.npz: every test image's prediction under
    every classifier and view); print the table; return summary.json's content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_predictions and output.predictions:
        np.savez_compressed(out_dir / "predictions.npz", **output.predictions)
    metrics = METRICS if output.mode == "classification" else RETRIEVAL_METRICS
    table = summary_table(output.rows, metrics)
    write_csv(output.rows, out_dir / "results.csv")
    write_csv(table, out_dir / "table.csv")
    plots = write_plots(output, out_dir)
    print_table(table, ("acc1", "ece", "nll", "auroc") if output.mode == "classification" else RETRIEVAL_METRICS[:3])
    return {"mode": output.mode, "test_samples": output.samples, "views": len({r["view"] for r in output.rows}),
            "table": {r["classifier"]: {k: v for k, v in r.items() if k != "classifier"} for r in table},
            "results_csv": str(out_dir / "results.csv"), "table_csv": str(out_dir / "table.csv"),
            "plots": [str(p) for p in plots]}
