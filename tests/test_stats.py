"""Tests of costmeter.results.stats against numpy/scipy references, simulation and properties."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from costmeter.errors import ConfigError
from costmeter.results.stats import (
    min_samples_for_percentile,
    outliers_iqr,
    percentile_ci_indices,
    percentile_name,
    summarize,
    too_few_samples_reasons,
)


def brute_force_indices(n: int, q: float, confidence: float) -> tuple[int, int] | None:
    """Reference: scan the whole binomial CDF for the equal-tailed ranks."""
    p = q / 100.0
    tail = (1.0 - confidence) / 2.0
    k = np.arange(n + 1)
    cdf = sps.binom.cdf(k, n, p)
    sf = sps.binom.sf(k, n, p)
    lows = k[cdf <= tail]
    highs = k[(sf <= tail) & (k <= n - 1)]
    if lows.size == 0 or highs.size == 0:
        return None
    lo, hi = int(lows.max()), int(highs.min())
    if lo >= hi:
        return None
    return lo, hi


# --- reference values -------------------------------------------------------------------------


def test_summary_matches_numpy_and_statistics_module():
    rng = np.random.default_rng(1)
    x = rng.lognormal(mean=13.0, sigma=0.4, size=1000)  # ns-like latencies
    s = summarize(x)
    assert s.n == 1000
    assert s.mean == pytest.approx(statistics.fmean(x), rel=1e-12)
    assert s.std == pytest.approx(statistics.stdev(x), rel=1e-9)
    assert s.cv == pytest.approx(statistics.stdev(x) / statistics.fmean(x), rel=1e-9)
    assert s.min == x.min() and s.max == x.max()
    assert s.median == pytest.approx(statistics.median(x), rel=1e-12)
    for q in (50, 90, 95, 99):
        assert s.percentiles[float(q)].value == pytest.approx(
            np.percentile(x, q, method="linear"), rel=1e-12
        )
        assert s.percentiles[float(q)].has_ci


def test_indices_match_brute_force_scan():
    for n in list(range(2, 60)) + [99, 100, 367, 368, 369, 1000, 5000]:
        for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9):
            for conf in (0.9, 0.95, 0.99):
                assert percentile_ci_indices(n, q, conf) == brute_force_indices(n, q, conf), (
                    n,
                    q,
                    conf,
                )


def test_indices_have_at_least_nominal_coverage_and_are_tightest():
    for n in (10, 50, 400, 2000):
        for q in (50, 90, 99):
            idx = percentile_ci_indices(n, q)
            if idx is None:
                continue
            lo, hi = idx
            p, tail = q / 100, 0.025
            # Exact coverage: P(lo + 1 <= B <= hi) with B the count below the true quantile.
            coverage = sps.binom.cdf(hi, n, p) - sps.binom.cdf(lo, n, p)
            assert coverage >= 0.95
            # Each bound is the tightest allowed: one step inward breaks that tail's budget.
            assert sps.binom.cdf(lo + 1, n, p) > tail
            assert sps.binom.sf(hi - 1, n, p) > tail


def test_min_samples_is_computed_and_is_the_threshold():
    for q in (50, 90, 95, 99, 99.9):
        for conf in (0.9, 0.95, 0.99):
            n = min_samples_for_percentile(q, conf)
            assert percentile_ci_indices(n, q, conf) is not None
            assert percentile_ci_indices(n - 1, q, conf) is None
    # The binomial argument for p99 at 95%: 0.99**n <= 0.025 first holds at n = 368.
    assert min_samples_for_percentile(99) == math.ceil(math.log(0.025) / math.log(0.99))
    # The 99% CI needs more samples than the 95% one.
    assert min_samples_for_percentile(99, 0.99) > min_samples_for_percentile(99, 0.95)


def test_too_few_samples_gives_none_bounds_and_reasons():
    x = np.arange(1.0, 101.0)
    s = summarize(x, serial=False)
    p99 = s.percentiles[99.0]
    assert p99.low is None and p99.high is None and not p99.has_ci
    assert s.percentiles[50.0].has_ci
    reasons = too_few_samples_reasons(s)
    need = min_samples_for_percentile(99)
    assert any(r.startswith("too few samples for p99") and f"need {need}" in r for r in reasons)
    assert not any("p50" in r for r in reasons)
    assert summarize(np.arange(1.0, need + 1.0), serial=False).percentiles[99.0].has_ci
    # In time order the same values are a trend: too few *effective* samples, and it says so.
    trend = summarize(np.arange(1.0, need + 1.0))
    assert trend.serial.widened and not trend.percentiles[99.0].has_ci
    assert any("too few effective samples for p99" in r for r in too_few_samples_reasons(trend))


# --- coverage by simulation -------------------------------------------------------------------


@pytest.mark.slow
def test_ci_coverage_by_simulation():
    rng = np.random.default_rng(20240601)
    draws, n = 2000, 400
    scale = 1e6
    data = np.sort(rng.exponential(scale, size=(draws, n)), axis=1)
    for q in (50, 90, 99):
        true_q = sps.expon.ppf(q / 100, scale=scale)
        lo, hi = percentile_ci_indices(n, q)
        covered = np.mean((data[:, lo] <= true_q) & (true_q <= data[:, hi]))
        # Nominal 95%; allow 3 standard errors of a 2000-draw proportion below it.
        assert covered >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / draws), (q, covered)
        # Cross-check the simulation against the summary's own bounds on one draw.
        s = summarize(data[0], percentiles=(q,), serial=False)  # sorted rows: order means nothing
        assert (s.percentiles[float(q)].low, s.percentiles[float(q)].high) == (
            data[0, lo],
            data[0, hi],
        )


# --- properties -------------------------------------------------------------------------------

positive_samples = st.lists(
    st.floats(min_value=1.0, max_value=1e9, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=400,
)


@settings(max_examples=60, deadline=None)
@given(positive_samples)
def test_ci_contains_point_and_is_monotone_in_q(xs):
    qs = (10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0)
    s = summarize(xs, percentiles=qs, serial=False)
    widened = summarize(xs, percentiles=qs)
    for q in qs:  # widening for serial correlation never narrows an interval, nor moves the point
        a, b = s.percentiles[q], widened.percentiles[q]
        assert b.value == a.value
        if b.has_ci:
            assert a.has_ci and b.low <= a.low <= b.value <= a.high <= b.high
    prev = None
    for q in qs:
        p = s.percentiles[q]
        assert s.min <= p.value <= s.max
        if p.has_ci:
            assert p.low <= p.value <= p.high
        if prev is not None:
            assert p.value >= prev.value
            if p.has_ci and prev.has_ci:
                assert p.low >= prev.low and p.high >= prev.high
        prev = p


@settings(max_examples=40, deadline=None)
@given(positive_samples, st.randoms(use_true_random=False))
def test_invariant_to_sample_order(xs, rnd):
    shuffled = list(xs)
    rnd.shuffle(shuffled)
    assert summarize(xs, serial=False) == summarize(shuffled, serial=False)
    # With the serial test, order matters only to the test and the intervals it widens.
    a, b = summarize(xs), summarize(shuffled)
    for name in ("n", "mean", "median", "min", "max", "mad_rel", "iqr_rel", "outlier_share"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), nan_ok=True)


@settings(max_examples=40, deadline=None)
@given(positive_samples, st.floats(min_value=1e-3, max_value=1e3))
def test_scale_equivariant(xs, c):
    a = summarize(xs)
    b = summarize([c * x for x in xs])
    rel = 1e-9
    for name in ("mean", "min", "max", "median"):
        assert getattr(b, name) == pytest.approx(c * getattr(a, name), rel=rel)
    if a.n >= 2:
        assert b.std == pytest.approx(c * a.std, rel=1e-6, abs=1e-6 * c * a.mean)
    for q, pa in a.percentiles.items():
        pb = b.percentiles[q]
        assert pb.value == pytest.approx(c * pa.value, rel=rel)
        assert pb.has_ci == pa.has_ci
        if pa.has_ci:
            assert pb.low == pytest.approx(c * pa.low, rel=rel)
            assert pb.high == pytest.approx(c * pa.high, rel=rel)


# --- shape of the output and errors -----------------------------------------------------------


def test_to_dict_is_flat_and_json_ready():
    import json

    s = summarize(np.linspace(1.0, 2.0, 500), percentiles=(50, 99, 99.9))
    d = s.to_dict()
    for key in ("n", "mean", "std", "cv", "min", "max", "median", "p50", "p50_low", "p50_high"):
        assert key in d
    assert d["p99"] == s.percentiles[99.0].value
    assert d["p99.9"] == s.percentiles[99.9].value and d["p99.9_low"] is None
    assert percentile_name(99.9) == "p99.9" and percentile_name(50) == "p50"
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_single_sample_has_undefined_spread():
    s = summarize([42.0])
    assert s.n == 1 and s.mean == 42.0 and s.median == 42.0
    assert math.isnan(s.std) and math.isnan(s.cv)
    d = s.to_dict()
    assert d["std"] is None and d["cv"] is None
    assert all(not p.has_ci for p in s.percentiles.values())


@pytest.mark.parametrize(
    "bad",
    [[], [1.0, float("nan")], [1.0, float("inf")]],
)
def test_rejects_empty_and_non_finite(bad):
    with pytest.raises(ConfigError):
        summarize(bad)


def test_rejects_bad_q_and_confidence():
    with pytest.raises(ConfigError):
        summarize([1.0, 2.0], percentiles=(101,))
    with pytest.raises(ConfigError):
        summarize([1.0, 2.0], confidence=1.0)
    with pytest.raises(ConfigError):
        min_samples_for_percentile(100)
    assert percentile_ci_indices(10_000, 0) is None


# --- outliers ---------------------------------------------------------------------------------


def test_outliers_iqr_matches_tukey_fences():
    rng = np.random.default_rng(3)
    x = rng.normal(100.0, 5.0, size=300)
    x[[7, 150]] = [500.0, -200.0]
    mask = outliers_iqr(x)
    q1, q3 = np.percentile(x, [25, 75])
    iqr = sps.iqr(x)
    expected = (x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)
    assert mask.dtype == bool and mask.shape == x.shape
    assert np.array_equal(mask, expected)
    assert mask[7] and mask[150]
    # A wider fence flags a subset of what a narrow one flags.
    assert not np.any(outliers_iqr(x, k=3.0) & ~mask)
    with pytest.raises(ConfigError):
        outliers_iqr(x, k=-1)


def test_outliers_iqr_constant_samples_have_none():
    assert not outliers_iqr([5.0] * 20).any()


# --- noise figures ----------------------------------------------------------------------------


def test_noise_figures_match_scipy_and_ignore_a_few_stalls():
    rng = np.random.default_rng(12)
    x = rng.normal(7400.0, 74.0, 5000)  # 7.4 us +- 1%
    clean = summarize(x)
    x[rng.choice(5000, 10, replace=False)] = np.linspace(4e6, 44e6, 10)  # 10 stalls of 4-44 ms
    s = summarize(x)
    med = np.median(x)
    assert s.mad_rel == pytest.approx(sps.median_abs_deviation(x, scale="normal") / med, rel=1e-12)
    assert s.iqr_rel == pytest.approx(sps.iqr(x) / med, rel=1e-12)
    assert s.outlier_share == pytest.approx(outliers_iqr(x).mean(), rel=1e-12)
    assert s.max == 44e6 and s.max_over_median == pytest.approx(44e6 / med)
    # The stalls blow CV up ~200x; the robust figures barely move (and match the data's 1%).
    assert s.cv > 100 * clean.cv
    assert s.mad_rel == pytest.approx(0.01, rel=0.1) and s.mad_rel == pytest.approx(clean.mad_rel, rel=0.02)
    d = s.to_dict()
    assert d["outlier_method"] == "Tukey fences, k = 1.5" and d["max_over_median"] == s.max_over_median
