"""Bring up a new device with few measurements: choose what to measure next, refit as it goes.

:func:`run_collection` is the loop behind ``bench collect --strategy random|active --budget N``
and behind ``benchmarks/new_device_cost.py`` (which replays it on measured tables). It measures
a pool's architectures in rounds whose cumulative sizes follow :func:`schedule`:

- ``random``: the next architectures of a seeded random order of the pool (what ``bench
  collect`` always did);
- ``active``: after a random start, a predictor is fitted on everything measured so far and the
  next round takes the architectures where it is least sure: the largest relative spread of its
  trees (log units), among those not yet measured. To keep a round from piling onto one corner
  of the space, candidates are taken from the most uncertain ``3 x round size`` and thinned by
  greedy farthest-point selection in the space's standardised features, weighted by their
  uncertainty.

``references`` (optional) replaces the random start -- e.g. architectures chosen for their
information about the target given other devices (:func:`~costmeter.predictors.estimators.
fewshot.choose_references`), with a ``fit`` that transfers from those devices (few-shot plus
active). ``measure`` is any function from architectures to values (ms, bytes, J): the harness
for a real device, a table lookup in a simulation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

STRATEGIES: tuple[str, ...] = ("random", "active")
DEFAULT_INITIAL = 10
DEFAULT_GROWTH = 0.25
CANDIDATE_FACTOR = 3


def schedule(budget: int, initial: int = DEFAULT_INITIAL, growth: float = DEFAULT_GROWTH,
             checkpoints: Sequence[int] = ()) -> list[int]:
    """Cumulative measured counts after each round: ``initial``, then growing by ``growth`` (at
    least 5 a round) up to ``budget``; every checkpoint below the budget is a round end."""
    if budget < 1:
        raise ConfigError(f"--budget must be >= 1 architecture, got {budget}")
    if not growth > 0:
        raise ConfigError(f"growth must be > 0, got {growth}")
    counts = {min(initial, budget), budget, *[c for c in checkpoints if 0 < c < budget]}
    n = min(initial, budget)
    while n < budget:
        n = min(budget, n + max(5, math.ceil(n * growth)))
        counts.add(n)
    return sorted(counts)


@dataclass
class CollectionResult:
    """What a collection measured, in order: ``archs`` (pool rows ``rows``), ``values`` (as
    ``measure`` returned them) and ``rounds`` (cumulative count after each round)."""

    archs: list[Any]
    rows: np.ndarray
    values: np.ndarray
    rounds: list[int] = field(default_factory=list)


def relative_spread(predictor: Any, X: Any) -> np.ndarray:
    """Per row, the predictor's one-sigma spread relative to its prediction (log units); a
    predictor with a linear base (``base_spread``) adds that base's own uncertainty, so that
    layer choices seen too rarely for the per-layer sum are measured too."""
    mean, std = predictor.predict_with_uncertainty(X)
    mean = np.asarray(mean, dtype=np.float64)
    spread = np.asarray(std, dtype=np.float64) / np.where(mean > 0, mean, np.inf)
    base = getattr(predictor, "base_spread", None)
    return np.hypot(spread, base(X)) if base is not None else spread


def pick_uncertain(spread: np.ndarray, taken: np.ndarray, count: int, features: np.ndarray | None = None) -> np.ndarray:
    """``count`` untaken rows with the largest ``spread``; with ``features`` (standardised, one
    row per pool row) the most uncertain ``CANDIDATE_FACTOR x count`` are thinned greedily to
    rows far from each other and from what is taken, each distance weighted by the spread."""
    free = np.flatnonzero(~taken)
    count = min(count, free.size)
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    order = free[np.argsort(-spread[free], kind="stable")]
    if features is None or count == free.size:
        return order[:count]
    candidates = order[:min(free.size, CANDIDATE_FACTOR * count)]
    cand = features[candidates]
    near = np.full(candidates.size, np.inf)
    anchors = features[np.flatnonzero(taken)]
    for start in range(0, len(anchors), 512):  # distance to the closest measured row
        block = anchors[start:start + 512]
        d = ((cand[:, None, :] - block[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        near = np.minimum(near, d)
    weight = spread[candidates]
    chosen: list[int] = []
    for _ in range(count):
        score = np.sqrt(near) * weight
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        near = np.minimum(near, ((cand - cand[best]) ** 2).sum(axis=1))
    return candidates[np.asarray(chosen, dtype=np.int64)]


def run_collection(pool: Sequence[Any], measure: Callable[[list[Any]], Any], budget: int,
                   fit: Callable[[list[Any], np.ndarray], Any] | None = None,
                   features: Callable[[list[Any]], Any] | None = None, strategy: str = "active",
                   initial: int = DEFAULT_INITIAL, growth: float = DEFAULT_GROWTH, seed: int = 0,
                   references: Sequence[Any] | None = None, checkpoints: Sequence[int] = (),
                   on_round: Callable[[int, Any, np.ndarray], None] | None = None,
                   diversify: bool = True) -> CollectionResult:
    """Measure ``budget`` architectures of ``pool`` (see the module docstring).

    ``fit(archs, values)`` returns a predictor with ``predict_with_uncertainty(X)``;
    ``features(archs)`` gives that predictor's input ``X`` (a DataFrame or array; also used,
    standardised, to spread a round out). ``on_round(n, predictor, rows)`` is called after each
    round with the predictor fitted on the ``n`` rows measured so far (``random`` fits only when
    ``on_round`` is given). Raises ConfigError for an unknown strategy, a budget beyond the pool
    or a missing ``fit``/``features`` for ``active``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    archs = list(pool)
    if budget > len(archs):
        raise ConfigError(f"--budget {budget} exceeds the {len(archs)} architectures in the pool")
    if strategy == "active" and (fit is None or features is None):
        raise ConfigError("active collection needs a predictor to fit and the pool's features")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(archs))
    taken = np.zeros(len(archs), dtype=bool)
    rows: list[int] = []
    values: list[float] = []
    X = features(archs) if features is not None and (strategy == "active" or on_round) else None
    standard = _standardised(X) if X is not None and diversify else None
    if references is not None:
        index = {str(a): i for i, a in enumerate(archs)}
        missing = [a for a in references if str(a) not in index]
        if missing:
            raise ConfigError(f"{len(missing)} reference architectures are not in the pool "
                              f"(first: {missing[0]})")
        start = [index[str(a)] for a in references][:budget]
    else:
        start = []
    plan = schedule(budget, len(start) or initial, growth, checkpoints)
    predictor = None
    for n in plan:
        need = n - len(rows)
        if start:
            batch = np.asarray(start[:need], dtype=np.int64)
            start = start[need:]
        elif strategy == "random" or predictor is None:
            batch = order[~taken[order]][:need]
        else:
            spread = relative_spread(predictor, X)
            batch = pick_uncertain(spread, taken, need, standard)
        measured = np.asarray(measure([archs[i] for i in batch]), dtype=np.float64).ravel()
        if measured.size != batch.size:
            raise ConfigError(f"measure returned {measured.size} values for {batch.size} architectures")
        taken[batch] = True
        rows.extend(int(i) for i in batch)
        values.extend(measured.tolist())
        if fit is not None and (strategy == "active" or on_round is not None):
            ok = np.isfinite(np.asarray(values))
            kept = [archs[i] for i, good in zip(rows, ok) if good]
            predictor = fit(kept, np.asarray(values)[ok]) if len(kept) >= 2 else None
        if on_round is not None:
            on_round(len(rows), predictor, np.asarray(rows, dtype=np.int64))
    return CollectionResult([archs[i] for i in rows], np.asarray(rows, dtype=np.int64),
                            np.asarray(values, dtype=np.float64), plan)


def _standardised(X: Any) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    scale = arr.std(axis=0)
    keep = scale > 0
    return (arr[:, keep] - arr[:, keep].mean(axis=0)) / scale[keep]


def collect_pool(space: str, pool_size: int = 20_000, seed: int = 0) -> list[str]:
    """Candidate architectures of ``space`` for a collection: the whole space when it has no
    more than ``pool_size`` architectures (NB201 cells whose output is disconnected left out),
    else ``pool_size`` random samples."""
    from costmeter.models.spaces import get_space

    sp = get_space(space)
    archs = list(sp.enumerate_archs()) if "enumerate" in sp.CAPABILITIES and sp.SIZE <= pool_size \
        else sp.sample(pool_size, seed=seed)
    feats = sp.features(archs)
    if "connected" in feats.columns:
        archs = [a for a, c in zip(archs, feats["connected"].to_numpy()) if c > 0]
    return archs


def space_collection(space: str, budget: int, measure: Callable[[list[str]], Any],
                     strategy: str = "active", seed: int = 0, pool_size: int = 20_000,
                     initial: int = DEFAULT_INITIAL, growth: float = DEFAULT_GROWTH,
                     log: Callable[[str], None] | None = None) -> CollectionResult:
    """:func:`run_collection` over a search space with the default architecture predictor
    (what ``bench collect --strategy STRATEGY --budget N`` runs; ``measure`` returns ms per
    architecture, NaN where a measurement failed)."""
    from costmeter.models.spaces import get_space
    from costmeter.predictors.estimators.arch import ArchPredictor

    pool = collect_pool(space, pool_size, seed)
    sp = get_space(space)

    def fit(archs: list[str], values: np.ndarray) -> Any:  # the regressor reads feature tables
        return ArchPredictor(space, conformal_folds=0).fit(archs, values).regressor_

    def report(n: int, _predictor: Any, _rows: np.ndarray) -> None:
        if log is not None:
            log(f"{strategy}: {n} of {budget} architectures measured")

    return run_collection(pool, measure, budget, fit=fit if strategy == "active" else None,
                          features=sp.features, strategy=strategy, initial=initial,
                          growth=growth, seed=seed, on_round=report if log else None)
