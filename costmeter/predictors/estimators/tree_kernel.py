"""The mean and spread of a fitted forest's trees in one compiled pass (numba), for NAS loops.

scikit-learn predicts tree by tree, row by row (about 16 dependent node visits per tree and row
for the default forest), and the spread across trees needs every tree's output kept:
``(n_trees, n_rows)`` doubles. This module flattens the forest's node arrays once and walks them
with a numba-compiled kernel that

- takes a block of rows (in cache) and, per tree, partitions the block's row indices from the
  root down (a row set per node, split by one comparison per row), so each node's feature
  column and threshold are read once per block rather than once per row, and a node with
  only a few rows left is finished row by row;
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
BLOCK_ROWS = 4096  # rows partitioned together (their feature columns stay in cache)
SMALL_SEGMENT = 4  # a node holding this many rows or fewer finishes them row by row
TRANSPOSE_ROWS = 256  # rows transposed at a time
MAX_DEPTH = 500  # the kernel's node stack; deeper trees go through scikit-learn

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


def flatten_forest(forest: Any) -> tuple[np.ndarray, ...]:
    """(feature int32, threshold float32, children int32 ``2 * nodes``, value float64, roots
    int32) of every tree of a fitted scikit-learn forest regressor, concatenated. A leaf is its
    own child on both sides (threshold +inf, feature 0)."""
    cached = _FLAT.get(forest)
    if cached is not None:
        return cached
    trees = [est.tree_ for est in forest.estimators_]
    offsets = np.cumsum([0] + [t.node_count for t in trees])
    feature, threshold, children, value = [], [], [], []
    for tree, offset in zip(trees, offsets):
        leaf = tree.children_left < 0
        own = np.arange(tree.node_count)
        feature.append(np.where(leaf, 0, tree.feature))
        threshold.append(np.where(leaf, np.float32(np.inf), float32_floor(tree.threshold)))
        pair = np.stack([np.where(leaf, own, tree.children_left),
                         np.where(leaf, own, tree.children_right)], axis=1) + offset
        children.append(pair.ravel())
        value.append(tree.value.reshape(tree.node_count, -1)[:, 0])
    flat = (np.concatenate(feature).astype(np.int32),
            np.concatenate(threshold).astype(np.float32),
            np.concatenate(children).astype(np.int32),
            np.concatenate(value).astype(np.float64),
            offsets[:-1].astype(np.int32))
    _FLAT[forest] = flat
    return flat


def sklearn_mean_std(forest: Any, x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every tree's ``predict``, then mean and standard deviation across trees."""
    out = np.empty((len(forest.estimators_), len(x32)))
    for i, tree in enumerate(forest.estimators_):
        out[i] = tree.predict(x32, check_input=False)
    return out.mean(axis=0), out.std(axis=0)


def feature_columns(x32: np.ndarray, rows: int = TRANSPOSE_ROWS) -> np.ndarray:
    """The matrix transposed (features x rows, C order: one feature's values contiguous, as the
    kernel's partitions read them), ``rows`` rows at a time so that both sides stay in cache."""
    out = np.empty((x32.shape[1], len(x32)), dtype=np.float32)
    for start in range(0, len(x32), rows):
        out[:, start:start + rows] = x32[start:start + rows].T
    return out


def tree_mean_std(forest: Any, x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) across the trees of a fitted forest regressor, per row of a
    C-contiguous float32 matrix (units of the forest's target). Compiled when possible."""
    if (len(x32) < MIN_COMPILED_ROWS or not kernel_available()
            or max(est.tree_.max_depth for est in forest.estimators_) >= MAX_DEPTH):
        return sklearn_mean_std(forest, x32)
    feature, threshold, children, value, roots = flatten_forest(forest)
    columns = feature_columns(x32)
    mean, std = np.empty(len(x32)), np.empty(len(x32))
    _compiled_kernel()(columns, feature, threshold, children, value, roots, mean, std,
                       BLOCK_ROWS, SMALL_SEGMENT)
    return mean, std
