"""Batch latency prediction straight from architecture encodings (no torch, no ONNX export).

:class:`ArchPredictor` ties a search space's analytic features to a fitted regressor
(:class:`~costmeter.predictors.estimators.forest.ModelForest` by default) and remembers the device,
runtime and feature schema it was trained for. ``predict(archs)`` featurises a list (or an
array) of encodings with vectorised numpy and predicts all of them in one call.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError
from costmeter.models.spaces import feature_schema, get_space

FULL_TABLE_MAX = 100_000  # spaces up to this size are predicted once, then looked up
MIN_FIT_ROWS = 20
"""Fewest distinct architectures :func:`fit_from_results` fits on. At 20, the default 0.2
holdout still leaves 16 to train (a forest with ``min_samples_leaf=2`` gets at most 8 leaves
per tree) and 4 to score, so every saved file carries held-out metrics; below it a forest is
a lookup of a handful of points and its metrics, if any, come from 1-3 rows. A floor, not a
target: the NB201 fixture slice has 300."""


ONEHOT_SCALES: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
"""Penalty scales of the one-hot columns tried by the default model (see
:class:`~costmeter.predictors.estimators.additive.AdditiveForest`): from "the structured
features carry the sum" to "the full per-layer table"."""


def default_regressor(space: str, **forest: Any) -> Any:
    """The default latency model of a space (unfitted): a ridge base on every analytic feature
    with the space's one-hot columns (declared by its ``"onehot"`` capability) under their own
    penalty, times a forest correction shrunk by its out-of-bag fit. ``forest``: settings passed
    on (``n_estimators``, ``n_jobs``, ...)."""
    from costmeter.models.spaces import has_capability
    from costmeter.predictors.estimators.additive import AdditiveForest

    onehot = (tuple(get_space(space).onehot_feature_names())
              if has_capability(space, "onehot") else None)
    return AdditiveForest(onehot_features=onehot, onehot_scales=ONEHOT_SCALES if onehot else (1.0,),
                          shrink_forest=True, **forest)


class ArchPredictor(RegressorMixin, BaseEstimator):
    """Latency (ms) of search-space architectures on one device/runtime.

    Parameters: ``space`` (registered space name), ``regressor`` (template estimator on the
    space's named features, with ``predict_with_uncertainty``; default
    :meth:`default_regressor`), ``device`` and ``runtime`` (labels recorded in the artifact
    manifest and checked by the NAS API), ``conformal_folds`` (0 fits no interval
    calibration; otherwise a regressor with ``jackknife`` -- the default -- is calibrated on
    its own leave-one-out predictions, any other by cross-conformal calibration with this many
    folds), ``conformal_floor`` (spread floor as a share of the median spread: 1.0 widens only
    where the trees disagree more than on the median architecture; lower floors let a noisy
    spread from the calibration rows' fewer out-of-bag trees widen every interval).
    Fitted: ``regressor_``, ``feature_schema_`` (e.g. ``nb201/v1``), ``n_train_``,
    ``conformal_`` (a :class:`~costmeter.predictors.estimators.conformal.ConformalCalibration`
    or None).
    """

    def __init__(self, space: str = "nb201", regressor: Any = None, device: str | None = None,
                 runtime: str | None = None, conformal_folds: int = 10,
                 conformal_floor: float = 1.0) -> None:
        self.space = space
        self.regressor = regressor
        self.device = device
        self.runtime = runtime
        self.conformal_folds = conformal_folds
        self.conformal_floor = conformal_floor

    def _features(self, archs: Any) -> Any:
        return get_space(self.space).features(archs)

    def default_regressor(self) -> Any:
        """The template used when ``regressor`` is None: :func:`default_regressor` of the space."""
        return default_regressor(self.space)

    def fit(self, archs: Any, latency_ms: Any) -> ArchPredictor:
        """Fit the regressor on the analytic features of ``archs`` and latencies (ms), and the
        interval calibration (see ``conformal_folds``)."""
        from costmeter.predictors.estimators.conformal import (
            Jackknifed,
            calibrate_cv,
            calibrate_jackknife,
        )

        space = get_space(self.space)
        y = np.asarray(latency_ms, dtype=np.float64).ravel()
        features = self._features(archs)
        if len(features) != len(y):
            raise ConfigError(f"{len(features)} architectures but {len(y)} latencies")
        template = self.regressor if self.regressor is not None else self.default_regressor()
        self.regressor_ = clone(template).fit(features, y)
        self.conformal_ = None
        if isinstance(self.regressor_, Jackknifed) and self.conformal_folds and len(y) >= 4:
            self.conformal_ = calibrate_jackknife(self.regressor_, features, y,
                                                  floor=self.conformal_floor)
        elif self.conformal_folds and self.conformal_folds >= 2 and len(y) >= 4:
            self.conformal_ = calibrate_cv(template, features, y, folds=self.conformal_folds,
                                           floor=self.conformal_floor)
        self.feature_schema_ = feature_schema(self.space)
        names = getattr(self.regressor_, "feature_names_in_", None)
        all_names = list(space.feature_names())
        self.columns_ = (np.asarray([all_names.index(n) for n in names], dtype=np.int64)
                         if names is not None else None)
        self.n_train_ = len(y)
        self.__dict__.pop("_table", None)
        return self

    def _check_schema(self) -> None:
        check_is_fitted(self)
        current = feature_schema(self.space)
        if self.feature_schema_ != current:
            raise ConfigError(f"predictor was fitted on features {self.feature_schema_}, this "
                              f"costmeter computes {current}; refit the predictor")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_table", None)  # derived cache, rebuilt on demand
        return state

    def _space_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Predictions (ms) and uncertainties for every architecture of a small finite space,
        computed once, so that predicting is a lookup; None for large spaces."""
        space = get_space(self.space)
        if space.SIZE > FULL_TABLE_MAX or "index" not in space.CAPABILITIES:
            return None
        table = self.__dict__.get("_table")
        if table is None:
            everything = np.arange(space.SIZE)
            inputs = self._inputs_from_matrix(space.feature_matrix(space.index_to_codes(everything)))
            mean, std = self.regressor_.predict_with_uncertainty(inputs)
            table = (np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))
            self.__dict__["_table"] = table
        return table

    @property
    def tabulated(self) -> bool:
        """Whether predictions are lookups in a table of the whole (small) space (built on
        first use), so that no architecture is featurised when predicting."""
        return self._space_table() is not None

    def _inputs_from_matrix(self, matrix: np.ndarray) -> Any:
        if self.columns_ is None:
            import pandas as pd

            return pd.DataFrame(matrix, columns=list(get_space(self.space).feature_names()))
        columns = self.columns_
        if len(columns) == matrix.shape[1] and np.array_equal(columns, np.arange(len(columns))):
            return np.ascontiguousarray(matrix, dtype=np.float32)  # every column, in order
        return np.ascontiguousarray(matrix[:, columns], dtype=np.float32)

    def _regressor_input(self, archs: Any, validated: bool = False) -> Any:
        self._check_schema()
        if self.columns_ is None:
            return self._features(archs)
        return self._inputs_from_matrix(get_space(self.space).feature_matrix(archs, validated=validated))

    def predict(self, archs: Any) -> np.ndarray:
        """Predicted latency (ms) of each architecture (strings, dicts or an encoding array)."""
        self._check_schema()
        table = self._space_table()
        if table is not None:
            return table[0][get_space(self.space).to_index(archs)]
        return np.asarray(self.regressor_.predict(self._regressor_input(archs)), dtype=np.float64)

    def predict_with_uncertainty(self, archs: Any, validated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, one-sigma uncertainty ms) of each architecture. ``validated``:
        ``archs`` is already the space's ``to_array`` output (checked), not checked again."""
        self._check_schema()
        table = self._space_table()
        if table is not None:
            index = get_space(self.space).to_index(archs)
            return table[0][index], table[1][index]
        inputs = self._regressor_input(archs, validated)
        if validated:  # features of checked encodings are finite: scikit-learn need not scan them
            from sklearn import config_context

            with config_context(assume_finite=True):
                mean, std = self.regressor_.predict_with_uncertainty(inputs)
        else:
            mean, std = self.regressor_.predict_with_uncertainty(inputs)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    def calibration(self) -> Any:
        """The fitted interval calibration; ConfigError when the predictor has none."""
        self._check_schema()
        conformal = getattr(self, "conformal_", None)
        if conformal is None:
            raise ConfigError("this predictor carries no interval calibration (fitted with "
                              "conformal_folds=0, or by an older costmeter); refit it with "
                              "`bench predictor fit`")
        return conformal

    def predict_interval(self, archs: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latency ms, lower ms, upper ms): a conformal interval holding the measured latency
        with probability >= ``coverage`` (0 < coverage < 1)."""
        from costmeter.predictors.estimators.conformal import check_coverage

        check_coverage(coverage)
        conformal = self.calibration()
        mean, std = self.predict_with_uncertainty(archs)
        lower, upper = conformal.interval(mean, std, coverage)
        return mean, lower, upper

    def satisfies(self, archs: Any, budget_ms: float, sigmas: float = 0.0,
                  confidence: float | None = None) -> np.ndarray:
        """Boolean mask. With ``confidence``: the latency is within ``budget_ms`` with at least
        that probability (the one-sided conformal upper bound is <= budget); otherwise the
        predicted latency (+ ``sigmas`` x uncertainty) is."""
        from costmeter.predictors.lut.table import check_budget

        budget = check_budget(budget_ms)
        if confidence is not None:
            from costmeter.predictors.estimators.conformal import check_coverage

            check_coverage(confidence, "confidence")
            mean, std = self.predict_with_uncertainty(archs)
            return self.calibration().upper(mean, std, confidence) <= budget
        if sigmas:
            mean, std = self.predict_with_uncertainty(archs)
            return mean + sigmas * std <= budget
        return self.predict(archs) <= budget


def fit_from_results(frame: Any, *, space: str, device: str, runtime: str | None = None,
                     regressor: Any = None, holdout: float = 0.2, seed: int = 0,
                     target: str = "latency") -> tuple[ArchPredictor, dict[str, Any], str]:
    """Fit an ArchPredictor from a ``ResultStore.query()`` frame (what ``bench predictor fit``
    does). Returns ``(predictor fitted on all rows, held-out metrics, training-set hash)``.

    ``target`` (:data:`costmeter.predictors.targets.TARGETS`): what is learned, in its unit
    (latency ms, peak memory bytes, energy J); the fitted predictor records it as ``target_``.
    Rows without a value for it are left out; none at all is a ConfigError naming the targets
    the frame holds.

    Fewer than :data:`MIN_FIT_ROWS` distinct architectures is a ConfigError saying so. With
    ``holdout`` > 0 a copy is first fitted on a random ``1 - holdout`` share and scored on the
    rest; the metrics go into the artifact manifest.
    """
    from costmeter.predictors.artifacts import training_set_hash
    from costmeter.predictors.estimators.evaluate import metrics, random_split
    from costmeter.predictors.targets import get_target, target_rows
    from costmeter.results.traces import training_frame

    spec = get_target(target)
    mine = frame[frame["model_id"].astype(str).str.startswith(f"{space}:")
                 & (frame["device"] == device)
                 & ((frame["runtime"] == runtime) if runtime is not None else True)]
    if len(mine):  # else training_frame says there is nothing for this space and device
        mine = target_rows(mine, target, what=f"the stored {space} results of device {device!r}")
    train = training_frame(mine, space, device=device, runtime=runtime,
                           statistic=spec.column, value_name="value")
    archs, y = list(train["arch"]), train["value"].to_numpy(dtype=np.float64)
    if len(archs) < MIN_FIT_ROWS:
        raise ConfigError(f"only {len(archs)} distinct {space} architectures are measured for device "
                          f"{device!r}{f' runtime {runtime!r}' if runtime else ''}; a predictor needs at "
                          f"least {MIN_FIT_ROWS}: import or measure more (`bench traces import`, "
                          "`bench collect`)")
    template = ArchPredictor(space=space, regressor=regressor, device=device, runtime=runtime)
    scores: dict[str, Any] = {}
    if holdout > 0:
        tr, te = random_split(len(archs), train=1.0 - holdout, seed=seed)
        probe = clone(template).fit([archs[i] for i in tr], y[tr])
        scores = {"holdout": holdout, "seed": seed,
                  **metrics(y[te], probe.predict([archs[i] for i in te]))}
    predictor = clone(template).fit(archs, y)
    predictor.target_ = spec.name
    digest = training_set_hash(get_space(space).features(archs), y)
    return predictor, scores, digest
