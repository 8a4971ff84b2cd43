"""The scipy.special stand-ins of costmeter.results.distributions against scipy.stats itself."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from costmeter.results import distributions as d

PROBABILITIES = st.floats(min_value=0.001, max_value=0.999)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), p=PROBABILITIES, data=st.data())
def test_binomial_functions_match_scipy(n: int, p: float, data) -> None:
    k = data.draw(st.integers(-2, n + 2))
    # far in the tails (below 1e-200: cdf(16; 161, 0.9935) = 1.27e-296) cephes and boost part in
    # the fourth digit; no interval or verdict reads probabilities that small
    assert d.binom_cdf(k, n, p) == pytest.approx(float(sps.binom.cdf(k, n, p)), rel=1e-9, abs=1e-200)
    assert d.binom_sf(k, n, p) == pytest.approx(float(sps.binom.sf(k, n, p)), rel=1e-9, abs=1e-200)
    q = data.draw(st.floats(min_value=1e-6, max_value=1 - 1e-6))
    # where q equals a cdf value exactly (q = 0.5, p = 0.5: cdf(3; 7) = 1/2), the last bit of two
    # implementations (cephes here, boost in scipy.stats) decides the rank: one apart is a tie
    ppf, ref = d.binom_ppf(q, n, p), int(sps.binom.ppf(q, n, p))
    assert ppf == ref or (abs(ppf - ref) == 1 and abs(sps.binom.cdf(min(ppf, ref), n, p) - q) < 1e-12)
    isf, ref = d.binom_isf(q, n, p), int(sps.binom.isf(q, n, p))
    assert isf == ref or (abs(isf - ref) == 1 and abs(sps.binom.sf(min(isf, ref), n, p) - q) < 1e-12)


@settings(max_examples=100, deadline=None)
@given(z=st.floats(-8, 8), p=st.floats(1e-12, 1 - 1e-12), df=st.integers(1, 200), q=PROBABILITIES)
def test_normal_and_t_match_scipy(z: float, p: float, df: int, q: float) -> None:
    assert d.norm_cdf(z) == pytest.approx(float(sps.norm.cdf(z)), rel=1e-12, abs=1e-300)
    assert d.norm_sf(z) == pytest.approx(float(sps.norm.sf(z)), rel=1e-12, abs=1e-300)
    assert d.norm_isf(p) == pytest.approx(float(sps.norm.isf(p)), rel=1e-9, abs=1e-12)
    assert d.t_ppf(q, df) == pytest.approx(float(sps.t.ppf(q, df)), rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 20), min_size=1, max_size=300))
def test_ranks_and_mad_match_scipy_with_ties(values: list[int]) -> None:
    x = np.asarray(values, dtype=float) * 1.5
    assert d.average_ranks(x) == pytest.approx(sps.rankdata(x))
    assert d.median_abs_deviation_normal(x) == pytest.approx(float(sps.median_abs_deviation(x, scale="normal")))


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, 60), min_size=2, max_size=12), min_size=2, max_size=2)
       .filter(lambda r: len(r[0]) == len(r[1])))
def test_homogeneity_test_matches_chi2_contingency(rows: list[list[int]]) -> None:
    table = np.asarray(rows)
    expected = float(sps.chi2_contingency(table, correction=False).pvalue)
    assert d.chi2_homogeneity_p(table) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_the_statistics_do_not_import_scipy_stats() -> None:
    """What every worker and `bench run` load to judge samples stays off scipy.stats (its import
    costs seconds on a loaded machine)."""
    code = ("import sys\nimport numpy as np\nfrom costmeter.results.stats_hier import summarize_processes\n"
            "rng = np.random.default_rng(0)\n"
            "summarize_processes([rng.lognormal(0, 0.1, 2000), rng.lognormal(0, 0.1, 2000)])\n"
            "print('scipy.stats' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
