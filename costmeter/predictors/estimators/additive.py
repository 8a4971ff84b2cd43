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

Two refinements, both chosen on the training rows alone:

- *Two penalties.* ``onehot_features`` names the per-layer choice columns among the linear
  ones (what a space declares with its ``"onehot"`` capability); the other linear columns are
  structured features (MACs per layer and stage, block counts, totals). The ridge penalty on
  the one-hot columns is the shared one divided by ``scale**2`` for each ``scale`` in
  ``onehot_scales``, and the pair (penalty, scale) with the lowest leave-one-out error wins. A
  small scale makes the sum lean on the structured columns and use the per-layer entries only
  for what they leave over -- few parameters for noisy devices (phones recorded in whole ms);
  a large one gives the full per-layer table where the measurements are clean enough for it.
- *A shrunk correction.* The forest's correction is multiplied by ``forest_weight_`` in
  [0, 1]: the least-squares factor of its out-of-bag predictions against the log ratios it
  was fitted to (each training row predicted by the trees that did not draw it). Where the
  base already holds everything but noise the factor drops towards 0 and the forest stops
  adding its own error; where the forest finds structure the factor stays near 1.
  ``shrink_forest=False`` keeps the factor at 1 (and extra trees have no out-of-bag rows).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_consistent_length, column_or_1d
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.forest import ModelForest, _NamedFeatures

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_ONEHOT_SCALES: tuple[float, ...] = (1.0,)
"""Default one-hot penalty scales: one (a single shared penalty, the plain ridge)."""
BASE_FLOOR_SHARE = 0.5
"""The base is floored at this share of the smallest training latency (a linear fit can dip
below zero far from its data; the forest corrects the rest)."""


class AdditiveForest(_NamedFeatures, RegressorMixin, BaseEstimator):
    """Ridge base on ``linear_features`` times a forest correction (see the module docstring).

    Parameters: ``linear_features`` (names of the columns of the sum; ``None``: every column),
    ``onehot_features`` (those of them with their own penalty scale; ``None``: none),
    ``onehot_scales`` (scales tried for them), ``alphas`` (ridge penalties tried), ``relative``
    (weights ``1 / y**2``), ``shrink_forest`` (scale the correction by its out-of-bag fit),
    ``features`` (columns the whole model uses; ``None``: every column of the fit table), forest
    settings as :class:`ModelForest` (``algorithm``, ``n_estimators``, ``max_features``,
    ``min_samples_leaf``, ``n_jobs``, ``random_state``), ``matched_jackknife`` (see
    :meth:`jackknife`).
    Fitted: ``linear_columns_`` (indices into the model's columns), ``coef_`` (ms per unit of
    each linear column, standardisation folded in), ``intercept_`` (ms), ``alpha_``,
    ``onehot_scale_``, ``forest_weight_``, ``base_floor_ms_``, ``estimator_`` (the residual
    ModelForest), ``feature_names_in_``, ``n_features_in_``.
    """

    def __init__(self, linear_features: Sequence[str] | None = None,
                 onehot_features: Sequence[str] | None = None,
                 onehot_scales: Sequence[float] = DEFAULT_ONEHOT_SCALES,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, relative: bool = True,
                 shrink_forest: bool = False,
                 features: Sequence[str] | None = None, algorithm: str = "random_forest",
                 n_estimators: int = 64, max_features: float | str | None = 0.33,
                 min_samples_leaf: int = 2, n_jobs: int | None = 1,
                 random_state: int | None = 0, matched_jackknife: bool = True) -> None:
        self.linear_features = linear_features
        self.onehot_features = onehot_features
        self.onehot_scales = onehot_scales
        self.alphas = alphas
        self.relative = relative
        self.shrink_forest = shrink_forest
        self.features = features
        self.algorithm = algorithm
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.matched_jackknife = matched_jackknife

    def _columns(self, wanted: Sequence[str] | None, what: str) -> np.ndarray:
        names = getattr(self, "feature_names_in_", None)
        if wanted is None:
            return np.arange(self.n_features_in_, dtype=np.int64)
        if names is None:
            raise ConfigError(f"{what} name columns: fit on a DataFrame with named columns")
        known = {str(n): i for i, n in enumerate(names)}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ConfigError(f"{what} {missing[:5]} are not among the model's columns")
        return np.asarray([known[n] for n in wanted], dtype=np.int64)

    def _fit_ridge(self, z: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
                   onehot: np.ndarray) -> tuple[Any, float]:
        """Best (ridge, one-hot scale) by leave-one-out error over ``alphas`` x ``onehot_scales``."""
        from sklearn.linear_model import RidgeCV

        scales = tuple(float(v) for v in self.onehot_scales) if onehot.any() else (1.0,)
        if not scales or min(scales) <= 0:
            raise ConfigError(f"onehot_scales must be positive numbers, got {self.onehot_scales!r}")
        best: tuple[float, Any, float] | None = None
        for scale in scales:
            factor = np.where(onehot, scale, 1.0)
            ridge = RidgeCV(alphas=np.array(self.alphas, dtype=np.float64)).fit(
                z * factor, target, sample_weight=weight)
            if best is None or ridge.best_score_ > best[0]:
                best = (float(ridge.best_score_), ridge, scale)
        assert best is not None
        return best[1], best[2]

    def fit(self, X: Any, y: Any) -> AdditiveForest:
        """Fit the base on the linear columns and the forest on the log ratio to it (``y`` in ms)."""
        arr = self._fit_matrix(X)
        target = column_or_1d(np.asarray(y, dtype=np.float64), warn=True)
        check_consistent_length(arr, target)
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise ConfigError("latency targets must be positive and finite")
        self.linear_columns_ = self._columns(self.linear_features, "linear features")
        onehot_cols = (self._columns(self.onehot_features, "one-hot features")
                       if self.onehot_features is not None else np.empty(0, dtype=np.int64))
        outside = np.setdiff1d(onehot_cols, self.linear_columns_)
        if outside.size:
            raise ConfigError("one-hot features must be among the linear features; add them to "
                              "linear_features")
        onehot = np.isin(self.linear_columns_, onehot_cols)
        lin = arr[:, self.linear_columns_]
        centre = lin.mean(axis=0)
        scale = lin.std(axis=0)
        scale[scale == 0] = 1.0
        weight = 1.0 / target ** 2 if self.relative else None
        ridge, self.onehot_scale_ = self._fit_ridge((lin - centre) / scale, target, weight, onehot)
        factor = np.where(onehot, self.onehot_scale_, 1.0)
        self.alpha_ = float(ridge.alpha_)
        self.coef_ = np.asarray(ridge.coef_, dtype=np.float64) * factor / scale
        self.intercept_ = float(ridge.intercept_ - centre @ self.coef_)
        self.base_floor_ms_ = BASE_FLOOR_SHARE * float(target.min())
        base = self._base(lin)
        # posterior covariance of the standardised coefficients (relative errors), for base_spread
        z = np.column_stack([np.ones(len(lin)), (lin - centre) / scale * factor])
        w = weight if weight is not None else np.full(len(lin), 1.0 / float(np.mean(target)) ** 2)
        penalty = np.full(z.shape[1], self.alpha_)
        penalty[0] = 0.0
        gram_inv = np.linalg.pinv(z.T @ (z * w[:, None]) + np.diag(penalty))
        residual = (target - base) * np.sqrt(w)
        self.base_cov_ = gram_inv * float(np.mean(residual ** 2))
        self.base_centre_, self.base_scale_, self.base_factor_ = centre, scale, factor
        ratio = np.log(target / base)
        self.estimator_ = ModelForest(
            algorithm=self.algorithm, n_estimators=self.n_estimators,
            max_features=self.max_features, min_samples_leaf=self.min_samples_leaf,
            log_target=False, n_jobs=self.n_jobs, random_state=self.random_state,
            oob=self.shrink_forest).fit(arr, ratio)
        self.forest_weight_ = self._oob_weight(ratio) if self.shrink_forest else 1.0
        self.n_train_ = len(target)
        return self

    def jackknife(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """(log latency, trees' log spread) of each training row as predicted without it: the
        ridge base's exact leave-one-out prediction (penalty and one-hot scale as fitted) times
        the correction of trees that did not draw the row (out-of-bag), with their spread.
        ``X``, ``y`` (ms) are the rows :meth:`fit` saw, in the same order. These are the
        calibration rows of a jackknife conformal interval: the final model without one row
        errs as the final model does on a new one, where fold models fitted on 90% of the rows
        err more (too wide an interval where the sum has many columns).

        A row is out of a tree's bootstrap sample with probability ``(1 - 1/n)**n`` (about
        37%), so the model's own trees give each row about 24 of 64 trees, whose mean is noisier
        and whose spread is lower (about 4% at the median on the HELP tables) than the 64 trees'
        at a new architecture; the scores then lean wide, and intervals over-cover by about
        half a point (``benchmarks/coverage_draws.py``). With ``matched_jackknife`` (default),
        more trees are fitted here, to the same targets with the same settings, and used for
        these predictions only, so that each row gets on average as many out-of-bag trees as
        the model has; the model itself is unchanged. ``jackknife_trees_`` records the mean
        count per row."""
        check_is_fitted(self)
        arr = self._predict_matrix(X)
        target = column_or_1d(np.asarray(y, dtype=np.float64))
        if len(target) != len(arr) or len(arr) != self.n_train_:
            raise ConfigError(f"jackknife needs the {self.n_train_} rows the model was fitted on, "
                              f"got {len(arr)} rows and {len(target)} latencies")
        lin = arr[:, self.linear_columns_]
        z = np.column_stack([np.ones(len(lin)),
                             (lin - self.base_centre_) / self.base_scale_ * self.base_factor_])
        weight = 1.0 / target ** 2 if self.relative else np.ones(len(lin))
        penalty = np.full(z.shape[1], self.alpha_)
        penalty[0] = 0.0
        gram_inv = np.linalg.pinv(z.T @ (z * weight[:, None]) + np.diag(penalty))
        leverage = weight * np.einsum("ij,jk,ik->i", z, gram_inv, z)
        fitted = lin @ self.coef_ + self.intercept_
        loo = target - (target - fitted) / np.maximum(1.0 - leverage, 1e-6)
        base = np.maximum(loo, self.base_floor_ms_)
        forests = [self.estimator_]
        if getattr(self, "matched_jackknife", False) and _bootstrapped(self.estimator_):
            forests.append(self._extra_forest(arr, np.log(target / self._base(lin))))
        trees = np.vstack([f._tree_outputs(arr) for f in forests])
        if _bootstrapped(self.estimator_):
            outside = np.ones(trees.shape, dtype=bool)
            samples = [rows for f in forests for rows in f.estimator_.estimators_samples_]
            for k, rows in enumerate(samples):
                outside[k, rows] = False
            count = outside.sum(axis=0)
            self.jackknife_trees_ = float(count.mean())
            trees = np.where(outside, trees, 0.0)
            mean = np.where(count > 0, trees.sum(axis=0) / np.maximum(count, 1), 0.0)
            var = np.where(outside, (trees - mean) ** 2, 0.0).sum(axis=0) / np.maximum(count, 1)
            spread = np.sqrt(var)
        else:  # no out-of-bag trees: the base's leave-one-out prediction alone
            mean, spread = np.zeros(len(arr)), trees.std(axis=0)
            self.jackknife_trees_ = 0.0
        return np.log(base) + self._weight() * mean, spread

    def _extra_forest(self, arr: np.ndarray, ratio: np.ndarray) -> ModelForest:
        """A forest like the model's, fitted to its targets ``ratio`` with other seeds, with
        enough trees that the two together leave each row out of about ``n_estimators``."""
        n = len(ratio)
        out_share = (1.0 - 1.0 / n) ** n
        extra = max(math.ceil(self.n_estimators / out_share) - self.n_estimators, 1)
        seed = None if self.random_state is None else int(self.random_state) + 1
        return ModelForest(algorithm=self.algorithm, n_estimators=extra,
                           max_features=self.max_features, min_samples_leaf=self.min_samples_leaf,
                           log_target=False, n_jobs=self.n_jobs, random_state=seed).fit(arr, ratio)

    def _oob_weight(self, ratio: np.ndarray) -> float:
        """Least-squares factor in [0, 1] of the forest's out-of-bag predictions against the log
        ratios it was fitted to; 1 where there are none (extra trees: no bootstrap)."""
        oob = getattr(self.estimator_.estimator_, "oob_prediction_", None)
        if oob is None:
            return 1.0
        oob = np.asarray(oob, dtype=np.float64).ravel()
        seen = np.isfinite(oob)
        denom = float(oob[seen] @ oob[seen])
        return float(np.clip(oob[seen] @ ratio[seen] / denom, 0.0, 1.0)) if denom > 0 else 0.0

    def _linear64(self, arr: np.ndarray) -> np.ndarray:
        """The linear columns of ``arr`` as float64, column-major as numpy's column gather
        gives them (BLAS then sums each row in the same order, to the last bit); one conversion,
        no gather, when they are every column in order, as in the spaces' default models."""
        cols = self.linear_columns_
        if len(cols) == arr.shape[1] and np.array_equal(cols, np.arange(len(cols))):
            return arr.astype(np.float64, order="F")
        return arr[:, cols].astype(np.float64)

    def _base(self, lin: np.ndarray) -> np.ndarray:
        return np.maximum(lin @ self.coef_ + self.intercept_, self.base_floor_ms_)

    def _weight(self) -> float:
        return float(getattr(self, "forest_weight_", 1.0))

    def predict_log(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(log latency, one-sigma spread of the forest's trees, log units) per row. The spread
        is the trees' own, not shrunk with the correction: it says where the data are thin."""
        arr = self._predict_matrix(X, dtype=np.float32)
        base = self._base(self._linear64(arr))
        mean, spread = self.estimator_.tree_mean_std(arr)
        return np.log(base) + self._weight() * mean, spread

    def predict(self, X: Any) -> np.ndarray:
        """Predicted latency (ms) per row."""
        check_is_fitted(self)
        arr = self._predict_matrix(X, dtype=np.float32)
        base = self._base(self._linear64(arr))
        if self._weight() == 0.0:  # the correction was shrunk away: the trees need not run
            return base
        return base * np.exp(self._weight() * self.estimator_.estimator_.predict(arr))

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
        factor = getattr(self, "base_factor_", 1.0)
        z = np.column_stack([np.ones(len(lin)),
                             (lin - self.base_centre_) / self.base_scale_ * factor])
        var = np.einsum("ij,jk,ik->i", z, self.base_cov_, z)  # relative to the latency (or its mean)
        return np.sqrt(np.maximum(var, 0.0))

    def base_predict(self, X: Any) -> np.ndarray:
        """The linear base alone (ms) per row -- the per-layer sum."""
        arr = self._predict_matrix(X)
        return self._base(arr[:, self.linear_columns_])


def _bootstrapped(forest: ModelForest) -> bool:
    """Whether the fitted forest's trees were grown on bootstrap samples (out-of-bag rows exist)."""
    inner = forest.estimator_
    return getattr(inner, "bootstrap", False) and hasattr(inner, "estimators_samples_")
