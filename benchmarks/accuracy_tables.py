"""Building blocks of ``benchmarks/predictor_accuracy.py`` (its docstring explains the tables):
reading a latency table, the measurement-noise ceilings, drift, the interval table, and the
per-device source models that few-shot transfer and ``benchmarks/new_device_cost.py`` share.

Both scripts run the same per-device model through :func:`latency_model`, whose ``default`` is
the space's ``arch.default_regressor`` -- the one place that says what the default is.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.models.spaces import fbnet, get_space, nb201
from costmeter.predictors.estimators.additive import AdditiveForest
from costmeter.predictors.estimators.arch import default_regressor
from costmeter.predictors.estimators.conformal import (
    COVERAGES,
    calibrate_split,
    coverage_report,
    gaussian_interval,
)
from costmeter.predictors.estimators.evaluate import metrics
from costmeter.results.traces import read_traces

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPACES = ("nb201", "fbnet")
_GPU_BATCH = re.compile(r"^(1080ti|2080ti|titan_rtx|titanx|titanxp)_(\d+)$")
DRIFT_WINDOW = 51


def hardware_of(device: str) -> str:
    """Physical device of a column: GPU columns carry the batch size (``titanx_32``)."""
    m = _GPU_BATCH.match(device)
    return m.group(1) if m else device


class Precomputed:
    """Source predictor whose predictions for every architecture were computed once;
    ``X`` is a one-column array of architecture row numbers (same maths, less CPU)."""

    def __init__(self, latency_ms: np.ndarray) -> None:
        self.latency_ms = latency_ms

    def predict(self, X: Any) -> np.ndarray:
        """Latency (ms) of the rows ``X`` (row numbers, or a table with a ``row`` column)."""
        rows = X["row"] if hasattr(X, "columns") else X
        return self.latency_ms[np.asarray(rows, dtype=np.int64).ravel()]


def duplicate_pairs(space: str, archs: list[str]) -> np.ndarray:
    """Row pairs ``(n_pairs, 2)`` of architectures that are one workload (see predictor_accuracy's docstring)."""
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


def noise_ceiling(y: np.ndarray, pairs: np.ndarray, onehot: np.ndarray, rows: np.ndarray,
                  seed: int = 0) -> tuple[float, float, float, float]:
    """(noise %, % of duplicate pairs within ±10%, ``rho-max``, ``rho-max*``) of latencies ``y``
    (ms) over the architectures ``rows``: from the duplicate ``pairs`` when there are at least
    two (``rho-max*`` is then ``rho-max``), else from the additive fit's cross-validated
    residuals (:func:`noise_from_additive_fit`; the pairs' share is NaN)."""
    if len(pairs) >= 2:
        noise, within, rho_max = noise_from_duplicates(y, pairs, y[rows], seed)
        return noise, within, rho_max, rho_max
    noise, rho_max, rho_fit = noise_from_additive_fit(y, onehot, rows, seed)
    return noise, float("nan"), rho_max, rho_fit


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


def drift_adjusted(y: np.ndarray, pred: np.ndarray, order: np.ndarray) -> tuple[float, dict]:
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
    model and folds) between runs; a cache made with other settings is an error (exit 2), not
    reused."""
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            made = (str(stored["space"]), str(stored["model"]), int(stored["folds"]))
            P = stored["predictions"]
        if made != (space, model, folds) or P.shape != Y.shape:
            print(f"error: {cache} holds {made[1]} source predictions for {made[0]} ({made[2]} "
                  f"folds, shape {P.shape}); pass another --sources-cache for {model} on {space} "
                  f"({folds} folds)", file=sys.stderr)
            raise SystemExit(2)
        return P
    P = source_predictions(space, F, Y, folds, n_jobs, model)
    if cache is not None:
        np.savez(cache, predictions=P, space=space, model=model, folds=folds)
    return P
