"""Which kernel model a build keeps: the network figures when they tell the models apart, the
kernels themselves when they do not.

A build fits every kernel model of :func:`~costmeter.predictors.estimators.network.kernel_models`
and calibrates each on its networks. Two pieces of evidence can pick one:

- *out of family on the networks*: how many calibration networks each calibrated predictor
  brings within the tolerance when their family was left out. This is the question a user asks,
  but it rests on a few families (three in a 30-minute build, about 120 networks), and a few
  networks either way are noise. Whether one model's lead is more than that is judged by
  McNemar's test on the networks where exactly one of the two is within the tolerance: the
  lead counts when it exceeds twice its standard error, ``|b - c| > 2 sqrt(b + c)``. Assumed:
  networks independent of each other. Under that assumption, with two equally good models,
  the lead of a given one passes about 2% of the time (1.3-3.2% over 20 to 120 discordant
  networks, exact binomial; ``tests/test_build.py`` simulates 120 networks and measures it). Networks of one family
  share their errors, so the real rate is higher; the kernel figure then decides, which is
  the safer side.
- *on the kernels*: each model's 5-fold out-of-fold error on the build's own kernel samples,
  latency-weighted (``sum |predicted - measured| / sum measured``, what a sum of kernels feels),
  over about a thousand kernels.

Why both. On three fresh fp32 30-minute builds of this project's CPU (ONNX Runtime, 1 thread),
the forest's out-of-fold kernel sums were 10-21% under on convolutions, depthwise convolutions
and squeeze-excite blocks, most of a network's time (a forest averages its neighbours in log
space and cannot follow a size past the largest it saw), the additive model's within 5%. On
the held-out families the additive model was ahead by 5, 10 and 15 points (84.6 / 94.9 /
89.7% within ±10% against 79.5 / 84.6 / 74.4%), but the network figures chose the forest in
one of the three (80.0% against 76.7%: four networks). On an earlier int8 build the forest was
ahead on both the networks (34% against 27%) and the held-out families; whether that lead
passes this test was not measured again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RULE_NETWORKS = "networks"
RULE_KERNELS = "kernels"
CV_FOLDS = 5


def kernel_cv_error(kernel_model: Any, tables: Mapping[str, Any], latencies: Mapping[str, Any],
                    folds: int = CV_FOLDS, seed: int = 0) -> float:
    """Latency-weighted out-of-fold error of ``kernel_model`` (an unfitted
    :class:`~costmeter.predictors.estimators.forest.KernelForest`) on kernel samples
    (``kernel_type -> feature table`` and ``-> latencies`` in ms): ``sum |predicted - measured|
    / sum measured`` over the kernel types with at least ``2 * folds`` samples, each predicted
    by a model fitted without its fold. A fraction (0.1 = 10%); NaN when no type has enough."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    error = total = 0.0
    for kernel_type, table in tables.items():
        y = np.asarray(latencies.get(kernel_type, ()), dtype=np.float64)
        if len(y) != len(table) or len(y) < 2 * folds:
            continue
        predicted = np.empty(len(y))
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(y):
            model = clone(kernel_model).fit({kernel_type: table.iloc[train]}, {kernel_type: y[train]})
            predicted[test] = model.predict_kernels({kernel_type: table.iloc[test]})["latency_ms"]
        error += float(np.sum(np.abs(predicted - y)))
        total += float(np.sum(y))
    return error / total if total > 0 else float("nan")


def significantly_ahead(within_a: Sequence[bool], within_b: Sequence[bool]) -> bool:
    """Whether ``a`` brings more networks within the tolerance than ``b`` by more than twice the
    standard error of that difference (McNemar: only networks where exactly one is within)."""
    a, b = np.asarray(within_a, dtype=bool), np.asarray(within_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return only_a - only_b > 2.0 * np.sqrt(only_a + only_b)


def choose_kernel_model(fitted: Mapping[str, Any], measured_ms: Sequence[float],
                        kernel_cv: Mapping[str, float]) -> tuple[str, str]:
    """``(name, rule)``: the fitted :class:`NetworkPredictor` a build keeps, and why.

    The leader out of family (most networks within the tolerance in the nested
    leave-one-family-out, then the smaller relative RMSE, then the first named) is kept when it
    is significantly ahead of every other model (:func:`significantly_ahead`; rule
    ``"networks"``). Otherwise the model with the smallest kernel-level error ``kernel_cv``
    (:func:`kernel_cv_error`) among those the leader is not significantly ahead of (rule
    ``"kernels"``)."""
    names = list(fitted)
    measured = np.asarray(measured_ms, dtype=np.float64)

    def within(name: str) -> np.ndarray:
        calibration = fitted[name].calibration_
        relative = np.asarray(calibration.cv_predicted_, dtype=np.float64) / measured - 1
        return np.abs(relative) <= calibration.tolerance

    leader = min(names, key=lambda n: (-fitted[n].calibration_.cv_within_,
                                       fitted[n].calibration_.cv_rel_rmse_, names.index(n)))
    rivals = [n for n in names if n != leader and not significantly_ahead(within(leader), within(n))]
    if not rivals:
        return leader, RULE_NETWORKS
    candidates = [leader, *rivals]
    cv = {n: kernel_cv.get(n, float("nan")) for n in candidates}
    if any(not np.isfinite(v) for v in cv.values()):
        return leader, RULE_NETWORKS
    return min(candidates, key=lambda n: (cv[n], names.index(n))), RULE_KERNELS
