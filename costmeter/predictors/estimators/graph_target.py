"""Peak memory (or energy) of whole ONNX models from analytic graph features.

:func:`memory_features` reads what the graph says about memory: the largest live set of
activations in execution order (:func:`costmeter.models.onnx.live_memory.peak_live_set`), every
activation's bytes, the weight bytes (all, those of convolutions, those of matrix products),
the input and output bytes, FLOPs and op count. :class:`GraphTargetPredictor` fits a regressor
on them. Its default, a non-negative linear model, reads as "a fixed cost (the runtime's own
footprint), plus so many bytes per convolution weight byte, per matrix-product weight byte and
per live activation byte": it extrapolates to models larger than those it was fitted on, which
a forest cannot. Weights are split by the op reading them because a runtime treats them
differently: ONNX Runtime's CPU provider, for one, repacks convolution weights into its
blocked layout (another copy), and matrix-product weights less so.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError

MEMORY_FEATURES: tuple[str, ...] = (
    "peak_activation_bytes", "activation_bytes", "param_bytes", "conv_weight_bytes",
    "matmul_weight_bytes", "input_bytes", "output_bytes", "flops", "n_ops",
)
LINEAR_FEATURES: tuple[str, ...] = ("conv_weight_bytes", "matmul_weight_bytes", "peak_activation_bytes")
CONV_OPS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"})
MATMUL_OPS = frozenset({"Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"})


def memory_features(graph: Any) -> dict[str, float]:
    """:data:`MEMORY_FEATURES` of an :class:`~costmeter.models.onnx.graph.OpGraph` (bytes,
    FLOPs per batch, a count). Weight bytes by op count each constant input per use."""
    from costmeter.models.onnx.live_memory import peak_live_set

    live = peak_live_set(graph)
    return {
        "peak_activation_bytes": float(live.peak_bytes),
        "activation_bytes": float(live.total_bytes),
        "param_bytes": float(graph.param_bytes),
        "conv_weight_bytes": float(sum(op.weight_bytes for op in graph.ops if op.op_type in CONV_OPS)),
        "matmul_weight_bytes": float(sum(op.weight_bytes for op in graph.ops if op.op_type in MATMUL_OPS)),
        "input_bytes": float(sum(t.nbytes or 0 for t in graph.inputs)),
        "output_bytes": float(sum(t.nbytes or 0 for t in graph.outputs)),
        "flops": float(graph.totals()["flops"]),
        "n_ops": float(len(graph.ops)),
    }


class GraphTargetPredictor(RegressorMixin, BaseEstimator):
    """A target (``peak_memory`` in bytes, or ``energy`` in J) of whole models from a table of
    :data:`MEMORY_FEATURES` (one row per model).

    Parameters: ``target`` (a name of :data:`costmeter.predictors.targets.TARGETS`),
    ``regressor`` (template; default: non-negative least squares with an intercept on
    :data:`LINEAR_FEATURES`), ``device``, ``runtime`` (labels).
    Fitted: ``regressor_``, ``features_`` (columns used), ``n_train_``.
    """

    def __init__(self, target: str = "peak_memory", regressor: Any = None,
                 device: str | None = None, runtime: str | None = None) -> None:
        self.target = target
        self.regressor = regressor
        self.device = device
        self.runtime = runtime

    def _matrix(self, features: Any, names: tuple[str, ...]) -> Any:
        if not hasattr(features, "columns"):
            raise ConfigError("features must be a table with named columns (memory_features rows)")
        missing = [n for n in names if n not in features.columns]
        if missing:
            raise ConfigError(f"feature table lacks {', '.join(missing)}; build it with memory_features")
        return features[list(names)].astype("float64")

    def fit(self, features: Any, y: Any) -> GraphTargetPredictor:
        """Fit on a feature table and the measured target values (the target's unit)."""
        from sklearn.linear_model import LinearRegression

        from costmeter.predictors.targets import get_target

        get_target(self.target)
        values = np.asarray(y, dtype=np.float64).ravel()
        if len(values) != len(features):
            raise ConfigError(f"{len(features)} feature rows but {len(values)} target values")
        if len(values) < 3 or not np.all(np.isfinite(values)):
            raise ConfigError("a graph-level predictor needs at least 3 finite target values")
        if self.regressor is None:
            self.features_ = LINEAR_FEATURES
            self.regressor_ = LinearRegression(positive=True)
        else:
            self.features_ = MEMORY_FEATURES
            self.regressor_ = clone(self.regressor)
        self.regressor_.fit(self._matrix(features, self.features_), values)
        self.n_train_ = len(values)
        return self

    def predict(self, features: Any) -> np.ndarray:
        """Predicted target of each row (the target's unit)."""
        check_is_fitted(self)
        return np.asarray(self.regressor_.predict(self._matrix(features, self.features_)),
                          dtype=np.float64)

    def describe(self) -> str:
        """The fitted linear model in words (or the regressor's name)."""
        check_is_fitted(self)
        coef = getattr(self.regressor_, "coef_", None)
        if coef is None:
            return f"{type(self.regressor_).__name__} on {', '.join(self.features_)}"
        terms = " + ".join(f"{c:.3g} x {n}" for c, n in zip(coef, self.features_))
        return f"{self.target} = {float(self.regressor_.intercept_):.4g} + {terms}"
