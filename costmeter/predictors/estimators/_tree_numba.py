"""The numba kernel behind :mod:`costmeter.predictors.estimators.tree_kernel` (importing this
module raises ImportError without numba; the caller then uses scikit-learn)."""
from __future__ import annotations

import math

import numba
import numpy as np

LANES = 8  # trees walked side by side for one row


def _forest_mean_std(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                     left: np.ndarray, value: np.ndarray, roots: np.ndarray,
                     mean: np.ndarray, std: np.ndarray) -> None:
    """Fill ``mean``/``std`` (across trees) for the rows of ``x`` (rows x features, C order).

    Row by row, the trees are walked eight at a time in lockstep: each step moves all eight
    one level down (to ``left[k] + (x > threshold[k])``; a leaf is its own left child with an
    infinite threshold, so a walk that has arrived stays put) until no walk moves. The eight
    walks do not depend on each other, so the processor overlaps their memory reads, where one
    walk would wait for each node before reading the next. The leaves' values are added in
    tree order, shifted by the first tree's."""
    n = x.shape[0]
    n_trees = roots.shape[0]
    grouped = n_trees - n_trees % LANES
    for i in range(n):
        row = x[i]
        first = 0.0
        total = 0.0
        squares = 0.0
        for g in range(0, grouped, LANES):
            k0, k1, k2, k3 = roots[g], roots[g + 1], roots[g + 2], roots[g + 3]
            k4, k5, k6, k7 = roots[g + 4], roots[g + 5], roots[g + 6], roots[g + 7]
            while True:
                n0 = left[k0] + (row[feature[k0]] > threshold[k0])
                n1 = left[k1] + (row[feature[k1]] > threshold[k1])
                n2 = left[k2] + (row[feature[k2]] > threshold[k2])
                n3 = left[k3] + (row[feature[k3]] > threshold[k3])
                n4 = left[k4] + (row[feature[k4]] > threshold[k4])
                n5 = left[k5] + (row[feature[k5]] > threshold[k5])
                n6 = left[k6] + (row[feature[k6]] > threshold[k6])
                n7 = left[k7] + (row[feature[k7]] > threshold[k7])
                settled = ((n0 == k0) & (n1 == k1) & (n2 == k2) & (n3 == k3)
                           & (n4 == k4) & (n5 == k5) & (n6 == k6) & (n7 == k7))
                k0, k1, k2, k3, k4, k5, k6, k7 = n0, n1, n2, n3, n4, n5, n6, n7
                if settled:
                    break
            if g == 0:
                first = value[k0]
            else:
                d = value[k0] - first
                total += d
                squares += d * d
            for v in (value[k1], value[k2], value[k3], value[k4], value[k5], value[k6], value[k7]):
                d = v - first
                total += d
                squares += d * d
        for t in range(grouped, n_trees):
            k = roots[t]
            while True:
                nk = left[k] + (row[feature[k]] > threshold[k])
                if nk == k:
                    break
                k = nk
            if t == 0:
                first = value[k]
            else:
                d = value[k] - first
                total += d
                squares += d * d
        shift = total / n_trees
        mean[i] = first + shift
        std[i] = math.sqrt(max(squares / n_trees - shift * shift, 0.0))


try:
    forest_mean_std = numba.njit(cache=True, nogil=True)(_forest_mean_std)
except RuntimeError:  # no writable cache location: compile in memory on each first use
    forest_mean_std = numba.njit(nogil=True)(_forest_mean_std)
