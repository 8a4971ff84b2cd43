"""The numba kernel behind :mod:`costmeter.predictors.estimators.tree_kernel` (importing this
module raises ImportError without numba; the caller then uses scikit-learn)."""
from __future__ import annotations

import math

import numba
import numpy as np

ROWS = 4  # rows walked together
TREES = 4  # trees walked together for each of them


def _forest_mean_std(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                     left: np.ndarray, value: np.ndarray, roots: np.ndarray,
                     mean: np.ndarray, std: np.ndarray) -> None:
    """Fill ``mean``/``std`` (across trees) for the rows of ``x`` (rows x features, C order).

    Four rows at a time, the trees are walked four at a time for each row, sixteen walks in
    lockstep: each step moves every walk one level down (to ``left[k] + (x > threshold[k])``;
    a leaf is its own left child with an infinite threshold, so a walk that has arrived stays
    put) until none moves. The walks do not depend on each other, so the processor overlaps
    their memory reads, where one walk would wait for each node before reading the next; the
    four rows share the same nodes, read once into cache. Per row, the leaves' values are then
    added in tree order, shifted by the first tree's. Rows past the last four, and trees past
    the last four, are walked one at a time.

    ``feature``, ``left`` and ``roots`` are unsigned (uint32), so every node index is: numba
    then indexes without the wrap-around test a signed index needs (a third fewer
    instructions per step)."""
    n = x.shape[0]
    n_trees = roots.shape[0]
    grouped = n_trees - n_trees % TREES
    leaf = np.empty((ROWS, n_trees), np.uint32)
    for i in range(0, n, ROWS):
        if i + ROWS <= n:
            ax, bx, cx, dx = x[i], x[i + 1], x[i + 2], x[i + 3]
            for g in range(0, grouped, TREES):
                a0 = b0 = c0 = d0 = roots[g]
                a1 = b1 = c1 = d1 = roots[g + 1]
                a2 = b2 = c2 = d2 = roots[g + 2]
                a3 = b3 = c3 = d3 = roots[g + 3]
                while True:
                    a0n = left[a0] + np.uint32(ax[feature[a0]] > threshold[a0])
                    a1n = left[a1] + np.uint32(ax[feature[a1]] > threshold[a1])
                    a2n = left[a2] + np.uint32(ax[feature[a2]] > threshold[a2])
                    a3n = left[a3] + np.uint32(ax[feature[a3]] > threshold[a3])
                    b0n = left[b0] + np.uint32(bx[feature[b0]] > threshold[b0])
                    b1n = left[b1] + np.uint32(bx[feature[b1]] > threshold[b1])
                    b2n = left[b2] + np.uint32(bx[feature[b2]] > threshold[b2])
                    b3n = left[b3] + np.uint32(bx[feature[b3]] > threshold[b3])
                    c0n = left[c0] + np.uint32(cx[feature[c0]] > threshold[c0])
                    c1n = left[c1] + np.uint32(cx[feature[c1]] > threshold[c1])
                    c2n = left[c2] + np.uint32(cx[feature[c2]] > threshold[c2])
                    c3n = left[c3] + np.uint32(cx[feature[c3]] > threshold[c3])
                    d0n = left[d0] + np.uint32(dx[feature[d0]] > threshold[d0])
                    d1n = left[d1] + np.uint32(dx[feature[d1]] > threshold[d1])
                    d2n = left[d2] + np.uint32(dx[feature[d2]] > threshold[d2])
                    d3n = left[d3] + np.uint32(dx[feature[d3]] > threshold[d3])
                    settled = ((a0n == a0) & (a1n == a1) & (a2n == a2) & (a3n == a3)
                               & (b0n == b0) & (b1n == b1) & (b2n == b2) & (b3n == b3)
                               & (c0n == c0) & (c1n == c1) & (c2n == c2) & (c3n == c3)
                               & (d0n == d0) & (d1n == d1) & (d2n == d2) & (d3n == d3))
                    a0, a1, a2, a3 = a0n, a1n, a2n, a3n
                    b0, b1, b2, b3 = b0n, b1n, b2n, b3n
                    c0, c1, c2, c3 = c0n, c1n, c2n, c3n
                    d0, d1, d2, d3 = d0n, d1n, d2n, d3n
                    if settled:
                        break
                leaf[0, g] = a0
                leaf[0, g + 1] = a1
                leaf[0, g + 2] = a2
                leaf[0, g + 3] = a3
                leaf[1, g] = b0
                leaf[1, g + 1] = b1
                leaf[1, g + 2] = b2
                leaf[1, g + 3] = b3
                leaf[2, g] = c0
                leaf[2, g + 1] = c1
                leaf[2, g + 2] = c2
                leaf[2, g + 3] = c3
                leaf[3, g] = d0
                leaf[3, g + 1] = d1
                leaf[3, g + 2] = d2
                leaf[3, g + 3] = d3
            first_tree = grouped
        else:
            first_tree = 0
        for r in range(min(ROWS, n - i)):
            row = x[i + r]
            for t in range(first_tree, n_trees):
                k = roots[t]
                while True:
                    nk = left[k] + np.uint32(row[feature[k]] > threshold[k])
                    if nk == k:
                        break
                    k = nk
                leaf[r, t] = k
            first = value[leaf[r, 0]]
            total = 0.0
            squares = 0.0
            for t in range(1, n_trees):
                d = value[leaf[r, t]] - first
                total += d
                squares += d * d
            shift = total / n_trees
            mean[i + r] = first + shift
            std[i + r] = math.sqrt(max(squares / n_trees - shift * shift, 0.0))


try:
    forest_mean_std = numba.njit(cache=True, nogil=True)(_forest_mean_std)
except RuntimeError:  # no writable cache location: compile in memory on each first use
    forest_mean_std = numba.njit(nogil=True)(_forest_mean_std)
