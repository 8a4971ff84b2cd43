"""Serial correlation of latency samples, and percentile intervals that allow for it.

The order-statistic intervals of :mod:`costmeter.results.stats` assume independent samples. Timed
runs often are not: a cache that stays warm, a frequency step, a neighbour's burst make
consecutive samples alike, and then the binomial interval is too narrow (on AR(1) samples with
phi = 0.9 a nominal 95% median interval covers about 40% of the time).

Detection, two tests at ``alpha / 2`` each (so at most ``alpha`` together on independent samples):

- short range: the lag-1 autocorrelation of the samples' *ranks* (so that a few long stalls
  cannot dominate it, as they dominate the Pearson correlation of raw latencies), against its
  large-sample null distribution for independent samples, approximately Normal(-1/n, 1/n)
  (Bartlett); one-sided, since only positive correlation narrows the intervals;
- long range (drift): whether :data:`BATCHES` consecutive batches hold the same share of samples
  at or below the median (Pearson's chi-square test of homogeneity). A
  neighbour's load that comes and goes over seconds shifts the level of whole batches while the
  lag-1 correlation, drowned in run-to-run noise, stays small.

Widening (only where a test is significant): the interval for the ``q``-th percentile ``xi`` is
the set of values whose count ``B(xi)`` of samples at or below them is plausible. For
independent samples ``B ~ Binomial(n, p)`` with variance ``n p (1 - p)``. Under correlation the
variance is ``n * s2`` with ``s2`` the long-run variance of the indicator series
``I(x_t <= xi)``, which we estimate by *batch means*: ``BATCHES`` consecutive batches of equal
length, ``s2 = m * var(batch means)`` for batches of ``m`` samples, evaluated at the point
percentile. The inflation ``k = s2 / (p (1 - p))`` (at least 1: never narrower) makes the
effective sample count ``n / k``; the equal-tailed binomial ranks for that count, at the
confidence whose normal quantile equals Student's t with ``BATCHES - 1`` degrees of freedom (the
batch-means variance has that many), are scaled back to ranks among the ``n`` samples (outward).

Assumptions: batches are long compared with the correlation time, and a level shift between
batches is treated as random (it is, from the point of view of the next run). Ten batches is a
deliberate choice: fewer, longer batches bias the long-run variance less (the bias falls as
1/m), and Student's t pays for the fewer degrees of freedom. On simulated AR(1) samples
(tests/test_stats_serial.py) the widened median interval covers at about the nominal 95% for
phi = 0.5 and 0.9 at n = 1000.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BATCHES = 10
"""Number of batch means used for the long-run variance and the drift test."""

MIN_BATCH_LENGTH = 10
"""Shortest batch (samples) for which batch means are computed; shorter series are not widened."""

SERIAL_ALPHA = 0.05
"""Significance level of the two tests together (each at half of it)."""


@dataclass(frozen=True)
class SerialCorrelation:
    """Serial correlation of a sample series and what was done about it.

    ``lag1_r``: lag-1 rank autocorrelation, unitless in [-1, 1]; ``p_value``: its one-sided
    p-value (positive correlation); ``drift_p_value``: the batch-homogeneity test's p-value
    (NaN below ``BATCHES * MIN_BATCH_LENGTH`` samples); ``significant``: either p-value is below
    ``alpha / 2``; ``widened``: percentile intervals were widened by batch means (significant and
    at least ``BATCHES * MIN_BATCH_LENGTH`` samples).
    """

    n: int
    lag1_r: float
    p_value: float
    alpha: float
    significant: bool
    widened: bool
    batches: int
    drift_p_value: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None)."""
        return {
            "n": self.n,
            "lag1_r": None if math.isnan(self.lag1_r) else self.lag1_r,
            "p_value": None if math.isnan(self.p_value) else self.p_value,
            "drift_p_value": None if math.isnan(self.drift_p_value) else self.drift_p_value,
            "alpha": self.alpha,
            "significant": self.significant,
            "widened": self.widened,
            "batches": self.batches,
            "method": "lag-1 autocorrelation of ranks (one-sided z) and homogeneity of the batches' "
                      "shares below the median (chi-square); batch means on the percentile indicator",
        }


def serial_correlation(samples: np.ndarray, alpha: float = SERIAL_ALPHA) -> SerialCorrelation:
    """Both tests of the module docstring on ``samples`` in time order (any unit).

    Fewer than 3 samples, or all samples equal, give NaN figures and ``significant=False``.
    """
    from costmeter.results.distributions import average_ranks, chi2_homogeneity_p, norm_sf

    x = np.asarray(samples, dtype=float)
    n = int(x.size)
    if n < 3:
        return SerialCorrelation(n, math.nan, math.nan, alpha, False, False, BATCHES)
    ranks = average_ranks(x)
    centred = ranks - ranks.mean()
    denom = float(np.dot(centred, centred))
    if denom == 0.0:
        return SerialCorrelation(n, math.nan, math.nan, alpha, False, False, BATCHES)
    r = float(np.dot(centred[:-1], centred[1:]) / denom)
    p = norm_sf((r + 1.0 / n) * math.sqrt(n))
    drift_p = math.nan
    m = n // BATCHES
    if m >= MIN_BATCH_LENGTH:
        below = (x[: m * BATCHES] <= np.median(x)).reshape(BATCHES, m).sum(axis=1)
        if 0 < below.sum() < m * BATCHES:
            drift_p = chi2_homogeneity_p(np.vstack([below, m - below]))
    significant = p < alpha / 2 or drift_p < alpha / 2  # NaN compares False
    return SerialCorrelation(n, r, p, alpha, significant, significant and m >= MIN_BATCH_LENGTH, BATCHES,
                             drift_p)


def indicator_inflation(samples: np.ndarray, threshold: float, q: float, batches: int = BATCHES) -> float:
    """Variance inflation ``k >= 1`` of the count of samples at or below ``threshold``.

    ``samples`` in time order (any unit, same as ``threshold``); ``q`` in percent, the target
    share ``p = q / 100``. ``k`` is the batch-means long-run variance of ``I(x <= threshold)``
    divided by ``p (1 - p)``, floored at 1. Samples past the last full batch are left out.
    """
    x = np.asarray(samples, dtype=float)
    m = x.size // batches
    if m < 1:
        return 1.0
    p = q / 100.0
    indicator = (x[: m * batches] <= threshold).reshape(batches, m)
    means = indicator.mean(axis=1)
    long_run_var = m * float(np.var(means, ddof=1))
    return max(1.0, long_run_var / (p * (1.0 - p)))


def widened_ci_indices(n: int, q: float, confidence: float, inflation: float,
                       batches: int = BATCHES) -> tuple[int, int] | None:
    """0-based indices into ``n`` sorted samples bounding the ``q``-th percentile under serial
    correlation with variance ``inflation`` (>= 1), or None when the effective sample count
    ``n / inflation`` is too small for an interval. ``q`` in percent; ``confidence`` a fraction.
    """
    from costmeter.results.distributions import norm_cdf, t_ppf
    from costmeter.results.stats import percentile_ci_indices

    n_eff = int(n / max(1.0, inflation))
    t_quantile = t_ppf(0.5 + confidence / 2.0, batches - 1)
    conf_eff = 2.0 * norm_cdf(t_quantile) - 1.0
    idx = percentile_ci_indices(n_eff, q, conf_eff) if n_eff >= 2 else None
    if idx is None:
        return None
    scale = n / n_eff
    low_rank = max(1, math.floor((idx[0] + 1) * scale))  # 1-based ranks, scaled outward
    high_rank = min(n, math.ceil((idx[1] + 1) * scale))
    if low_rank >= high_rank:
        return None
    return low_rank - 1, high_rank - 1


def combine_serial(tests: list[SerialCorrelation]) -> SerialCorrelation:
    """One figure for several independent series (one per process): the count-weighted mean
    of their lag-1 r, and Stouffer's combination of their one-sided z scores for each p-value.
    ``significant``/``widened`` are True when any series' were."""
    from costmeter.results.distributions import norm_isf, norm_sf

    if len(tests) == 1:
        return tests[0]
    n = sum(t.n for t in tests)

    def stouffer(ps: list[float]) -> float:
        ps = [p for p in ps if not math.isnan(p)]
        if not ps:
            return math.nan
        return norm_sf(sum(norm_isf(min(max(p, 1e-300), 1.0)) for p in ps) / math.sqrt(len(ps)))

    usable = [t for t in tests if not math.isnan(t.lag1_r)]
    r = sum(t.n * t.lag1_r for t in usable) / sum(t.n for t in usable) if usable else math.nan
    return SerialCorrelation(n, r, stouffer([t.p_value for t in tests]), tests[0].alpha,
                             any(t.significant for t in tests), any(t.widened for t in tests), BATCHES,
                             stouffer([t.drift_p_value for t in tests]))
