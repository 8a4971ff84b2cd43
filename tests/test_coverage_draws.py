"""The repeated-draw coverage check (benchmarks/coverage_draws.py): its exchangeability
reference follows the Beta law, its default interval is the library's own, and the benchmark
refuses bad draw counts."""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_modules import load_script

from costmeter.predictors.estimators.conformal import COVERAGES

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "nb201_slice.csv.gz"


def _module(name: str) -> ModuleType:
    return load_script(name)


@pytest.fixture(scope="module")
def draws() -> ModuleType:
    return _module("coverage_draws")


def test_exchangeable_reference_follows_the_beta_law(draws: ModuleType) -> None:
    """n = 900 calibration scores: the interval between the k_lo-th and k_hi-th covers a
    Beta(k_hi - k_lo, n + 1 - k_hi + k_lo) share; 50,000 test rows add little to its spread."""
    n = 900
    got = draws.exchangeable_coverage(n, 50_000, sims=1500, seed=1)
    for c, level in enumerate(COVERAGES):
        k = math.ceil((n + 1) * (1 + level) / 2 - 1e-9)
        a, b = 2 * k - n - 1, 2 * (n + 1 - k)
        mean, sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        assert abs(got[:, c].mean() - 100 * mean) < 0.15, (level, got[:, c].mean())
        assert 0.9 < got[:, c].std() / (100 * sd) < 1.12, (level, got[:, c].std(), 100 * sd)
    # fewer test rows: the test rows' own binomial error widens the spread
    few = draws.exchangeable_coverage(n, 300, sims=1500, seed=2)
    assert few[:, 0].std() > 1.5 * got[:, 0].std()


def test_the_check_scores_the_library_default_interval(draws: ModuleType) -> None:
    """Draw 0's ``jackknife`` coverage is what ArchPredictor's own predict_interval gives on
    the same split; the whole-ms column is recognised and only it is widened by a half-step."""
    from costmeter.models.spaces import nb201
    from costmeter.predictors.estimators.arch import ArchPredictor, default_regressor

    tables = _module("accuracy_tables")
    archs, _, devices, Y = tables.load(FIXTURE, "nb201")
    keep = [devices.index("1080ti_1"), devices.index("samsung_a50")]
    Y = Y[:, keep]
    F = nb201.features(archs)
    valid = F["connected"].to_numpy() > 0
    result = draws.collect_draws(lambda: default_regressor("nb201", n_estimators=16), F, Y, valid,
                                 ["1080ti_1", "samsung_a50"], 150, 2, 0,
                                 ArchPredictor().conformal_floor)
    assert result.whole_ms == [False, True]
    for values in result.coverage.values():
        assert values.shape == (2, 2, len(COVERAGES))
    assert np.all(np.isnan(result.coverage["split, fresh"]))  # too few test rows for 150 + 150
    jack = result.coverage["jackknife"]
    assert np.all((jack > 50) & (jack <= 100))
    half = result.coverage["half-step"]
    assert np.array_equal(half[:, 0], jack[:, 0]) and np.all(half[:, 1] >= jack[:, 1])
    order = np.random.default_rng(0).permutation(len(archs))
    train, test = np.sort(order[:150]), np.sort(order[150:])
    test = test[valid[test]]
    for j in range(2):
        model = ArchPredictor("nb201", regressor=default_regressor("nb201", n_estimators=16))
        model.fit([archs[i] for i in train], Y[train, j])
        for c, level in enumerate(COVERAGES):
            _, lo, hi = model.predict_interval([archs[i] for i in test], level)
            own = 100 * np.mean((Y[test, j] >= lo) & (Y[test, j] <= hi))
            assert abs(own - jack[0, j, c]) <= 100 / len(test) + 1e-9, (j, level, own, jack[0, j, c])


def test_benchmark_prints_the_check_and_refuses_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _module("predictor_accuracy")
    assert bench.main([str(FIXTURE), "--only", "coverage", "--coverage-draws", "2", "--train",
                       "150", "--devices", "1080ti_1,samsung_a50", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Coverage over 2 draws of the 150 training archs" in out
    assert "samsung_a50 (whole ms)" in out and "jackknife    : within ±2 single draw" in out
    for args in (["--mapie-draws", "3"], ["--coverage-draws", "-1"],
                 ["--coverage-draws", "2", "--mapie-draws", "3"]):
        assert bench.main([str(FIXTURE), *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
