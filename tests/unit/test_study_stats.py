"""The statistics a study decides with, against hand computations and reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raylpclip.eval.headroom import cosine_summary, headroom
from raylpclip.experiments.study_stats import (Interval, equivalent, paired_bootstrap, paired_t, slope, t_cdf,
                                               t_quantile)


@pytest.mark.parametrize("df, t975", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (9, 2.2622), (29, 2.0452), (200, 1.9719)])
def test_t_quantiles_match_the_table(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=2e-4)
    assert t_cdf(t975, df) == pytest.approx(0.975, abs=1e-5)
    assert t_quantile(0.025, df) == pytest.approx(-t975, abs=2e-4)  # symmetric


def test_paired_t_interval_by_hand():
    a, b = [0.61, 0.635, 0.615], [0.58, 0.60, 0.59]
    d = np.array([0.03, 0.035, 0.025])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    got = paired_t(a, b)
    assert got.estimate == pytest.approx(d.mean())
    assert (got.low, got.high) == (pytest.approx(d.mean() - half, abs=1e-6), pytest.approx(d.mean() + half, abs=1e-6))
    assert got.verdict() == "holds" and got.verdict(better="lower") == "fails"
    assert paired_t([0.61, 0.64, 0.60], [0.58, 0.60, 0.59]).verdict() == "undetermined"  # +0.027, but t(2) = 4.3
    with pytest.raises(ValueError, match="at least 2"):
        paired_t([0.1], [0.2])


def test_the_pairing_is_what_makes_a_small_difference_visible():
    """Two classifiers that differ on 30 of 2000 images (always in A's favour) over a noisy base: the
    paired bootstrap interval excludes 0, while the unpaired difference of two accuracies could not."""
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.6).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:30]] = 1.0
    paired = paired_bootstrap(a, b, resamples=1000)
    assert paired.estimate == pytest.approx(0.015) and paired.low > 0
    unpaired_se = math.sqrt(2 * 0.6 * 0.4 / 2000)  # the standard error of a difference of two independent accuracies
    assert 0.015 < 1.96 * unpaired_se


def test_slope_interval_and_equivalence():
    x = [3.0, 3.5, 4.0] * 3
    y = [0.01, 0.03, 0.05, 0.00, 0.02, 0.06, 0.02, 0.03, 0.04]
    got = slope(x, y)
    xc = np.array(x) - np.mean(x)
    assert got.estimate == pytest.approx(float((xc * (np.array(y) - np.mean(y))).sum() / (xc ** 2).sum()))
    assert got.low > 0 and got.verdict() == "holds"
    assert equivalent(Interval(0.005, -0.01, 0.015, 3, "t"), 0.02)
    assert not equivalent(Interval(0.005, -0.03, 0.015, 3, "t"), 0.02)


def test_headroom_finds_what_the_zeroshot_head_misses():
    """Features whose first coordinate carries the class while the zero-shot head looks at the second: the
    supervised probe reaches ~1.0, the head chance; and distinct versus near-identical embeddings."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    feats = torch.randn(400, 8, generator=g) * 0.1
    feats[:, 0] += labels.float() * 2 - 1
    weights = torch.zeros(2, 8)
    weights[0, 1], weights[1, 1] = 1.0, -1.0
    got = headroom(feats[:300], labels[:300], feats[300:], labels[300:], weights)
    assert got["supervised_probe_acc1"] > 0.95 and 0.3 < got["zeroshot_acc1"] < 0.7 and got["margin"] > 0.25
    distinct = cosine_summary(torch.eye(4))
    same = cosine_summary(torch.ones(4, 3) + 0.01 * torch.randn(4, 3, generator=g))
    assert distinct["max"] == pytest.approx(0.0) and same["min"] > 0.99
