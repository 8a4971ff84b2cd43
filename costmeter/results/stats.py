"""Summary statistics of latency samples, with distribution-free percentile confidence intervals.

Units are whatever the caller passes (the harness passes nanoseconds and gets nanoseconds back).

Percentile confidence intervals come from order statistics and the binomial distribution, so they
assume only that samples are independent and identically distributed, not any particular shape.
For the ``q``-th percentile ``xi`` and ``B ~ Binomial(n, q/100)`` (the number of samples at or
below ``xi``), the interval between the ``l``-th and ``u``-th smallest samples (1-based ranks)
covers ``xi`` with probability ``P(l <= B < u)``. We pick the tightest *equal-tailed* ranks:
the largest ``l`` with ``P(B < l) <= alpha/2`` and the smallest ``u`` with ``P(B >= u) <= alpha/2``
(``alpha = 1 - confidence``), so the coverage is at least ``confidence`` and neither side is
favoured. When ``n`` is too small for such ranks to exist (``l`` would be 0 or ``u`` would exceed
``n``) the interval is ``None``: the sample cannot support a claim about that percentile.

Point percentiles use numpy's ``"linear"`` method (type 7 of Hyndman & Fan, numpy's default):
position ``(n - 1) * q / 100`` in the sorted samples, interpolated between neighbours.

Samples in time order are tested for serial correlation, and where it is significant the
intervals are widened (batch means; see :mod:`costmeter.results.stats_serial`). Samples from
several processes are a hierarchy (see :mod:`costmeter.results.stats_hier`).

Noise figures, robust to the few long stalls a shared machine puts into any sample: ``mad_rel``
(median absolute deviation, scaled as scipy's ``scale="normal"`` (1.4826) so that it equals
the standard deviation for normal data, over the median), ``iqr_rel`` (interquartile range over the median),
``outlier_share`` (share of samples outside Tukey's fences, k = 1.5, see :func:`outliers_iqr`),
and the longest stall: ``max`` and ``max_over_median``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.results.stats_serial import SerialCorrelation

if TYPE_CHECKING:
    from costmeter.results.stats_hier import ProcessSpread

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
PERCENTILE_METHOD = "linear"


@dataclass(frozen=True)
class PercentileCI:
    """A point percentile and its confidence interval (same unit as the samples).

    ``q`` is in percent (0-100). ``low``/``high`` are ``None`` when there are too few samples for
    a two-sided interval at ``confidence`` (a fraction, e.g. 0.95). ``widened`` is True when the
    interval was widened for serial correlation or for the spread between processes.
    """

    q: float
    value: float
    low: float | None
    high: float | None
    confidence: float
    widened: bool = False

    @property
    def has_ci(self) -> bool:
        """True when both bounds exist."""
        return self.low is not None and self.high is not None

    @property
    def rel_half_width(self) -> float | None:
        """``(high - low) / 2 / value`` (unitless, e.g. 0.01 for +-1%), None without an interval."""
        if not self.has_ci or self.value <= 0:
            return None
        return (self.high - self.low) / 2.0 / self.value


@dataclass(frozen=True)
class Summary:
    """Statistics of one set of samples (same unit as the samples; ``cv`` is unitless).

    ``std`` is the sample standard deviation (ddof=1) and is NaN when ``n < 2``; ``cv`` is
    ``std / mean`` and is NaN when undefined. ``percentiles`` is keyed by ``q`` in percent.
    ``mad_rel``, ``iqr_rel``, ``outlier_share`` and ``max_over_median`` are unitless (see the
    module docstring). ``serial`` is the serial-correlation test of the samples in time order
    (of the longest process when there are several); ``processes`` the between-process spread
    when the samples came from several processes (None for one).
    """

    n: int
    mean: float
    std: float
    cv: float
    min: float
    max: float
    median: float
    percentiles: dict[float, PercentileCI]
    mad_rel: float = math.nan
    iqr_rel: float = math.nan
    outlier_share: float = math.nan
    max_over_median: float = math.nan
    serial: SerialCorrelation | None = None
    processes: ProcessSpread | None = None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: n, mean, std, cv, min, max, median, confidence, then for each
        percentile ``pQ``, ``pQ_low``, ``pQ_high`` (e.g. ``p99``, ``p99_low``, ``p99_high``;
        ``p99.9`` for fractional q) and ``pQ_widened``. NaN becomes ``None``; missing bounds are
        ``None``. Also the noise figures (``mad_rel``, ``iqr_rel``, ``outlier_share``,
        ``max_over_median``) and the nested ``serial`` and ``processes`` dicts (None when absent).
        """
        out: dict[str, Any] = {
            "n": self.n,
            "mean": _finite_or_none(self.mean),
            "std": _finite_or_none(self.std),
            "cv": _finite_or_none(self.cv),
            "min": self.min,
            "max": self.max,
            "median": self.median,
            "mad_rel": _finite_or_none(self.mad_rel),
            "iqr_rel": _finite_or_none(self.iqr_rel),
            "outlier_share": _finite_or_none(self.outlier_share),
            "outlier_method": "Tukey fences, k = 1.5",
            "max_over_median": _finite_or_none(self.max_over_median),
        }
        confidences = {p.confidence for p in self.percentiles.values()}
        if len(confidences) == 1:
            out["confidence"] = confidences.pop()
        for q in sorted(self.percentiles):
            p = self.percentiles[q]
            name = percentile_name(q)
            out[name] = p.value
            out[f"{name}_low"] = p.low
            out[f"{name}_high"] = p.high
            out[f"{name}_widened"] = p.widened
        out["serial"] = None if self.serial is None else self.serial.to_dict()
        out["processes"] = None if self.processes is None else self.processes.to_dict()
        return out


def percentile_name(q: float) -> str:
    """Column name of a percentile: ``p50``, ``p99``, ``p99.9`` (q in percent)."""
    return f"p{float(q):g}"


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(
            f"confidence {confidence!r} must be a fraction strictly between 0 and 1 (e.g. 0.95)"
        )
    return confidence


def _check_q(q: float) -> float:
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"percentile {q!r} must be between 0 and 100 (percent, e.g. 99)")
    return q


def percentile_ci_indices(n: int, q: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based indices ``(lo, hi)`` into the sorted samples that bound the ``q``-th percentile.

    ``sorted_samples[lo] <= xi_q <= sorted_samples[hi]`` holds with probability at least
    ``confidence`` for i.i.d. samples of any continuous distribution (equal-tailed binomial
    order-statistic interval, see the module docstring). Returns ``None`` when ``n`` is too small
    for a two-sided interval, and always for ``q`` of 0 or 100.

    ``n``: number of samples; ``q``: percentile in percent; ``confidence``: fraction in (0, 1).
    """
    from costmeter.results.distributions import binom_cdf, binom_isf, binom_ppf, binom_sf

    q = _check_q(q)
    alpha_tail = (1.0 - _check_confidence(confidence)) / 2.0
    n = int(n)
    if n < 2 or q in (0.0, 100.0):
        return None
    p = q / 100.0

    # Lower rank: j = l - 1 is the largest count with P(B <= j) <= alpha/2.
    if binom_cdf(0, n, p) > alpha_tail:
        return None
    j = int(binom_ppf(alpha_tail, n, p))  # smallest k with cdf(k) >= alpha/2 (up to rounding)
    while j >= 0 and binom_cdf(j, n, p) > alpha_tail:
        j -= 1
    while j + 1 <= n and binom_cdf(j + 1, n, p) <= alpha_tail:
        j += 1
    lo = j  # 0-based index of the l-th smallest sample (l = j + 1)

    # Upper rank: u is the smallest rank with P(B >= u) = sf(u - 1) <= alpha/2.
    if binom_sf(n - 1, n, p) > alpha_tail:
        return None
    k = int(binom_isf(alpha_tail, n, p))  # candidate for u - 1
    k = min(max(k, 0), n - 1)
    while k > 0 and binom_sf(k - 1, n, p) <= alpha_tail:
        k -= 1
    while k < n - 1 and binom_sf(k, n, p) > alpha_tail:
        k += 1
    hi = k  # 0-based index of the u-th smallest sample (u = k + 1)

    if lo < 0 or hi > n - 1 or lo >= hi:
        return None
    return lo, hi


def min_samples_for_percentile(q: float, confidence: float = 0.95) -> int:
    """Smallest sample count for which :func:`percentile_ci_indices` gives an interval.

    Both extreme order statistics must be usable as bounds: ``(1 - p)**n <= alpha/2`` and
    ``p**n <= alpha/2`` with ``p = q / 100``, i.e. ``n >= ln(alpha/2) / ln(max(p, 1 - p))``
    (368 for p99 at 95%, 6 for the median at 95%). ``q`` in percent, strictly inside (0, 100).
    """
    q = _check_q(q)
    alpha_tail = (1.0 - _check_confidence(confidence)) / 2.0
    if q in (0.0, 100.0):
        raise ConfigError(
            f"no finite sample gives a confidence interval for p{q:g}; use a percentile strictly "
            "between 0 and 100"
        )
    p = q / 100.0
    n = max(2, math.ceil(math.log(alpha_tail) / math.log(max(p, 1.0 - p))))
    # The closed form can be off by one through floating-point rounding: settle it exactly.
    while n > 2 and percentile_ci_indices(n - 1, q, confidence) is not None:
        n -= 1
    while percentile_ci_indices(n, q, confidence) is None:
        n += 1
    return n


def _as_samples(samples: Iterable[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=float)
    if x.ndim != 1:
        x = x.ravel()
    if x.size == 0:
        raise ConfigError("no samples to summarize; run the benchmark for at least one sample")
    if not np.all(np.isfinite(x)):
        raise ConfigError(
            "samples contain NaN or infinite values; drop failed iterations before summarizing"
        )
    return x


def summarize(
    samples: Iterable[float] | np.ndarray,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    confidence: float = 0.95,
    serial: bool = True,
) -> Summary:
    """Summary statistics of ``samples`` in time order (any unit; results are in the same unit).

    ``percentiles`` are in percent; each gets a point value (numpy ``"linear"`` method) and a
    distribution-free interval at ``confidence`` (``low``/``high`` ``None`` when there are too
    few samples). With ``serial`` (the default) the samples' order is tested for serial
    correlation and, where it is significant, the intervals are widened (so pass samples in the
    order they were taken; ``serial=False`` treats them as independent and ignores order).
    Raises ConfigError on empty input or non-finite values.
    """
    return summarize_series([_as_samples(samples)], percentiles, confidence, serial)


def summarize_series(
    series: Sequence[np.ndarray],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    confidence: float = 0.95,
    serial: bool = True,
) -> Summary:
    """Pooled statistics of several time-ordered series (e.g. one per process), each tested
    for serial correlation on its own; the count variance of a pooled percentile is the sum
    of the series' (batch-means) variances. Between-series spread is *not* in these intervals:
    see :func:`costmeter.results.stats_hier.summarize_processes`. Any unit; same unit back.
    """
    from costmeter.results.distributions import median_abs_deviation_normal

    from costmeter.results.stats_serial import (
        combine_serial,
        indicator_inflation,
        serial_correlation,
        widened_ci_indices,
    )

    confidence = _check_confidence(confidence)
    qs = [_check_q(q) for q in percentiles]
    parts = [_as_samples(s) for s in series]
    x = np.sort(np.concatenate(parts)) if len(parts) > 1 else np.sort(parts[0])
    n = int(x.size)
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if n >= 2 else math.nan
    cv = std / mean if (n >= 2 and mean != 0.0) else math.nan
    median = float(np.percentile(x, 50.0, method=PERCENTILE_METHOD))
    tests = [serial_correlation(p) for p in parts] if serial else []

    pcts: dict[float, PercentileCI] = {}
    if qs:
        values = np.percentile(x, qs, method=PERCENTILE_METHOD)
        for q, value in zip(qs, values):
            idx = percentile_ci_indices(n, q, confidence)
            widened = False
            if idx is not None and any(t.widened for t in tests):
                inflation = sum(
                    p.size * (indicator_inflation(p, float(value), q) if t.widened else 1.0)
                    for p, t in zip(parts, tests)
                ) / n
                wide = widened_ci_indices(n, q, confidence, inflation)
                idx = None if wide is None else (min(idx[0], wide[0]), max(idx[1], wide[1]))
                widened = True
            low = high = None
            if idx is not None:
                low, high = float(x[idx[0]]), float(x[idx[1]])
            pcts[q] = PercentileCI(q=q, value=float(value), low=low, high=high,
                                   confidence=confidence, widened=widened)

    q1, q3 = np.percentile(x, [25.0, 75.0], method=PERCENTILE_METHOD)
    mad = median_abs_deviation_normal(x)  # = std for normal data
    return Summary(
        n=n,
        mean=mean,
        std=std,
        cv=cv,
        min=float(x[0]),
        max=float(x[-1]),
        median=median,
        percentiles=pcts,
        mad_rel=mad / median if median > 0 else math.nan,
        iqr_rel=float(q3 - q1) / median if median > 0 else math.nan,
        outlier_share=float(np.mean(_tukey_mask(x, float(q1), float(q3), 1.5))),
        max_over_median=float(x[-1]) / median if median > 0 else math.nan,
        serial=combine_serial(tests) if tests else None,
    )


def too_few_samples_reasons(summary: Summary) -> list[str]:
    """One reason per percentile of ``summary`` that has no confidence interval, e.g.
    ``"too few samples for p99 (have 100, need 368 for a 95% CI)"`` (for INVALID results)."""
    reasons = []
    for q in sorted(summary.percentiles):
        p = summary.percentiles[q]
        if p.has_ci:
            continue
        name = percentile_name(q)
        if p.widened and 0.0 < q < 100.0:
            reasons.append(
                f"too few effective samples for {name}: the samples are serially correlated "
                f"(lag-1 r {summary.serial.lag1_r if summary.serial else math.nan:.2f}), so "
                f"{summary.n} of them hold too little information for a {p.confidence:.0%} CI"
            )
        elif 0.0 < q < 100.0:
            need = min_samples_for_percentile(q, p.confidence)
            reasons.append(
                f"too few samples for {name} (have {summary.n}, need {need} for a "
                f"{p.confidence:.0%} CI)"
            )
        else:
            reasons.append(f"too few samples for {name} (no finite sample bounds an extreme)")
    return reasons


def outliers_iqr(samples: Iterable[float] | np.ndarray, k: float = 1.5) -> np.ndarray:
    """Boolean mask, in input order, of samples outside Tukey's fences.

    Fences are ``Q1 - k * IQR`` and ``Q3 + k * IQR`` with quartiles from numpy's ``"linear"``
    method; points exactly on a fence are not outliers. ``k`` must be non-negative.
    """
    if k < 0:
        raise ConfigError(f"IQR multiplier k={k!r} must be >= 0 (1.5 is Tukey's usual choice)")
    x = _as_samples(samples)
    q1, q3 = np.percentile(x, [25.0, 75.0], method=PERCENTILE_METHOD)
    return _tukey_mask(x, float(q1), float(q3), k)


def _tukey_mask(x: np.ndarray, q1: float, q3: float, k: float) -> np.ndarray:
    iqr = q3 - q1
    return (x < q1 - k * iqr) | (x > q3 + k * iqr)
