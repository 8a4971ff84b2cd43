"""The accuracy benchmark's FBNet parts: workload-identical pairs, the noise estimate from an
additive fit, the whole-ms rounding ceiling, and a run on the fixture slice."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy.stats import spearmanr
from script_modules import load_script

from costmeter.models.spaces import fbnet

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fbnet_slice.csv.gz"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("predictor_accuracy")


def test_workload_identical_pairs(bench: ModuleType) -> None:
    archs = fbnet.sample(6, seed=4)
    blocks = archs[0].split("|")
    within = blocks.copy()
    within[2], within[4] = blocks[4], blocks[2]          # layers 3 and 5: stage 2, same shapes
    across = blocks.copy()
    across[1], across[2] = blocks[2], blocks[1]          # layer 2 is the stage's first layer
    assert blocks[2] != blocks[4] and blocks[1] != blocks[2]
    pairs = bench.duplicate_pairs("fbnet", archs + ["|".join(within), "|".join(across), archs[3]])
    assert sorted(map(sorted, pairs.tolist())) == [[0, 6], [3, 8]]


def _additive(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    onehot = fbnet.features(fbnet.sample(n, seed=seed))[list(fbnet.onehot_feature_names())]
    costs = rng.uniform(0.1, 1.0, onehot.shape[1])
    y = onehot.to_numpy() @ costs * np.exp(rng.normal(0, noise, n))
    return y, onehot.to_numpy()


def test_additive_fit_noise_and_ceiling(bench: ModuleType) -> None:
    exact, onehot = _additive(1200, 0.0)
    rows = np.arange(1200)
    noise, rho_max, rho_fit = bench.noise_from_additive_fit(exact, onehot, rows)
    assert noise < 1e-6 and rho_max > 0.9999 and rho_fit > 0.9999  # an exact table sum: no noise
    noisy, _ = _additive(1200, 0.05)
    noise, rho_max, rho_fit = bench.noise_from_additive_fit(noisy, onehot, rows)
    assert 4.5 < noise < 7.0 and 0.8 < rho_max < 0.99         # 5% noise, plus the fit's own error
    # the truth here: rho(exact, noisy) -- measured values as stand-ins lean high, fitted low
    truth = spearmanr(exact, noisy)[0]
    assert rho_fit < rho_max and rho_fit <= truth + 0.005
    few = bench.noise_from_additive_fit(noisy[:300], onehot[:300], rows[:300])
    assert np.isnan(few).all()                                # too few rows per one-hot column


def test_quantisation_ceiling(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    assert np.isnan(bench.quantisation_ceiling(rng.uniform(10, 20, 100)))
    narrow = np.round(rng.normal(30, 1.0, 2000))
    wide = np.round(rng.normal(30, 10.0, 2000))
    assert bench.quantisation_ceiling(narrow) < 0.97 < bench.quantisation_ceiling(wide)


def test_source_models_follow_the_space_default(bench: ModuleType) -> None:
    from costmeter.predictors.estimators.additive import AdditiveForest
    from costmeter.predictors.estimators.arch import default_regressor

    ours = bench.latency_model("fbnet", n_estimators=8).get_params()
    assert ours == default_regressor("fbnet", n_estimators=8).get_params()
    previous = bench.latency_model("fbnet", "previous")
    assert isinstance(previous, AdditiveForest) and not previous.shrink_forest
    assert list(previous.linear_features) == list(fbnet.onehot_feature_names())
    with pytest.raises(ValueError, match="unknown model"):
        bench.latency_model("fbnet", "forest")


def test_sources_cache_made_with_other_settings_is_refused(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "sources.npz"
    stored = np.full((6, 3), 2.0)
    np.savez(cache, predictions=stored, space="fbnet", model="previous", folds=5)
    Y = np.ones((6, 3))
    reused = bench.cached_source_predictions(cache, "fbnet", None, Y, 5, 1, "previous")
    assert np.array_equal(reused, stored)                     # same settings: read, not refitted
    with pytest.raises(SystemExit) as stop:
        bench.cached_source_predictions(cache, "fbnet", None, Y, 5, 1, "default")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "holds previous source predictions for fbnet" in err and err.count("\n") == 1


@pytest.mark.slow
def test_benchmark_runs_on_the_fbnet_fixture(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert bench.main([str(FIXTURE), "--space", "fbnet", "--train", "40", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "60 architectures x 5 devices from fbnet_slice.csv.gz (fbnet" in out
    for device in ("1080ti_1", "gold_6240", "pixel3", "samsung_a50", "titan_rtx_32"):
        assert f"\n{device} " in out
    assert "onehot-lin" in out and "forest meets rho >= 0.98" in out and "default meets" in out
    assert "rho-max*" in out and "against rho-max* on" in out
    assert "noise from additive-fit residuals (0 duplicate pairs" in out
    # the few-shot table: each device's rho beside its ceiling, both targets counted
    assert "| rho-max |    own | blend-all |" in out
    assert "  chosen K=10: mean" in out and "rho >= min(0.98, rho-max) - 0.01 on" in out


def test_few_shot_targets_literal_and_against_the_ceiling(bench: ModuleType) -> None:
    table = importlib.import_module("few_shot_table")     # on the path once the benchmark loaded
    assert table.within_ceiling(0.975, 0.99) and not table.within_ceiling(0.965, 0.99)  # 0.98 caps
    assert table.within_ceiling(0.76, 0.77) and not table.within_ceiling(0.759, 0.77)  # noisy phone
    assert table.within_ceiling(0.97, float("nan")) and not table.within_ceiling(0.969, float("nan"))
    devices = ["gpu", "phone", "cpu"]
    line = table.target_line("chosen K=10", devices, [0.99, 0.76, 0.95], [1.0, 0.77, 0.99])
    assert "mean 0.900, min 0.760" in line and "literal target (mean >= 0.975, none below 0.92) missed" in line
    assert "(below 0.92: phone)" in line and "on 2/3 (missed: cpu)" in line
    line = table.target_line("x", devices, [0.99, 0.98, 0.975], [1.0, 0.99, 0.99])
    assert "target (mean >= 0.975, none below 0.92) met" in line and "on 3/3" in line
    assert "below" not in line.split("met")[1] and "missed" not in line


def test_noise_ceiling_takes_pairs_when_there_are_any(bench: ModuleType) -> None:
    rng = np.random.default_rng(1)
    y = rng.uniform(1, 10, 400)
    pairs = np.column_stack([np.arange(0, 200, 2), np.arange(1, 200, 2)])
    y[pairs[:, 1]] = y[pairs[:, 0]] * np.exp(rng.normal(0, 0.05, len(pairs)))
    noise, within, rho_max, rho_fit = bench.noise_ceiling(y, pairs, np.zeros((400, 1)), np.arange(400))
    assert 3.0 < noise < 5.0 and within > 80 and rho_fit == rho_max and 0.9 < rho_max < 1.0
    exact, onehot = _additive(1200, 0.0)
    noise, within, rho_max, rho_fit = bench.noise_ceiling(exact, np.zeros((0, 2), int), onehot, np.arange(1200))
    assert noise < 1e-6 and np.isnan(within) and rho_max > 0.9999 and rho_fit > 0.9999
