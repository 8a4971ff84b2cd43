"""Whole-network latency from kernel micro-benchmarks: :class:`NetworkPredictor`.

The kernel-level forests (:class:`~costmeter.predictors.estimators.forest.KernelForest`, one per
kernel type) price every kernel a runtime runs for a network; their sum plus the measured
per-run overhead is nn-Meter's prediction. Optionally, a :class:`~costmeter.predictors.
estimators.calibration.TrafficCalibration` fitted on networks measured on the same device adds
what a network pays that its kernels timed one by one do not (weights and activations coming
from beyond the caches). This is what ``bench predictor build`` and ``bench kernels fit``
write and ``bench predict`` reads.

A network is given either as a fused kernel graph or as its
:class:`~costmeter.predictors.estimators.rows.NetworkRows` -- the per-kernel features and network
terms, which is all a prediction reads.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.calibration import BASE_COLUMN, TrafficCalibration

# Kernel models (one per kernel type), by name; ``bench predictor build`` fits both and keeps one
# (:func:`~costmeter.predictors.estimators.kernel_choice.choose_kernel_model`: out of family on its
# calibration networks when that lead is beyond noise, else on its kernel samples out of fold).
#   additive -- an AdditiveForest for every kernel type: a ridge base on LINEAR_KERNEL_FEATURES
#               (FLOPs, bytes read and written, weight bytes) times a forest correction. A forest
#               alone answers between its training kernels with averages of their neighbours: a
#               build's few hundred kernels spread over three orders of magnitude leave the small
#               kernels of 32-pixel networks priced by larger ones (NB201's 3x3 convolutions at
#               32 channels, 16x16: measured 28 us in context, priced 45 us). Refitted on the
#               kernels and networks of one fp32 30-minute build (ONNX Runtime, 1 thread, one
#               pinned core), kernel sums within +-10% went from 7.5% to 80% of NB201 networks,
#               47.5% to 77.5% of ResNets and 80% to 90% of MobileNetV2s, and the build's
#               leave-one-family-out estimate from 48% to 82.5%, against 84.6% measured on 39
#               networks of held-out families (Spearman 0.991 -> 0.995).
#   forest   -- a ModelForest per kernel type, the additive model only for types with fewer
#               than SPARSE_KERNEL_ROWS kernels. On the int8 build of the same machine it was
#               the better one (estimate 34% against the additive model's 27%; 59% against 36%
#               on the held-out families).
KERNEL_MODELS: tuple[str, ...] = ("additive", "forest")
SPARSE_KERNEL_ROWS = 20
LINEAR_KERNEL_FEATURES: tuple[str, ...] = ("flops", "bytes_read", "bytes_written", "weight_bytes")
from costmeter.predictors.estimators.conformal import (METHOD_KERNEL, ConformalCalibration,
                                                       log_and_spread)
from costmeter.predictors.estimators.rows import NetworkRows, as_rows, stack_rows

__all__ = ["NetworkPredictor", "NetworkRows", "as_rows", "stack_rows"]

class NetworkPredictor(BaseEstimator):
    """Kernel-forest sum (+ per-run overhead, + optional calibration) per network.

    ``kernel_forest``: the template :class:`KernelForest` (cloned and fitted); ``overhead_ms``:
    the runtime's per-run cost of an almost empty model (ms), added once per network;
    ``calibration``: a :class:`TrafficCalibration` template, fitted when :meth:`fit` is given
    measured networks. Fitted: ``kernel_forest_``, ``calibration_`` (None without networks),
    ``conformal_`` (the interval calibration, :func:`_interval_calibration`; None without).
    """

    def __init__(self, kernel_forest: Any = None, overhead_ms: float = 0.0,
                 calibration: Any = None) -> None:
        self.kernel_forest = kernel_forest
        self.overhead_ms = overhead_ms
        self.calibration = calibration

    def fit(self, tables: Mapping[str, Any], kernel_latency_ms: Mapping[str, Any],
            graphs: Mapping[str, Any] | None = None, network_ms: Any = None,
            groups: Any = None) -> NetworkPredictor:
        """Fit the kernel forests on micro-benchmarks (``kernel_type -> features`` and
        ``kernel_type -> latencies ms``); with ``graphs`` (name -> kernel graph or
        :class:`NetworkRows`) and their measured ``network_ms`` (same order), also the
        calibration, ``groups`` naming each network's family."""
        if not np.isfinite(self.overhead_ms) or self.overhead_ms < 0:
            raise ConfigError(f"overhead_ms must be a finite non-negative number, got {self.overhead_ms}")
        template = self.kernel_forest if self.kernel_forest is not None else default_kernel_forest()
        self.kernel_forest_ = clone(template).fit(tables, kernel_latency_ms)
        self.calibration_ = None
        self.conformal_ = None
        if graphs is not None:
            if network_ms is None or len(network_ms) != len(graphs):
                raise ConfigError(f"calibration needs one measured latency per network: "
                                  f"{len(graphs)} networks, "
                                  f"{0 if network_ms is None else len(network_ms)} latencies")
            frame = self._sums(graphs)
            template = self.calibration if self.calibration is not None else TrafficCalibration()
            measured = np.asarray(network_ms, dtype=np.float64)
            self.calibration_ = clone(template).fit(frame, measured, groups)
            self.conformal_ = _interval_calibration(self.calibration_, frame, measured)
        return self

    def interval_calibration(self) -> ConformalCalibration:
        """The fitted conformal calibration; ConfigError when the predictor was fitted without
        measured networks (or by an older costmeter)."""
        check_is_fitted(self)
        conformal = getattr(self, "conformal_", None)
        if conformal is None:
            raise ConfigError("this kernel-level predictor has no interval calibration (it was "
                              "fitted without measured networks, or by an older costmeter); build "
                              "it with `bench predictor build` or `bench kernels fit --calibrate-on`")
        return conformal

    def predict_interval(self, graphs: Mapping[str, Any], coverage: float = 0.9) -> Any:
        """:meth:`predict_frame` plus ``lower_ms`` and ``upper_ms``: a conformal interval holding
        the measured latency with probability >= ``coverage`` (``inf`` upper bound when the
        calibration has too few networks for that level)."""
        conformal = self.interval_calibration()
        frame = self.predict_frame(graphs)
        frame["lower_ms"], frame["upper_ms"] = conformal.interval(
            frame["latency_ms"], frame["kernel_std_ms"], coverage)
        return frame

    def satisfies(self, graphs: Mapping[str, Any], budget_ms: float, confidence: float = 0.9) -> Any:
        """Per network (a boolean Series): the measured latency stays within ``budget_ms`` with
        probability >= ``confidence`` (the one-sided conformal upper bound is <= the budget)."""
        import pandas as pd

        from costmeter.predictors.lut.table import check_budget

        budget = check_budget(budget_ms)
        conformal = self.interval_calibration()
        frame = self.predict_frame(graphs)
        upper = conformal.upper(frame["latency_ms"], frame["kernel_std_ms"], confidence)
        return pd.Series(upper <= budget, index=frame.index, name="within")

    def interval_state(self) -> dict[str, Any] | None:
        """The interval calibration for a manifest's extra (method, data, sorted scores, floor;
        see :meth:`ConformalCalibration.state`), None without one."""
        conformal = getattr(self, "conformal_", None)
        return conformal.state() if conformal is not None else None

    def predict_frame(self, graphs: Mapping[str, Any]) -> Any:
        """Per network (index: the names of ``graphs``): ``latency_ms``, ``std_ms``,
        ``kernel_sum_ms`` (forests plus overhead), ``fallback_share`` (share priced by the
        FLOPs-linear fallback, kernel types without a forest), the calibration terms,
        ``calibrated`` (a correction was applied) and ``in_range`` (the kernel sum lies within
        the calibration networks'; a smaller network's correction is capped at the
        calibration's cross-validated error).

        ``std_ms`` combines the kernels' spread across trees (independent; alone in
        ``kernel_std_ms``, the scale of the conformal intervals) and, when calibrated, the
        calibration's cross-validated relative error on unseen families."""
        check_is_fitted(self)
        frame = self._sums(graphs)
        frame["latency_ms"] = frame[BASE_COLUMN]
        frame["kernel_std_ms"] = frame["std_ms"]
        frame["calibrated"] = False
        frame["in_range"] = False
        if self.calibration_ is None:
            return frame
        frame["latency_ms"] = self.calibration_.predict(frame)
        frame["calibrated"] = bool(len(self.calibration_.terms_))
        frame["in_range"] = self.calibration_.in_range(frame)
        calibration_std = self.calibration_.cv_rel_rmse_ * frame["latency_ms"]
        frame["std_ms"] = np.sqrt(frame["std_ms"] ** 2 + calibration_std ** 2)
        return frame

    def predict(self, graphs: Mapping[str, Any]) -> Any:
        """Predicted latency (ms) per network, a pandas Series indexed by name."""
        return self.predict_frame(graphs)["latency_ms"]

    def breakdown(self, graphs: Mapping[str, Any]) -> Any:
        """Per network and kernel type: summed kernel latency (ms), count and share."""
        check_is_fitted(self)
        return self.kernel_forest_.breakdown(stack_rows(graphs))

    def describe(self) -> str:
        """One line: what the prediction is made of."""
        check_is_fitted(self)
        text = (f"kernel forests for {len(self.kernel_forest_.kernel_types_)} kernel types + "
                f"{self.overhead_ms * 1e3:.1f} us per-run overhead")
        return text + (f"; calibrated: {self.calibration_.describe()}" if self.calibration_ is not None
                       else "; not calibrated")

    def _sums(self, graphs: Mapping[str, Any]) -> Any:
        import pandas as pd

        if not graphs:
            raise ConfigError("no networks to predict")
        rows = {name: as_rows(network) for name, network in graphs.items()}
        sums = self.kernel_forest_.predict_with_uncertainty(stack_rows(rows))
        names = list(rows)
        frame = pd.DataFrame({m: rows[m].terms for m in names}).T.astype("float64")
        frame[BASE_COLUMN] = sums["latency_ms"].reindex(names).fillna(0.0) + self.overhead_ms
        frame["std_ms"] = sums["std_ms"].reindex(names).fillna(0.0)
        frame["fallback_share"] = sums["fallback_share"].reindex(names).fillna(0.0)
        frame.index.name = "model"
        return frame


def default_kernel_forest(n_estimators: int = 64) -> Any:
    """The kernel models a predictor fits by default: :data:`KERNEL_MODELS` ``"additive"``."""
    return kernel_models(n_estimators)["additive"]


def kernel_models(n_estimators: int = 64) -> dict[str, Any]:
    """The kernel models a build chooses between, by name (see :data:`KERNEL_MODELS`)."""
    from costmeter.predictors.estimators.additive import AdditiveForest
    from costmeter.predictors.estimators.forest import KernelForest, ModelForest

    additive = AdditiveForest(linear_features=LINEAR_KERNEL_FEATURES, n_estimators=n_estimators)
    return {"additive": KernelForest(additive, on_unknown="flops_linear"),
            "forest": KernelForest(ModelForest(n_estimators=n_estimators), on_unknown="flops_linear",
                                   sparse_forest=additive, sparse_below=SPARSE_KERNEL_ROWS)}


def _interval_calibration(calibration: TrafficCalibration, frame: Any,
                          measured: np.ndarray) -> ConformalCalibration:
    """Split-conformal scores of the calibration networks: each network's measured latency
    against its leave-one-family-out prediction (``calibration.cv_predicted_``), on the log
    scale, normalised by the relative spread its kernels' forests give (``std_ms / latency``),
    floored at a quarter of the median spread."""
    predicted = np.maximum(np.asarray(calibration.cv_predicted_, dtype=np.float64), 1e-12)
    pred_log, spread = log_and_spread(predicted, frame["std_ms"].to_numpy(dtype=np.float64))
    return ConformalCalibration().fit(
        pred_log, spread, measured, method=METHOD_KERNEL,
        data=f"the {len(measured)} calibration networks of {calibration.n_groups_} families, each "
             "predicted by a calibration fitted without its family")
