"""The mean and spread of a fitted forest's trees in one compiled pass (numba), for NAS loops.

scikit-learn predicts tree by tree, row by row (about 16 dependent node visits per tree and row
for the default forest), and the spread across trees needs every tree's output kept:
``(n_trees, n_rows)`` doubles. This module flattens the forest's node arrays once and walks them
with a numba-compiled kernel that

- takes the rows as they come (row-major float32, one row's features in cache while every
  tree reads them) and walks eight trees side by side, so that eight independent chains of
  node reads overlap instead of each waiting for the one before (a partition of row blocks
  node by node, the previous design, needed a transposed copy of the rows and was 1.2-1.5x
  slower on the default forests);
- accumulates, per row, the sum and sum of squares of the trees' outputs shifted by the first
  tree's (no cancellation), so the mean and the population standard deviation across trees
  -- what ``numpy.mean`` / ``numpy.std`` of the per-tree outputs give -- come out of the same
  pass, without the ``(n_trees, n_rows)`` matrix.

Comparisons are exact: scikit-learn compares float32 features with float64 thresholds; here each
threshold is rounded down to the largest float32 not above it, which decides ``x <= t`` alike
for every float32 ``x``. The outputs match scikit-learn's to float64 rounding (about 1e-15;
the tests check both paths on every space).

numba is optional (the ``fast`` extra). Without it, or for batches under
:data:`MIN_COMPILED_ROWS` rows (where compiling on first use would cost more than it saves),
:func:`tree_mean_std` uses scikit-learn's per-tree ``predict``; ``COSTMETER_TREE_KERNEL=sklearn``
forces that path.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np

MIN_COMPILED_ROWS = 512

_FLAT: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, ...]] = weakref.WeakKeyDictionary()
_KERNEL: list[Any] = []  # [compiled kernel] or [None] once numba is known to be absent


def _compiled_kernel() -> Any:
    """The numba kernel, compiled (and cached on disk) on first use; None without numba."""
    if not _KERNEL:
        try:
            from costmeter.predictors.estimators._tree_numba import forest_mean_std
        except ImportError:
            forest_mean_std = None
        _KERNEL.append(forest_mean_std)
    return _KERNEL[0]


def kernel_available() -> bool:
    """Whether the compiled path can run here (numba installed, not switched off)."""
    return os.environ.get("COSTMETER_TREE_KERNEL", "") != "sklearn" and _compiled_kernel() is not None


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold: for float32 ``x``,
    ``x <= t`` exactly when ``x <= float32_floor(t)``."""
    t = np.asarray(threshold, dtype=np.float64)
    low = t.astype(np.float32)
    above = low.astype(np.float64) > t
    low[above] = np.nextafter(low[above], np.float32(-np.inf))
    return low


def sibling_order(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The nodes of one tree (scikit-learn's ``children_left``/``children_right``, -1 at
    leaves) level by level, each node's two children side by side: ``order[i]`` is the node
    stored at position ``i`` (the root first)."""
    level = np.zeros(1, dtype=np.int64)
    parts = [level]
    while level.size:
        inner = level[left[level] >= 0]
        level = np.stack([left[inner], right[inner]], axis=1).ravel()
        parts.append(level)
    return np.concatenate(parts)


def flatten_forest(forest: Any) -> tuple[np.ndarray, ...]:
    """(feature uint32, threshold float32, left uint32, value float64, roots uint32) of every tree
    of a fitted scikit-learn forest regressor, concatenated, each tree in :func:`sibling_order`:
    a node's right child is ``left + 1``. A leaf is its own left child (threshold +inf, feature
    0), so a walk that reaches it stays there."""
    cached = _FLAT.get(forest)
    if cached is not None:
        return cached
    feature, threshold, left, value, roots = [], [], [], [], []
    offset = 0
    for est in forest.estimators_:
        tree = est.tree_
        order = sibling_order(tree.children_left, tree.children_right)
        position = np.empty(tree.node_count, dtype=np.int64)
        position[order] = np.arange(tree.node_count)
        leaf = tree.children_left[order] < 0
        own = np.arange(tree.node_count)
        feature.append(np.where(leaf, 0, tree.feature[order]))
        threshold.append(np.where(leaf, np.float32(np.inf), float32_floor(tree.threshold[order])))
        left.append(np.where(leaf, own, position[np.maximum(tree.children_left[order], 0)]) + offset)
        value.append(tree.value.reshape(tree.node_count, -1)[order, 0])
        roots.append(offset)
        offset += tree.node_count
    flat = (np.concatenate(feature).astype(np.uint32),
            np.concatenate(threshold).astype(np.float32),
            np.concatenate(left).astype(np.uint32),
            np.concatenate(value).astype(np.float64),
            np.asarray(roots, dtype=np.uint32))
    _FLAT[forest] = flat
    return flat


def sklearn_mean_std(forest: Any, x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every tree's ``predict``, then mean and standard deviation across trees."""
    out = np.empty((len(forest.estimators_), len(x32)))
    for i, tree in enumerate(forest.estimators_):
        out[i] = tree.predict(x32, check_input=False)
    return out.mean(axis=0), out.std(axis=0)


def tree_mean_std(forest: Any, x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) across the trees of a fitted forest regressor, per row of a
    C-contiguous float32 matrix (units of the forest's target). Compiled when possible."""
    if len(x32) < MIN_COMPILED_ROWS or not kernel_available():
        return sklearn_mean_std(forest, x32)
    feature, threshold, left, value, roots = flatten_forest(forest)
    mean, std = np.empty(len(x32)), np.empty(len(x32))
    _compiled_kernel()(np.ascontiguousarray(x32, dtype=np.float32), feature, threshold, left,
                       value, roots, mean, std)
    return mean, std
