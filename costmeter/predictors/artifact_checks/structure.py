"""Structural checks of a loaded predictor, run before anything can predict with it.

scikit-learn's tree code trusts its arrays: a child index out of range makes ``predict`` read
outside the node array (a segfault), a cycle makes it loop forever, a feature index beyond the
input's width reads outside the input. skops rebuilds such trees without complaint, so every
``sklearn.tree._tree.Tree`` reachable from the loaded object -- found by a bounded, iterative
walk over attributes, containers and object arrays, whatever estimator holds it -- is checked
here (:func:`check_tree`), as are the widths that feed it (:func:`check_owner`):

- ``node_count`` equals the node array's length (``capacity``), at least 1;
- each node has two children or none (-1, -1); children lie in [1, node_count);
- the children form one tree rooted at node 0: every other node is a child exactly once and
  reaches the root through its parents (no cycle, no orphan);
- an internal node's feature lies in [0, n_features) and its threshold is finite;
- ``value`` has shape (node_count, n_outputs, max_n_classes) and finite entries;
- an estimator's ``n_features_in_`` and ``n_outputs_`` equal its tree's and its fitted
  sub-estimators' (``estimator_``, ``estimators_``), ``feature_names_in_`` has that many names, and a
  search-space predictor's column selection (``columns_``) lies within its space's features.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from costmeter.errors import StoreError

MAX_OBJECTS = 2_000_000
"""Most distinct objects visited in a loaded predictor (a 64-tree forest has ~700)."""
SUB_ESTIMATORS = ("estimator_", "estimators_")
"""Fitted attributes holding sub-estimators that see the same feature columns as their owner
(scikit-learn's meta-estimator convention)."""
_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic, np.dtype, type)


class TreeError(StoreError):
    """A tree or an estimator around it is inconsistent (the message says where and how)."""


def walk(root: Any, max_objects: int = MAX_OBJECTS) -> Iterator[tuple[str, Any]]:
    """(path, object) for every distinct object reachable from ``root`` through instance
    ``__dict__`` values, list/tuple/set/dict items and object-array elements; iterative, so
    depth costs no stack; more than ``max_objects`` objects is a StoreError."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if len(seen) > max_objects:
            raise TreeError(f"it holds more than {max_objects} objects")
        yield path, obj
        if isinstance(obj, _SCALARS):
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj.ravel().tolist()))
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                stack.append((f"{path}[{_key(key)}]", value))
                stack.append((f"{path}.<key>", key))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
        else:
            attrs = getattr(obj, "__dict__", None)
            if isinstance(attrs, dict):
                stack.extend((f"{path}.{name}" if path else str(name), v) for name, v in attrs.items())


def _key(key: Any) -> str:
    text = repr(key) if isinstance(key, (str, int)) else type(key).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_structure(root: Any, space_width: Any = None, max_objects: int = MAX_OBJECTS) -> int:
    """Check every tree and tree owner reachable from ``root``; returns the number of trees.

    ``space_width(space) -> int | None`` gives the feature count of a search space (for
    ``columns_`` checks); None skips those. Raises TreeError (a StoreError) naming the first
    inconsistency found.
    """
    from sklearn.tree._tree import Tree

    trees = 0
    for path, obj in walk(root, max_objects):
        where = path or type(root).__name__
        if isinstance(obj, Tree):
            check_tree(obj, where)
            trees += 1
        elif not isinstance(obj, _SCALARS) and isinstance(getattr(obj, "__dict__", None), dict):
            check_owner(obj, where, Tree, space_width)
    return trees


def check_tree(tree: Any, where: str) -> None:
    """Refuse a tree whose arrays cannot be walked safely by scikit-learn's predict."""
    n, capacity = int(tree.node_count), int(tree.capacity)
    if n < 1 or n != capacity:  # must hold before any node array is touched: it sizes the view
        raise TreeError(f"{where}: node_count {n} does not match its {capacity} stored nodes")
    n_features, n_outputs, n_classes = int(tree.n_features), int(tree.n_outputs), int(tree.max_n_classes)
    if n_features < 1 or n_outputs < 1 or n_classes < 1:
        raise TreeError(f"{where}: {n_features} features, {n_outputs} outputs, {n_classes} classes")
    per_output = np.asarray(tree.n_classes)
    if per_output.shape != (n_outputs,) or per_output.min() < 1 or per_output.max() != n_classes:
        raise TreeError(f"{where}: class counts {per_output.tolist()[:8]} disagree with "
                        f"max_n_classes {n_classes}")
    value = tree.value
    if value.shape != (n, n_outputs, n_classes):
        raise TreeError(f"{where}: value array of shape {value.shape}, expected {(n, n_outputs, n_classes)}")
    if not np.isfinite(value).all():
        raise TreeError(f"{where}: a node value is not finite")
    left = np.asarray(tree.children_left, dtype=np.int64)
    right = np.asarray(tree.children_right, dtype=np.int64)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        node = int(np.flatnonzero(leaf != (right == -1))[0])
        raise TreeError(f"{where}: node {node} has one child ({left[node]}, {right[node]})")
    inner = np.flatnonzero(~leaf)
    kids = np.concatenate([left[inner], right[inner]])
    bad = (kids < 1) | (kids >= n)
    if bad.any():
        raise TreeError(f"{where}: child index {int(kids[bad][0])} out of range [1, {n})")
    parents = np.bincount(kids, minlength=n)
    if parents[1:].size and (parents[1:] != 1).any():
        node = 1 + int(np.flatnonzero(parents[1:] != 1)[0])
        raise TreeError(f"{where}: node {node} is the child of {int(parents[node])} nodes, not 1")
    _check_acyclic(left, right, inner, n, where)
    feature = np.asarray(tree.feature, dtype=np.int64)[inner]
    out = (feature < 0) | (feature >= n_features)
    if out.any():
        raise TreeError(f"{where}: feature index {int(feature[out][0])} out of range [0, {n_features})")
    if not np.isfinite(np.asarray(tree.threshold)[inner]).all():
        raise TreeError(f"{where}: a split threshold is not finite")


def _check_acyclic(left: np.ndarray, right: np.ndarray, inner: np.ndarray, n: int, where: str) -> None:
    """With one parent per non-root node, the nodes form a tree iff each reaches node 0 by
    following parents; pointer doubling (parent = parent[parent]) decides it in log2(n) steps."""
    parent = np.zeros(n, dtype=np.int64)
    parent[left[inner]] = inner
    parent[right[inner]] = inner
    for _ in range(max(1, math.ceil(math.log2(n))) + 1):
        parent = parent[parent]
    if (parent != 0).any():
        raise TreeError(f"{where}: node {int(np.flatnonzero(parent)[0])} lies on a cycle, not "
                        "below the root")


def check_owner(obj: Any, where: str, tree_type: type, space_width: Any = None) -> None:
    """Widths around trees: ``n_features_in_`` against the tree, sub-estimators and feature
    names; ``columns_`` of a search-space predictor against its space and regressor."""
    attrs = obj.__dict__
    width = attrs.get("n_features_in_")
    tree = attrs.get("tree_")
    if isinstance(tree, tree_type):
        if not _same(width, tree.n_features):
            raise TreeError(f"{where}: n_features_in_ {_brief(width)} differs from its tree's "
                            f"{tree.n_features} features")
        outputs = attrs.get("n_outputs_", tree.n_outputs)
        if not _same(outputs, tree.n_outputs):
            raise TreeError(f"{where}: n_outputs_ {_brief(outputs)} differs from its tree's "
                            f"{tree.n_outputs}")
    if width is None:
        _check_columns(attrs, where, space_width)
        return
    if not _is_int(width) or width < 1:
        raise TreeError(f"{where}: n_features_in_ is {_brief(width)}")
    names = attrs.get("feature_names_in_")
    if names is not None and (not isinstance(names, np.ndarray) or names.shape != (width,)):
        raise TreeError(f"{where}: {_brief(getattr(names, 'shape', names))} feature names for "
                        f"{width} features")
    for attr in SUB_ESTIMATORS:
        subs = attrs.get(attr)
        many = isinstance(subs, (list, tuple))
        for i, sub in enumerate(subs if many else [subs]):
            inner = getattr(sub, "__dict__", None)
            if not isinstance(inner, dict):
                continue
            for name in ("n_features_in_", "n_outputs_"):
                if name in inner and name in attrs and not _same(inner[name], attrs[name]):
                    raise TreeError(f"{where}.{attr}" + (f"[{i}]" if many else "") + f": {name} "
                                    f"{_brief(inner[name])}, its owner's {_brief(attrs[name])}")


def _check_columns(attrs: dict[str, Any], where: str, space_width: Any) -> None:
    """A search-space predictor feeds its regressor the space's feature columns ``columns_``
    (or all of them when None): both must fit the space and the regressor's width."""
    if not ({"columns_", "regressor_", "space"} <= attrs.keys()) or space_width is None:
        return
    total = space_width(attrs["space"]) if isinstance(attrs["space"], str) else None
    if total is None:
        raise TreeError(f"{where}: unknown search space {_brief(attrs['space'])}")
    columns = attrs["columns_"]
    if columns is None:
        fed = total
    else:
        if not (isinstance(columns, np.ndarray) and columns.ndim == 1 and columns.dtype.kind in "iu"):
            raise TreeError(f"{where}: columns_ is not a 1-d integer array")
        if columns.size and (columns.min() < 0 or columns.max() >= total):
            raise TreeError(f"{where}: a column index lies outside the space's {total} features")
        fed = int(columns.size)
    width = getattr(attrs["regressor_"], "__dict__", {}).get("n_features_in_")
    if width is not None and not _same(width, fed):
        raise TreeError(f"{where}: its regressor expects {_brief(width)} features, it passes {fed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _same(a: Any, b: Any) -> bool:
    """Both are integers and equal (a hostile file may put an array where a count belongs)."""
    return _is_int(a) and _is_int(b) and int(a) == int(b)


def _brief(value: Any) -> str:
    text = type(value).__name__ if isinstance(value, (dict, list, tuple, set)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
