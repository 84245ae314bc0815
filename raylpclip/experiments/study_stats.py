"""The statistics a study decides its claims with: paired differences over seeds with Student-t intervals,
paired bootstrap intervals over test images, and the slope of a gain over log data size. Pure numpy and
math (no scipy): the t quantile comes from the regularised incomplete beta function.

Every interval is two-sided at `level` (default 0.95). A claim "A beats B" holds when the interval of
A - B lies above 0; it fails when the interval lies at or below 0; otherwise it is undetermined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on t_cdf, to 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p}; expected in (0, 1)")
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval and how it was made."""

    estimate: float
    low: float
    high: float
    n: int  # seeds (t) or test images (bootstrap) behind it
    method: str  # "paired t over seeds", "paired bootstrap over test images", ...

    def verdict(self, *, better: str = "higher") -> str:
        """'holds' when the interval excludes 0 on the side `better` says, 'fails' when it excludes the
        other side or sits at 0, else 'undetermined'."""
        low, high = (self.low, self.high) if better == "higher" else (-self.high, -self.low)
        if low > 0:
            return "holds"
        if high <= 0:
            return "fails"
        return "undetermined"


def paired_t(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Interval:
    """Mean of a - b over paired runs (one pair per seed) with its Student-t interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2:
        raise ValueError(f"a paired t interval needs at least 2 pairs, got {d.size}")
    half = t_quantile(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return Interval(float(d.mean()), float(d.mean() - half), float(d.mean() + half), int(d.size), "paired t over seeds")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, statistic: Callable[[np.ndarray], float] = np.mean,
                     resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """statistic(a) - statistic(b) over the same test images, with a percentile interval from resampling
    the images (the same resample for both: the pairing is what makes small differences visible).
    `a`, `b`: per-image values (e.g. 1.0 where correct), or per-image rows a statistic reduces."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired bootstrap needs two equal-length samples of >= 2, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        diffs[i] = statistic(a[idx]) - statistic(b[idx])
    tail = (1.0 - level) / 2
    return Interval(float(statistic(a) - statistic(b)), float(np.quantile(diffs, tail)),
                    float(np.quantile(diffs, 1 - tail)), int(len(a)), "paired bootstrap over test images")


def slope(x: Sequence[float], y: Sequence[float], *, level: float = 0.95) -> Interval:
    """Least-squares slope of y on x with its Student-t interval (n - 2 degrees of freedom)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a slope interval needs at least 3 points at 2 or more distinct x")
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    resid = y - y.mean() - b * xc
    se = math.sqrt(float((resid * resid).sum()) / (x.size - 2) / float((xc * xc).sum()))
    half = t_quantile(0.5 + level / 2, x.size - 2) * se
    return Interval(b, b - half, b + half, int(x.size), "least-squares slope, t interval")


def equivalent(interval: Interval, margin: float) -> bool:
    """Whether the whole interval lies within +-margin (two one-sided tests at the interval's level)."""
    return -margin < interval.low and interval.high < margin
