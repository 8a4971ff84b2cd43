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
calibrates on 900 test architectures instead (rows the fit never saw). ``--coverage-draws R``
repeats the interval check over R seeded draws of the training architectures and sets each
device's coverage, averaged over the draws, against the spread that exchangeability alone gives
(``benchmarks/coverage_draws.py``; ``--only coverage`` prints only that, 20 draws unless told).

Few-shot (``benchmarks/few_shot_table.py``): for each device in turn as target, K architectures
measured on it -- ``fixed`` (chosen from the file's architectures by MACs quantiles, the same for
every device) or ``chosen`` (most information about the target given the sources) -- and the
models of the other devices as sources (``--source-model``: the space's default model,
``accuracy_tables.latency_model``, or the previous one; out-of-fold predictions, kept in
``--sources-cache``); ``hw-out`` also drops the same GPU at other batch sizes from the sources;
``scratch`` fits a forest on the K points alone. ``rho-max`` beside them is the device's noise
ceiling over the few-shot pool; each column is counted against the literal target (mean >= 0.975,
no device below 0.92) and against rho >= min(0.98, rho-max) - 0.01 per device. Helpers (data,
noise ceilings, intervals, source models) live in ``benchmarks/accuracy_tables.py``.

Run: ``python benchmarks/predictor_accuracy.py [PATH] [--space nb201|fbnet] [--train 900] [--k 10]
[--n-jobs 2] [--only few-shot --sources-cache FILE.npz]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_tables import (  # noqa: E402
    DATA,
    SOURCE_MODELS,
    SPACES,
    Precomputed,
    cached_source_predictions,
    drift_adjusted,
    duplicate_pairs,
    hardware_of,
    interval_table,
    latency_model,
    load,
    noise_ceiling,
    noise_from_additive_fit,
    quantisation_ceiling,
)
from coverage_draws import run_check  # noqa: E402
from few_shot_table import few_shot  # noqa: E402

from costmeter.models.spaces import get_space  # noqa: E402
from costmeter.predictors.estimators.arch import ArchPredictor  # noqa: E402
from costmeter.predictors.estimators.conformal import calibrate_jackknife  # noqa: E402
from costmeter.predictors.estimators.evaluate import metrics  # noqa: E402
from costmeter.predictors.estimators.fewshot import FewShotTransfer  # noqa: E402
from costmeter.predictors.estimators.forest import FlopsLinear, ModelForest  # noqa: E402

FOREST_GRID: dict[str, list[Any]] = {"algorithm": ["random_forest", "extra_trees"],
                                     "min_samples_leaf": [1, 2, 4],
                                     "max_features": [0.33, 0.6, 1.0]}


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
        "default": lambda: latency_model(space, "default", n_jobs=args.n_jobs),
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
                sources = {d: Precomputed(Y[:, i]) for i, d in enumerate(devices) if i != j}
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
        noise, dup10, rho_max, rho_fit = noise_ceiling(y, pairs, onehot_all, test_c, args.seed)
        ceilings.append((rho_max, rho_fit))
        rho_q = quantisation_ceiling(y[test_c], args.seed)
        lag1, adj = drift_adjusted(y[test_c], all_pred[test_c, j], rows[test_c])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None,
                        help="latency table (default: ../shared/data/<space>_latency.csv.gz)")
    parser.add_argument("--space", choices=SPACES, default="nb201")
    parser.add_argument("--train", type=int, default=900, help="training architectures per device")
    parser.add_argument("--k", type=int, default=10, help="few-shot K for the hw-out and scratch columns")
    parser.add_argument("--ks", default="5,10,20", help="few-shot K values")
    parser.add_argument("--source-folds", type=int, default=5, help="folds of the source models")
    parser.add_argument("--only", choices=["per-device", "intervals", "few-shot", "coverage"],
                        default=None, help="one part; intervals: per-device with the forest and "
                        "the default model only; coverage: the repeated-draw check only")
    parser.add_argument("--coverage-draws", type=int, default=0,
                        help="R: the interval check repeated over R seeded training draws")
    parser.add_argument("--mapie-draws", type=int, default=0,
                        help="MAPIE's CV+ and jackknife+-after-bootstrap on the first R draws (slow)")
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
    if not 0 <= args.mapie_draws <= max(args.coverage_draws, 20 if args.only == "coverage" else 0):
        print(f"error: --mapie-draws {args.mapie_draws} needs 0 <= it <= --coverage-draws "
              f"({args.coverage_draws}); pass --coverage-draws R first", file=sys.stderr)
        return 2
    if args.coverage_draws < 0:
        print(f"error: --coverage-draws must be >= 0, got {args.coverage_draws}", file=sys.stderr)
        return 2
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
    if args.only not in ("few-shot", "coverage"):
        per_device(args, args.space, F, archs, rows, devices, Y, valid)
    if args.coverage_draws or args.only == "coverage":
        run_check(args.space, F, Y, valid, devices, args.train, args.coverage_draws or 20,
                  args.seed, args.n_jobs, args.mapie_draws)
    if args.only not in ("per-device", "intervals", "coverage"):
        few_shot(args, args.space, F, archs, devices, Y, valid)

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
