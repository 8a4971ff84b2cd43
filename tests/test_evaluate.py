"""Evaluation metrics against scipy and hand-computed values; splits; grouped tables."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau, spearmanr

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.evaluate import (
    METRIC_NAMES,
    evaluate_split,
    family_of,
    family_split,
    metrics,
    metrics_table,
    random_split,
)
from costmeter.predictors.estimators.forest import ModelForest


def test_metrics_by_hand() -> None:
    y = [10.0, 20.0, 40.0, 80.0]
    p = [10.4, 21.8, 34.0, 80.0]  # +4%, +9%, -15%, 0%
    m = metrics(y, p)
    assert m["n"] == 4
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0.4**2 + 1.8**2 + 6.0**2) / 4))
    assert m["mae_ms"] == pytest.approx((0.4 + 1.8 + 6.0) / 4)
    assert m["mape_pct"] == pytest.approx((4 + 9 + 15 + 0) / 4)
    assert m["within_5_pct"] == 50.0
    assert m["within_10_pct"] == 75.0
    assert m["within_15_pct"] == 100.0  # exactly 15% counts as within
    assert m["bias_pct"] == pytest.approx(2.0)  # median of (+4, +9, -15, 0)
    assert m["spearman"] == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(0.1, 100)), min_size=3, max_size=60))
def test_rank_metrics_equal_scipy(pairs: list[tuple[float, float]]) -> None:
    y, p = np.array(pairs).T
    m = metrics(y, p)
    if np.ptp(y) == 0 or np.ptp(p) == 0:
        assert np.isnan(m["spearman"]) and np.isnan(m["kendall"])
    else:
        assert m["spearman"] == pytest.approx(spearmanr(y, p)[0], nan_ok=True)
        assert m["kendall"] == pytest.approx(kendalltau(y, p)[0], nan_ok=True)
    assert 0 <= m["within_5_pct"] <= m["within_10_pct"] <= m["within_15_pct"] <= 100


def test_metrics_refuse_non_positive_measurements_naming_rows() -> None:
    with pytest.raises(ConfigError, match=r"2 measured latencies .* \(rows 1, 3\)"):
        metrics([1.0, 0.0, 2.0, -1.0], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="3 measured latencies but 2 predictions"):
        metrics([1.0, 2.0, 3.0], [1.0, 2.0])


def test_metrics_table_overall_and_per_group() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    p = y * np.array([1.0, 1.2, 1.0, 1.0, 0.8, 1.0])
    table = metrics_table(y, p, groups=["a", "a", "a", "b", "b", "b"])
    assert list(table.index) == ["overall", "a", "b"]
    assert list(table.columns) == list(METRIC_NAMES)
    assert table.loc["a", "n"] == 3 and table.loc["overall", "n"] == 6
    assert table.loc["a", "within_10_pct"] == pytest.approx(200 / 3)
    assert table.loc["overall", "within_10_pct"] == pytest.approx(200 / 3)


def test_random_split_by_count_and_fraction() -> None:
    train, test = random_split(100, train=30, seed=1)
    assert len(train) == 30 and len(test) == 70
    assert not set(train) & set(test) and set(train) | set(test) == set(range(100))
    again = random_split(100, train=30, seed=1)
    assert np.array_equal(train, again[0])
    assert len(random_split(100, train=0.25)[0]) == 25
    with pytest.raises(ConfigError, match="no training or no test rows"):
        random_split(10, train=10)


def test_family_split_and_family_names() -> None:
    ids = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
           "nb201:|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "ofa_mbv3:r128|..."]
    fams = [family_of(m) for m in ids]
    assert fams == ["resnet", "resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet",
                    "nb201", "ofa_mbv3"]
    assert family_of("mobilenet_v3:w=0.75,d=1,r=160") == "mobilenet_v3"  # family variants
    train, test = family_split(fams, ["mobilenet_v3", "efficientnet", "ofa_mbv3"])
    assert list(train) == [0, 1, 2, 5] and list(test) == [3, 4, 6]
    with pytest.raises(ConfigError, match="held-out families \\['vit'\\] not in the data"):
        family_split(fams, ["vit"])


class Memorizer:
    """Predicts a row's own latency when it was fitted on that row, else the mean it saw: perfect
    on rows it was trained on, so scores on held-out rows show whether any leaked into fit."""

    def fit(self, X, y):
        self.seen_ = {tuple(row): value for row, value in zip(np.asarray(X), y)}
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.array([self.seen_.get(tuple(row), self.mean_) for row in np.asarray(X)])


def test_evaluate_split_fits_on_train_only() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 10, size=(200, 3))
    y = 2.0 * X[:, 0] + 0.1 * X[:, 1]
    train, test = random_split(200, train=150, seed=0)
    fitted: list[Memorizer] = []

    def make() -> Memorizer:
        fitted.append(Memorizer())
        return fitted[-1]

    table = evaluate_split(make, X, y, train, test, groups=np.where(X[:, 2] > 5, "big", "small"))
    assert table.loc["overall", "n"] == 50
    assert len(fitted[0].seen_) == 150 and set(fitted[0].seen_) == {tuple(r) for r in X[train]}
    # scored as the training mean on every held-out row: a leaked test row would score exactly
    assert table.loc["overall", "rmse_ms"] == pytest.approx(
        float(np.sqrt(np.mean((y[test] - y[train].mean()) ** 2))))
    assert table.loc["overall", "rmse_ms"] > 1.0
    assert set(table.index) == {"overall", "big", "small"}
    # and a real forest, fitted on the training rows, ranks the held-out ones
    forest = evaluate_split(lambda: ModelForest(n_estimators=16), X, y, train, test)
    assert forest.loc["overall", "spearman"] > 0.9


def test_accuracy_benchmark_runs_on_the_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from script_modules import load_script

    root = Path(__file__).resolve().parents[1]
    module = load_script("predictor_accuracy")
    fixture = root / "tests" / "fixtures" / "nb201_slice.csv.gz"
    assert module.main([str(fixture), "--train", "200", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "300 architectures x 5 devices" in out
    for device in ("1080ti_1", "gold_6240", "pixel3", "samsung_a50", "titan_rtx_32"):
        assert f"\n{device} " in out
    assert "forest meets rho >= 0.98" in out and "Fit on 300 traces" in out
    assert module.hardware_of("titanx_256") == "titanx"
    assert module.hardware_of("essential_ph_1") == "essential_ph_1"
