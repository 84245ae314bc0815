"""ECE, NLL, misclassification AUROC and reliability bins on hand-computed cases and brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from raylpclip.eval.calibration import (expected_calibration_error, misclassification_auroc, negative_log_likelihood,
                                        reliability_bins, robustness_metrics)
from raylpclip.eval.metrics import classification_metrics

# Five samples, three classes. Max probability (confidence), prediction, label:
#   s0 0.90 -> class 0, label 0: correct
#   s1 0.75 -> class 0, label 1: wrong
#   s2 0.62 -> class 1, label 1: correct
#   s3 0.38 -> class 0, label 2: wrong
#   s4 0.70 -> class 2, label 2: correct
PROBS = torch.tensor([
    [0.90, 0.06, 0.04],
    [0.75, 0.15, 0.10],
    [0.20, 0.62, 0.18],
    [0.38, 0.30, 0.32],
    [0.10, 0.20, 0.70],
], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 2, 2])


def test_ece_hand_case_five_bins():
    # Bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]:
    #   (.2, .4]: s3 -> acc 0, conf .38, |0 - .38| * 1 = .38
    #   (.6, .8]: s1, s2, s4 -> acc 2/3, conf (.75 + .62 + .70) / 3 = .69, |2/3 - .69| * 3 = |2 - 2.07| = .07
    #   (.8, 1]:  s0 -> acc 1, conf .90, |1 - .9| * 1 = .10
    # ECE = (.38 + .07 + .10) / 5 = .11
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.11)


def test_ece_hand_case_fifteen_bins():
    # Width 1/15: .38 in (.333, .4], .62 in (.6, .667], .70 in (.667, .733], .75 in (.733, .8], .90 in
    # (.867, .933]: every sample alone in its bin, so ECE = mean |correct - conf|
    #   = (|1 - .9| + |0 - .75| + |1 - .62| + |0 - .38| + |1 - .7|) / 5 = (.1 + .75 + .38 + .38 + .3) / 5 = .382
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(0.382)


def test_reliability_bins_hand_case():
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    assert bins["edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins["count"] == [0, 1, 0, 3, 1]
    assert bins["accuracy"][1::2] == pytest.approx([0.0, 2 / 3]) and bins["accuracy"][4] == 1.0
    assert bins["confidence"][1] == pytest.approx(0.38) and bins["confidence"][3] == pytest.approx(0.69)
    assert bins["confidence"][4] == pytest.approx(0.90)
    assert math.isnan(bins["accuracy"][0]) and math.isnan(bins["confidence"][2])  # empty bins
    # The bins carry the ECE: sum |acc - conf| * count / N over non-empty bins.
    ece = sum(abs(a - c) * n for a, c, n in zip(bins["accuracy"], bins["confidence"], bins["count"]) if n) / 5
    assert ece == pytest.approx(expected_calibration_error(PROBS, LABELS, n_bins=5))


def test_ece_bin_edges_are_upper_inclusive_and_zero_goes_to_the_first_bin():
    # Four bins with exactly representable edges 0, .25, .5, .75, 1. A confidence on an edge belongs to
    # the bin it closes: .25 -> bin 0, .5 -> bin 1, .75 -> bin 2, 1 -> bin 3. Confidence 0 -> bin 0.
    probs = torch.tensor([[0.25, 0.0], [0.5, 0.0], [0.75, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.zeros(5, dtype=torch.long), n_bins=4)
    assert bins["count"] == [2, 1, 1, 1]
    assert bins["confidence"] == pytest.approx([0.125, 0.5, 0.75, 1.0])


def test_ece_edge_cases():
    labels = torch.tensor([0, 1, 0])
    confident_right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(confident_right, labels) == 0.0
    assert expected_calibration_error(confident_right, 1 - labels) == 1.0  # all wrong at confidence 1
    # Class 0 predicted at confidence .501 (not .5: no argmax tie), half right: |.5 - .501| = .001.
    half = torch.full((4, 2), 0.5, dtype=torch.float64)
    half[:, 0] += 1e-3
    assert expected_calibration_error(half, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.001)


def _ece_reference(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Guo et al.'s loop: for each (lower, upper], |mean conf - mean acc| * fraction in bin."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += abs(conf[in_bin].mean() - correct[in_bin].mean()).item() * in_bin.double().mean().item()
    return total


def test_ece_matches_the_reference_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, 7, (500,), generator=gen)
    probs = logits.softmax(dim=1)
    for n_bins in (1, 10, 15):
        expected = _ece_reference(probs, labels, n_bins)
        assert expected_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(expected)


def test_nll_hand_case_and_stability():
    # Row 0: softmax(0, 0) = (1/2, 1/2), label 0 -> -ln(1/2) = ln 2.
    # Row 1: softmax(ln 3, 0) = (3/4, 1/4), label 1 -> -ln(1/4) = 2 ln 2. Mean = 1.5 ln 2.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert negative_log_likelihood(logits, torch.tensor([0, 1])) == pytest.approx(1.5 * math.log(2.0))
    # softmax underflows to 0 for the label, but log_softmax keeps the exact answer: 1000.
    assert negative_log_likelihood(torch.tensor([[1000.0, 0.0]]), torch.tensor([1])) == pytest.approx(1000.0)
    # From probabilities: pass their log.
    expected = -(math.log(0.90) + math.log(0.15) + math.log(0.62) + math.log(0.32) + math.log(0.70)) / 5
    assert negative_log_likelihood(PROBS.log(), LABELS) == pytest.approx(expected)


def test_auroc_hand_case():
    # Correct confidences .90, .62, .70; wrong .75, .38. Pairs (correct, wrong) ranked right:
    #   .90 > .75, .90 > .38, .62 > .38, .70 > .38  (4 of 6); .62 < .75, .70 < .75. AUROC = 4/6.
    # Ranks: .38 -> 1, .62 -> 2, .70 -> 3, .75 -> 4, .90 -> 5; U = (2 + 3 + 5) - 3 * 4 / 2 = 4.
    assert misclassification_auroc(PROBS, LABELS) == pytest.approx(2 / 3)


def test_auroc_ties_count_half():
    # Correct: .8 and .6; wrong: .8 and .5. Pairs: (.8, .8) tie -> 1/2, (.8, .5) 1, (.6, .8) 0, (.6, .5) 1.
    # AUROC = 2.5 / 4 = .625.
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.5, 0.3, 0.2]])
    labels = torch.tensor([0, 0, 1, 1])
    assert misclassification_auroc(probs, labels) == pytest.approx(0.625)
    # All confidences tied: no separation at all, 1/2.
    same = torch.tensor([[0.7, 0.3]] * 4)
    assert misclassification_auroc(same, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)


def test_auroc_perfect_reversed_and_undefined():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    assert misclassification_auroc(probs, torch.tensor([0, 0, 1, 1])) == 1.0  # confident ones right
    assert misclassification_auroc(probs, torch.tensor([1, 1, 0, 0])) == 0.0  # confident ones wrong
    assert math.isnan(misclassification_auroc(probs, torch.zeros(4, dtype=torch.long)))  # all correct
    assert math.isnan(misclassification_auroc(probs, torch.ones(4, dtype=torch.long)))  # none correct


def test_auroc_matches_pairwise_count_on_random_data():
    gen = torch.Generator().manual_seed(1)
    # Rounded logits make many exact ties in the max probability.
    logits = (torch.randn(300, 4, generator=gen) * 2).round()
    labels = torch.randint(0, 4, (300,), generator=gen)
    probs = logits.softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = pred == labels
    pos, neg = conf[correct][:, None], conf[~correct][None, :]
    pairwise = ((pos > neg).double() + 0.5 * (pos == neg).double()).mean().item()
    assert misclassification_auroc(probs, labels) == pytest.approx(pairwise)


def test_robustness_metrics_combines_everything():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-1.0, 0.0, 3.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    labels = torch.tensor([0, 2, 2, 0, 1])
    m = robustness_metrics(logits, labels)
    assert set(m) == {"acc1", "acc5", "mean_per_class_recall", "ece", "nll", "auroc"}
    for name, value in classification_metrics(logits, labels).items():
        assert m[name] == pytest.approx(value)
    probs = logits.double().softmax(dim=1)
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert m["nll"] == pytest.approx(negative_log_likelihood(logits, labels))
    assert m["auroc"] == pytest.approx(misclassification_auroc(probs, labels))


@pytest.mark.parametrize(
    "fn", [expected_calibration_error, misclassification_auroc, negative_log_likelihood, robustness_metrics]
)
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fn(torch.rand(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one sample"):
        fn(torch.rand(0, 3), torch.zeros(0, dtype=torch.long))


def test_bad_bin_count_raises():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=0)
