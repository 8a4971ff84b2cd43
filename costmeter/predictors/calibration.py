"""Network-level calibration of summed kernel latencies: what a network pays that its kernels,
timed one by one, do not (or the reverse).

A sum of micro-benchmarked kernels misses effects that belong to the whole network. On ONNX
Runtime's x86 CPU provider: layout conversions (NCHWc reorders) appear only where the layout
changes; weights that stay in cache while a micro-benchmark repeats one kernel come from memory
in a network whose other kernels ran in between, and whether they do depends on the network's
whole weight footprint against the last-level cache. :func:`network_terms` gives the
quantities per network from its kernel graph; :class:`TrafficCalibration` fits a small cache
model on them against measured networks; :func:`cache_sizes` reads the cache sizes it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError, UnsupportedError

BASE_COLUMN = "kernel_sum_ms"
TERMS: tuple[str, ...] = ("weight_mb", "activation_mb")
# candidate thresholds of a network's weights, as fractions of the last-level cache, beyond which
# its weights are taken to stream from memory on every run
THRESHOLD_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_NOT_EXECUTED = ("constant",)  # kernels a runtime folds at load time


@dataclass(frozen=True)
class CacheSizes:
    """A CPU core's private L2 and the shared last-level cache, in bytes."""

    l2_bytes: int
    l3_bytes: int


def _size_bytes(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def cache_sizes(root: Path | str = SYSFS_CACHE) -> CacheSizes:
    """This machine's L2 and last-level cache sizes (bytes) from sysfs.

    Raises UnsupportedError when sysfs does not list a unified level-2 cache; pass
    :class:`CacheSizes` explicitly then (for a remote device, its own figures)."""
    levels: dict[int, int] = {}
    for index in sorted(Path(root).glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind == "Unified":
            levels[level] = size
    if 2 not in levels:
        raise UnsupportedError(f"no unified L2 cache listed under {root}; give the cache sizes "
                               "explicitly (CacheSizes(l2_bytes=..., l3_bytes=...))")
    return CacheSizes(levels[2], levels.get(max(levels), levels[2]))


def network_terms(graph: Any) -> dict[str, float]:
    """Per-network quantities of a kernel graph: ``weight_mb`` (weights of the executed kernels,
    MB = 1e6 bytes), ``activation_mb`` (activations read and written by kernels whose output is
    an image, 4-D, tensor, MB) and ``kernels`` (executed kernels)."""
    from costmeter.predictors.features import kernel_features

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
                  + c * weight_mb * [weight_mb > threshold_mb_] + intercept

    ``a``: every weight comes from beyond the L2 once per run (a micro-benchmark repeating one
    kernel keeps it there); ``b``: activations of large feature maps spill the same way;
    ``c``: when the network's weights exceed what the last-level cache keeps between runs, a
    cyclic pass over them misses on every access (least-recently-used replacement), so *all*
    of them stream from memory -- a step, not a slope. The threshold is chosen among
    ``fractions`` of ``llc_mb`` (the last-level cache, MB) by leave-one-group-out
    cross-validation on the measured networks (share within ``tolerance``, ties by mean
    relative error), so it is picked on families other than the one scored.

    ``fit(X, y, groups)``: ``X`` a DataFrame with :data:`BASE_COLUMN` (ms) and :data:`TERMS`
    (:func:`network_terms`), ``y`` measured latencies (ms), ``groups`` each network's family
    (without: every row its own group). Least squares on relative errors, each group weighing
    the same. Fitted: ``threshold_mb_``, ``coef_`` (ms per MB: a, b, c), ``intercept_ms_``,
    ``cv_within_`` (threshold MB -> cross-validated share), ``cv_rel_rmse_`` (root mean square
    of the held-out relative errors at the chosen threshold: the calibrated prediction's
    one-sigma relative uncertainty on an unseen family), ``n_groups_``, ``base_range_ms_`` (the
    smallest and largest kernel sum among the networks: :meth:`in_range` tells whether a
    network lies inside, where the correction was fitted rather than extrapolated).
    """

    def __init__(self, llc_mb: float = 32.0, fractions: Sequence[float] = THRESHOLD_FRACTIONS,
                 tolerance: float = 0.10) -> None:
        self.llc_mb = llc_mb
        self.fractions = fractions
        self.tolerance = tolerance

    def fit(self, X: Any, y: Any, groups: Any = None) -> TrafficCalibration:
        """Choose the threshold and fit the coefficients (see the class docstring)."""
        from sklearn.model_selection import LeaveOneGroupOut

        frame, y = _frame(X), np.asarray(y, dtype=np.float64)
        if len(frame) != len(y) or len(y) < 4:
            raise ConfigError(f"calibration needs at least 4 measured networks with one latency "
                              f"each; got {len(frame)} rows and {len(y)} latencies")
        if not np.all(np.isfinite(y) & (y > 0)):
            raise ConfigError("calibration latencies must be positive and finite")
        if not self.llc_mb > 0 or not self.fractions:
            raise ConfigError("calibration needs a positive last-level cache size and at least "
                              "one threshold fraction")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(set(groups.tolist())) < 2:
            raise ConfigError("calibration needs networks of at least 2 families (groups) to "
                              "choose its threshold on families it was not fitted on")
        splits = list(LeaveOneGroupOut().split(frame, y, groups))
        scores = {}
        for fraction in self.fractions:
            threshold = fraction * self.llc_mb
            design = _design(frame, threshold)
            within, errors, squares = [], [], []
            for train, test in splits:
                model = _weighted_fit(design[train], frame, y, groups, train)
                relative = np.abs((frame[BASE_COLUMN].to_numpy()[test] + model.predict(design[test]))
                                  / y[test] - 1)
                within.append(float(np.mean(relative <= self.tolerance)))
                errors.append(float(np.mean(relative)))
                squares.extend((relative ** 2).tolist())
            scores[threshold] = (float(np.mean(within)), -float(np.mean(errors)),
                                 float(np.sqrt(np.mean(squares))))
        self.threshold_mb_ = float(max(scores, key=lambda t: scores[t][:2]))
        self.cv_within_ = {float(t): score[0] for t, score in scores.items()}
        self.cv_rel_rmse_ = scores[self.threshold_mb_][2]
        self.n_groups_ = int(len(set(groups.tolist())))
        base = frame[BASE_COLUMN].to_numpy(dtype=np.float64)
        self.base_range_ms_ = (float(base.min()), float(base.max()))
        model = _weighted_fit(_design(frame, self.threshold_mb_), frame, y, groups,
                              np.arange(len(y)))
        self.coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.intercept_ms_ = float(model.intercept_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Calibrated latencies (ms), one per row of ``X``."""
        check_is_fitted(self)
        frame = _frame(X)
        return (frame[BASE_COLUMN].to_numpy(dtype=np.float64)
                + _design(frame, self.threshold_mb_) @ self.coef_ + self.intercept_ms_)

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
        return (f"{a:+.2f} us per MB of weights, {b:+.2f} us per MB of activations, {c:+.2f} us "
                f"per MB of weights when they exceed {self.threshold_mb_:.1f} MB, "
                f"{self.intercept_ms_ * 1e3:+.1f} us (threshold chosen by leave-one-family-out "
                f"over {self.n_groups_} families: {self.cv_within_[self.threshold_mb_]:.0%} "
                f"within ±{self.tolerance:.0%})")


def _frame(X: Any) -> Any:
    import pandas as pd

    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
    missing = [c for c in (BASE_COLUMN, *TERMS) if c not in frame.columns]
    if missing:
        raise ConfigError(f"calibration rows lack columns {', '.join(missing)}; build them with "
                          "predictors.calibration.network_terms")
    return frame


def _design(frame: Any, threshold_mb: float) -> np.ndarray:
    weights = frame["weight_mb"].to_numpy(dtype=np.float64)
    return np.column_stack([weights, frame["activation_mb"].to_numpy(dtype=np.float64),
                            weights * (weights > threshold_mb)])


def _weighted_fit(design: np.ndarray, frame: Any, y: np.ndarray, groups: np.ndarray,
                  rows: np.ndarray) -> LinearRegression:
    """Least squares of ``y - kernel_sum`` on ``design`` plus an intercept over ``rows``,
    minimising relative errors, every group weighing the same."""
    _, inverse, counts = np.unique(groups[rows], return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse] / y[rows] ** 2
    residual = y[rows] - frame[BASE_COLUMN].to_numpy(dtype=np.float64)[rows]
    return LinearRegression().fit(design, residual, sample_weight=weight)
