"""Few-shot transfer to a new device: K measured architectures plus the traces of known devices.

Method (a correction on top of source-device predictors): every known (source) device has a
fitted predictor. On the K target architectures, the target's log-latency is regressed on
the sources' predicted log-latencies with non-negative weights (non-negative least squares on
centred values, plus an intercept):

    log t(x) = b + sum_s w_s * log f_s(x),   w_s >= 0

Non-negativity keeps the fit stable with K = 10 points and 20 sources (most weights are zero:
it picks the few devices that rank like the target). The K architectures are either a fixed,
hardware-independent reference set spread over MACs (:func:`reference_architectures`, as in
HELP, Lee et al., NeurIPS 2021) or *chosen for the information they give about the target given
the sources* (:func:`choose_references`): in the sources' predicted log latencies the devices
differ along a few directions (the top principal components); the target is modelled as a
linear function of those, and architectures are picked greedily to minimise the average
posterior variance of that function over the pool (I-optimal design of a Bayesian linear
model). The components keep their relative scale, so a minor one does not draw picks to its
extremes as strongly as the main one (whitened, as until this round, FBNet at K = 5 / 10 / 20
read 0.946 / 0.947 / 0.950 below; scaled 0.945 / 0.955 / 0.953, and NB201 0.972 / 0.974 /
0.975). The choice depends on the sources only, so the same K serve any new device. On the
data tables it lifts K = 5 most (NB201 mean rho 0.961 -> 0.969, FBNet 0.898 -> 0.950 with
sources fitted on all their traces; ``benchmarks/predictor_accuracy.py``). Richer combinations
(ridge or Bayesian ridge on all sources, regression on their principal components, a ridge
correction on the architecture features) were tried and were not better than the
non-negative blend at K = 10 on both tables; the correction helps devices that lie outside
the sources' span (pixel3, an exact per-layer sum) but is unstable with 10 points.

Measured later, leaving one device out with K chosen by the whitened design (mean rho at
K = 5 / 10 / 20; the non-negative blend first): NB201 0.970 / 0.974 / 0.975, FBNet 0.946 /
0.947 / 0.950. Ridge on the sources' log predictions (equivalently on all their principal
components) with its strength chosen by exact leave-one-out on the K points: NB201 0.942 /
0.973 / 0.974, FBNet 0.897 / 0.943 / 0.947. Ridge on the top 5 components, PLS (components by leave-one-out), a
non-negative ridge, and MACs and parameters as extra sources were no better on both tables;
the blend averaged with that ridge lifts NB201 at K = 10 (0.976, pixel3 0.883 -> 0.907) but
lowers K = 5 on both tables and FBNet at K = 10 (0.947). Sources of the previous model type (a
ridge on the one-hot encoding times an unshrunk forest) give FBNet 0.949 / 0.953 / 0.953, but
choosing between the two model types per target by leave-one-source-out (on the 20 sources)
gives 0.947 at K = 10 again: those sources are no more accurate (mean own rho 0.957 against
0.960) and about as smooth (the variance of their predictions 92% of the measured one against
91%); what differs is which K architectures the design picks, and on the whole-ms phones one
unlucky pick moves rho by 0.1 or more. The design's ``rank`` chosen per target by
leave-one-source-out (2-8, the sources' measured latencies as truth) lifts FBNet at K = 10 / 20
(0.954 / 0.955) but lowers it at K = 5 (0.938); NB201 0.974 / 0.974 / 0.975. The devices below
0.92 are those recorded in whole ms (noise ceilings 0.77-0.90 on FBNet) and NB201's pixel3,
whose ranking lies outside the sources' span (the blend fitted on every architecture reaches
0.887).

With many target measurements (K in the hundreds) a ``local`` model of the target alone (e.g.
a ``ModelForest`` on the architecture features) can join the sources: it is fitted on the K
points and enters the least squares through its out-of-fold predictions (``cv`` folds), so its
weight reflects how it generalises, not how well it memorised the K points. The target can
then follow the sources where they rank like it and its own model where none does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.utils.validation import check_is_fitted

from costmeter.errors import ConfigError
from costmeter.models.spaces import get_space

MIN_TARGET_POINTS = 3
LOCAL_NAME = "(local)"


def reference_architectures(space: str, k: int = 10, seed: int = 0, pool_size: int = 20_000,
                            pool: Sequence[Any] | None = None) -> list[str]:
    """``k`` architectures spread over the space's MACs range (one per MACs quantile bin).

    The pool is ``pool`` when given (e.g. architectures already measured), else the whole
    space when it is finite and small, else ``pool_size`` random samples; for NB201, cells
    whose output is disconnected from the input are excluded. Deterministic for a given
    ``seed``; independent of any device. Returns canonical strings.
    """
    if k < 1:
        raise ConfigError(f"number of reference architectures must be >= 1, got {k}")
    sp = get_space(space)
    if pool is not None:
        pool = [sp.canonical(a) for a in pool]
        if len(pool) < k:
            raise ConfigError(f"pool of {len(pool)} architectures is smaller than k = {k}")
    else:
        pool = sp.enumerate_archs() if sp.SIZE <= pool_size else sp.sample(pool_size, seed=seed)
    feats = sp.features(pool)
    keep = np.ones(len(pool), dtype=bool)
    if "connected" in feats.columns:
        keep &= feats["connected"].to_numpy() > 0
    candidates = np.flatnonzero(keep)
    macs = feats["macs_total"].to_numpy()[candidates]
    edges = np.quantile(macs, np.linspace(0, 1, k + 1))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for i in range(k):
        upper = macs <= edges[i + 1] if i == k - 1 else macs < edges[i + 1]
        in_bin = candidates[(macs >= edges[i]) & upper]
        in_bin = np.setdiff1d(in_bin, chosen)
        if in_bin.size == 0:
            in_bin = np.setdiff1d(candidates, chosen)
        chosen.append(int(rng.choice(in_bin)))
    return [pool[i] for i in chosen]


def informative_rows(source_log_ms: np.ndarray, k: int, rank: int = 5, prior: float = 1e-3,
                     candidates: np.ndarray | None = None, whiten: bool = False) -> np.ndarray:
    """Indices of ``k`` rows of ``source_log_ms`` (rows: architectures, columns: sources'
    predicted log latencies) that tell most about a target modelled as a linear function of the
    sources' top ``rank`` principal components (plus an intercept; ridge ``prior``): each pick
    minimises the average posterior variance of that function over ``candidates`` (default: all
    rows) -- greedy I-optimal design. Returned in the order picked (the first ``j`` are the best
    ``j``).

    The components keep their scale, relative to the first (the prior: a target varies along a
    direction about as much as the sources do), so a minor direction -- often where one noisy
    source departs from the rest -- draws picks to its extremes only once the main directions
    are covered. ``whiten=True`` gives every component unit variance instead (the design
    before, which may spend its first pick there; see the module docstring)."""
    logs = np.asarray(source_log_ms, dtype=np.float64)
    rows = np.arange(len(logs)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if logs.ndim != 2 or not 1 <= k <= len(rows):
        raise ConfigError(f"cannot choose {k} of {len(rows)} architectures")
    centred = logs[rows] - logs[rows].mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    rank = max(1, min(rank, int(np.sum(sing > sing[0] * 1e-9))))
    scores = centred @ vt[:rank].T / sing[:rank] * np.sqrt(len(rows))
    if not whiten:
        scores = scores * (sing[:rank] / sing[0])
    design = np.column_stack([np.ones(len(rows)), scores])
    gram = design.T @ design / len(rows)
    precision = prior * np.eye(design.shape[1])
    chosen: list[int] = []
    for _ in range(k):
        cov = np.linalg.inv(precision)
        own = np.einsum("ij,jk,ik->i", design, cov, design)
        spread = np.einsum("ij,jk,ik->i", design, cov @ gram @ cov, design)
        gain = spread / (1.0 + own)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        precision += np.outer(design[best], design[best])
    return rows[np.asarray(chosen, dtype=np.int64)]


def choose_references(space: str, k: int, sources: Mapping[str, Any], pool: Sequence[Any] | None = None,
                      pool_size: int = 20_000, seed: int = 0, rank: int = 5) -> list[str]:
    """``k`` architectures to measure on a new device, chosen for the information they give about
    it given the ``sources`` (device -> fitted predictor of ms from the space's feature table):
    :func:`informative_rows` on the sources' predicted log latencies over ``pool`` (default: the
    whole space when small, else ``pool_size`` random samples; NB201 cells whose output is
    disconnected are excluded). Deterministic; independent of the target device."""
    if k < 1:
        raise ConfigError(f"number of reference architectures must be >= 1, got {k}")
    if not sources:
        raise ConfigError("choosing references needs at least one source-device predictor")
    sp = get_space(space)
    if pool is not None:
        archs = [sp.canonical(a) for a in pool]
    else:
        archs = sp.enumerate_archs() if sp.SIZE <= pool_size else sp.sample(pool_size, seed=seed)
    feats = sp.features(archs)
    keep = (feats["connected"].to_numpy() > 0 if "connected" in feats.columns
            else np.ones(len(archs), dtype=bool))
    logs = np.column_stack([np.log(np.maximum(np.asarray(p.predict(feats), dtype=np.float64), 1e-9))
                            for p in sources.values()])
    picked = informative_rows(logs, k, rank=rank, candidates=np.flatnonzero(keep))
    return [archs[i] for i in picked]


class FewShotTransfer(RegressorMixin, BaseEstimator):
    """Target-device latency from source-device predictors plus K target measurements.

    Parameters: ``sources`` -- mapping of source device name to a fitted predictor that takes
    the same feature table ``X`` and returns latencies in ms (e.g. ``ModelForest``). Like any
    meta-estimator's, the sources are unfitted by ``sklearn.base.clone``; wrap them in
    ``sklearn.frozen.FrozenEstimator`` to keep them fitted through cloning.
    ``local`` -- optional unfitted estimator of the target alone (ms from ``X``), fitted on the
    K points; it joins the combination as source ``"(local)"`` through its ``cv``-fold
    out-of-fold predictions (needs K >= 2 * ``cv``).
    Fitted: ``weights_`` (Series: source -> weight, non-negative), ``intercept_`` (log ms),
    ``residual_std_`` (log-space residual std on the K points), ``source_names_``, and
    ``local_`` (the local estimator fitted on all K points, or None).
    """

    def __init__(self, sources: Mapping[str, Any] | None = None, local: Any = None,
                 cv: int = 5) -> None:
        self.sources = sources
        self.local = local
        self.cv = cv

    def _all_logs(self, X: Any) -> np.ndarray:
        """Log ms of every source (and of the fitted local model, last column) per row."""
        logs = self._source_logs(X)
        if getattr(self, "local_", None) is None:
            return logs
        local = np.asarray(self.local_.predict(X), dtype=np.float64)
        return np.column_stack([logs, np.log(np.maximum(local, 1e-9))])

    def _local_out_of_fold(self, X: Any, target: np.ndarray) -> np.ndarray:
        """Fit ``local_`` on all K rows; return its out-of-fold log ms on them."""
        if self.cv < 2 or target.size < 2 * self.cv:
            raise ConfigError(f"a local model needs >= {2 * max(self.cv, 2)} target "
                              f"measurements for {self.cv}-fold out-of-fold predictions, "
                              f"got {target.size}")
        folds = KFold(self.cv, shuffle=True, random_state=0)
        oof = cross_val_predict(clone(self.local), X, target, cv=folds)
        self.local_ = clone(self.local).fit(X, target)
        return np.log(np.maximum(np.asarray(oof, dtype=np.float64), 1e-9))

    def _source_logs(self, X: Any) -> np.ndarray:
        sources = dict(self.sources or {})
        names = getattr(self, "source_names_", tuple(sources))
        missing = [n for n in names if n not in sources]
        if missing:
            raise ConfigError(f"few-shot transfer lost its source predictors {missing}")
        cols = []
        for name in names:
            pred = np.asarray(sources[name].predict(X), dtype=np.float64)
            cols.append(np.log(np.maximum(pred, 1e-9)))
        return np.column_stack(cols)

    def fit(self, X: Any, y: Any) -> FewShotTransfer:
        """Fit the non-negative combination on the K target rows ``X`` and latencies ``y`` (ms)."""
        if not self.sources:
            raise ConfigError("few-shot transfer needs at least one source-device predictor")
        target = np.asarray(y, dtype=np.float64).ravel()
        if target.size < MIN_TARGET_POINTS:
            raise ConfigError(f"few-shot transfer needs >= {MIN_TARGET_POINTS} target "
                              f"measurements, got {target.size}")
        if np.any(~(target > 0)):
            raise ConfigError("target latencies must be positive")
        self.source_names_ = tuple(self.sources)
        self.local_ = None
        logs = self._source_logs(X)
        if logs.shape[0] != target.size:
            raise ConfigError(f"{logs.shape[0]} feature rows but {target.size} latencies")
        if self.local is not None:
            logs = np.column_stack([logs, self._local_out_of_fold(X, target)])
        log_y = np.log(target)
        centre = logs.mean(axis=0)
        weights, _ = nnls(logs - centre, log_y - log_y.mean())
        if not np.any(weights > 0):  # no source ranks like the target: fall back to the best one
            best = int(np.argmax([np.corrcoef(c, log_y)[0, 1] if np.ptp(c) else -1.0
                                  for c in logs.T]))
            weights[best] = 1.0
        self.intercept_ = float(log_y.mean() - centre @ weights)
        self.coef_ = weights
        resid = log_y - (self.intercept_ + logs @ weights)
        self.residual_std_ = float(np.sqrt(np.mean(resid ** 2)))
        # each source alone, linearly calibrated on the K points (for the uncertainty)
        self.calibration_ = np.zeros((logs.shape[1], 2))
        for i, column in enumerate(logs.T):
            if weights[i] > 0:
                self.calibration_[i] = np.polyfit(column, log_y, 1) if np.ptp(column) else (0.0, log_y.mean())
        return self

    @property
    def weights_(self) -> Any:
        """Source weights as a pandas Series (largest first)."""
        import pandas as pd

        check_is_fitted(self)
        names = list(self.source_names_) + ([LOCAL_NAME] if self.local_ is not None else [])
        return pd.Series(self.coef_, index=names).sort_values(ascending=False)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted target latency (ms) per row."""
        check_is_fitted(self)
        return np.exp(self.intercept_ + self._all_logs(X) @ self.coef_)

    def predict_with_uncertainty(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, uncertainty ms): the weighted spread of the individually calibrated
        sources around the combination, combined with the residual of the K-point fit; both in
        log space, so the uncertainty is relative."""
        check_is_fitted(self)
        logs = self._all_logs(X)
        pred_log = self.intercept_ + logs @ self.coef_
        w = self.coef_ / self.coef_.sum()
        used = np.flatnonzero(w > 0)
        calibrated = logs[:, used] * self.calibration_[used, 0] + self.calibration_[used, 1]
        spread2 = ((calibrated - pred_log[:, None]) ** 2) @ w[used]
        latency = np.exp(pred_log)
        return latency, latency * np.sqrt(spread2 + self.residual_std_ ** 2)
