"""Network-level calibration of summed kernel latencies: what a network pays that its kernels,
timed one by one, do not.

A sum of micro-benchmarked kernels misses effects that belong to the whole network. A
micro-benchmark repeating one kernel keeps its weights in cache; in a network, the other kernels
ran in between, and whether the weights are still cached depends on the network's whole weight
footprint against the caches. On ONNX Runtime's x86 CPU provider layout conversions (NCHWc
reorders) also appear only where the layout changes. :func:`network_terms` gives the quantities
per network from its kernel graph; :func:`costmeter.harness.probes.cache.measure_cache_curve`
measures how this machine's read cost grows with the working set (a cyclic pass over many
buffers, as a network's weights are read once per run), through the protocol like any probe;
:class:`TrafficCalibration` fits a small, constrained cache model on both against measured
networks, choosing its terms by cross-validation over families and keeping the plain kernel sum
when no term helps on families it was not fitted on.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError

BASE_COLUMN = "kernel_sum_ms"
TERMS: tuple[str, ...] = ("weight_mb", "activation_mb")
# candidate terms of the correction (added to the kernel sum), each with the bounds physics allows:
#   scale       -- (s - 1) x kernel sum: the sum off by a constant share (-50% .. +50%)
#   intercept   -- ms per run beyond the measured per-run overhead (>= 0)
#   weight_mb   -- ms per MB of weights (>= 0): every weight comes from beyond the small caches
#   activation_mb -- ms per MB of image activations read and written (>= 0)
#   miss_mb     -- ms per MB of weights the last-level cache cannot keep (>= 0), the share read
#                  off the device's measured cache curve at the network's weight footprint
CANDIDATES: tuple[str, ...] = ("scale", "intercept", "weight_mb", "activation_mb", "miss_mb")
BOUNDS: dict[str, tuple[float, float]] = {"scale": (-0.5, 0.5), "intercept": (0.0, np.inf),
                                          "weight_mb": (0.0, np.inf),
                                          "activation_mb": (0.0, np.inf), "miss_mb": (0.0, np.inf)}
_NOT_EXECUTED = ("constant",)  # kernels a runtime folds at load time


def miss_fraction(weight_mb: Any, curve_mb: Sequence[float],
                  curve_us_per_mb: Sequence[float]) -> np.ndarray:
    """Where a working set of ``weight_mb`` lies between the cheapest and dearest reads of the
    cache curve (0: all from cache, 1: all from memory), interpolated; beyond the curve, its
    last point."""
    low, high = min(curve_us_per_mb), max(curve_us_per_mb)
    cost = np.interp(np.asarray(weight_mb, dtype=np.float64), curve_mb, curve_us_per_mb)
    return np.clip((cost - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(cost)


def network_terms(graph: Any) -> dict[str, float]:
    """Per-network quantities of a kernel graph: ``weight_mb`` (weights of the executed kernels,
    MB = 1e6 bytes), ``activation_mb`` (activations read and written by kernels whose output is
    an image, 4-D, tensor, MB) and ``kernels`` (executed kernels)."""
    from costmeter.predictors.kernels.features import kernel_features

    terms = {"weight_mb": 0.0, "activation_mb": 0.0, "kernels": 0.0}
    for kernel in graph.kernels:
        if kernel.kernel_type in _NOT_EXECUTED:
            continue
        values = kernel_features(kernel)
        terms["kernels"] += 1
        terms["weight_mb"] += values["weight_bytes"] / 1e6
        if _image_kernel(kernel):
            terms["activation_mb"] += (values["bytes_read"] - values["weight_bytes"]
                                       + values["bytes_written"]) / 1e6
    return terms


def _image_kernel(kernel: Any) -> bool:
    """A kernel whose (first) output is a 4-D tensor."""
    shape = kernel.outputs[0].shape if kernel.outputs else None
    return shape is not None and len(shape) == 4


class TrafficCalibration(RegressorMixin, BaseEstimator):
    """A constrained cache model on top of a kernel sum, fitted on measured networks:

        latency = kernel_sum + s * kernel_sum + intercept + a * weight_mb + b * activation_mb
                  + c * weight_mb * miss(weight_mb)

    with only the terms (:data:`CANDIDATES`) that cross-validation over families keeps, every
    coefficient within :data:`BOUNDS` (costs per MB and per run >= 0; ``s`` within +-50%).
    ``miss`` is :func:`miss_fraction` of the device's measured cache curve (``curve_mb``,
    ``curve_us_per_mb``; from :func:`measure_cache_curve`), so no threshold is fitted.

    ``fit(X, y, groups)``: ``X`` a DataFrame with :data:`BASE_COLUMN` (ms) and :data:`TERMS`
    (:func:`network_terms`), ``y`` measured latencies (ms), ``groups`` each network's family
    (without: every row its own group). The coefficients minimise the squared relative errors,
    each family weighing the same, plus a ridge penalty ``alpha`` on each term's typical
    relative contribution (scipy's bounded least squares, ``lsq_linear``). Which terms: every
    subset of ``candidates`` is scored by leave-one-family-out relative RMSE, and the best one
    kept -- the empty subset, the plain kernel sum plus the per-run overhead, wins whenever no
    term helps on families it was not fitted on. The whole procedure is then judged the same
    way (nested: terms chosen and fitted without the family predicted); when it does not beat
    the kernel sum out of family -- fewer networks within ``tolerance``, or as many with a
    larger relative RMSE -- no term is kept and the figures are the kernel sum's.

    Fitted: ``terms_`` (the kept terms), ``coef_`` (one per :data:`CANDIDATES`, zero where not
    kept; ms per ms, ms, ms per MB), ``cv_within_``, ``cv_rel_rmse_``, ``cv_mape_``,
    ``cv_bias_`` (nested leave-one-family-out: for each family, the terms are chosen and fitted
    on the others only, then it is predicted; ``cv_within_`` is the mean over families of the
    share within ``tolerance``, ``cv_rel_rmse_`` the one-sigma relative uncertainty on an unseen
    family, ``cv_bias_`` the median relative error, ``cv_predicted_`` the nested predictions
    themselves in ms, one per network -- the kernel sums when no term is kept),
    ``cv_by_family_`` (family -> share
    within), ``kernel_sum_within_`` and ``kernel_sum_rel_rmse_`` (the same figures for the plain
    kernel sum), ``n_groups_`` and ``base_range_ms_`` (smallest and largest kernel sum among the
    networks). :meth:`predict` never moves a network smaller than every calibration network by
    more than ``cv_rel_rmse_`` of its kernel sum.
    """

    def __init__(self, curve_mb: Sequence[float] = (), curve_us_per_mb: Sequence[float] = (),
                 tolerance: float = 0.10, alpha: float = 0.01,
                 candidates: Sequence[str] = CANDIDATES) -> None:
        self.curve_mb = curve_mb
        self.curve_us_per_mb = curve_us_per_mb
        self.tolerance = tolerance
        self.alpha = alpha
        self.candidates = candidates

    def fit(self, X: Any, y: Any, groups: Any = None) -> TrafficCalibration:
        """Choose and fit the terms, and cross-validate the whole procedure (see the class
        docstring)."""
        from sklearn.model_selection import LeaveOneGroupOut

        frame, y = _frame(X), np.asarray(y, dtype=np.float64)
        if len(frame) != len(y) or len(y) < 4:
            raise ConfigError(f"calibration needs at least 4 measured networks with one latency "
                              f"each; got {len(frame)} rows and {len(y)} latencies")
        if not np.all(np.isfinite(y) & (y > 0)):
            raise ConfigError("calibration latencies must be positive and finite")
        if len(self.curve_mb) < 2 or len(self.curve_mb) != len(self.curve_us_per_mb):
            raise ConfigError("calibration needs the device's cache curve (sizes and costs, at "
                              "least 2 points); measure it with "
                              "costmeter.harness.probes.cache.measure_cache_curve()")
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or self.alpha < 0:
            raise ConfigError(f"calibration terms must come from {', '.join(CANDIDATES)} and alpha "
                              f"must be >= 0 (got {', '.join(unknown) or self.alpha})")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(set(groups.tolist())) < 2:
            raise ConfigError("calibration needs networks of at least 2 families (groups), so "
                              "that its error is measured on families it was not fitted on")
        design = self._design(frame)
        base = frame[BASE_COLUMN].to_numpy(dtype=np.float64)
        predicted = np.empty(len(y))
        for train, test in LeaveOneGroupOut().split(frame, y, groups):
            columns = self._select(design, base, y, groups, train)
            coef = _constrained_fit(design, base, y, groups, train, columns, self.alpha)
            predicted[test] = base[test] + design[test] @ coef
        self._score(predicted, base, y, groups)
        columns = self._select(design, base, y, groups, np.arange(len(y)))
        if not self._beats_kernel_sum():  # the procedure does not generalise: keep the sum
            columns = ()
            predicted = base
            self._score(base, base, y, groups)
        self.cv_predicted_ = np.array(predicted, dtype=np.float64)
        self.terms_ = tuple(CANDIDATES[c] for c in columns)
        self.coef_ = _constrained_fit(design, base, y, groups, np.arange(len(y)), columns,
                                      self.alpha)
        self.n_groups_ = int(len(set(groups.tolist())))
        self.base_range_ms_ = (float(base.min()), float(base.max()))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Calibrated latencies (ms), one per row of ``X``; a network whose kernel sum is below
        every calibration network's moves by at most ``cv_rel_rmse_`` of its kernel sum."""
        check_is_fitted(self)
        frame = _frame(X)
        base = frame[BASE_COLUMN].to_numpy(dtype=np.float64)
        delta = self._design(frame) @ self.coef_
        cap = self.cv_rel_rmse_ * base
        small = base < self.base_range_ms_[0]
        return base + np.where(small, np.clip(delta, -cap, cap), delta)

    def in_range(self, X: Any) -> np.ndarray:
        """Boolean per row: its kernel sum lies within those of the calibration networks."""
        check_is_fitted(self)
        base = _frame(X)[BASE_COLUMN].to_numpy(dtype=np.float64)
        low, high = self.base_range_ms_
        return (base >= low) & (base <= high)

    @property
    def intercept_ms_(self) -> float:
        """The fitted per-run term (ms; 0 when not kept)."""
        check_is_fitted(self)
        return float(self.coef_[CANDIDATES.index("intercept")])

    def describe(self) -> str:
        """One line: the kept terms with units, and the out-of-family figures."""
        check_is_fitted(self)
        coef = dict(zip(CANDIDATES, self.coef_))
        units = {"scale": lambda v: f"{v:+.1%} of the kernel sum",
                 "intercept": lambda v: f"{v * 1e3:+.1f} us per run",
                 "weight_mb": lambda v: f"{v * 1e3:+.2f} us per MB of weights",
                 "activation_mb": lambda v: f"{v * 1e3:+.2f} us per MB of activations",
                 "miss_mb": lambda v: f"{v * 1e3:+.2f} us per MB of weights missing the cache"}
        kept = ", ".join(units[t](coef[t]) for t in self.terms_) or \
            "nothing (no term beat the kernel sum out of family)"
        return (f"{kept}; leave-one-family-out over {self.n_groups_} families: "
                f"{self.cv_within_:.0%} within ±{self.tolerance:.0%} (kernel sum alone: "
                f"{self.kernel_sum_within_:.0%})")

    def state(self) -> dict[str, Any]:
        """Everything :meth:`predict` needs and the out-of-family figures, JSON-ready (kept terms,
        one coefficient per :data:`CANDIDATES`, cache curve, range of calibration sums);
        :meth:`from_state` rebuilds the fitted calibration from it."""
        check_is_fitted(self)
        return {"terms": list(self.terms_), "coef": [float(v) for v in self.coef_],
                "candidates": list(self.candidates), "tolerance": float(self.tolerance),
                "alpha": float(self.alpha), "curve_mb": [float(v) for v in self.curve_mb],
                "curve_us_per_mb": [float(v) for v in self.curve_us_per_mb],
                "base_range_ms": list(self.base_range_ms_), "n_groups": self.n_groups_,
                "cv_within": self.cv_within_, "cv_rel_rmse": self.cv_rel_rmse_,
                "cv_mape": self.cv_mape_, "cv_bias": self.cv_bias_,
                "kernel_sum_within": self.kernel_sum_within_,
                "kernel_sum_rel_rmse": self.kernel_sum_rel_rmse_,
                "cv_by_family": dict(self.cv_by_family_)}

    @classmethod
    def from_state(cls, state: Any) -> TrafficCalibration:
        """The fitted calibration written by :meth:`state`; ConfigError when a field is missing,
        a coefficient lies outside :data:`BOUNDS` or a number is not finite."""
        try:
            calibration = cls([float(v) for v in state["curve_mb"]],
                              [float(v) for v in state["curve_us_per_mb"]],
                              float(state["tolerance"]), float(state["alpha"]),
                              tuple(str(c) for c in state["candidates"]))
            coef = np.asarray(state["coef"], dtype=np.float64)
            terms = tuple(str(t) for t in state["terms"])
            low, high = (float(v) for v in state["base_range_ms"])
            figures = {k: float(state[k]) for k in ("cv_within", "cv_rel_rmse", "cv_mape", "cv_bias",
                                                    "kernel_sum_within", "kernel_sum_rel_rmse")}
            n_groups = int(state["n_groups"])
            by_family = {str(k): float(v) for k, v in dict(state.get("cv_by_family") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("the network calibration in this file is unreadable (a field is "
                              "missing or not a number); calibrate again") from None
        in_bounds = coef.shape == (len(CANDIDATES),) and all(
            BOUNDS[c][0] <= v <= BOUNDS[c][1] for c, v in zip(CANDIDATES, coef))
        if not in_bounds or not set(terms) <= set(CANDIDATES) or not np.isfinite(
                [low, high, *figures.values()]).all():
            raise ConfigError("the network calibration in this file has coefficients outside "
                              "their bounds or non-finite figures; calibrate again")
        calibration.coef_, calibration.terms_ = coef, terms
        calibration.base_range_ms_, calibration.n_groups_ = (low, high), n_groups
        calibration.cv_by_family_ = by_family
        for key, value in figures.items():
            setattr(calibration, f"{key}_", value)
        return calibration

    def _score(self, predicted: np.ndarray, base: np.ndarray, y: np.ndarray,
               groups: np.ndarray) -> None:
        relative, plain = predicted / y - 1, base / y - 1
        names = sorted(set(groups.tolist()), key=str)
        self.cv_by_family_ = {str(g): float(np.mean(np.abs(relative[groups == g]) <= self.tolerance))
                              for g in names}
        self.cv_within_ = float(np.mean(list(self.cv_by_family_.values())))
        self.cv_rel_rmse_ = float(np.sqrt(np.mean(relative ** 2)))
        self.cv_mape_ = float(np.mean(np.abs(relative)) * 100)
        self.cv_bias_ = float(np.median(relative))
        self.kernel_sum_within_ = float(np.mean([np.mean(np.abs(plain[groups == g]) <= self.tolerance)
                                                 for g in names]))
        self.kernel_sum_rel_rmse_ = float(np.sqrt(np.mean(plain ** 2)))

    def _beats_kernel_sum(self) -> bool:
        """Whether the nested out-of-family figures beat the plain kernel sum's: more networks
        within ``tolerance``, or as many with a smaller relative RMSE."""
        if self.cv_within_ != self.kernel_sum_within_:
            return self.cv_within_ > self.kernel_sum_within_
        return self.cv_rel_rmse_ < self.kernel_sum_rel_rmse_

    def _select(self, design: np.ndarray, base: np.ndarray, y: np.ndarray, groups: np.ndarray,
                rows: np.ndarray) -> tuple[int, ...]:
        """The subset of candidate columns with the lowest out-of-family relative RMSE over
        ``rows`` (leave one family out; within a single family, 5-fold); fewer terms win ties."""
        from itertools import combinations

        from sklearn.model_selection import KFold, LeaveOneGroupOut

        usable = [CANDIDATES.index(c) for c in self.candidates]
        subsets = [s for size in range(len(usable) + 1) for s in combinations(usable, size)]
        inner = groups[rows]
        if len(set(inner.tolist())) >= 2:
            splits = list(LeaveOneGroupOut().split(rows, groups=inner))
        else:
            splits = list(KFold(min(5, len(rows))).split(rows))
        _, inverse, counts = np.unique(inner, return_inverse=True, return_counts=True)
        weight = 1.0 / counts[inverse]
        best, best_score = (), np.inf
        for subset in subsets:
            relative = np.empty(len(rows))
            for train, test in splits:
                coef = _constrained_fit(design, base, y, groups, rows[train], subset, self.alpha)
                relative[test] = (base[rows[test]] + design[rows[test]] @ coef) / y[rows[test]] - 1
            score = float(np.sqrt(np.sum(weight * relative ** 2) / np.sum(weight)))
            if score < best_score - 1e-12:
                best, best_score = subset, score
        return best

    def _design(self, frame: Any) -> np.ndarray:
        """One column per :data:`CANDIDATES` (ms, 1, MB, MB, MB)."""
        weights = frame["weight_mb"].to_numpy(dtype=np.float64)
        misses = miss_fraction(weights, self.curve_mb, self.curve_us_per_mb)
        return np.column_stack([frame[BASE_COLUMN].to_numpy(dtype=np.float64),
                                np.ones(len(weights)), weights,
                                frame["activation_mb"].to_numpy(dtype=np.float64),
                                weights * misses])


def _frame(X: Any) -> Any:
    import pandas as pd

    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
    missing = [c for c in (BASE_COLUMN, *TERMS) if c not in frame.columns]
    if missing:
        raise ConfigError(f"calibration rows lack columns {', '.join(missing)}; build them with "
                          "predictors.estimators.calibration.network_terms")
    return frame


def _constrained_fit(design: np.ndarray, base: np.ndarray, y: np.ndarray, groups: np.ndarray,
                     rows: np.ndarray, columns: Sequence[int], alpha: float) -> np.ndarray:
    """Coefficients (one per design column, zero outside ``columns``) minimising the squared
    relative errors of ``base + design @ coef`` over ``rows``, every group weighing the same,
    plus ``alpha`` times each kept term's squared typical relative contribution, within
    :data:`BOUNDS`."""
    from scipy.optimize import lsq_linear

    coef = np.zeros(design.shape[1])
    if not len(columns) or not len(rows):
        return coef
    columns = list(columns)
    _, inverse, counts = np.unique(groups[rows], return_inverse=True, return_counts=True)
    family_weight = 1.0 / counts[inverse]
    row_weight = np.sqrt(family_weight) / y[rows]
    a = design[np.ix_(rows, columns)] * row_weight[:, None]
    b = (y[rows] - base[rows]) * row_weight
    total = float(np.sum(family_weight))  # the number of families
    typical = np.sqrt(np.sum(a ** 2, axis=0) / total)  # RMS relative contribution per unit
    penalty = np.diag(np.sqrt(alpha * total) * typical)
    lower = [BOUNDS[CANDIDATES[c]][0] for c in columns]
    upper = [BOUNDS[CANDIDATES[c]][1] for c in columns]
    solution = lsq_linear(np.vstack([a, penalty]), np.concatenate([b, np.zeros(len(columns))]),
                          bounds=(lower, upper), method="bvls")
    coef[columns] = solution.x
    return coef
