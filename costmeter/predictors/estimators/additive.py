"""A linear base plus a forest on its residuals: latency models for additive search spaces.

Where a network's latency is close to a sum of per-layer costs (FBNet's layers, NB201's
edges), a forest on the architecture's features needs many splits to rebuild a sum, while a
ridge regression on the one-hot encoding *is* that sum (a per-layer lookup table fitted by least
squares). :class:`AdditiveForest` fits both in turn:

    latency_ms(x) = base(x) * exp(f(x)),   base(x) = b + sum_j w_j * z_j(x)

``base`` is a ridge regression of the latency (ms) on the linear features ``z`` (standardised;
relative least squares by default: weights ``1 / y**2``, so that a 1 ms and a 50 ms network
count alike; penalty chosen by efficient leave-one-out over ``alphas``); ``f`` is a
:class:`~costmeter.predictors.estimators.forest.ModelForest` on all features fitted to the log
ratio ``log(y / base)``, which keeps what the sum misses (interactions, runtime effects) and
gives the uncertainty: the spread of its trees, on the log scale. Where latency is not additive
the base is a rough first guess and the forest does the work, as a plain forest would.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_consistent_length, column_or_1d
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.forest import ModelForest, _NamedFeatures

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
BASE_FLOOR_SHARE = 0.5
"""The base is floored at this share of the smallest training latency (a linear fit can dip
below zero far from its data; the forest corrects the rest)."""


class AdditiveForest(_NamedFeatures, RegressorMixin, BaseEstimator):
    """Ridge base on ``linear_features`` times a forest correction (see the module docstring).

    Parameters: ``linear_features`` (names of the columns of the sum; ``None``: every column),
    ``alphas`` (ridge penalties tried), ``relative`` (weights ``1 / y**2``), ``features`` (columns
    the whole model uses; ``None``: every column of the fit table), forest settings as
    :class:`ModelForest` (``algorithm``, ``n_estimators``, ``max_features``,
    ``min_samples_leaf``, ``n_jobs``, ``random_state``).
    Fitted: ``linear_columns_`` (indices into the model's columns), ``coef_`` (ms per unit of
    each linear column, standardisation folded in), ``intercept_`` (ms), ``alpha_``,
    ``base_floor_ms_``, ``estimator_`` (the residual ModelForest), ``feature_names_in_``,
    ``n_features_in_``.
    """

    def __init__(self, linear_features: Sequence[str] | None = None,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, relative: bool = True,
                 features: Sequence[str] | None = None, algorithm: str = "random_forest",
                 n_estimators: int = 64, max_features: float | str | None = 0.33,
                 min_samples_leaf: int = 2, n_jobs: int | None = 1,
                 random_state: int | None = 0) -> None:
        self.linear_features = linear_features
        self.alphas = alphas
        self.relative = relative
        self.features = features
        self.algorithm = algorithm
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _linear_columns(self) -> np.ndarray:
        names = getattr(self, "feature_names_in_", None)
        if self.linear_features is None:
            return np.arange(self.n_features_in_, dtype=np.int64)
        if names is None:
            raise ConfigError("linear_features names columns: fit on a DataFrame with named columns")
        known = {str(n): i for i, n in enumerate(names)}
        missing = [n for n in self.linear_features if n not in known]
        if missing:
            raise ConfigError(f"linear features {missing[:5]} are not among the model's columns")
        return np.asarray([known[n] for n in self.linear_features], dtype=np.int64)

    def fit(self, X: Any, y: Any) -> AdditiveForest:
        """Fit the base on the linear columns and the forest on the log ratio to it (``y`` in ms)."""
        from sklearn.linear_model import RidgeCV

        arr = self._fit_matrix(X)
        target = column_or_1d(np.asarray(y, dtype=np.float64), warn=True)
        check_consistent_length(arr, target)
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise ConfigError("latency targets must be positive and finite")
        self.linear_columns_ = self._linear_columns()
        lin = arr[:, self.linear_columns_]
        centre = lin.mean(axis=0)
        scale = lin.std(axis=0)
        scale[scale == 0] = 1.0
        weight = 1.0 / target ** 2 if self.relative else None
        ridge = RidgeCV(alphas=tuple(self.alphas)).fit((lin - centre) / scale, target,
                                                        sample_weight=weight)
        self.alpha_ = float(ridge.alpha_)
        self.coef_ = np.asarray(ridge.coef_, dtype=np.float64) / scale
        self.intercept_ = float(ridge.intercept_ - centre @ self.coef_)
        self.base_floor_ms_ = BASE_FLOOR_SHARE * float(target.min())
        base = self._base(lin)
        # posterior covariance of the standardised coefficients (relative errors), for base_spread
        z = np.column_stack([np.ones(len(lin)), (lin - centre) / scale])
        w = weight if weight is not None else np.full(len(lin), 1.0 / float(np.mean(target)) ** 2)
        penalty = np.full(z.shape[1], self.alpha_)
        penalty[0] = 0.0
        gram_inv = np.linalg.pinv(z.T @ (z * w[:, None]) + np.diag(penalty))
        residual = (target - base) * np.sqrt(w)
        self.base_cov_ = gram_inv * float(np.mean(residual ** 2))
        self.base_centre_, self.base_scale_ = centre, scale
        ratio = np.log(target / base)
        self.estimator_ = ModelForest(
            algorithm=self.algorithm, n_estimators=self.n_estimators,
            max_features=self.max_features, min_samples_leaf=self.min_samples_leaf,
            log_target=False, n_jobs=self.n_jobs, random_state=self.random_state).fit(arr, ratio)
        return self

    def _base(self, lin: np.ndarray) -> np.ndarray:
        return np.maximum(lin @ self.coef_ + self.intercept_, self.base_floor_ms_)

    def predict_log(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(log latency, one-sigma spread of the forest's trees, log units) per row."""
        arr = self._predict_matrix(X, dtype=np.float32)
        base = self._base(arr[:, self.linear_columns_].astype(np.float64))
        mean, spread = self.estimator_.tree_mean_std(arr)
        return np.log(base) + mean, spread

    def predict(self, X: Any) -> np.ndarray:
        """Predicted latency (ms) per row."""
        check_is_fitted(self)
        arr = self._predict_matrix(X, dtype=np.float32)
        base = self._base(arr[:, self.linear_columns_].astype(np.float64))
        return base * np.exp(self.estimator_.estimator_.predict(arr))

    def predict_with_uncertainty(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, one-sigma uncertainty ms = latency x the trees' log spread) per row."""
        mean_log, spread = self.predict_log(X)
        latency = np.exp(mean_log)
        return latency, latency * spread

    def base_spread(self, X: Any) -> np.ndarray:
        """One-sigma uncertainty of the linear base relative to it (log units) per row: where
        the per-layer sum has seen too few examples of a layer's choice. Active collection adds
        it to the trees' spread (:mod:`costmeter.predictors.estimators.active`)."""
        arr = self._predict_matrix(X)
        lin = arr[:, self.linear_columns_]
        z = np.column_stack([np.ones(len(lin)), (lin - self.base_centre_) / self.base_scale_])
        var = np.einsum("ij,jk,ik->i", z, self.base_cov_, z)  # relative to the latency (or its mean)
        return np.sqrt(np.maximum(var, 0.0))

    def base_predict(self, X: Any) -> np.ndarray:
        """The linear base alone (ms) per row -- the per-layer sum."""
        arr = self._predict_matrix(X)
        return self._base(arr[:, self.linear_columns_])
