"""Few-shot transfer: K = 10 target measurements plus source-device forests beat fitting the
10 points from scratch, on real NB201 measurements (fixture slice)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.fewshot import (
    FewShotTransfer,
    informative_rows,
    reference_architectures,
)
from costmeter.predictors.estimators.forest import ModelForest
from costmeter.models.spaces import nb201

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"
DEVICES = ("1080ti_1_ms", "gold_6240_ms", "pixel3_ms", "samsung_a50_ms", "titan_rtx_32_ms")


@pytest.fixture(scope="module")
def setup() -> dict:
    data = pd.read_csv(FIXTURE)
    F = nb201.features(list(data["arch"]))
    forests = {d: ModelForest(n_estimators=16).fit(F.iloc[:200], data[d][:200]) for d in DEVICES}
    refs = reference_architectures("nb201", k=10, pool=list(data["arch"]))
    ref_rows = np.array([list(data["arch"]).index(a) for a in refs])
    rest = np.setdiff1d(np.arange(len(data)), ref_rows)
    rest = rest[F["connected"].to_numpy()[rest] > 0]
    return {"data": data, "F": F, "forests": forests, "ref_rows": ref_rows, "rest": rest}


def test_reference_architectures_are_fixed_spread_and_connected() -> None:
    refs = reference_architectures("nb201", k=10, seed=0)
    assert refs == reference_architectures("nb201", k=10, seed=0)
    assert len(set(refs)) == 10
    feats = nb201.features(refs)
    assert (feats["connected"] == 1).all()
    macs = feats["macs_total"].to_numpy()
    assert macs.max() / macs.min() > 5  # spread over the MACs range
    assert len(reference_architectures("ofa_mbv3", k=4, seed=0, pool_size=500)) == 4


def test_design_spans_the_shared_direction_first_and_whitened_chases_a_minor_one() -> None:
    # 20 sources' log latencies: one shared direction (sd 1) and a minor one (sd 0.07, about
    # the FBNet sources' fifth component) along which five rows sit six sd out (a noisy source
    # departing from the rest on a few archs)
    rng = np.random.default_rng(0)
    major, minor = rng.normal(size=2000), rng.normal(scale=0.07, size=2000)
    major[:5], minor[:5] = 0.0, 0.42
    loadings = rng.normal(size=(2, 20))
    logs = np.outer(major, loadings[0]) + np.outer(minor, loadings[1])
    scaled = informative_rows(logs, 10, rank=2)
    whitened = informative_rows(logs, 10, rank=2, whiten=True)
    first, second = major[scaled[:2]]
    assert min(abs(first), abs(second)) > 1.5 and first * second < 0  # both ends of it
    assert whitened[0] in range(5)  # the design before: an outlier of the minor direction first
    assert np.ptp(major[scaled]) > 0.7 * np.ptp(major)
    assert list(informative_rows(logs, 4, rank=2)) == list(scaled[:4])  # nested in pick order


@pytest.mark.parametrize("target", ["titan_rtx_32_ms", "samsung_a50_ms", "gold_6240_ms"])
def test_few_shot_beats_scratch_with_ten_points(setup: dict, target: str) -> None:
    data, F, ref_rows, rest = setup["data"], setup["F"], setup["ref_rows"], setup["rest"]
    sources = {d: f for d, f in setup["forests"].items() if d != target}
    y = data[target].to_numpy()
    transfer = FewShotTransfer(sources).fit(F.iloc[ref_rows], y[ref_rows])
    scratch = ModelForest(min_samples_leaf=1).fit(F.iloc[ref_rows], y[ref_rows])
    rho_transfer = spearmanr(y[rest], transfer.predict(F.iloc[rest]))[0]
    rho_scratch = spearmanr(y[rest], scratch.predict(F.iloc[rest]))[0]
    assert rho_transfer > 0.93
    assert rho_transfer > rho_scratch + 0.05
    weights = transfer.weights_
    assert (weights >= 0).all() and weights.iloc[0] > 0 and target not in weights.index


def test_uncertainty_tracks_the_error(setup: dict) -> None:
    data, F, ref_rows, rest = setup["data"], setup["F"], setup["ref_rows"], setup["rest"]
    target = "1080ti_1_ms"
    sources = {d: f for d, f in setup["forests"].items() if d != target}
    y = data[target].to_numpy()
    transfer = FewShotTransfer(sources).fit(F.iloc[ref_rows], y[ref_rows])
    mean, std = transfer.predict_with_uncertainty(F.iloc[rest])
    np.testing.assert_allclose(mean, transfer.predict(F.iloc[rest]))
    rel_err = np.median(np.abs(mean / y[rest] - 1))
    assert 0.3 * rel_err < np.median(std / mean) < 3 * rel_err


def test_few_shot_input_errors(setup: dict) -> None:
    F = setup["F"]
    with pytest.raises(ConfigError, match="at least one source"):
        FewShotTransfer({}).fit(F.iloc[:10], np.ones(10))
    with pytest.raises(ConfigError, match=">= 3 target measurements"):
        FewShotTransfer(setup["forests"]).fit(F.iloc[:2], np.ones(2))
    # like any meta-estimator, clone() unfits the sources unless they are frozen
    frozen = {d: FrozenEstimator(f) for d, f in setup["forests"].items()}
    y = setup["data"]["titan_rtx_32_ms"].to_numpy()
    cloned = clone(FewShotTransfer(frozen)).fit(F.iloc[:10], y[:10])
    direct = FewShotTransfer(setup["forests"]).fit(F.iloc[:10], y[:10])
    np.testing.assert_allclose(cloned.predict(F.iloc[20:30]), direct.predict(F.iloc[20:30]))


def _rho_w10(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return spearmanr(y, pred)[0], float(np.mean(np.abs(pred / y - 1) <= 0.1) * 100)


def test_local_model_joins_through_out_of_fold_predictions(setup: dict) -> None:
    """With K = 150 target points, the target's own forest joins the sources: it helps where
    no source ranks like the target (pixel3), and, being weighted by its out-of-fold
    predictions (not its in-sample fit), it stays out where a source already explains the
    target (1080ti_1 from titan_rtx_32)."""
    data, F, forests = setup["data"], setup["F"], setup["forests"]
    connected = F["connected"].to_numpy() > 0
    train, test = np.arange(150), np.arange(150, len(data))
    test = test[connected[test]]
    y = data["pixel3_ms"].to_numpy()
    sources = {d: f for d, f in forests.items() if d != "pixel3_ms"}
    plain = FewShotTransfer(sources).fit(F.iloc[train], y[train])
    mixed = FewShotTransfer(sources, local=ModelForest(n_estimators=16)).fit(F.iloc[train], y[train])
    rho_plain, w10_plain = _rho_w10(y[test], plain.predict(F.iloc[test]))
    rho_mixed, w10_mixed = _rho_w10(y[test], mixed.predict(F.iloc[test]))
    assert rho_mixed > rho_plain + 0.03 and w10_mixed > w10_plain + 10
    assert mixed.weights_["(local)"] > 0.3 and "(local)" not in plain.weights_.index
    # predictions are the fitted combination of the sources and the local model fitted on all K
    logs = np.column_stack([np.log(sources[d].predict(F.iloc[test])) for d in mixed.source_names_]
                           + [np.log(mixed.local_.predict(F.iloc[test]))])
    np.testing.assert_allclose(mixed.predict(F.iloc[test]),
                               np.exp(mixed.intercept_ + logs @ mixed.coef_), rtol=1e-9)
    mean, std = mixed.predict_with_uncertainty(F.iloc[test])
    assert np.all(std > 0) and np.allclose(mean, mixed.predict(F.iloc[test]))

    y = data["1080ti_1_ms"].to_numpy()
    sources = {d: f for d, f in forests.items() if d != "1080ti_1_ms"}
    mixed = FewShotTransfer(sources, local=ModelForest(n_estimators=16)).fit(F.iloc[train], y[train])
    assert mixed.weights_["titan_rtx_32_ms"] > 0.8 and mixed.weights_["(local)"] < 0.2


def test_local_model_needs_enough_points(setup: dict) -> None:
    F, y = setup["F"], setup["data"]["pixel3_ms"].to_numpy()
    with pytest.raises(ConfigError, match="needs >= 10 target measurements"):
        FewShotTransfer(setup["forests"], local=ModelForest(n_estimators=4)).fit(F.iloc[:9], y[:9])
