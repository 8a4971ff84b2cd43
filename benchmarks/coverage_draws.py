"""Repeated-draw coverage check of the prediction intervals (``predictor_accuracy.py
--coverage-draws R``).

One draw of the training architectures gives each device one coverage figure per level, and
that figure moves with the draw even for a method that is exactly right: a conformal
guarantee holds on average over the calibration rows. With ``n`` calibration scores the
interval between the ``k_lo``-th and ``k_hi``-th of them covers a share of new rows that is
Beta-distributed (sd about 1.3 points at 80% for n = 900), and the test rows add their own
binomial error. So a device off by more than 2 points in one draw says little; a device whose
coverage *averaged over draws* is off says that the method is.

For ``R`` seeded draws of the training architectures (draw ``r`` uses seed ``seed + r``, so
draw 0 is the single-draw table's), each device's default model is fitted once, and every
interval below is computed from that one fit:

- ``jackknife`` -- the library default (``ArchPredictor``'s calibration and floor: the
  matched jackknife of ``AdditiveForest.jackknife``);
- ``previous`` -- the jackknife of the model's own out-of-bag trees alone (about 24 of 64 per
  row), the default before;
- variants of the same scores that differ in one setting (the spread floor, no normalisation,
  a half-step widening of columns recorded in whole ms);
- ``sub-ensemble`` (a diagnostic, not a method): ``previous`` scores, each test architecture
  predicted by a random subset of the trees, each tree kept with the probability that a
  training row is out of its bootstrap sample -- the calibration rows' situation. If it covers
  where ``previous`` does not, the full forest's test predictions are not distributed like the
  calibration rows' out-of-bag ones;
- ``split, fresh`` (a reference): split-conformal scores of the final model on ``n`` test
  architectures the fit never saw, coverage on the others.

The exchangeability reference is simulated, not assumed: a population of ``n + m``
exchangeable continuous scores, ``n`` of them drawn as calibration rows, the interval's
coverage counted on the other ``m`` -- the spread that the draw and the test rows give a
method that is exactly right, and the number of devices it would put outside ±2 points.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from costmeter.predictors.estimators.conformal import (
    COVERAGES,
    ConformalCalibration,
    conformal_quantile,
)

TOLERANCE_POINTS = 2.0
REFERENCE_SIMS = 4000
PREVIOUS_FLOOR = 1.0
"""The spread floor (share of the median calibration spread) of the ``previous`` calibration."""


def exchangeable_coverage(n_cal: int, n_test: int, sims: int = REFERENCE_SIMS,
                          seed: int = 0) -> np.ndarray:
    """Coverage (%) of equal-tailed conformal intervals at each of :data:`COVERAGES`, shape
    ``(sims, levels)``, when ``n_cal`` calibration and ``n_test`` test scores are drawn without
    replacement from one population of exchangeable continuous scores (ranks ``0..N-1``)."""
    rng = np.random.default_rng(seed)
    total = n_cal + n_test
    out = np.empty((sims, len(COVERAGES)))
    for s in range(sims):
        ranks = np.sort(rng.choice(total, n_cal, replace=False)).astype(np.float64)
        for c, level in enumerate(COVERAGES):
            high = conformal_quantile(ranks, (1 + level) / 2)
            low = -conformal_quantile(-ranks[::-1], (1 + level) / 2)
            if not math.isfinite(high):
                out[s, c] = 100.0
                continue
            inside = np.count_nonzero((ranks >= low) & (ranks <= high))
            out[s, c] = 100.0 * ((high - low + 1) - inside) / n_test
    return out


@dataclass
class DeviceFit:
    """What one fit of one device on one draw leaves for the intervals: log predictions and
    log spreads of the training rows without themselves (jackknife) and of the test rows (full
    forest, and a random out-of-bag-sized subset of its trees), the truths (ms), and which test
    rows the tables score (``valid``)."""

    jk_log: np.ndarray
    jk_spread: np.ndarray
    y_train: np.ndarray
    test_log: np.ndarray
    test_spread: np.ndarray
    sub_log: np.ndarray
    sub_spread: np.ndarray
    y_test: np.ndarray
    valid: np.ndarray
    whole_ms: bool
    oob_trees: np.ndarray
    weight: float
    prev_log: np.ndarray
    prev_spread: np.ndarray


def fit_device(model: Any, X_train: Any, y_train: np.ndarray, X_test: Any, y_test: np.ndarray,
               valid: np.ndarray, rng: np.random.Generator) -> DeviceFit:
    """Fit ``model`` (an unfitted ``AdditiveForest``, the default) and collect a :class:`DeviceFit`."""
    model.fit(X_train, y_train)
    jk_log, jk_spread = model.jackknife(X_train, y_train)
    model.set_params(matched_jackknife=False)
    prev_log, prev_spread = model.jackknife(X_train, y_train)
    test_log, test_spread = model.predict_log(X_test)
    arr = np.ascontiguousarray(X_test[list(model.feature_names_in_)].to_numpy(np.float32))
    trees = np.stack([t.predict(arr) for t in model.estimator_.estimator_.estimators_])
    weight = float(model.forest_weight_)
    base_log = test_log - weight * trees.mean(axis=0)
    keep = rng.random(trees.shape) < (1.0 - 1.0 / len(y_train)) ** len(y_train)
    count = np.maximum(keep.sum(axis=0), 1)
    sub_mean = np.where(keep, trees, 0.0).sum(axis=0) / count
    sub_var = np.where(keep, (trees - sub_mean) ** 2, 0.0).sum(axis=0) / count
    whole = bool(np.all(np.mod(y_train, 1.0) == 0) and np.all(np.mod(y_test, 1.0) == 0))
    oob = np.full(len(y_train), len(trees))
    for rows in model.estimator_.estimator_.estimators_samples_:
        oob[np.unique(rows)] -= 1
    return DeviceFit(jk_log, jk_spread, y_train, test_log, test_spread,
                     base_log + weight * sub_mean, np.sqrt(sub_var), y_test, valid, whole, oob, weight,
                     prev_log, prev_spread)


def _covered(fit: DeviceFit, cal: ConformalCalibration, pred_log: np.ndarray, spread: np.ndarray,
             half_step: bool = False, rows: np.ndarray | None = None) -> list[float]:
    rows = fit.valid if rows is None else rows
    out = []
    for c in COVERAGES:
        low, high = cal.bounds_log(pred_log[rows], spread[rows], c)
        lo_ms, hi_ms = np.exp(low), np.exp(high)
        if half_step and fit.whole_ms:
            lo_ms, hi_ms = lo_ms - 0.5, hi_ms + 0.5
        y = fit.y_test[rows]
        out.append(100.0 * float(np.mean((y >= lo_ms) & (y <= hi_ms))))
    return out


def _jackknife(floor: float, half_step: bool = False, sub: bool = False,
               normalised: bool = True, previous: bool = False) -> Callable[[DeviceFit], list[float]]:
    def coverage(fit: DeviceFit) -> list[float]:
        ones = np.ones_like
        jk_log, jk_spread = (fit.prev_log, fit.prev_spread) if previous else (fit.jk_log, fit.jk_spread)
        cal = ConformalCalibration(floor).fit(
            jk_log, jk_spread if normalised else ones(jk_spread), fit.y_train)
        pred, spread = (fit.sub_log, fit.sub_spread) if sub else (fit.test_log, fit.test_spread)
        return _covered(fit, cal, pred, spread if normalised else ones(spread), half_step)
    return coverage


def _all_rows(floor: float) -> Callable[[DeviceFit], list[float]]:
    def coverage(fit: DeviceFit) -> list[float]:
        cal = ConformalCalibration(floor).fit(fit.jk_log, fit.jk_spread, fit.y_train)
        return _covered(fit, cal, fit.test_log, fit.test_spread, rows=np.ones_like(fit.valid))
    return coverage


def _fresh_split(floor: float, n_cal: int) -> Callable[[DeviceFit], list[float]]:
    def coverage(fit: DeviceFit) -> list[float]:
        rows = np.flatnonzero(fit.valid)
        if len(rows) < 2 * n_cal:
            return [math.nan] * len(COVERAGES)
        order = np.random.default_rng(len(rows)).permutation(rows)
        cal_rows, rest = order[:n_cal], np.zeros(len(fit.valid), dtype=bool)
        rest[order[n_cal:]] = True
        cal = ConformalCalibration(floor).fit(fit.test_log[cal_rows], fit.test_spread[cal_rows],
                                              fit.y_test[cal_rows])
        return _covered(fit, cal, fit.test_log, fit.test_spread, rows=rest)
    return coverage


def interval_variants(default_floor: float, n_cal: int) -> dict[str, Callable[[DeviceFit], list[float]]]:
    """The intervals compared, by name (see the module docstring); ``default_floor``: the
    library's spread floor (``ArchPredictor().conformal_floor``)."""
    variants = {"jackknife": _jackknife(default_floor),
                "previous": _jackknife(PREVIOUS_FLOOR, previous=True)}
    for floor in sorted({PREVIOUS_FLOOR, 0.25, 0.0} - {default_floor}):
        variants[f"floor {floor:g}"] = _jackknife(floor)
    variants["unnormalised"] = _jackknife(default_floor, normalised=False)
    variants["half-step"] = _jackknife(default_floor, half_step=True)
    variants["sub-ensemble"] = _jackknife(PREVIOUS_FLOOR, sub=True, previous=True)
    variants["all test rows"] = _all_rows(default_floor)
    variants["split, fresh"] = _fresh_split(default_floor, n_cal)
    return variants


@dataclass
class DrawResult:
    """Coverage (%) per interval variant, shape ``(draws, devices, levels)``, with the fit time."""

    devices: list[str]
    coverage: dict[str, np.ndarray]
    whole_ms: list[bool]
    n_cal: int
    n_test: int
    fit_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def collect_draws(make_model: Callable[[], Any], F: Any, Y: np.ndarray, valid: np.ndarray,
                  devices: list[str], train_size: int, draws: int, seed: int,
                  default_floor: float, keep_fits: bool = False) -> DrawResult:
    """Fit each device's model on ``draws`` seeded draws of ``train_size`` rows of ``F``/``Y``
    (ms) and compute every variant's coverage on the other rows (``valid`` ones scored)."""
    n = len(F)
    variants = interval_variants(default_floor, train_size)
    cov = {name: np.full((draws, len(devices), len(COVERAGES)), np.nan) for name in variants}
    whole, fits, start = [False] * len(devices), [], time.perf_counter()
    n_test = 0
    for r in range(draws):
        order = np.random.default_rng(seed + r).permutation(n)
        train, test = np.sort(order[:train_size]), np.sort(order[train_size:])
        n_test = int(valid[test].sum())
        rng = np.random.default_rng(10_000 + seed + r)
        for j in range(len(devices)):
            fit = fit_device(make_model(), F.iloc[train], Y[train, j], F.iloc[test], Y[test, j],
                             valid[test], rng)
            whole[j] = fit.whole_ms
            for name, coverage in variants.items():
                cov[name][r, j] = coverage(fit)
            if keep_fits:
                fits.append((r, j, fit))
    return DrawResult(devices, cov, whole, train_size, n_test, time.perf_counter() - start,
                      {"fits": fits} if keep_fits else {})


def _misses(values: np.ndarray, level: float) -> np.ndarray:
    """Figures more than 2 points off ``level``; NaN (not measured) is neither a miss nor a hit."""
    return np.isfinite(values) & (np.abs(values - 100 * level) > TOLERANCE_POINTS)


def _within(values: np.ndarray, level: float) -> np.ndarray:
    return np.isfinite(values) & (np.abs(values - 100 * level) <= TOLERANCE_POINTS)


def print_draws(result: DrawResult, seed: int, detail: str = "jackknife") -> dict[str, Any]:
    """Print the per-device table of ``detail`` and one summary line per variant; return the
    summary figures (counts within ±2 points, single draw and averaged; expected misses)."""
    reference = exchangeable_coverage(result.n_cal, result.n_test, seed=seed)
    ref_sd = reference.std(axis=0)
    ref_miss = np.array([_misses(reference[:, c], lv).mean() for c, lv in enumerate(COVERAGES)])
    draws, n_dev = result.coverage[detail].shape[:2]
    print(f"\nCoverage over {draws} draws of the {result.n_cal} training archs (seeds {seed}.."
          f"{seed + draws - 1}; {result.n_test} scored test archs; fits {result.fit_s:.0f} s). "
          f"Exchangeability alone (simulated, {len(reference)} draws) gives one draw's coverage "
          f"an sd of " + ", ".join(f"{s:.2f}" for s in ref_sd) + " points at "
          + "/".join(f"{c:.0%}" for c in COVERAGES) + ".")
    cov = result.coverage[detail]
    mean, sd = cov.mean(axis=0), cov.std(axis=0, ddof=1) if draws > 1 else np.zeros(cov.shape[1:])
    se = sd / math.sqrt(draws)
    head = "".join(f" | {c:.0%}: mean   se    sd  off" for c in COVERAGES)
    print(f"{detail}: per device{'':7s}{head}")
    for j, device in enumerate(result.devices):
        cells = "".join(f" | {mean[j, c]:9.1f} {se[j, c]:4.2f} {sd[j, c]:5.2f} "
                        f"{'  *' if abs(mean[j, c] - 100 * lv) > TOLERANCE_POINTS else '   '}"
                        for c, lv in enumerate(COVERAGES))
        print(f"{device + (' (whole ms)' if result.whole_ms[j] else ''):27s}{cells}")
    print("(* : the mean over draws is more than 2 points off nominal)")
    summary: dict[str, Any] = {}
    with warnings.catch_warnings():  # a variant without figures (NaN) prints nan
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, values in result.coverage.items():
            avg = np.nanmean(values, axis=0)
            single = [int(_within(values[0, :, c], lv).sum()) for c, lv in enumerate(COVERAGES)]
            averaged = [int(_within(avg[:, c], lv).sum()) for c, lv in enumerate(COVERAGES)]
            done = np.isfinite(values[:, :, 0]).any(axis=1)  # the draws this variant ran on
            misses = [float(_misses(values[done, :, c], lv).sum(axis=1).mean()) if done.any()
                      else math.nan for c, lv in enumerate(COVERAGES)]
            pooled_sd = [float(np.nanmean(np.nanstd(values[:, :, c], axis=0, ddof=1))) if draws > 1
                         else math.nan for c in range(len(COVERAGES))]
            summary[name] = {"single": single, "averaged": averaged, "misses": misses,
                             "mean": [float(np.nanmean(avg[:, c])) for c in range(len(COVERAGES))],
                             "sd": pooled_sd}
            whole = [j for j, w in enumerate(result.whole_ms) if w]
            whole_txt = (f"; whole-ms columns averaged " + "/".join(
                f"{np.nanmean(avg[whole, c]):.1f}" for c in range(len(COVERAGES)))) if whole else ""
            print(f"{name:13s}: within ±2 single draw " + "/".join(map(str, single))
                  + f", averaged " + "/".join(map(str, averaged)) + f" of {n_dev}; misses per draw "
                  + "/".join(f"{m:.1f}" for m in misses) + " (exchangeability: "
                  + "/".join(f"{n_dev * p:.1f}" for p in ref_miss) + "); mean "
                  + "/".join(f"{v:.1f}" for v in summary[name]["mean"]) + "; sd over draws "
                  + "/".join(f"{v:.2f}" for v in pooled_sd) + whole_txt)
    return summary


class LogLatency(RegressorMixin, BaseEstimator):
    """The space's default latency model as a regressor of log latency on a plain feature
    matrix (what MAPIE's wrappers fit and clone): ``columns`` names the matrix's columns."""

    def __init__(self, space: str = "nb201", columns: tuple[str, ...] = (), n_estimators: int = 64) -> None:
        self.space = space
        self.columns = columns
        self.n_estimators = n_estimators

    def _frame(self, X: Any) -> Any:
        import pandas as pd

        return pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(self.columns))

    def fit(self, X: Any, y: Any) -> LogLatency:
        from costmeter.predictors.estimators.arch import default_regressor

        self.model_ = default_regressor(self.space, n_estimators=self.n_estimators).fit(
            self._frame(X), np.exp(np.asarray(y, dtype=np.float64)))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Log latency (log ms) per row."""
        return np.log(self.model_.predict(self._frame(X)))



def mapie_draws(space: str, F: Any, Y: np.ndarray, valid: np.ndarray, train_size: int,
                draws: int, seed: int, method: str = "cv+") -> np.ndarray:
    """Coverage (%) of MAPIE's own interval, shape ``(draws, devices, levels)``, on the same
    draws as :func:`collect_draws`: ``cv+`` (``CrossConformalRegressor``, 5 folds) or ``jab+``
    (``JackknifeAfterBootstrapRegressor``, 20 bootstrap models of 16 trees each), both with
    MAPIE's absolute score on log latency (its normalised score is split-only)."""
    from mapie.regression import CrossConformalRegressor, JackknifeAfterBootstrapRegressor

    n, columns = len(F), tuple(str(c) for c in F.columns)
    X = F.to_numpy(dtype=np.float64)
    out = np.full((draws, Y.shape[1], len(COVERAGES)), np.nan)
    for r in range(draws):
        order = np.random.default_rng(seed + r).permutation(n)
        train, test = np.sort(order[:train_size]), np.sort(order[train_size:])
        test = test[valid[test]]
        for j in range(Y.shape[1]):
            if method == "cv+":
                wrapper: Any = CrossConformalRegressor(
                    LogLatency(space, columns), confidence_level=list(COVERAGES),
                    conformity_score="absolute", method="plus", cv=5, random_state=seed + r)
            else:
                wrapper = JackknifeAfterBootstrapRegressor(
                    LogLatency(space, columns, n_estimators=16), confidence_level=list(COVERAGES),
                    conformity_score="absolute", method="plus", resampling=20, random_state=seed + r)
            with warnings.catch_warnings():  # rows in every bootstrap sample: MAPIE warns per fit
                warnings.simplefilter("ignore")
                wrapper.fit_conformalize(X[train], np.log(Y[train, j]))
                _, bounds = wrapper.predict_interval(X[test])
            y = Y[test, j]
            for c in range(len(COVERAGES)):
                inside = (y >= np.exp(bounds[:, 0, c])) & (y <= np.exp(bounds[:, 1, c]))
                out[r, j, c] = 100.0 * float(np.mean(inside))
    return out


def run_check(space: str, F: Any, Y: np.ndarray, valid: np.ndarray, devices: list[str],
              train_size: int, draws: int, seed: int, n_jobs: int, mapie: int = 0) -> dict[str, Any]:
    """Print the repeated-draw check (``draws`` draws; MAPIE's CV+ and jackknife+-after-bootstrap
    on the first ``mapie`` of them) and return its summary figures."""
    from costmeter.predictors.estimators.arch import ArchPredictor, default_regressor

    result = collect_draws(lambda: default_regressor(space, n_jobs=n_jobs), F, Y, valid, devices,
                           train_size, draws, seed, ArchPredictor().conformal_floor)
    for method in ("cv+", "jab+") if mapie else ():
        start = time.perf_counter()
        result.coverage[f"MAPIE {method}"] = np.full_like(result.coverage["jackknife"], np.nan)
        result.coverage[f"MAPIE {method}"][:mapie] = mapie_draws(space, F, Y, valid, train_size,
                                                                 mapie, seed, method)
        print(f"(MAPIE {method} on {mapie} draws: {time.perf_counter() - start:.0f} s)")
    return print_draws(result, seed)
