"""Calibrated prediction intervals for latency (and other positive targets): conformal prediction
on the log scale, normalised by the model's own spread.

A model gives, per input, a predicted latency ``m`` (ms) and a one-sigma spread ``s`` (ms) --
for a forest the spread of its trees. Neither says how often the truth falls within ``m ± k s``.
Conformal prediction measures it: on rows the model did not see, the *normalised signed
residuals* (conformity scores)

    r = (log y - log m) / max(s / m, floor)

are collected; an interval for a new input is ``log m + [q_lo, q_hi] * max(s / m, floor)``
with ``q_lo``/``q_hi`` the finite-sample conformal quantiles of the scores (Lei et al., JASA
2018, "Distribution-free predictive inference for regression"; the normalised score is what
MAPIE calls ``ResidualNormalisedScore``, here with the trees' spread as the residual model).
On the log scale the interval is relative: ±10% means the same at 0.1 ms and at 100 ms. The
floor (``floor`` x the median calibration spread, and at least :data:`MIN_FLOOR_LOG`) keeps an
over-confident model from getting an interval of zero width.

Two-sided intervals are equal-tailed: each tail holds at most ``(1 - coverage) / 2`` of the
scores, so a biased model gets an asymmetric interval, and :meth:`ConformalCalibration.upper`
gives the one-sided bound behind "within budget with probability >= confidence". With ``n``
calibration rows the ``k``-th smallest score is used, ``k = ceil((n + 1) * level)``; when
``k > n`` the bound is infinite (too few rows for that level: a 95% two-sided interval needs
``n >= 79``), which :func:`min_rows` says in advance.

Where the scores come from:

- :func:`calibrate_cv` (what ``ArchPredictor.fit`` does): K-fold out-of-fold predictions of the
  same estimator, every training row also a calibration row; the final model is then fitted on
  all rows (the "CV" form of cross-conformal prediction, Barber et al., Ann. Stat. 2021). Its
  fold models saw ``(K-1)/K`` of the data and err slightly more than the final model, so the
  intervals lean conservative (more so with few folds); with 10 folds that is about one point
  of coverage at 80% on the data tables (``benchmarks/predictor_accuracy.py`` measures it).
- :func:`calibrate_jackknife` (what ``ArchPredictor.fit`` does when its regressor offers
  ``jackknife``, as the default :class:`~costmeter.predictors.estimators.additive.AdditiveForest`
  does): each training row predicted by the final model without that row -- an exact
  leave-one-out prediction of the ridge base and out-of-bag trees of the forest -- so the
  scores describe the model that answers, with no refits. On the FBNet table (198 one-hot
  columns, 900 rows) 10-fold scores left the 80% interval about two points too wide. The
  model's own trees leave a row out of about 37% of them, and fewer trees give a noisier mean
  and a lower spread than the model's at a new architecture: scores from them over-covered by
  about half a point on average over seeded draws (NB201 80.8 / 90.7 / 95.6% at 80 / 90 / 95%),
  so the jackknife fits extra trees, for these predictions only, until each row has about as
  many out-of-bag trees as the model (``AdditiveForest(matched_jackknife=True)``). What no
  calibration on the training rows removes is the final model's own luck on its draw: a
  device's coverage moves with the draw by about 1.3-1.7 points (sd) at 80%, where
  exchangeability alone gives 1.4-1.5; ``benchmarks/coverage_draws.py`` measures both.
- :func:`calibrate_split`: predictions on a separate calibration set (measured networks for a
  kernel-level network predictor or a lookup table, whose model was fitted on other data).

Why not MAPIE's estimators at run time: its normalised score works only with split/prefit
conformalisation (not with cross-conformal methods), its confidence level is fixed when the
wrapper is built (here the caller picks a coverage per call), a saved predictor must load with
a short list of trusted types and no MAPIE objects, and a NAS loop predicts a million
architectures a second, where one sort-free vector operation per call is all there is room for.
The maths is the same; the tests check the bounds against MAPIE's ``SplitConformalRegressor``
when MAPIE is installed.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator, clone

from costmeter.errors import ConfigError

DEFAULT_FOLDS = 10
DEFAULT_FLOOR = 0.25
# the least spread a score divides by (log units): 0.1% of the latency. A model whose parts
# agree more closely than that (a linear base with no correction on smooth data) would turn
# residuals of a few percent into scores of millions.
MIN_FLOOR_LOG = 1e-3
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)
METHOD_CV = "cross-conformal (out-of-fold normalised log residuals, final model refit on all rows)"
METHOD_JACKKNIFE = ("jackknife conformal (normalised log residuals of each training row predicted "
                    "without it: leave-one-out ridge base, out-of-bag trees)")
METHOD_SPLIT = "split-conformal (normalised log residuals on a separate calibration set)"
METHOD_KERNEL = ("split-conformal (normalised log residuals of the calibration networks, each "
                 "predicted by a calibration fitted without its family; scale: the kernels' spread)")


def check_coverage(coverage: Any, name: str = "coverage") -> float:
    """The level as a float; ConfigError unless it is a number strictly between 0 and 1."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number between 0 and 1 (e.g. 0.9), got {coverage!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must lie strictly between 0 and 1 (e.g. 0.9), got {coverage!r}")
    return value


def min_rows(coverage: float, two_sided: bool = True) -> int:
    """Fewest calibration rows for a finite bound at ``coverage`` (two-sided: equal tails)."""
    level = (1.0 + coverage) / 2.0 if two_sided else coverage
    return math.ceil(level / (1.0 - level) - 1e-9)


def conformal_quantile(sorted_scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` sorted scores; ``inf`` past the last."""
    n = sorted_scores.size
    k = math.ceil((n + 1) * level - 1e-9)
    if k > n:
        return math.inf
    return float(sorted_scores[max(k, 1) - 1])


def log_and_spread(mean_ms: Any, std_ms: Any) -> tuple[np.ndarray, np.ndarray]:
    """(log of the prediction, relative one-sigma spread ``std / mean``) from values in ms."""
    mean = np.asarray(mean_ms, dtype=np.float64)
    if np.any(~(mean > 0)):
        raise ConfigError("predictions must be positive for a log-scale interval")
    return np.log(mean), np.asarray(std_ms, dtype=np.float64) / mean


class ConformalCalibration(BaseEstimator):
    """The scores behind conformal intervals, and the intervals (see the module docstring).

    Fitted by :func:`calibrate_cv` or :func:`calibrate_split` (or :meth:`fit` on log
    predictions, spreads and truths). Fitted: ``scores_`` (sorted signed normalised log
    residuals), ``floor_`` (spread floor, log units), ``n_calibration_``, ``method_``,
    ``folds_`` (0 for split).
    """

    def __init__(self, floor: float = DEFAULT_FLOOR) -> None:
        self.floor = floor

    def fit(self, pred_log: Any, spread_log: Any, y: Any, *, method: str = METHOD_SPLIT,
            folds: int = 0, data: str = "") -> ConformalCalibration:
        """Scores of truths ``y`` (positive, e.g. ms) against log predictions and log spreads;
        ``data`` says in words which rows they are (recorded in the manifest)."""
        pred_log = np.asarray(pred_log, dtype=np.float64).ravel()
        spread = np.asarray(spread_log, dtype=np.float64).ravel()
        truth = np.asarray(y, dtype=np.float64).ravel()
        if not pred_log.size == spread.size == truth.size:
            raise ConfigError(f"calibration needs one prediction, spread and truth per row: "
                              f"{pred_log.size}, {spread.size} and {truth.size}")
        if truth.size < 2:
            raise ConfigError(f"calibration needs at least 2 rows, got {truth.size}")
        if np.any(~(truth > 0)) or not np.all(np.isfinite(pred_log)):
            raise ConfigError("calibration truths must be positive and predictions finite")
        if not self.floor >= 0:
            raise ConfigError(f"the spread floor must be >= 0, got {self.floor}")
        spread = np.where(np.isfinite(spread) & (spread > 0), spread, 0.0)
        median = float(np.median(spread))
        self.floor_ = max(self.floor * median, MIN_FLOOR_LOG) if median > 0 else 1.0
        self.scores_ = np.sort((np.log(truth) - pred_log) / np.maximum(spread, self.floor_))
        self.n_calibration_ = int(truth.size)
        self.method_ = method
        self.folds_ = int(folds)
        self.data_ = str(data)
        return self

    def _scale(self, spread_log: Any) -> np.ndarray:
        return np.maximum(np.asarray(spread_log, dtype=np.float64), self.floor_)

    def quantiles(self, coverage: float) -> tuple[float, float]:
        """(lower, upper) score quantiles of an equal-tailed two-sided interval."""
        level = (1.0 + check_coverage(coverage)) / 2.0
        low = -conformal_quantile(-self.scores_[::-1], level)
        return low, conformal_quantile(self.scores_, level)

    def bounds_log(self, pred_log: Any, spread_log: Any, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) log bounds holding the truth with probability >= ``coverage``."""
        low, high = self.quantiles(coverage)
        scale = self._scale(spread_log)
        pred = np.asarray(pred_log, dtype=np.float64)
        return pred + low * scale, pred + high * scale

    def interval(self, mean_ms: Any, std_ms: Any, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower ms, upper ms) around predictions ``mean_ms`` with spreads ``std_ms`` (ms)."""
        pred_log, spread = log_and_spread(mean_ms, std_ms)
        low, high = self.bounds_log(pred_log, spread, coverage)
        return np.exp(low), np.exp(high)

    def upper(self, mean_ms: Any, std_ms: Any, confidence: float) -> np.ndarray:
        """One-sided upper bound (ms): the truth lies below it with probability >= ``confidence``."""
        level = check_coverage(confidence, "confidence")
        pred_log, spread = log_and_spread(mean_ms, std_ms)
        return np.exp(pred_log + conformal_quantile(self.scores_, level) * self._scale(spread))

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for an artifact manifest: method, rows, folds, floor and the score
        quantiles of the 80/90/95% intervals (log units)."""
        return {"method": self.method_, "data": getattr(self, "data_", ""),
                "scale": "log latency, normalised by the model's spread",
                "calibration_rows": self.n_calibration_, "folds": self.folds_,
                "floor_log": round(float(self.floor_), 6), "floor_share_of_median": self.floor,
                "quantiles": {f"{c:g}": [_finite(v) for v in self.quantiles(c)] for c in COVERAGES}}


    def state(self) -> dict[str, Any]:
        """Everything an interval needs, JSON-ready: :meth:`describe` plus the sorted
        ``scores`` (log units); :meth:`from_state` rebuilds the calibration from it."""
        return {**self.describe(), "scores": [float(v) for v in self.scores_]}

    @classmethod
    def from_state(cls, state: Any) -> ConformalCalibration:
        """The calibration written by :meth:`state` (e.g. read back from a manifest's extra);
        ConfigError when the scores or the floor are missing or not finite numbers."""
        try:
            scores = np.sort(np.asarray(state["scores"], dtype=np.float64).ravel())
            floor_log = float(state["floor_log"])
            share = float(state.get("floor_share_of_median", DEFAULT_FLOOR))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("the interval calibration in this predictor is unreadable (no "
                              "scores or floor); rebuild the predictor") from None
        if scores.size < 2 or not np.all(np.isfinite(scores)) or not 0 <= floor_log < math.inf:
            raise ConfigError("the interval calibration in this predictor holds fewer than 2 "
                              "finite scores or a negative floor; rebuild the predictor")
        calibration = cls(share)
        calibration.scores_, calibration.floor_ = scores, floor_log
        calibration.n_calibration_ = int(scores.size)
        calibration.method_ = str(state.get("method", METHOD_SPLIT))
        calibration.folds_ = int(state.get("folds", 0) or 0)
        calibration.data_ = str(state.get("data", ""))
        return calibration


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def calibrate_split(mean_ms: Any, std_ms: Any, measured: Any, floor: float = DEFAULT_FLOOR,
                    data: str = "a separate calibration set") -> ConformalCalibration:
    """Calibration from predictions (``mean_ms``, one-sigma ``std_ms``) of rows the model was not
    fitted on, against their ``measured`` values (same unit). This is what a kernel-level network
    predictor or a lookup table calls with networks measured whole."""
    pred_log, spread = log_and_spread(mean_ms, std_ms)
    return ConformalCalibration(floor).fit(pred_log, spread, measured, method=METHOD_SPLIT, data=data)


def out_of_fold(template: Any, X: Any, y: Any, folds: int = DEFAULT_FOLDS, seed: int = 0,
                groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, std) of every row from a clone of ``template`` fitted on the other folds.

    ``template`` follows the ``predict_with_uncertainty(X) -> (mean, std)`` convention;
    ``X`` is a DataFrame, an array or a list (rows taken in order). ``groups`` (optional) keeps
    each group in one fold (e.g. model families)."""
    from sklearn.model_selection import GroupKFold, KFold

    target = np.asarray(y, dtype=np.float64).ravel()
    n = target.size
    folds = min(int(folds), n)
    if folds < 2:
        raise ConfigError(f"cross-conformal calibration needs >= 2 folds and rows, got {folds}")
    if groups is not None:
        splitter = GroupKFold(min(folds, len(set(np.asarray(groups).tolist()))))
        splits = splitter.split(np.zeros(n), target, groups)
    else:
        splits = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))
    mean, std = np.empty(n), np.empty(n)
    for train, test in splits:
        model = clone(template).fit(_take(X, train), target[train])
        m, s = model.predict_with_uncertainty(_take(X, test))
        mean[test], std[test] = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
    return mean, std


def calibrate_cv(template: Any, X: Any, y: Any, folds: int = DEFAULT_FOLDS, seed: int = 0,
                 floor: float = DEFAULT_FLOOR, groups: Any = None) -> ConformalCalibration:
    """Cross-conformal calibration of ``template`` on ``X``, ``y`` (positive): out-of-fold
    predictions (:func:`out_of_fold`) scored against ``y``."""
    mean, std = out_of_fold(template, X, y, folds, seed, groups)
    mean = np.maximum(mean, 1e-12)
    pred_log, spread = log_and_spread(mean, std)
    return ConformalCalibration(floor).fit(
        pred_log, spread, y, method=METHOD_CV, folds=min(int(folds), len(mean)),
        data=f"the {len(mean)} training rows, each predicted by a model fitted without its fold"
             + (" (folds keep each group together)" if groups is not None else ""))


@runtime_checkable
class Jackknifed(Protocol):
    """A fitted model that predicts its own training rows as if each had been left out."""

    def jackknife(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]: ...


def calibrate_jackknife(model: Jackknifed, X: Any, y: Any,
                        floor: float = DEFAULT_FLOOR) -> ConformalCalibration:
    """Jackknife conformal calibration of a *fitted* ``model`` on the rows ``X``, ``y`` it was
    fitted on: its leave-one-out log predictions and spreads scored against ``y``."""
    pred_log, spread = model.jackknife(X, y)
    return ConformalCalibration(floor).fit(
        pred_log, spread, y, method=METHOD_JACKKNIFE,
        data=f"the {len(pred_log)} training rows, each predicted by the final model without it")


def gaussian_interval(mean_ms: Any, std_ms: Any, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """The uncalibrated interval of a one-sigma spread read as Gaussian on the log scale,
    ``mean * exp(± z * std / mean)`` (what ``predict`` returned before calibration)."""
    from scipy.stats import norm

    z = float(norm.ppf((1.0 + check_coverage(coverage)) / 2.0))
    pred_log, spread = log_and_spread(mean_ms, std_ms)
    return np.exp(pred_log - z * spread), np.exp(pred_log + z * spread)


def coverage_report(measured: Any, lower: Any, upper: Any, predicted: Any) -> dict[str, float]:
    """Empirical coverage (% of ``measured`` within [lower, upper]) and mean relative width
    (mean of (upper - lower) / predicted, %); infinite bounds count as covering, width inf."""
    y = np.asarray(measured, dtype=np.float64)
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    inside = (y >= lo) & (y <= hi)
    width = (hi - lo) / np.asarray(predicted, dtype=np.float64)
    return {"coverage_pct": float(np.mean(inside) * 100), "width_pct": float(np.mean(width) * 100)}


def _take(X: Any, rows: np.ndarray) -> Any:
    if hasattr(X, "iloc"):
        return X.iloc[rows]
    if isinstance(X, np.ndarray):
        return X[rows]
    return [X[i] for i in rows]
