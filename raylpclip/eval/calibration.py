"""Calibration and uncertainty metrics in torch (methods.md, evaluation vocabulary: `ece`, `nll`, `auroc`).

Everything is computed in float64 on the inputs' device: the bin statistics and rank sums are sums
over up to millions of samples, where float32 loses digits that ECE differences between methods need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raylpclip.eval.metrics import classification_metrics


def _check(scores: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"expected {what} (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"need at least one sample, got {what} of shape {tuple(scores.shape)}")


def _confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max probability (N,) float64 and whether its class is the label (N,) bool."""
    _check(probs, labels, "probs")
    confidence, predicted = probs.double().max(dim=1)
    return confidence, predicted == labels.to(probs.device).long()


def _bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin b covers (b / n_bins, (b + 1) / n_bins], as in Guo et al. 2017's reference `_ECELoss`
    (`conf > lower & conf <= upper`), except that confidence 0, which that code drops, goes to bin 0.
    bucketize(right=False) on the inner edges returns exactly the i with edge[i] < conf <= edge[i + 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=confidence.device)
    return torch.bucketize(confidence, edges[1:-1], right=False)


def _bin_sums(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, ...]:
    """Per-bin (sum of confidence, number correct, count), each (n_bins,) float64."""
    confidence, correct = _confidence_and_correct(probs, labels)
    index = _bin_index(confidence, n_bins)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device)
    return (
        zeros.index_add(0, index, confidence),
        zeros.index_add(0, index, correct.double()),
        zeros.index_add(0, index, torch.ones_like(confidence)),
    )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> float:
    """probs (N, C) (rows sum to 1), labels (N,) -> ECE = sum_b |acc_b - conf_b| * n_b / N over
    equal-width bins of the max probability (bin convention: see `_bin_index`). Empty bins add nothing."""
    conf_sum, correct_sum, count = _bin_sums(probs, labels, n_bins)
    # |acc_b - conf_b| * n_b = |correct_b - conf_sum_b|: no division, so empty bins need no special case.
    return ((correct_sum - conf_sum).abs().sum() / count.sum()).item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin statistics for a reliability diagram: {"edges" (n_bins + 1), "confidence" (mean max
    probability), "accuracy", "count"} as plain lists (JSON-ready). Empty bins have nan confidence and
    accuracy and count 0. sum |accuracy - confidence| * count / sum(count) over non-empty bins is the ECE."""
    conf_sum, correct_sum, count = _bin_sums(probs, labels, n_bins)
    nonempty = count > 0
    nan = torch.full_like(count, math.nan)
    return {
        "edges": torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).tolist(),
        "confidence": torch.where(nonempty, conf_sum / count.clamp_min(1), nan).tolist(),
        "accuracy": torch.where(nonempty, correct_sum / count.clamp_min(1), nan).tolist(),
        "count": [int(n) for n in count.tolist()],
    }


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(label | x) from logits (N, C), via log_softmax: exact for logits whose softmax
    underflows to 0 for the label (where log(probs) would give inf). With probabilities only, pass
    probs.log(): log_softmax of log-probabilities is the identity."""
    _check(logits, labels, "logits")
    return F.cross_entropy(logits.double(), labels.to(logits.device).long()).item()


def misclassification_auroc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of the max probability as a score separating correct predictions (positives) from wrong
    ones: the chance that a random correct sample is more confident than a random wrong one, ties
    counting 1/2. Rank-based Mann-Whitney U with average ranks for ties. nan when all predictions are
    right or all are wrong (AUROC is undefined with one class)."""
    confidence, correct = _confidence_and_correct(probs, labels)
    n_pos = int(correct.sum())
    n_neg = correct.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(confidence, sorted=True, return_inverse=True, return_counts=True)
    # A tie group occupying 1-based ranks (end - count + 1) .. end has average rank end - (count - 1) / 2.
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]
    u = ranks[correct].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).item()


def robustness_metrics(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """logits (N, C), labels (N,) -> {"acc1", "acc5", "mean_per_class_recall", "ece", "nll", "auroc"}
    (methods.md names; ece with `n_bins` bins, auroc = misclassification AUROC of max softmax)."""
    _check(logits, labels, "logits")
    probs = logits.double().softmax(dim=1)
    return {
        **classification_metrics(logits, labels),
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "nll": negative_log_likelihood(logits, labels),
        "auroc": misclassification_auroc(probs, labels),
    }
