"""Latency cost models as scikit-learn estimators (latencies in milliseconds).

- :class:`ModelForest` -- one forest on named model-level features (aggregated kernel features
  or a search space's analytic features). Log-latency target by default; the uncertainty is the
  spread of the per-tree predictions. The project's reference model.
- :class:`FlopsLinear` -- latency = a + b * FLOPs (or MACs): the baseline the others must beat.
- :class:`KernelForest` -- nn-Meter's scheme: one forest per kernel type on per-kernel feature
  tables (``kernel_type -> DataFrame``, index level ``model`` as produced by
  ``predictors.features.stack_tables``), summed per model, with a per-kernel breakdown. Kernel
  types without a forest are never dropped: they raise UnsupportedError, or are priced by a
  FLOPs-linear fallback and flagged (``on_unknown="flops_linear"``).

Conventions: hyper-parameters are constructor arguments, ``fit`` returns ``self``, fitted
attributes end in ``_``. This module imports scikit-learn at import time (the estimators
subclass its base classes); nothing imported by ``import costmeter`` or by the CLI start-up
imports it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_array, check_consistent_length, column_or_1d
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError, UnsupportedError

ALGORITHMS = ("random_forest", "extra_trees")
ON_UNKNOWN = ("error", "flops_linear")
SPARSE_MIN_ROWS = 4  # fewer rows than this: too few for a linear base's penalty to be chosen


class _NamedFeatures:
    """Named-column handling: DataFrames are selected by name, arrays taken in fit order."""

    features: Sequence[str] | None = None

    def _fit_matrix(self, X: Any) -> np.ndarray:
        if hasattr(X, "columns"):
            by_name = {str(c): c for c in X.columns}
            wanted = list(self.features) if self.features is not None else list(by_name)
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise ConfigError(f"feature table lacks columns {missing[:5]}; compute the "
                                  "features with the same feature schema")
            X = X[[by_name[n] for n in wanted]]
            self.feature_names_in_ = np.asarray(wanted, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        arr = check_array(X, dtype=np.float64)
        self.n_features_in_ = arr.shape[1]
        return arr

    def _predict_matrix(self, X: Any, dtype: Any = np.float64) -> np.ndarray:
        check_is_fitted(self)
        fitted = getattr(self, "feature_names_in_", None)
        if hasattr(X, "columns") and fitted is not None:
            by_name = {str(c): c for c in X.columns}
            missing = [n for n in fitted if n not in by_name]
            if missing:
                raise ConfigError("The feature names should match those that were passed during "
                                  f"fit: missing {missing[:5]}")
            X = X[[by_name[n] for n in fitted]]
        arr = check_array(X, dtype=dtype, order="C")
        if arr.shape[1] != self.n_features_in_:
            raise ConfigError(f"X has {arr.shape[1]} features, but {type(self).__name__} is "
                              f"expecting {self.n_features_in_} features as input")
        return arr


class ModelForest(_NamedFeatures, RegressorMixin, BaseEstimator):
    """Random forest (or extra trees) on named features -> latency (ms).

    Parameters: ``algorithm`` (``random_forest`` | ``extra_trees``), ``n_estimators``,
    ``max_features`` (fraction of features tried per split), ``min_samples_leaf``,
    ``log_target`` (fit log-latency, so relative errors weigh alike at every scale),
    ``features`` (named columns to use; ``None`` = every column of the fit table),
    ``n_jobs``, ``random_state``, ``oob`` (random forest only: keep each training row's
    out-of-bag prediction, target space, as ``estimator_.oob_prediction_``).
    Fitted: ``estimator_`` (the scikit-learn forest), ``feature_names_in_``, ``n_features_in_``.
    """

    def __init__(self, algorithm: str = "random_forest", n_estimators: int = 64,
                 max_features: float | str | None = 0.33, min_samples_leaf: int = 2,
                 log_target: bool = True, features: Sequence[str] | None = None,
                 n_jobs: int | None = 1, random_state: int | None = 0, oob: bool = False) -> None:
        self.algorithm = algorithm
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.log_target = log_target
        self.features = features
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.oob = oob

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> ModelForest:
        """Fit on features ``X`` (DataFrame with named columns, or array) and latencies ``y`` (ms)."""
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown forest algorithm {self.algorithm!r}; "
                              f"use one of {', '.join(ALGORITHMS)}")
        arr = self._fit_matrix(X)
        target = column_or_1d(np.asarray(y, dtype=np.float64), warn=True)
        check_consistent_length(arr, target)
        if not np.all(np.isfinite(target)):
            raise ConfigError("latency targets contain NaN or infinity; drop those rows")
        if self.log_target:
            if np.any(target <= 0):
                raise ConfigError(f"{int(np.sum(target <= 0))} latency targets are <= 0; "
                                  "log_target needs positive latencies (or log_target=False)")
            target = np.log(target)
        cls = RandomForestRegressor if self.algorithm == "random_forest" else ExtraTreesRegressor
        extra = {"oob_score": True} if self.oob and cls is RandomForestRegressor else {}
        self.estimator_ = cls(n_estimators=self.n_estimators, max_features=self.max_features,
                              min_samples_leaf=self.min_samples_leaf, n_jobs=self.n_jobs,
                              random_state=self.random_state, **extra)
        self.estimator_.fit(arr, target, sample_weight=sample_weight)
        return self

    def _tree_outputs(self, arr: np.ndarray) -> np.ndarray:
        """Per-tree predictions in target space, shape ``(n_trees, n_rows)``."""
        x32 = np.ascontiguousarray(arr, dtype=np.float32)
        out = np.empty((len(self.estimator_.estimators_), len(x32)))
        for i, tree in enumerate(self.estimator_.estimators_):
            out[i] = tree.predict(x32, check_input=False)
        return out

    def tree_mean_std(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) of the per-tree predictions in target space per row of a
        float32 matrix, in one pass (compiled when numba is installed; see
        :mod:`~costmeter.predictors.estimators.tree_kernel`)."""
        from costmeter.predictors.estimators.tree_kernel import tree_mean_std

        return tree_mean_std(self.estimator_, np.ascontiguousarray(arr, dtype=np.float32))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted latency (ms) per row."""
        arr = self._predict_matrix(X, dtype=np.float32)  # what the trees use: no second copy
        out = self.estimator_.predict(arr)
        return np.exp(out) if self.log_target else out

    def predict_with_uncertainty(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, one-sigma uncertainty ms) per row, from the spread across trees.

        With a log target the spread is taken in log space and mapped back
        (``std_ms = latency_ms * std_log``): a relative error estimate.
        """
        mean, std = self.tree_mean_std(self._predict_matrix(X, dtype=np.float32))
        if self.log_target:
            latency = np.exp(mean)
            return latency, latency * std
        return mean, std

    def feature_importances(self) -> Any:
        """Impurity importances as a pandas Series indexed by feature name, largest first."""
        import pandas as pd

        check_is_fitted(self)
        names = getattr(self, "feature_names_in_", None)
        index = list(names) if names is not None else [f"x{i}" for i in range(self.n_features_in_)]
        return pd.Series(self.estimator_.feature_importances_, index=index).sort_values(
            ascending=False)


class FlopsLinear(_NamedFeatures, RegressorMixin, BaseEstimator):
    """Baseline: latency (ms) = ``intercept_ + slope_ * X[feature]`` (least squares).

    ``feature`` names the FLOPs-like column: ``macs_total`` for search-space features,
    ``flops`` for kernel/model tables; arrays use their first column. The uncertainty is the
    residual standard deviation of the fit.
    """

    def __init__(self, feature: str = "macs_total") -> None:
        self.feature = feature

    def _column(self, arr: np.ndarray) -> np.ndarray:
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return arr[:, 0]
        if self.feature not in list(names):
            raise ConfigError(f"FlopsLinear: column {self.feature!r} is not in the feature table")
        return arr[:, list(names).index(self.feature)]

    def fit(self, X: Any, y: Any) -> FlopsLinear:
        """Fit intercept and slope (latency ms per unit of ``feature``)."""
        arr = self._fit_matrix(X)
        x = self._column(arr)
        target = column_or_1d(np.asarray(y, dtype=np.float64), warn=True)
        check_consistent_length(x, target)
        if not np.all(np.isfinite(target)):
            raise ConfigError("latency targets contain NaN or infinity; drop those rows")
        design = np.column_stack([np.ones_like(x), x])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        self.intercept_, self.slope_ = float(coef[0]), float(coef[1])
        self.residual_std_ = float(np.sqrt(np.mean((target - design @ coef) ** 2)))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted latency (ms) per row."""
        x = self._column(self._predict_matrix(X))
        return self.intercept_ + self.slope_ * x

    def predict_with_uncertainty(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, residual std ms for every row)."""
        pred = self.predict(X)
        return pred, np.full_like(pred, self.residual_std_)


def _model_keys(table: Any) -> np.ndarray:
    """Model id of each kernel row: index level ``model`` if present, else one model ``""``."""
    index = table.index
    if getattr(index, "names", None) and "model" in index.names:
        return np.asarray(index.get_level_values("model"), dtype=object)
    return np.full(len(table), "", dtype=object)


class KernelForest(BaseEstimator):
    """One :class:`ModelForest` per kernel type, summed into model latencies (nn-Meter style).

    ``fit(tables, kernel_latency_ms)`` takes ``kernel_type -> DataFrame`` of named per-kernel
    features and ``kernel_type -> latencies (ms)`` aligned with the rows (for example from
    kernel micro-benchmarks). ``predict(tables)`` returns one latency per model (index level
    ``model`` of the tables). ``forest`` is the template estimator cloned per kernel type;
    ``flops_feature`` names the column used by the FLOPs-linear fallback for kernel types
    without a forest when ``on_unknown="flops_linear"`` (``"error"`` raises UnsupportedError).
    ``sparse_forest`` (optional) is the template for kernel types with fewer than
    ``sparse_below`` training rows (and at least :data:`SPARSE_MIN_ROWS`): a forest alone on a handful of rows answers with an average
    of them in log space whatever the size asked about (six fully connected layers from 48 x 8
    to 1600 x 1248: every classifier priced at 0.026 ms where a network runs it in 0.15-0.43 ms),
    while a model with a linear base in FLOPs and bytes (:class:`~costmeter.predictors.
    estimators.additive.AdditiveForest`) follows the size between and beyond them.
    Fitted: ``forests_`` (type -> fitted estimator), ``fallback_`` (FlopsLinear or None),
    ``kernel_types_``.
    """

    def __init__(self, forest: Any = None, on_unknown: str = "error",
                 flops_feature: str = "flops", sparse_forest: Any = None,
                 sparse_below: int = 0) -> None:
        self.forest = forest
        self.on_unknown = on_unknown
        self.flops_feature = flops_feature
        self.sparse_forest = sparse_forest
        self.sparse_below = sparse_below

    def fit(self, tables: Mapping[str, Any], kernel_latency_ms: Mapping[str, Any]) -> KernelForest:
        """Fit one forest per kernel type present in both mappings."""
        if self.on_unknown not in ON_UNKNOWN:
            raise ConfigError(f"on_unknown must be one of {', '.join(ON_UNKNOWN)}, "
                              f"got {self.on_unknown!r}")
        template = self.forest if self.forest is not None else ModelForest()
        self.forests_: dict[str, Any] = {}
        pooled_x, pooled_y = [], []
        for kernel_type, table in tables.items():
            if kernel_type not in kernel_latency_ms or not len(table):
                continue
            y = np.asarray(kernel_latency_ms[kernel_type], dtype=np.float64)
            if len(y) != len(table):
                raise ConfigError(f"kernel type {kernel_type}: {len(table)} feature rows but "
                                  f"{len(y)} latencies")
            sparse = (self.sparse_forest is not None
                      and SPARSE_MIN_ROWS <= len(table) < self.sparse_below)
            self.forests_[kernel_type] = clone(self.sparse_forest if sparse else template).fit(table, y)
            if self.flops_feature in table.columns:
                pooled_x.append(np.asarray(table[self.flops_feature], dtype=np.float64))
                pooled_y.append(y)
        if not self.forests_:
            raise ConfigError("no kernel type has both features and latencies; nothing to fit")
        self.kernel_types_ = tuple(sorted(self.forests_))
        self.fallback_ = None
        if pooled_x:
            import pandas as pd

            frame = pd.DataFrame({self.flops_feature: np.concatenate(pooled_x)})
            self.fallback_ = FlopsLinear(feature=self.flops_feature).fit(frame, np.concatenate(pooled_y))
        return self

    def predict_kernels(self, tables: Mapping[str, Any]) -> Any:
        """Per-kernel predictions: DataFrame with ``model``, ``kernel_type``, ``kernel``,
        ``latency_ms``, ``std_ms`` and ``priced_by`` (``forest``, ``flops_linear``, or
        ``negligible``: a kernel type of ``NEGLIGIBLE_TYPES`` without a forest, at
        ``NEGLIGIBLE_LATENCY_MS``)."""
        import pandas as pd

        from costmeter.predictors.kernels.fuse import NEGLIGIBLE_LATENCY_MS, NEGLIGIBLE_TYPES

        check_is_fitted(self)
        unknown = sorted(t for t, df in tables.items()
                         if t not in self.forests_ and t not in NEGLIGIBLE_TYPES and len(df))
        if unknown and (self.on_unknown == "error" or self.fallback_ is None
                        or any(self.flops_feature not in tables[t].columns for t in unknown)):
            detail = ", ".join(f"{t} ({len(tables[t])} kernels)" for t in unknown)
            raise UnsupportedError(f"no kernel forest for kernel types {detail}; measure kernels "
                                   "of these types and refit, or use on_unknown='flops_linear'")
        parts = []
        for kernel_type, table in tables.items():
            if not len(table):
                continue
            if kernel_type in self.forests_:
                est, priced_by = self.forests_[kernel_type], "forest"
                pred, std = est.predict_with_uncertainty(table)
            elif kernel_type in NEGLIGIBLE_TYPES:
                priced_by = "negligible"
                pred, std = np.full(len(table), NEGLIGIBLE_LATENCY_MS), np.zeros(len(table))
            else:
                est, priced_by = self.fallback_, "flops_linear"
                pred, std = est.predict_with_uncertainty(table[[self.flops_feature]])
            kernels = (table.index.get_level_values(-1) if table.index.nlevels > 1
                       else table.index)
            parts.append(pd.DataFrame({
                "model": _model_keys(table), "kernel_type": kernel_type,
                "kernel": np.asarray(kernels, dtype=object).astype(str),
                "latency_ms": pred, "std_ms": std, "priced_by": priced_by}))
        if not parts:
            return pd.DataFrame(columns=["model", "kernel_type", "kernel", "latency_ms",
                                         "std_ms", "priced_by"])
        return pd.concat(parts, ignore_index=True)

    def predict_with_uncertainty(self, tables: Mapping[str, Any]) -> Any:
        """Per model: DataFrame (index ``model``) with ``latency_ms``, ``std_ms`` (kernel
        uncertainties combined as independent: root of the summed variances) and
        ``fallback_share`` (share of the latency priced by the FLOPs-linear fallback)."""
        kernels = self.predict_kernels(tables)
        kernels["var"] = kernels["std_ms"] ** 2
        kernels["fallback_ms"] = np.where(kernels["priced_by"] == "flops_linear",
                                          kernels["latency_ms"], 0.0)
        out = kernels.groupby("model", sort=False)[["latency_ms", "var", "fallback_ms"]].sum()
        out["std_ms"] = np.sqrt(out.pop("var"))
        out["fallback_share"] = out.pop("fallback_ms") / out["latency_ms"].where(
            out["latency_ms"] != 0, np.nan)
        return out[["latency_ms", "std_ms", "fallback_share"]]

    def predict(self, tables: Mapping[str, Any]) -> Any:
        """Predicted latency (ms) per model, as a pandas Series indexed by model."""
        return self.predict_with_uncertainty(tables)["latency_ms"]

    def breakdown(self, tables: Mapping[str, Any]) -> Any:
        """Per model and kernel type: ``latency_ms``, ``count`` and ``share`` of the model total."""
        kernels = self.predict_kernels(tables)
        out = kernels.groupby(["model", "kernel_type"], sort=False)["latency_ms"].agg(
            latency_ms="sum", count="size")
        totals = out.groupby(level="model")["latency_ms"].transform("sum")
        out["share"] = out["latency_ms"] / totals
        return out
