"""Network-level calibration of summed kernel latencies: what a network pays that its kernels,
timed one by one, do not (or the reverse).

A sum of micro-benchmarked kernels misses effects that belong to the whole network. A
micro-benchmark repeating one kernel keeps its weights in cache; in a network, the other kernels
ran in between, and whether the weights are still cached depends on the network's whole weight
footprint against the caches. On ONNX Runtime's x86 CPU provider layout conversions (NCHWc
reorders) also appear only where the layout changes. :func:`network_terms` gives the quantities
per network from its kernel graph; :func:`costmeter.harness.probes.cache.measure_cache_curve`
measures how this machine's read cost grows with the working set (a cyclic pass over many
buffers, as a network's weights are read once per run), through the protocol like any probe;
:class:`TrafficCalibration` fits a small cache model on both against measured networks.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError

BASE_COLUMN = "kernel_sum_ms"
TERMS: tuple[str, ...] = ("weight_mb", "activation_mb")
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
    """A cache model on top of a kernel sum, fitted on measured networks:

        latency = kernel_sum + a * weight_mb + b * activation_mb
                  + c * weight_mb * miss(weight_mb) + intercept

    ``a``: every weight comes from beyond the small caches once per run (a micro-benchmark
    repeating one kernel keeps it there); ``b``: activations of large feature maps spill the
    same way; ``c``: the share of the network's weights that the last-level cache cannot keep
    from one run to the next streams from memory -- ``miss`` is :func:`miss_fraction` of the
    device's measured cache curve (``curve_mb``, ``curve_us_per_mb``; from
    :func:`measure_cache_curve`), so no threshold is fitted.

    ``fit(X, y, groups)``: ``X`` a DataFrame with :data:`BASE_COLUMN` (ms) and :data:`TERMS`
    (:func:`network_terms`), ``y`` measured latencies (ms), ``groups`` each network's family
    (without: every row its own group). Least squares on relative errors, each group weighing
    the same (a family with many small networks would rule otherwise). Fitted: ``coef_`` (ms per
    MB: a, b, c), ``intercept_ms_``, ``cv_within_`` and ``cv_rel_rmse_`` (leave-one-group-out
    share within ``tolerance`` and root mean square relative error: the calibrated prediction's
    one-sigma relative uncertainty on an unseen family), ``n_groups_``, ``base_range_ms_`` (the
    smallest and largest kernel sum among the networks: :meth:`in_range` tells whether a
    network lies inside, where the correction was fitted rather than extrapolated).
    """

    def __init__(self, curve_mb: Sequence[float] = (), curve_us_per_mb: Sequence[float] = (),
                 tolerance: float = 0.10) -> None:
        self.curve_mb = curve_mb
        self.curve_us_per_mb = curve_us_per_mb
        self.tolerance = tolerance

    def fit(self, X: Any, y: Any, groups: Any = None) -> TrafficCalibration:
        """Fit the coefficients and cross-validate them (see the class docstring)."""
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
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(set(groups.tolist())) < 2:
            raise ConfigError("calibration needs networks of at least 2 families (groups), so "
                              "that its error is measured on families it was not fitted on")
        design = self._design(frame)
        base = frame[BASE_COLUMN].to_numpy(dtype=np.float64)
        within, squares = [], []
        for train, test in LeaveOneGroupOut().split(frame, y, groups):
            model = _weighted_fit(design, base, y, groups, train)
            relative = np.abs((base[test] + model.predict(design[test])) / y[test] - 1)
            within.append(float(np.mean(relative <= self.tolerance)))
            squares.extend((relative ** 2).tolist())
        self.cv_within_ = float(np.mean(within))
        self.cv_rel_rmse_ = float(np.sqrt(np.mean(squares)))
        self.n_groups_ = int(len(set(groups.tolist())))
        self.base_range_ms_ = (float(base.min()), float(base.max()))
        model = _weighted_fit(design, base, y, groups, np.arange(len(y)))
        self.coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.intercept_ms_ = float(model.intercept_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Calibrated latencies (ms), one per row of ``X``."""
        check_is_fitted(self)
        frame = _frame(X)
        return (frame[BASE_COLUMN].to_numpy(dtype=np.float64) + self._design(frame) @ self.coef_
                + self.intercept_ms_)

    def in_range(self, X: Any) -> np.ndarray:
        """Boolean per row: its kernel sum lies within those of the calibration networks."""
        check_is_fitted(self)
        base = _frame(X)[BASE_COLUMN].to_numpy(dtype=np.float64)
        low, high = self.base_range_ms_
        return (base >= low) & (base <= high)

    def describe(self) -> str:
        """One line: the fitted correction, with units."""
        check_is_fitted(self)
        a, b, c = self.coef_ * 1e3
        misses = miss_fraction([16.0, 32.0], self.curve_mb, self.curve_us_per_mb)
        return (f"{a:+.2f} us per MB of weights, {b:+.2f} us per MB of activations, {c:+.2f} us "
                f"per MB of weights missing the cache (measured: {misses[0]:.0%} of 16 MB, "
                f"{misses[1]:.0%} of 32 MB), {self.intercept_ms_ * 1e3:+.1f} us; leave-one-family-"
                f"out over {self.n_groups_} families: {self.cv_within_:.0%} within "
                f"±{self.tolerance:.0%}")

    def _design(self, frame: Any) -> np.ndarray:
        weights = frame["weight_mb"].to_numpy(dtype=np.float64)
        misses = miss_fraction(weights, self.curve_mb, self.curve_us_per_mb)
        return np.column_stack([weights, frame["activation_mb"].to_numpy(dtype=np.float64),
                                weights * misses])


def _frame(X: Any) -> Any:
    import pandas as pd

    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
    missing = [c for c in (BASE_COLUMN, *TERMS) if c not in frame.columns]
    if missing:
        raise ConfigError(f"calibration rows lack columns {', '.join(missing)}; build them with "
                          "predictors.calibration.network_terms")
    return frame


def _weighted_fit(design: np.ndarray, base: np.ndarray, y: np.ndarray, groups: np.ndarray,
                  rows: np.ndarray) -> LinearRegression:
    """Least squares of ``y - base`` on ``design`` plus an intercept over ``rows``, minimising
    relative errors, every group weighing the same."""
    _, inverse, counts = np.unique(groups[rows], return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse] / y[rows] ** 2
    return LinearRegression().fit(design[rows], y[rows] - base[rows], sample_weight=weight)
