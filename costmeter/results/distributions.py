"""The few distribution functions the latency statistics need, from ``scipy.special``.

Every benchmark's worker judges its samples while it samples, and the parent judges them again:
both need binomial, normal, Student's t and chi-square tail probabilities. ``scipy.stats``
provides them, but importing it takes ~0.5 s on a quiet machine and 3 s on a loaded one (it
builds every distribution's docstring), in each of those processes, on every ``bench run``.
``scipy.special`` holds the same functions (the ones ``scipy.stats`` calls underneath) and
imports in a fraction of that. Each function here names the ``scipy.stats`` call it stands for;
``tests/test_distributions.py`` checks them against it.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

NORMAL_MAD_SCALE = float(special.ndtri(0.75))
"""Median absolute deviation of a standard normal (0.6745): ``scipy.stats.median_abs_deviation``'s
``scale="normal"``."""


def binom_cdf(k: int, n: int, p: float) -> float:
    """``scipy.stats.binom.cdf(k, n, p)``: P(B <= k) for B ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(special.bdtr(k, n, p))


def binom_sf(k: int, n: int, p: float) -> float:
    """``scipy.stats.binom.sf(k, n, p)``: P(B > k) for B ~ Binomial(n, p)."""
    if k < 0:
        return 1.0
    if k >= n:
        return 0.0
    return float(special.bdtrc(k, n, p))


def binom_ppf(q: float, n: int, p: float) -> int:
    """``scipy.stats.binom.ppf(q, n, p)``: the smallest k with P(B <= k) >= q."""
    guess = special.bdtrik(q, n, p)  # continuous inverse in k; a start for the exact search
    k = int(min(max(math.ceil(guess), 0), n)) if np.isfinite(guess) else int(round(n * p))
    while k > 0 and binom_cdf(k - 1, n, p) >= q:
        k -= 1
    while k < n and binom_cdf(k, n, p) < q:
        k += 1
    return k


def binom_isf(q: float, n: int, p: float) -> int:
    """``scipy.stats.binom.isf(q, n, p)``: the smallest k with P(B > k) <= q."""
    guess = special.bdtrik(1.0 - q, n, p)
    k = int(min(max(math.ceil(guess), 0), n)) if np.isfinite(guess) else int(round(n * p))
    while k > 0 and binom_sf(k - 1, n, p) <= q:
        k -= 1
    while k < n and binom_sf(k, n, p) > q:
        k += 1
    return k


def norm_cdf(z: float) -> float:
    """``scipy.stats.norm.cdf(z)``."""
    return float(special.ndtr(z))


def norm_sf(z: float) -> float:
    """``scipy.stats.norm.sf(z)``."""
    return float(special.ndtr(-z))


def norm_isf(p: float) -> float:
    """``scipy.stats.norm.isf(p)``: the z with P(Z > z) = p."""
    return float(-special.ndtri(p))


def t_ppf(p: float, df: float) -> float:
    """``scipy.stats.t.ppf(p, df)``: Student's t quantile."""
    return float(special.stdtrit(df, p))


def median_abs_deviation_normal(x: np.ndarray) -> float:
    """``scipy.stats.median_abs_deviation(x, scale="normal")``: equals the standard deviation
    for normal data (same unit as ``x``)."""
    x = np.asarray(x, dtype=float)
    return float(np.median(np.abs(x - np.median(x))) / NORMAL_MAD_SCALE)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x)``: 1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=float), return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(float)  # rank of each distinct value's last occurrence
    return ((last - counts + 1.0 + last) / 2.0)[inverse.reshape(-1)]


def chi2_homogeneity_p(table: np.ndarray) -> float:
    """``scipy.stats.chi2_contingency(table, correction=False).pvalue``: Pearson's chi-square
    test of independence of a two-way table of counts (every row and column sum positive)."""
    observed = np.asarray(table, dtype=float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    if dof == 0:
        return 1.0
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return float(special.chdtrc(dof, statistic))
