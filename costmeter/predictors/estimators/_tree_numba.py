"""The numba kernel behind :mod:`costmeter.predictors.estimators.tree_kernel` (importing this
module raises ImportError without numba; the caller then uses scikit-learn)."""
from __future__ import annotations

import math

import numba
import numpy as np


def _forest_mean_std(columns: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                     children: np.ndarray, value: np.ndarray, roots: np.ndarray,
                     mean: np.ndarray, std: np.ndarray, block: int, small: int) -> None:
    """Fill ``mean``/``std`` (across trees) for the rows of ``columns`` (features x rows).

    A node at depth ``d`` reads its rows from ``rows[d % 2]`` and writes them, split, into the
    same span of ``rows[1 - d % 2]`` (left side from the start, right side from the end), so
    no row is copied twice; the spans of different nodes never overlap."""
    n = columns.shape[1]
    n_trees = roots.shape[0]
    rows = np.empty((2, block), np.int32)
    first = np.empty(block)
    total = np.empty(block)
    squares = np.empty(block)
    stack_node = np.empty(512, np.int32)
    stack_lo = np.empty(512, np.int32)
    stack_hi = np.empty(512, np.int32)
    stack_side = np.empty(512, np.int32)
    for start in range(0, n, block):
        m = min(block, n - start)
        for t in range(n_trees):
            for j in range(m):
                rows[0, j] = j
            stack_node[0] = roots[t]
            stack_lo[0] = 0
            stack_hi[0] = m
            stack_side[0] = 0
            top = 1
            while top > 0:
                top -= 1
                node = stack_node[top]
                lo = stack_lo[top]
                hi = stack_hi[top]
                side = stack_side[top]
                if hi - lo <= small or children[2 * node] == node:
                    for j in range(lo, hi):
                        r = rows[side, j]
                        k = node
                        while children[2 * k] != k:
                            k = children[2 * k + (columns[feature[k], start + r] > threshold[k])]
                        v = value[k]
                        if t == 0:
                            first[r] = v
                            total[r] = 0.0
                            squares[r] = 0.0
                        else:
                            d = v - first[r]
                            total[r] += d
                            squares[r] += d * d
                    continue
                f = feature[node]
                cut = threshold[node]
                other = 1 - side
                n_left = lo
                n_right = hi - 1
                for j in range(lo, hi):  # branch-free split into the other buffer
                    r = rows[side, j]
                    right = columns[f, start + r] > cut
                    rows[other, n_left] = r
                    rows[other, n_right] = r
                    n_left += 1 - right
                    n_right -= right
                if hi > n_left:
                    stack_node[top] = children[2 * node + 1]
                    stack_lo[top] = n_left
                    stack_hi[top] = hi
                    stack_side[top] = other
                    top += 1
                if n_left > lo:
                    stack_node[top] = children[2 * node]
                    stack_lo[top] = lo
                    stack_hi[top] = n_left
                    stack_side[top] = other
                    top += 1
        for j in range(m):
            shift = total[j] / n_trees
            mean[start + j] = first[j] + shift
            std[start + j] = math.sqrt(max(squares[j] / n_trees - shift * shift, 0.0))


try:
    forest_mean_std = numba.njit(cache=True, nogil=True)(_forest_mean_std)
except RuntimeError:  # no writable cache location: compile in memory on each first use
    forest_mean_std = numba.njit(nogil=True)(_forest_mean_std)
