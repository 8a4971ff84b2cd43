"""Latency-predictor accuracy on real NAS-Bench-201 measurements (prints tables).

Data: the NB201 latency table of the HELP data release (Lee et al., NeurIPS 2021, MIT):
15,625 architectures x 21 devices. Default path ``../shared/data/nb201_latency.csv.gz``
relative to the repository; pass another path (any file in the same layout) as argument.

Per device: ``--train`` (900) random architectures train, all others test. Models:
``forest`` (ModelForest on the analytic NB201 features, log target), ``onehot-RF`` (random
forest on the 30-column one-hot cell encoding, the classic reference) and ``FLOPs-lin``
(latency linear in MACs), each fitted on the device's own training architectures only;
``forest-cv`` is ``forest`` with its algorithm, leaf size and feature fraction chosen per device
by 5-fold cross-validation on the training architectures alone (mean squared log error over
``FOREST_GRID``; the test architectures play no part in the choice).
``+others`` (a separate row, not a replacement: it uses more data) is the setting of a user
who already holds traces of the other 20 devices (every architecture): ``FewShotTransfer`` with
the other devices' measured latencies as sources, K = ``--train`` target points, and the
device's ``forest-cv`` as ``local`` model (weighted by its out-of-fold predictions).
Metrics on the test cells whose output is connected to the input
(the ~2% disconnected cells have near-zero latency on some devices, which breaks relative
metrics); the ``all`` columns include them.

Diagnostics (not predictors): measurement noise from duplicates. When edge 1->2 is ``none``,
nodes 1 and 2 are interchangeable: swapping (0->1, 1->3) with (0->2, 2->3) gives the same
network (same operations, same graph) under another index; the connected pairs (1,464 in the
full table) were measured separately. On 1080ti_256 and 2080ti_256 a pair differs by ~0.1%, so
a pair is one workload and its spread elsewhere is measurement noise. ``noise%`` is the std of
their log ratio / sqrt(2) (one measurement's relative noise, drift included), ``dup±10`` the
share of pairs where one measurement is within ±10% of the other, and ``rho-max`` an estimate
of the Spearman rho that even an exact model of each network's latency would reach against such
measurements: the measured latencies of the test cells stand in for the true ones (slightly
more spread out than those, so the estimate leans high), multiplied by noise drawn from the
pairs' log ratios / sqrt(2) (both signs; mean of 5 draws). It assumes the noise does not depend
on the architecture (the measurement order is not something a model of the architecture should
learn).
``lag1`` is the autocorrelation of the forest's log residuals
in NAS-Bench-201 index order. Neighbouring indices hold unrelated architectures, so a high
value means the error follows the index -- most likely the order of measurement, i.e. a slow
drift of the device that no architecture-based model can predict. ``drift-adj`` divides that
drift out (median residual of the 50 index neighbours of each test point, the point itself
excluded) to show what the same predictions reach against drift-free targets.

Few-shot: for each device in turn as target, K (10) fixed reference architectures (chosen
from the file's architectures by MACs quantiles, the same for every device) measured on
it and the forests of the other devices (``LODO``); ``hw-out`` also drops the same GPU at other
batch sizes from the sources; ``scratch`` fits a forest on the K points alone.

Run: ``python benchmarks/predictor_accuracy.py [PATH] [--train 900] [--k 10] [--n-jobs 2]``.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from costmeter.predictors.estimators.evaluate import metrics
from costmeter.predictors.estimators.fewshot import FewShotTransfer, reference_architectures
from costmeter.predictors.estimators.forest import FlopsLinear, ModelForest
from costmeter.models.spaces import nb201
from costmeter.results.traces import read_traces

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201_latency.csv.gz"
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


def duplicate_pairs(archs: list[str]) -> np.ndarray:
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
    from scipy.stats import spearmanr

    if len(pairs) < 2:
        return float("nan"), float("nan"), float("nan")
    log_ratio = np.log(y[pairs[:, 0]] / y[pairs[:, 1]])
    noise = float(np.std(log_ratio) / np.sqrt(2))
    within = float(np.mean(np.abs(np.exp(log_ratio) - 1) <= 0.1 + 1e-12) * 100)
    rng = np.random.default_rng(seed)
    pool = np.concatenate([log_ratio, -log_ratio]) / np.sqrt(2)
    rhos = [spearmanr(proxy_ms, proxy_ms * np.exp(rng.choice(pool, proxy_ms.size)))[0]
            for _ in range(draws)]
    return noise * 100, within, float(np.mean(rhos))


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


def load(path: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(archs in file order, NB201 row order, device names, latency matrix archs x devices)."""
    frame = read_traces(path, space="nb201").frame
    wide = frame.pivot_table(index=["source_row", "arch"], columns="device", values="latency_ms")
    wide = wide.sort_index(level="source_row")
    archs = list(wide.index.get_level_values("arch"))
    rows = np.asarray(wide.index.get_level_values("source_row"))
    return archs, rows, [str(c) for c in wide.columns], wide.to_numpy(dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--train", type=int, default=900, help="training architectures per device")
    parser.add_argument("--k", type=int, default=10, help="target architectures for few-shot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    archs, rows, devices, Y = load(Path(args.path))
    F = nb201.features(archs)
    connected = F["connected"].to_numpy() > 0
    n = len(archs)
    print(f"{n} architectures x {len(devices)} devices from {Path(args.path).name} "
          f"(read + features {time.perf_counter() - t0:.1f} s); {int((~connected).sum())} "
          f"disconnected cells excluded from the main metrics")
    order = np.random.default_rng(args.seed).permutation(n)
    train, test = np.sort(order[: args.train]), np.sort(order[args.train:])
    test_c = test[connected[test]]
    onehot = list(nb201.onehot_feature_names())
    names = list(nb201.feature_names())
    models = {
        "forest": lambda: ModelForest(n_jobs=args.n_jobs),
        "onehot-RF": lambda: ModelForest(features=onehot, log_target=False, max_features=1.0,
                                         min_samples_leaf=1, n_estimators=100, n_jobs=args.n_jobs),
        "FLOPs-lin": lambda: FlopsLinear(feature="macs_total"),
    }
    X_rows = F.assign(row=np.arange(n))  # features + row number (for the traces of others)
    pairs = duplicate_pairs(archs)
    columns = [*models, "forest-cv", "+others"]
    header = (f"{'device':18s}" + "".join(f" | {m:>9s} rho  ±10%" for m in columns)
              + " | all rho  ±10% | noise% dup±10 rho-max | lag1 | drift-adj rho  ±10%")
    print(f"\nPer device: {args.train} train, {len(test_c)} connected test archs "
          f"(seed {args.seed})\n{header}\n{'-' * len(header)}")
    all_pred = np.zeros_like(Y)
    summary: dict[str, list[tuple[float, float]]] = {m: [] for m in columns}
    fit_s: dict[str, float] = {m: 0.0 for m in columns}
    for j, device in enumerate(devices):
        y = Y[:, j]
        cells = []
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
                pred = est.predict(F)
            if name == "forest":
                all_pred[:, j] = pred
            m = metrics(y[test_c], pred[test_c])
            summary[name].append((m["spearman"], m["within_10_pct"]))
            cells.append(f" | {m['spearman']:13.3f} {m['within_10_pct']:5.1f}")
        m_all = metrics(y[test], all_pred[test, j])
        noise, dup10, rho_max = noise_from_duplicates(y, pairs, y[test_c], args.seed)
        lag1, adj = _drift_adjusted(y[test_c], all_pred[test_c, j], rows[test_c])
        print(f"{device:18s}{''.join(cells)} | {m_all['spearman']:7.3f} {m_all['within_10_pct']:5.1f}"
              f" | {noise:6.1f} {dup10:6.1f} {rho_max:7.3f}"
              f" | {lag1:4.2f} | {adj['spearman']:13.3f} {adj['within_10_pct']:5.1f}")
    for label, fn in (("mean", np.mean), ("min", np.min)):
        cells = "".join(f" | {fn([v[0] for v in summary[m]]):13.3f} {fn([v[1] for v in summary[m]]):5.1f}"
                        for m in columns)
        print(f"{label:18s}{cells}")
    print(f"({len(pairs)} duplicate pairs; fit time per device on {args.train} archs, "
          f"{args.n_jobs} jobs: " + ", ".join(f"{m} {fit_s[m] / len(devices):.2f} s" for m in columns)
          + ")")
    print("(forest-cv time includes its grid search; +others reuses the chosen settings)")
    for name in ("forest", "forest-cv", "+others"):
        hits = [d for d, (r, w) in zip(devices, summary[name]) if r >= 0.98 and w >= 90]
        print(f"{name} meets rho >= 0.98 and >= 90% within ±10% on {len(hits)}/{len(devices)} "
              "devices" + (" (with the other devices' traces)" if name == "+others" else ""))

    # few-shot transfer
    refs = reference_architectures("nb201", k=args.k, seed=args.seed, pool=archs)
    lookup = {a: i for i, a in enumerate(archs)}
    ref_rows = np.array([lookup[a] for a in refs])
    eval_rows = np.setdiff1d(np.flatnonzero(connected), ref_rows)
    row_ids = np.arange(n)[:, None]
    print(f"\nFew-shot, K={args.k} reference architectures per target device "
          f"(Spearman rho on {len(eval_rows)} connected archs)\n"
          f"{'target':18s} | {'LODO':>6s} | {'hw-out':>6s} | {'scratch':>7s} | top sources (LODO)")
    results: dict[str, list[float]] = {"LODO": [], "hw-out": [], "scratch": []}
    for j, device in enumerate(devices):
        y = Y[:, j]
        line = []
        for label, keep in (("LODO", lambda d, t=device: d != t),
                            ("hw-out", lambda d, t=device: hardware_of(d) != hardware_of(t))):
            sources = {d: _Precomputed(all_pred[:, i]) for i, d in enumerate(devices) if keep(d)}
            fs = FewShotTransfer(sources).fit(row_ids[ref_rows], y[ref_rows])
            rho = metrics(y[eval_rows], fs.predict(row_ids[eval_rows]))["spearman"]
            results[label].append(rho)
            line.append(rho)
            if label == "LODO":
                w = fs.weights_
                top = ", ".join(f"{k} {v:.2f}" for k, v in w[w > 0].head(3).items())
        scratch = ModelForest(n_jobs=args.n_jobs, min_samples_leaf=1).fit(F.iloc[ref_rows], y[ref_rows])
        rho_s = metrics(y[eval_rows], scratch.predict(F.iloc[eval_rows]))["spearman"]
        results["scratch"].append(rho_s)
        print(f"{device:18s} | {line[0]:6.3f} | {line[1]:6.3f} | {rho_s:7.3f} | {top}")
    print(f"{'mean':18s} | {np.mean(results['LODO']):6.3f} | {np.mean(results['hw-out']):6.3f} | "
          f"{np.mean(results['scratch']):7.3f} |")

    # fit time on all traces of one device
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
