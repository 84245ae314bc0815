"""The robustness evaluation: classifiers on the clean test set and its corrupted copies (CIFAR-10-C
style), one Ray Data pass per encoder, every head of that encoder applied in the same pass.

Per classifier and view: acc1, acc5, mean_per_class_recall, ece (15 bins), nll, auroc. Caption test
sets without labels get retrieval recall@1/5/10 per view instead. Results: `results.csv` (every
classifier x view), `table.csv` (clean vs mean corrupted per classifier), PNG plots.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from raylpclip import batch_schema
from raylpclip.config import DataConfig
from raylpclip.data.views import CLEAN, corruption_views, parse_view
from raylpclip.eval.calibration import reliability_bins, robustness_metrics
from raylpclip.eval.corruptions import CORRUPTIONS, SEVERITIES
from raylpclip.eval.metrics import retrieval_metrics
from raylpclip.eval.plots import plot_accuracy_vs_severity, plot_reliability, plot_table_bars
from raylpclip.models.classifier import Classifier, image_size
from raylpclip.runtime.data.batch_inference import FEATURE_PREFIX, LOGITS_PREFIX, TEXT_FEATURES, InferenceConfig, encode, view_dataset

METRICS = ("acc1", "acc5", "mean_per_class_recall", "ece", "nll", "auroc")
RETRIEVAL_METRICS = tuple(f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10))


@dataclass
class RobustnessConfig:
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))  # all 16 by default
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    max_samples: int = 2000  # test images evaluated (each x every view); 0: all
    n_bins: int = 15  # ECE bins


def check_robustness(cfg: RobustnessConfig, key: str = "robustness") -> None:
    from raylpclip.config import ConfigError

    for name in cfg.corruptions:
        if name not in CORRUPTIONS:
            raise ConfigError(f"config key '{key}.corruptions': unknown {name!r}, expected some of {sorted(CORRUPTIONS)}")
    for severity in cfg.severities:
        if severity not in SEVERITIES:
            raise ConfigError(f"config key '{key}.severities': got {severity}, expected values in {list(SEVERITIES)}")
    if cfg.max_samples < 0 or cfg.n_bins < 1:
        raise ConfigError(f"config key '{key}.max_samples/n_bins': expected max_samples >= 0 and n_bins >= 1")


@dataclass
class EvalOutput:
    rows: list[dict]  # one per (classifier, view)
    reliability: dict[str, dict]  # classifier -> clean reliability bins
    samples: int
    mode: str  # classification | retrieval


def views_for(cfg: RobustnessConfig) -> list[str]:
    return [CLEAN] + corruption_views(cfg.corruptions, cfg.severities)


def _collect(ds, *, what: str, total_views: int) -> dict[str, list[np.ndarray]]:
    """Pull the encoded rows to the driver (logits are small: N x heads x classes per view)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    seen, start, last = 0, time.perf_counter(), 0.0
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        for name, value in batch.items():
            if name.startswith((LOGITS_PREFIX, FEATURE_PREFIX)) or name in (batch_schema.LABEL, batch_schema.IMAGE_ID, TEXT_FEATURES):
                parts[name].append(value)
        seen += len(batch[batch_schema.LABEL])
        now = time.perf_counter() - start
        if now - last > 30:
            print(f"[raylpclip] {what}: {seen} images x {total_views} views encoded, {seen / now:.1f} images/s", flush=True)
            last = now
    if not seen:
        raise RuntimeError(f"{what}: the test set yielded no usable image")
    return parts


def _view_row(name: str, view: str, metrics: dict) -> dict:
    parsed = parse_view(view)
    return {"classifier": name, "view": view, "corruption": parsed[0] if parsed else "",
            "severity": parsed[1] if parsed else 0, **metrics}


def _classification(members: dict[str, Classifier], parts, views, n_bins) -> tuple[list[dict], dict]:
    labels = torch.from_numpy(np.concatenate(parts[batch_schema.LABEL]))
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} test images have no `label` in their metadata; classification "
                         f"needs labelled test shards (captions only: leave classnames empty for a retrieval eval)")
    rows, reliability = [], {}
    for view in views:
        logits = torch.from_numpy(np.concatenate(parts[LOGITS_PREFIX + view]))  # (N, H, C)
        for h, name in enumerate(members):
            rows.append(_view_row(name, view, robustness_metrics(logits[:, h], labels, n_bins=n_bins)))
            if view == CLEAN:
                reliability[name] = reliability_bins(logits[:, h].double().softmax(1), labels, n_bins=n_bins)
    return rows, reliability


def _retrieval(name: str, parts, views) -> list[dict]:
    ids = torch.from_numpy(np.concatenate(parts[batch_schema.IMAGE_ID]))
    unique, text_to_image = torch.unique(ids, return_inverse=True)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, text_to_image, torch.arange(ids.numel()), reduce="amin")
    texts = torch.from_numpy(np.concatenate(parts[TEXT_FEATURES]))
    rows = []
    for view in views:
        images = torch.from_numpy(np.concatenate(parts[FEATURE_PREFIX + view]))[first]
        rows.append(_view_row(name, view, retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10))))
    return rows


def evaluate(classifiers: dict[str, Classifier | str], *, eval_path: str, data: DataConfig, cfg: RobustnessConfig,
             inference: InferenceConfig, tokenizers: dict[str, object] | None = None, counter=None) -> EvalOutput:
    """classifiers: name -> Classifier, or name -> encoder path for a retrieval eval (caption test sets).
    One Ray Data pass per distinct encoder, at that encoder's input size; `tokenizers` (encoder ->
    tokenizer) only for retrieval."""
    views = views_for(cfg)
    by_encoder: dict[str, dict] = defaultdict(dict)
    for name, clf in classifiers.items():
        by_encoder[clf.encoder if isinstance(clf, Classifier) else clf][name] = clf
    rows, reliability, samples = [], {}, 0
    retrieval = any(not isinstance(c, Classifier) for c in classifiers.values())
    for i, (encoder, members) in enumerate(by_encoder.items(), 1):
        print(f"[raylpclip] eval encoder {i}/{len(by_encoder)} ({encoder}): {', '.join(members)} on "
              f"{len(views)} views ({len(views) - 1} corrupted)", flush=True)
        tokenizer = (tokenizers or {}).get(encoder) if retrieval else None
        sized = dataclasses.replace(data, image_size=image_size(encoder))
        ds = view_dataset(eval_path, sized, views=views, limit=cfg.max_samples, tokenizer=tokenizer, counter=counter,
                          batch_size=inference.decode_batch_size)
        heads = [] if retrieval else [c.head for c in members.values()]
        parts = _collect(encode(ds, encoder=encoder, cfg=inference, heads=heads, keep_features=retrieval),
                         what=f"eval of {encoder}", total_views=len(views))
        samples = sum(len(x) for x in parts[batch_schema.LABEL])
        if retrieval:
            for name in members:
                rows += _retrieval(name, parts, views)
        else:
            more_rows, more_bins = _classification(members, parts, views, cfg.n_bins)
            rows += more_rows
            reliability.update(more_bins)
    return EvalOutput(rows, reliability, samples, "retrieval" if retrieval else "classification")


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


def report(output: EvalOutput, out_dir: Path) -> dict:
    """Write results.csv, table.csv and the plots; print the table; return summary.json's content."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
