"""The robustness report's arithmetic: per-view metrics, clean vs mean-corrupted table, CSVs and plots."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from raylpclip import batch_schema
from raylpclip.eval.calibration import robustness_metrics
from raylpclip.eval.robustness_report import EvalOutput, classification_rows, report, summary_table
from raylpclip.models.classifier import Classifier
from raylpclip.models.head import LinearProbe


def _rows():
    return [
        {"classifier": "a", "view": "clean", "corruption": "", "severity": 0, "acc1": 0.9, "ece": 0.1},
        {"classifier": "a", "view": "fog@1", "corruption": "fog", "severity": 1, "acc1": 0.6, "ece": 0.2},
        {"classifier": "a", "view": "fog@5", "corruption": "fog", "severity": 5, "acc1": 0.3, "ece": 0.4},
        {"classifier": "b", "view": "clean", "corruption": "", "severity": 0, "acc1": 0.8, "ece": 0.05},
        {"classifier": "b", "view": "fog@1", "corruption": "fog", "severity": 1, "acc1": 0.7, "ece": 0.1},
        {"classifier": "b", "view": "fog@5", "corruption": "fog", "severity": 5, "acc1": 0.5, "ece": 0.3},
    ]


def test_summary_table_means_over_corrupted_views():
    table = summary_table(_rows(), ("acc1", "ece"))
    assert table[0] == pytest.approx({"classifier": "a", "clean_acc1": 0.9, "corrupted_acc1": 0.45,
                                      "clean_ece": 0.1, "corrupted_ece": 0.3})
    assert table[1]["corrupted_acc1"] == pytest.approx(0.6)


def test_classification_rows_use_each_heads_logits():
    labels = np.array([0, 1, 2, 1])
    logits = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    parts = {batch_schema.LABEL: [labels], "logits_clean": [logits], "logits_fog@1": [logits[:, ::-1].copy()]}
    members = {"x": Classifier("e", LinearProbe(4, 3), ["p", "q", "r"], "zeroshot"),
               "y": Classifier("e", LinearProbe(4, 3), ["p", "q", "r"], "lpclip")}
    rows, bins = classification_rows(members, parts, ["clean", "fog@1"], n_bins=15)
    by_key = {(r["classifier"], r["view"]): r for r in rows}
    expected = robustness_metrics(torch.from_numpy(logits[:, 1]), torch.from_numpy(labels))
    assert by_key[("y", "clean")]["ece"] == pytest.approx(expected["ece"])
    assert by_key[("x", "fog@1")]["acc1"] == pytest.approx(expected["acc1"])  # views swapped the heads
    assert set(bins) == {"x", "y"}
    parts[batch_schema.LABEL] = [np.array([0, -1, 2, 1])]
    with pytest.raises(ValueError, match="1 test images have no `label`"):
        classification_rows(members, parts, ["clean"], n_bins=15)


def test_report_writes_tables_and_plots(tmp_path):
    rows = [{**r, "acc5": 1.0, "mean_per_class_recall": r["acc1"], "nll": 1.0, "auroc": 0.7} for r in _rows()]
    bins = {"a": {"edges": [0, 0.5, 1], "count": [1, 1], "accuracy": [0.0, 1.0], "confidence": [0.4, 0.9]}}
    summary = report(EvalOutput(rows, bins, samples=10, mode="classification"), tmp_path)
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["classifier"] for r in table] == ["a", "b"] and float(table[0]["corrupted_acc1"]) == pytest.approx(0.45)
    assert summary["table"]["b"]["clean_acc1"] == 0.8 and summary["views"] == 3
    for name in ("accuracy_vs_severity.png", "corruptions.png", "reliability.png", "results.csv"):
        assert (tmp_path / name).stat().st_size > 0
