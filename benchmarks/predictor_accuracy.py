"""Latency-predictor accuracy on real measurements of a search space (prints tables).

Data: the latency tables of the HELP data release (Lee et al., NeurIPS 2021, MIT), 21 devices
each: ``--space nb201`` (default) 15,625 NAS-Bench-201 architectures, ``--space fbnet`` 5,000
FBNet architectures (HW-NAS-Bench's CIFAR-100 network). Default path
``../shared/data/<space>_latency.csv.gz`` relative to the repository; pass another path (any
file in the same layout) as argument.

Per device: ``--train`` (900) random architectures train, all others test. Models:
``forest`` (ModelForest on the space's analytic features, log target), ``onehot-RF`` (random
forest on the one-hot encoding -- 30 edge columns for NB201, 198 layer columns for FBNet -- the
classic reference), ``onehot-lin`` (ridge regression of the latency in ms on the same one-hot
columns: for FBNet an additive per-layer lookup table fitted by least squares, FBNet's own
latency model), ``FLOPs-lin`` (latency linear in MACs), ``additive`` (the previous default:
that ridge times a forest correction) and ``default`` (what ``bench predictor fit`` fits:
``arch.default_regressor`` -- a ridge on every analytic feature with the one-hot columns under
a penalty of their own, times a forest correction shrunk by its out-of-bag fit), each fitted on
the device's own training architectures only;
``forest-cv`` is ``forest`` with its algorithm, leaf size and feature fraction chosen per device
by 5-fold cross-validation on the training architectures alone (mean squared log error over
``FOREST_GRID``; the test architectures play no part in the choice).
``+others`` (a separate row, not a replacement: it uses more data) is the setting of a user
who already holds traces of the other 20 devices (every architecture): ``FewShotTransfer`` with
the other devices' measured latencies as sources, K = ``--train`` target points, and the
device's ``forest-cv`` as ``local`` model (weighted by its out-of-fold predictions).
Metrics on the valid test architectures: for NB201 the cells whose output is connected to the
input (the ~2% disconnected cells have near-zero latency on some devices, which breaks relative
metrics; the ``all`` columns include them); for FBNet every architecture.

Diagnostics (not predictors): measurement noise. With duplicates -- one workload measured
twice under two names -- their spread is measurement noise. NB201: when edge 1->2 is ``none``,
nodes 1 and 2 are interchangeable (swapping (0->1, 1->3) with (0->2, 2->3) gives the same
network under another index); the 1,464 connected pairs of the full table were measured
separately, and on 1080ti_256 and 2080ti_256 a pair differs by ~0.1%. FBNet: two architectures
are one workload when every stage has the same first block and the same blocks, in any order,
after it (those layers have equal shapes, so only their order differs); the 5,000 FBNet
architectures hold no such pair and no repeat. ``noise%`` is the std of the pairs' log ratio /
sqrt(2) (one measurement's relative noise, drift included), ``dup±10`` the share of pairs within
±10% of each other, and ``rho-max`` the Spearman rho that an exact model of each network's
latency would reach against such measurements: the measured latencies of the test architectures
stand in for the true ones (slightly more spread out, so the estimate leans high), multiplied by
noise drawn from the pairs' log ratios / sqrt(2) (both signs; mean of 5 draws). It assumes the
noise does not depend on the architecture.
Without duplicate pairs (FBNet), ``noise%`` and ``rho-max`` come from the 5-fold cross-validated
residuals of the additive model (least squares of the latency in ms on the one-hot encoding,
all architectures; needs 5 per one-hot column) instead, and ``dup±10`` is empty: those
residuals hold the noise plus whatever the additive model misses, so that ``noise%`` is an
upper bound (on pixel3, an exact sum of per-layer table entries, it is 0 and the ceiling 1).
``rho-max`` still takes the measured latencies as stand-ins for the true ones; they carry the
noise once already, which on the phones (10-17% noise) lifts it by up to 0.09 -- above what a
least-squares fit on 4,000 of the device's architectures reaches on the rest (essential_ph_1:
rho-max 0.819, such a fit 0.728). ``rho-max*`` takes the fitted values as stand-ins instead;
both its stand-ins and its noise lean low, so it is a lower bound. The target is counted
against both.
Columns recorded in whole milliseconds also get ``rho-q``: the ceiling that the rounding alone
imposes (stand-ins: the measured values plus uniform noise of ±0.5 ms, rounded again).
``lag1`` is the autocorrelation of the default model's log residuals in the file's index order.
Neighbouring indices hold unrelated architectures, so a high value means the error follows the
index -- most likely the order of measurement, i.e. a slow drift of the device that no
architecture-based model can predict. ``drift-adj`` divides that drift out (median residual of
the 50 index neighbours of each test point, the point itself excluded) to show what the same
predictions reach against drift-free targets.
Target (the task's): rho within 0.01 of the ceiling and >= 0.98 where the ceiling allows it,
i.e. rho >= min(0.98, rho-max - 0.01); counted per model, against ``rho-max`` and ``rho-max*``.

Intervals (``--only intervals`` prints only these): the default model's conformal intervals,
calibrated as ``ArchPredictor.fit`` does (jackknife scores of the training rows), against the
forest's tree spread read as Gaussian; whole-ms columns are counted apart; a reference line
calibrates on 900 test architectures instead (rows the fit never saw).

Few-shot: for each device in turn as target, K (10) fixed reference architectures (chosen
from the file's architectures by MACs quantiles, the same for every device) measured on
it and the forests of the other devices (``LODO``); ``hw-out`` also drops the same GPU at other
batch sizes from the sources; ``scratch`` fits a forest on the K points alone.

Run: ``python benchmarks/predictor_accuracy.py [PATH] [--space nb201|fbnet] [--train 900] [--k 10]
[--n-jobs 2]``.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from costmeter.models.spaces import fbnet, get_space, nb201
from costmeter.predictors.estimators.additive import AdditiveForest
from costmeter.predictors.estimators.arch import ArchPredictor, default_regressor
from costmeter.predictors.estimators.conformal import (
    COVERAGES,
    calibrate_jackknife,
    calibrate_split,
    coverage_report,
    gaussian_interval,
)
from costmeter.predictors.estimators.evaluate import metrics
from costmeter.predictors.estimators.fewshot import (
    FewShotTransfer,
    informative_rows,
    reference_architectures,
)
from costmeter.predictors.estimators.forest import FlopsLinear, ModelForest
from costmeter.results.traces import read_traces

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPACES = ("nb201", "fbnet")
_GPU_BATCH = re.compile(r"^(1080ti|2080ti|titan_rtx|titanx|titanxp)_(\d+)$")
DRIFT_WINDOW = 51
FOREST_GRID: dict[str, list[Any]] = {"algorithm": ["random_forest", "extra_trees"],
                                     "min_samples_leaf": [1, 2, 4],
                                     "max_features": [0.33, 0.6, 1.0]}


def hardware_of(device: str) -> str:
    """Physical device of a column: GPU columns carry the batch size (``titanx_32``)."""
    m = _GPU_BATCH.match(device)
    return m.group(1) if m else device


class _Precomputed:
    """Source predictor whose predictions for every architecture were computed once;
    ``X`` is a one-column array of architecture row numbers (same maths, less CPU)."""

    def __init__(self, latency_ms: np.ndarray) -> None:
        self.latency_ms = latency_ms

    def predict(self, X: Any) -> np.ndarray:
        """Latency (ms) of the rows ``X`` (row numbers, or a table with a ``row`` column)."""
        rows = X["row"] if hasattr(X, "columns") else X
        return self.latency_ms[np.asarray(rows, dtype=np.int64).ravel()]


def duplicate_pairs(space: str, archs: list[str]) -> np.ndarray:
    """Row pairs ``(n_pairs, 2)`` of architectures that are one workload (see the docstring)."""
    return _nb201_pairs(archs) if space == "nb201" else _fbnet_pairs(archs)


def _fbnet_pairs(archs: list[str]) -> np.ndarray:
    """Row pairs of FBNet architectures with, per stage, the same first block and the same
    blocks in any order after it (equal shapes there: only the order differs); repeats too."""
    codes = fbnet.to_codes(archs).astype(np.int64)
    stage = fbnet.LAYERS[:, 0]
    first = np.r_[True, stage[1:] != stage[:-1]]
    keyed = codes.copy()
    for s in np.unique(stage):
        rest = np.flatnonzero((stage == s) & ~first)
        keyed[:, rest] = np.sort(codes[:, rest], axis=1)
    _, group = np.unique(keyed, axis=0, return_inverse=True)
    order = np.argsort(group.ravel(), kind="stable")
    g = group.ravel()[order]
    same = np.flatnonzero(g[1:] == g[:-1])
    return np.column_stack([order[same], order[same + 1]]).astype(np.int64).reshape(-1, 2)


def _nb201_pairs(archs: list[str]) -> np.ndarray:
    """Row pairs ``(n_pairs, 2)`` of connected cells that are the same network: with edge 1->2
    ``none``, swapping edges (0->1, 1->3) with (0->2, 2->3) only renames nodes 1 and 2."""
    codes = nb201.to_codes(archs)
    e = {edge: k for k, edge in enumerate(nb201.EDGES)}
    swapped = codes.copy()
    for a, b in (((0, 1), (0, 2)), ((1, 3), (2, 3))):
        swapped[:, e[a]], swapped[:, e[b]] = codes[:, e[b]], codes[:, e[a]]
    row_of = {int(i): r for r, i in enumerate(nb201.codes_to_index(codes))}
    partner = np.array([row_of.get(int(i), -1) for i in nb201.codes_to_index(swapped)])
    rows = np.arange(len(archs))
    connected = nb201.features(archs)["connected"].to_numpy() > 0
    keep = (codes[:, e[(1, 2)]] == nb201.OPS.index("none")) & (partner > rows) & connected
    return np.column_stack([rows[keep], partner[keep]])


def noise_from_duplicates(y: np.ndarray, pairs: np.ndarray, proxy_ms: np.ndarray,
                          seed: int = 0, draws: int = 5) -> tuple[float, float, float]:
    """(relative noise of one measurement in %, % of pairs within ±10% of each other, Spearman
    ceiling) of latencies ``y`` (ms) from duplicate ``pairs``. The ceiling is the mean Spearman
    rho between ``proxy_ms`` (stand-ins for the true latencies of the evaluated cells) and the
    same values times noise resampled from the pairs' log ratios / sqrt(2), both signs. All NaN
    with fewer than 2 pairs (a small slice of the space may hold none)."""
    if len(pairs) < 2:
        return float("nan"), float("nan"), float("nan")
    log_ratio = np.log(y[pairs[:, 0]] / y[pairs[:, 1]])
    noise = float(np.std(log_ratio) / np.sqrt(2))
    within = float(np.mean(np.abs(np.exp(log_ratio) - 1) <= 0.1 + 1e-12) * 100)
    return noise * 100, within, _ceiling(proxy_ms, log_ratio / np.sqrt(2), seed, draws)


def _ceiling(proxy_ms: np.ndarray, log_noise: np.ndarray, seed: int, draws: int = 5) -> float:
    """Mean Spearman rho between ``proxy_ms`` and the same values times ``exp`` of noise drawn
    from ``log_noise`` (both signs)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    pool = np.concatenate([log_noise, -log_noise])
    return float(np.mean([spearmanr(proxy_ms, proxy_ms * np.exp(rng.choice(pool, proxy_ms.size)))[0]
                          for _ in range(draws)]))


def noise_from_additive_fit(y: np.ndarray, onehot: np.ndarray, rows: np.ndarray,
                            seed: int = 0) -> tuple[float, float, float]:
    """(relative noise in %, Spearman ceiling, corrected ceiling) from the 5-fold
    cross-validated residuals of a least-squares fit of ``y`` (ms) on the one-hot encoding, for
    the architectures ``rows``. The residuals hold the noise plus whatever an additive model
    misses, so the noise is an upper bound. The ceiling uses the measured latencies as
    stand-ins for the true ones (``rho-max``); the corrected one (``rho-max*``) uses the fitted
    values, whose spread is that of the true latencies less what the sum misses, where measured
    values carry the noise once more -- on a device with 10-17% noise that alone lifts
    ``rho-max`` by 0.01-0.09. Both proxy and noise lean low in ``rho-max*``, so it is a lower
    bound. NaN with fewer than 5 architectures per one-hot column (the fit would mostly fit
    noise)."""
    if len(y) < 5 * onehot.shape[1]:
        return float("nan"), float("nan"), float("nan")
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    fit = cross_val_predict(LinearRegression(), onehot, y, cv=KFold(5, shuffle=True, random_state=seed))
    fit = np.maximum(fit, 1e-9 * np.median(y))
    log_resid = np.log(y / fit)
    return (float(np.std(log_resid) * 100), _ceiling(y[rows], log_resid, seed),
            _ceiling(fit[rows], log_resid, seed))


def quantisation_ceiling(y_ms: np.ndarray, seed: int = 0, draws: int = 5) -> float:
    """Spearman rho between stand-ins for the true latencies (``y_ms`` + uniform ±0.5 ms) and
    their values rounded to whole ms; NaN unless ``y_ms`` holds whole numbers only."""
    from scipy.stats import spearmanr

    if not np.all(np.equal(np.mod(y_ms, 1.0), 0.0)):
        return float("nan")
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(draws):
        true = y_ms + rng.uniform(-0.5, 0.5, y_ms.size)
        rhos.append(spearmanr(true, np.round(true))[0])
    return float(np.mean(rhos))


class OneHotLinear:
    """Ridge regression of the latency (ms) on named one-hot columns (alpha by 5-fold CV)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns

    def fit(self, X: Any, y: np.ndarray) -> OneHotLinear:
        from sklearn.linear_model import RidgeCV

        self.model_ = RidgeCV(alphas=np.logspace(-3, 2, 6)).fit(X[self.columns].to_numpy(), y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Latency (ms) per row (floored at 1e-6 ms: a linear fit can dip below zero)."""
        return np.maximum(self.model_.predict(X[self.columns].to_numpy()), 1e-6)


def _neg_mean_sq_log_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Minus the mean squared log ratio of predicted to measured latency (higher is better)."""
    return -float(np.mean(np.log(np.asarray(y_pred) / np.asarray(y_true)) ** 2))


def cv_forest(X: Any, y: np.ndarray, features: list[str], n_jobs: int, folds: int = 5) -> ModelForest:
    """Unfitted ``ModelForest`` whose ``FOREST_GRID`` settings give the lowest mean squared
    log error in ``folds``-fold cross-validation on ``X``, ``y`` (ms) -- the training rows only."""
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV, KFold

    search = GridSearchCV(ModelForest(features=features, n_jobs=n_jobs), FOREST_GRID,
                          scoring=make_scorer(_neg_mean_sq_log_error),
                          cv=KFold(folds, shuffle=True, random_state=0), refit=False)
    search.fit(X, y)
    return ModelForest(features=features, n_jobs=n_jobs, **search.best_params_)


def _drift_adjusted(y: np.ndarray, pred: np.ndarray, order: np.ndarray) -> tuple[float, dict]:
    """(lag-1 autocorrelation of log residuals in measurement order, metrics after dividing
    out the drift). The drift at a point is the median residual of its DRIFT_WINDOW - 1
    neighbours in index order, the point itself excluded."""
    from numpy.lib.stride_tricks import sliding_window_view

    idx = np.argsort(order)
    resid = np.log(y[idx]) - np.log(pred[idx])
    lag1 = float(np.corrcoef(resid[:-1], resid[1:])[0, 1])
    half = DRIFT_WINDOW // 2
    padded = np.pad(resid, half, mode="reflect")
    windows = sliding_window_view(padded, DRIFT_WINDOW)
    neighbours = np.delete(windows, half, axis=1)
    drift = np.median(neighbours, axis=1)
    adjusted = np.empty_like(pred)
    adjusted[idx] = pred[idx] * np.exp(drift)
    return lag1, metrics(y, adjusted)


def load(path: Path, space: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(archs in file order, source row order, device names, latency matrix archs x devices)."""
    frame = read_traces(path, space=space).frame
    wide = frame.pivot_table(index=["source_row", "arch"], columns="device", values="latency_ms")
    wide = wide.sort_index(level="source_row")
    archs = list(wide.index.get_level_values("arch"))
    rows = np.asarray(wide.index.get_level_values("source_row"))
    return archs, rows, [str(c) for c in wide.columns], wide.to_numpy(dtype=np.float64)


def _meets(rho: float, ceiling: float) -> bool:
    """The target: rho >= min(0.98, ceiling - 0.01); 0.98 where the ceiling is unknown."""
    return rho >= (0.98 if not np.isfinite(ceiling) else min(0.98, ceiling - 0.01))


def per_device(args: Any, space: str, F: Any, archs: list[str], rows: np.ndarray,
               devices: list[str], Y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Print the per-device table; return the default model's predictions (archs x devices)."""
    sp = get_space(space)
    n = len(archs)
    order = np.random.default_rng(args.seed).permutation(n)
    train, test = np.sort(order[: args.train]), np.sort(order[args.train:])
    test_c = test[valid[test]]
    onehot = list(sp.onehot_feature_names())
    names = list(sp.feature_names())
    models = {
        "forest": lambda: ModelForest(n_jobs=args.n_jobs),
        "onehot-RF": lambda: ModelForest(features=onehot, log_target=False, max_features=1.0,
                                         min_samples_leaf=1, n_estimators=100, n_jobs=args.n_jobs),
        "onehot-lin": lambda: OneHotLinear(onehot),
        "FLOPs-lin": lambda: FlopsLinear(feature="macs_total"),
        "additive": lambda: latency_model(space, "previous", n_jobs=args.n_jobs),
        "default": lambda: default_regressor(space, n_jobs=args.n_jobs),
    }
    if args.only == "intervals":  # the two models behind the interval table, nothing else
        models = {name: models[name] for name in ("forest", "default")}
    X_rows = F.assign(row=np.arange(n))  # features + row number (for the traces of others)
    pairs = duplicate_pairs(space, archs)
    onehot_all = F[onehot].to_numpy()
    columns = [*models] + ([] if args.no_cv or args.only == "intervals" else ["forest-cv", "+others"])
    intervals: list[tuple[str, dict[str, Any]]] = []
    header = (f"{'device':18s}" + "".join(f" | {m:>10s} rho ±10%" for m in columns)
              + " | all rho  ±10% | noise% dup±10 rho-max rho-max* rho-q | lag1 | drift-adj rho  ±10%")
    noise_src = (f"{len(pairs)} duplicate pairs" if len(pairs) >= 2 else
                 f"additive-fit residuals ({len(pairs)} duplicate pairs: noise% is an upper bound, "
                 "rho-max a lower bound)")
    print(f"\nPer device: {args.train} train, {len(test_c)} valid test archs (seed {args.seed}); "
          f"noise from {noise_src}\n{header}\n{'-' * len(header)}")
    all_pred = np.zeros_like(Y)
    summary: dict[str, list[tuple[float, float]]] = {m: [] for m in columns}
    ceilings: list[tuple[float, float]] = []
    fit_s: dict[str, float] = {m: 0.0 for m in columns}
    for j, device in enumerate(devices):
        y = Y[:, j]
        cells = []
        found: dict[str, Any] = {}
        intervals.append((device, found))
        for name in columns:
            start = time.perf_counter()
            if name == "forest-cv":
                chosen = cv_forest(F.iloc[train], y[train], names, args.n_jobs)
                est = clone(chosen).fit(F.iloc[train], y[train])
                fit_s[name] += time.perf_counter() - start
                pred = est.predict(F)
            elif name == "+others":
                sources = {d: _Precomputed(Y[:, i]) for i, d in enumerate(devices) if i != j}
                est = FewShotTransfer(sources, local=chosen).fit(X_rows.iloc[train], y[train])
                fit_s[name] += time.perf_counter() - start
                pred = est.predict(X_rows)
            else:
                est = models[name]().fit(F.iloc[train], y[train])
                fit_s[name] += time.perf_counter() - start
                if name in ("forest", "default"):
                    pred, std = est.predict_with_uncertainty(F)
                    found[name] = (pred[test_c], std[test_c])
                else:
                    pred = est.predict(F)
            if name == "default":  # what ArchPredictor.fit calibrates with
                start = time.perf_counter()
                found["calibration"] = calibrate_jackknife(est, F.iloc[train], y[train],
                                                           floor=ArchPredictor().conformal_floor)
                fit_s[name] += time.perf_counter() - start
            if name == "default":
                all_pred[:, j] = pred
            m = metrics(y[test_c], pred[test_c])
            summary[name].append((m["spearman"], m["within_10_pct"]))
            cells.append(f" | {m['spearman']:14.3f} {m['within_10_pct']:4.0f}")
        m_all = metrics(y[test], all_pred[test, j])
        if len(pairs) >= 2:
            noise, dup10, rho_max = noise_from_duplicates(y, pairs, y[test_c], args.seed)
        else:
            (noise, rho_max, rho_fit), dup10 = noise_from_additive_fit(y, onehot_all, test_c, args.seed), np.nan
        ceilings.append((rho_max, rho_fit if len(pairs) < 2 else rho_max))
        rho_q = quantisation_ceiling(y[test_c], args.seed)
        lag1, adj = _drift_adjusted(y[test_c], all_pred[test_c, j], rows[test_c])
        print(f"{device:18s}{''.join(cells)} | {m_all['spearman']:7.3f} {m_all['within_10_pct']:5.1f}"
              f" | {noise:6.1f} {dup10:6.1f} {rho_max:7.3f} {ceilings[-1][1]:8.3f} {rho_q:5.3f}"
              f" | {lag1:4.2f} | {adj['spearman']:13.3f} {adj['within_10_pct']:5.1f}")
    for label, fn in (("mean", np.mean), ("min", np.min)):
        cells = "".join(f" | {fn([v[0] for v in summary[m]]):14.3f} {fn([v[1] for v in summary[m]]):4.0f}"
                        for m in columns)
        print(f"{label:18s}{cells}")
    print(f"(fit time per device on {args.train} archs, {args.n_jobs} jobs: "
          + ", ".join(f"{m} {fit_s[m] / len(devices):.2f} s" for m in columns) + ")")
    print("(forest-cv time includes its grid search; +others reuses the chosen settings; "
          "default includes its jackknife interval calibration)")
    names = ("forest", "forest-cv", "+others", "onehot-lin", "additive", "default")
    for name in [m for m in names if m in columns]:
        hits = [d for d, (r, w) in zip(devices, summary[name]) if r >= 0.98 and w >= 90]
        met = [d for d, (r, _), c in zip(devices, summary[name], ceilings) if _meets(r, c[0])]
        met_fit = [d for d, (r, _), c in zip(devices, summary[name], ceilings) if _meets(r, c[1])]
        print(f"{name} meets rho >= 0.98 and >= 90% within ±10% on {len(hits)}/{len(devices)} "
              f"devices; the target rho >= min(0.98, rho-max - 0.01) on {len(met)}/{len(devices)}"
              + (" (with the other devices' traces)" if name == "+others" else "")
              + (f"; missed: {', '.join(d for d in devices if d not in met)}"
                 if 0 < len(met) < len(devices) else "")
              + f"; against rho-max* on {len(met_fit)}/{len(devices)}"
              + (f" (missed: {', '.join(d for d in devices if d not in met_fit)})"
                 if 0 < len(met_fit) < len(devices) else ""))
    interval_table(devices, Y[test_c], dict(intervals))
    return all_pred


def interval_table(devices: list[str], Y_test: np.ndarray, found: dict[str, dict[str, Any]]) -> None:
    """Print coverage and mean relative width of 80/90/95% intervals on the test archs:
    conformal intervals of ``default`` (jackknife calibration, as ``ArchPredictor.fit``)
    against the tree-spread intervals of ``forest`` (one-sigma spread read as Gaussian on the
    log scale). Counts within ±2 points are given for all devices and, apart, for the columns
    recorded in whole ms (ties: many architectures share one measured value)."""
    levels = "".join(f" | {c:.0%} cov  width" for c in COVERAGES)
    header = f"{'device':18s} | {'model':10s}{levels}"
    print(f"\nPrediction intervals on the test archs (never seen in fitting or calibration): "
          f"coverage % and mean relative width %\n{header}\n{'-' * len(header)}")
    hits = {(m, c): 0 for m in ("conformal", "tree") for c in COVERAGES}
    worst = {(m, c): 0.0 for m in ("conformal", "tree") for c in COVERAGES}
    got: dict[tuple[str, float], list[float]] = {(m, c): [] for m in ("conformal", "tree") for c in COVERAGES}
    whole = [bool(np.all(np.mod(Y_test[:, j], 1.0) == 0)) for j in range(len(devices))]
    for j, device in enumerate(devices):
        entry = found[device]
        y = Y_test[:, j]
        for label, (mean, std) in (("conformal", entry["default"]), ("tree", entry["forest"])):
            cells = []
            for c in COVERAGES:
                lo, hi = (entry["calibration"].interval(mean, std, c) if label == "conformal"
                          else gaussian_interval(mean, std, c))
                r = coverage_report(y, lo, hi, mean)
                off = r["coverage_pct"] - 100 * c
                hits[(label, c)] += abs(off) <= 2.0
                got[(label, c)].append(r["coverage_pct"])
                worst[(label, c)] = max(worst[(label, c)], abs(off))
                cells.append(f" | {r['coverage_pct']:7.1f} {r['width_pct']:6.1f}")
            print(f"{device:18s} | {label:10s}{''.join(cells)}")
    fresh_split_reference(Y_test, found)
    for label in ("conformal", "tree"):
        print(f"{label}: coverage within ±2 points of nominal on "
              + ", ".join(f"{hits[(label, c)]}/{len(devices)} devices at {c:.0%} (worst {worst[(label, c)]:.1f})"
                          for c in COVERAGES))
        for part, keep in (("whole-ms", True), ("other", False)):
            mine = [i for i, w in enumerate(whole) if w == keep]
            if mine and len(mine) < len(devices):
                print(f"  {part} columns ({len(mine)}): " + ", ".join(
                    f"{sum(abs(got[(label, c)][i] - 100 * c) <= 2.0 for i in mine)}/{len(mine)} at "
                    f"{c:.0%} (mean {np.mean([got[(label, c)][i] for i in mine]):.1f})" for c in COVERAGES))
        print(f"  mean coverage: " + ", ".join(f"{np.mean(got[(label, c)]):.1f}% at {c:.0%}"
                                              for c in COVERAGES))


def fresh_split_reference(Y_test: np.ndarray, found: dict[str, dict[str, Any]],
                           n_cal: int = 900, seed: int = 0) -> None:
    """Print what a calibration the final model never saw would give (a reference, not a
    method: it spends measured architectures that the fit did not use): split-conformal scores
    of the default model on ``n_cal`` random test architectures, coverage on the remaining ones.
    The jackknife scores describe models fitted on the same draw of training rows; this one
    also sees how lucky the final model's own draw was."""
    from costmeter.predictors.estimators.arch import ArchPredictor

    n = Y_test.shape[0]
    if n < 2 * n_cal:
        return
    order = np.random.default_rng(seed).permutation(n)
    cal, rest = order[:n_cal], order[n_cal:]
    hits = {c: 0 for c in COVERAGES}
    for j, entry in enumerate(found.values()):
        mean, std = entry["default"]
        fitted = calibrate_split(mean[cal], std[cal], Y_test[cal, j], floor=ArchPredictor().conformal_floor)
        for c in COVERAGES:
            lo, hi = fitted.interval(mean[rest], std[rest], c)
            hits[c] += abs(coverage_report(Y_test[rest, j], lo, hi, mean[rest])["coverage_pct"] - 100 * c) <= 2.0
    print(f"reference, split-conformal on {n_cal} test archs the fit never saw (scored on the other "
          f"{len(rest)}): within ±2 points on " + ", ".join(
              f"{hits[c]}/{Y_test.shape[1]} at {c:.0%}" for c in COVERAGES))


SOURCE_MODELS = ("default", "previous")


def latency_model(space: str, kind: str = "default", **settings: Any) -> Any:
    """Unfitted latency model of one device: ``default`` is the space's
    ``arch.default_regressor`` (what ``bench predictor fit`` fits); ``previous`` the earlier
    default, kept for comparison -- a ridge on the one-hot columns alone times a forest
    correction that is not shrunk. ``settings``: passed on (``n_estimators``, ``n_jobs``,
    ``features``, ...)."""
    if kind not in SOURCE_MODELS:
        raise ValueError(f"unknown model {kind!r}: use one of {', '.join(SOURCE_MODELS)}")
    if kind == "previous":
        return AdditiveForest(linear_features=list(get_space(space).onehot_feature_names()), **settings)
    return default_regressor(space, **settings)


def source_predictions(space: str, F: Any, Y: np.ndarray, folds: int, n_jobs: int,
                       model: str = "default") -> np.ndarray:
    """Out-of-fold predictions (archs x devices, ms) of every device's ``model`` (see
    :func:`latency_model`; 32 trees), fitted on all of that device's traces (``folds``-fold,
    so no architecture is predicted by a model that saw it): what a user holding the other
    devices' traces can predict for an architecture they never measured."""
    from sklearn.model_selection import KFold

    out = np.zeros_like(Y)
    for tr, te in KFold(folds, shuffle=True, random_state=0).split(F):
        for j in range(Y.shape[1]):
            est = latency_model(space, model, n_estimators=32, n_jobs=n_jobs)
            out[te, j] = est.fit(F.iloc[tr], Y[tr, j]).predict(F.iloc[te])
    return out


def cached_source_predictions(cache: Path | None, space: str, F: Any, Y: np.ndarray, folds: int,
                              n_jobs: int, model: str = "default") -> np.ndarray:
    """:func:`source_predictions`, kept in ``cache`` (an ``.npz`` file recording the space,
    model and folds) between runs; a cache made with other settings is an error, not reused."""
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            made = (str(stored["space"]), str(stored["model"]), int(stored["folds"]))
            P = stored["predictions"]
        if made != (space, model, folds) or P.shape != Y.shape:
            raise SystemExit(f"error: {cache} holds {made[1]} source predictions for {made[0]} "
                             f"({made[2]} folds, shape {P.shape}); pass another --sources-cache "
                             f"for {model} on {space} ({folds} folds)")
        return P
    P = source_predictions(space, F, Y, folds, n_jobs, model)
    if cache is not None:
        np.savez(cache, predictions=P, space=space, model=model, folds=folds)
    return P


def few_shot(args: Any, space: str, F: Any, archs: list[str], devices: list[str], Y: np.ndarray,
             valid: np.ndarray, all_pred: np.ndarray) -> None:
    """Print the few-shot table: K target points + the other devices' predictors."""
    n = len(archs)
    started = time.perf_counter()
    cache = Path(args.sources_cache) if args.sources_cache else None
    P = cached_source_predictions(cache, space, F, Y, args.source_folds, args.n_jobs, args.source_model)
    logs = np.log(np.maximum(P, 1e-9))
    pool = np.flatnonzero(valid)
    lookup = {a: i for i, a in enumerate(archs)}
    fixed = {k: np.array([lookup[a] for a in reference_architectures(space, k=k, seed=args.seed, pool=archs)])
             for k in args.ks}
    row_ids = np.arange(n)[:, None]
    print(f"\nFew-shot: K architectures measured on the target + the other devices' {args.source_model} "
          f"models, each fitted on all of its device's traces ({args.source_folds}-fold out-of-fold predictions; "
          f"{time.perf_counter() - started:.0f} s). Spearman rho on the valid archs not measured.\n"
          "fixed: K spread over MACs (the same for every device); chosen: K chosen for the most "
          "information about the target given the sources (informative_rows).\n"
          "own: the target's own model fitted on all its other traces (a ceiling); blend-all: the "
          "non-negative blend fitted on every architecture (the blend's ceiling).")
    cols = [f"{kind} K={k}" for k in args.ks for kind in ("fixed", "chosen")] + [
        f"hw-out K={args.k}", f"scratch K={args.k}"]
    header = f"{'target':18s} | {'own':>6s} | {'blend-all':>9s}" + "".join(f" | {c:>11s}" for c in cols)
    print(f"{header}\n{'-' * len(header)}")
    results: dict[str, list[float]] = {c: [] for c in ["own", "blend-all", *cols]}
    for j, device in enumerate(devices):
        y = Y[:, j]
        line = {"own": metrics(y[pool], P[pool, j])["spearman"]}
        lodo = [i for i in range(len(devices)) if i != j]
        blend = FewShotTransfer({devices[i]: _Precomputed(P[:, i]) for i in lodo})
        line["blend-all"] = metrics(y[pool], blend.fit(row_ids[pool], y[pool]).predict(row_ids[pool]))["spearman"]
        for k in args.ks:
            chosen = informative_rows(logs[:, lodo], k, candidates=pool)
            for kind, refs in (("fixed", fixed[k]), ("chosen", chosen)):
                evaluate = np.setdiff1d(pool, refs)
                fs = FewShotTransfer({devices[i]: _Precomputed(P[:, i]) for i in lodo}).fit(row_ids[refs], y[refs])
                line[f"{kind} K={k}"] = metrics(y[evaluate], fs.predict(row_ids[evaluate]))["spearman"]
            if k == args.k:
                keep = [i for i in lodo if hardware_of(devices[i]) != hardware_of(device)]
                refs = informative_rows(logs[:, keep], k, candidates=pool)
                evaluate = np.setdiff1d(pool, refs)
                fs = FewShotTransfer({devices[i]: _Precomputed(P[:, i]) for i in keep}).fit(row_ids[refs], y[refs])
                line[f"hw-out K={k}"] = metrics(y[evaluate], fs.predict(row_ids[evaluate]))["spearman"]
                refs = fixed[k]
                evaluate = np.setdiff1d(pool, refs)
                scratch = ModelForest(n_jobs=args.n_jobs, min_samples_leaf=1).fit(F.iloc[refs], y[refs])
                line[f"scratch K={k}"] = metrics(y[evaluate], scratch.predict(F.iloc[evaluate]))["spearman"]
        for c, v in line.items():
            results[c].append(v)
        print(f"{device:18s} | {line['own']:6.3f} | {line['blend-all']:9.3f}"
              + "".join(f" | {line[c]:11.3f}" for c in cols))
    for label, fn in (("mean", np.mean), ("min", np.min)):
        print(f"{label:18s} | {fn(results['own']):6.3f} | {fn(results['blend-all']):9.3f}"
              + "".join(f" | {fn(results[c]):11.3f}" for c in cols))
    print(f"(target at K={args.k}: mean >= 0.975 and no device below 0.92, leaving one device out)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None,
                        help="latency table (default: ../shared/data/<space>_latency.csv.gz)")
    parser.add_argument("--space", choices=SPACES, default="nb201")
    parser.add_argument("--train", type=int, default=900, help="training architectures per device")
    parser.add_argument("--k", type=int, default=10, help="few-shot K for the hw-out and scratch columns")
    parser.add_argument("--ks", default="5,10,20", help="few-shot K values")
    parser.add_argument("--source-folds", type=int, default=5, help="folds of the source models")
    parser.add_argument("--only", choices=["per-device", "intervals", "few-shot"], default=None,
                        help="one part; intervals: per-device with the forest and the default model only")
    parser.add_argument("--source-model", choices=SOURCE_MODELS, default="default",
                        help="few-shot source models: the space's default or the previous one")
    parser.add_argument("--sources-cache", default=None,
                        help="an .npz file keeping the few-shot source predictions between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--no-cv", action="store_true",
                        help="skip forest-cv and +others (the grid search is most of the time)")
    parser.add_argument("--devices", default=None, help="comma-separated subset of devices")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in str(args.ks).split(",")]
    path = Path(args.path) if args.path else DATA / f"{args.space}_latency.csv.gz"

    t0 = time.perf_counter()
    archs, rows, devices, Y = load(path, args.space)
    if args.devices:
        keep = [devices.index(d) for d in args.devices.split(",")]
        devices, Y = [devices[i] for i in keep], Y[:, keep]
    F = get_space(args.space).features(archs)
    valid = (F["connected"].to_numpy() > 0 if "connected" in F.columns
             else np.ones(len(archs), dtype=bool))
    n = len(archs)
    print(f"{n} architectures x {len(devices)} devices from {path.name} ({args.space}; read + "
          f"features {time.perf_counter() - t0:.1f} s); {int((~valid).sum())} disconnected "
          "cells excluded from the main metrics")
    all_pred = (per_device(args, args.space, F, archs, rows, devices, Y, valid)
                if args.only != "few-shot" else None)
    if args.only not in ("per-device", "intervals"):
        few_shot(args, args.space, F, archs, devices, Y, valid, all_pred)

    if args.only is None:
        fit_times(args, F, Y, n, t0)
    return 0


def fit_times(args: Any, F: Any, Y: np.ndarray, n: int, t0: float) -> None:
    """Print the fit time of the forest and the one-hot reference on all traces of one device."""
    onehot = list(get_space(args.space).onehot_feature_names())
    y0 = Y[:, 0]
    start = time.perf_counter()
    ModelForest(n_jobs=args.n_jobs).fit(F, y0)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    ModelForest(n_jobs=args.n_jobs, n_estimators=100, max_features=1.0, min_samples_leaf=1,
                features=onehot, log_target=False).fit(F, y0)
    fit_ref_s = time.perf_counter() - start
    print(f"\nFit on {n} traces ({args.n_jobs} jobs): forest {fit_s:.1f} s, onehot-RF "
          f"{fit_ref_s:.1f} s; total benchmark {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
