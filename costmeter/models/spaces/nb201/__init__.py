"""NAS-Bench-201 search space: cell strings, enumeration, analytic features, torch network.

Definition (Dong & Yang, "NAS-Bench-201", ICLR 2020): a cell is a DAG over 4 nodes with 6
edges ``i -> j`` (``i < j``); node 0 is the cell input, node 3 its output, node ``j`` is the
sum of its incoming edges. Each edge carries one of :data:`OPS`. Cell string, nodes separated
by ``+``: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

Encodings used here:

- *cell string*: the canonical text form above;
- *op codes*: ``int8`` array of shape ``(n, 6)``, the op index of each edge in string order
  (edges ``0->1, 0->2, 1->2, 0->3, 1->3, 2->3``);
- *space index* (``0..15624``): the base-5 number of the op codes, first edge most
  significant. This is this module's enumeration order. The published NAS-Bench-201 index
  order is a different (fixed) permutation, available through :func:`nb201_index_to_arch`.

Network (CIFAR, 32x32 input): 3x3 stem conv to 16 channels + BN; three stages of 5 cells at
16/32/64 channels with a residual reduction block between stages; BN-ReLU, global average
pool, linear classifier. Convolution ops are ReLU-Conv-BN; avg_pool_3x3 is stride 1,
padding 1; ``none`` multiplies by zero.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

NAME = "nb201"
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
OP_SHORT: tuple[str, ...] = ("none", "skip", "conv1x1", "conv3x3", "pool3x3")
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
N_EDGES = 6
SIZE = len(OPS) ** N_EDGES  # 15,625
FEATURE_SCHEMA_VERSION = 1
CAPABILITIES: frozenset[str] = frozenset({"enumerate", "index", "onehot", "lut"})

STAGE_CHANNELS: tuple[int, ...] = (16, 32, 64)
STAGE_RESOLUTION: tuple[int, ...] = (32, 16, 8)
CELLS_PER_STAGE = 5
NUM_CLASSES = 10
INPUT_CHW: tuple[int, int, int] = (3, 32, 32)

_NONE, _SKIP, _C1, _C3, _POOL = range(5)
_TOKEN = re.compile(r"^([A-Za-z0-9_]+)~(\d+)$")


# ----------------------------------------------------------------------------- parse / format
def parse(text: str) -> np.ndarray:
    """Parse a cell string into op codes (``int8`` array of 6); ConfigError names the bad part."""
    if not isinstance(text, str):
        raise ConfigError(f"nb201: architecture must be a cell string, got {type(text).__name__}")
    s = text.strip()
    nodes = s.split("+")
    if len(nodes) != 3:
        raise ConfigError(
            f"nb201: {text!r} has {len(nodes)} node groups separated by '+', expected 3 "
            "(like |nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|)"
        )
    codes = np.zeros(N_EDGES, dtype=np.int8)
    edge = 0
    for j, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise ConfigError(f"nb201: node {j} group {node!r} must start and end with '|'")
        tokens = node[1:-1].split("|")
        if len(tokens) != j:
            raise ConfigError(f"nb201: node {j} has {len(tokens)} input edges, expected {j}")
        for i, token in enumerate(tokens):
            m = _TOKEN.match(token)
            if m is None:
                raise ConfigError(f"nb201: edge {i}->{j} token {token!r} is not of the form op~{i}")
            op, src = m.group(1), int(m.group(2))
            if src != i:
                raise ConfigError(f"nb201: edge {i}->{j} token {token!r} names input ~{src}, "
                                  f"expected ~{i}")
            if op not in OPS:
                raise ConfigError(f"nb201: edge {i}->{j} has unknown op {op!r}; "
                                  f"allowed: {', '.join(OPS)}")
            codes[edge] = OPS.index(op)
            edge += 1
    return codes


def format_arch(codes: Sequence[int] | np.ndarray) -> str:
    """Cell string of one op-code vector (inverse of :func:`parse`)."""
    c = _check_codes(np.asarray(codes).reshape(1, -1))[0]
    ops = [OPS[int(k)] for k in c]
    return (f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+"
            f"|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|")


def _check_codes(codes: np.ndarray) -> np.ndarray:
    if codes.ndim != 2 or codes.shape[1] != N_EDGES:
        raise ConfigError(f"nb201: op codes must have shape (n, 6), got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= len(OPS)):
        bad = np.argwhere((codes < 0) | (codes >= len(OPS)))[0]
        raise ConfigError(f"nb201: op code {int(codes[bad[0], bad[1]])} on edge "
                          f"{EDGES[bad[1]][0]}->{EDGES[bad[1]][1]} (row {bad[0]}) is outside 0..4")
    return codes.astype(np.int8, copy=False)


@lru_cache(maxsize=1)
def _string_table() -> tuple[list[str], dict[str, int]]:
    strings = [format_arch(c) for c in index_to_codes(np.arange(SIZE))]
    return strings, {s: i for i, s in enumerate(strings)}


def to_codes(archs: Iterable[Any] | np.ndarray | str) -> np.ndarray:
    """Op codes ``(n, 6)`` of cell strings, op-code rows, or an ``(n, 6)`` int array."""
    if isinstance(archs, str):
        archs = [archs]
    if isinstance(archs, np.ndarray) and archs.dtype.kind in "iu":
        return _check_codes(archs.reshape(-1, N_EDGES) if archs.ndim == 1 else archs)
    items = list(archs)
    if not items:
        return np.zeros((0, N_EDGES), dtype=np.int8)
    if all(isinstance(a, str) for a in items):
        lookup = _string_table()[1]
        idx = np.fromiter((lookup.get(a.strip(), -1) for a in items), dtype=np.int64,
                          count=len(items))
        bad = np.flatnonzero(idx < 0)
        if bad.size:
            parse(items[int(bad[0])])  # raises with the precise reason
        return index_to_codes(idx)
    return np.stack([parse(a) if isinstance(a, str)
                     else _check_codes(np.asarray(a).reshape(1, -1))[0] for a in items])


def to_array(archs: Iterable[Any] | np.ndarray | str) -> np.ndarray:
    """The canonical integer encoding: op codes ``(n, 6)`` (see :func:`to_codes`)."""
    return to_codes(archs)


def index_to_codes(index: np.ndarray | Sequence[int]) -> np.ndarray:
    """Op codes of space indices (this module's base-5 enumeration order)."""
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= SIZE):
        raise ConfigError(f"nb201: space index must be in 0..{SIZE - 1}")
    powers = len(OPS) ** np.arange(N_EDGES - 1, -1, -1)
    return ((idx[:, None] // powers) % len(OPS)).astype(np.int8)


def codes_to_index(codes: np.ndarray) -> np.ndarray:
    """Space indices of op-code rows (inverse of :func:`index_to_codes`)."""
    c = _check_codes(np.asarray(codes).reshape(-1, N_EDGES)).astype(np.int64)
    return c @ (len(OPS) ** np.arange(N_EDGES - 1, -1, -1))


def enumerate_archs() -> list[str]:
    """All 15,625 cell strings in space-index order."""
    return list(_string_table()[0])


def sample(n: int, seed: int = 0) -> list[str]:
    """``n`` cell strings drawn uniformly without replacement (with replacement beyond the
    15,625). Nested: ``sample(k, seed)`` is the start of ``sample(n, seed)`` for ``k <= n``."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(SIZE)[:n]
    if n > SIZE:
        idx = np.concatenate([idx, rng.integers(SIZE, size=n - SIZE)])
    strings = _string_table()[0]
    return [strings[int(i)] for i in idx]


def nb201_index_to_arch(index: int) -> str:
    """Cell string of a published NAS-Bench-201 index (0..15624), e.g. 0 -> ``|avg_pool_3x3~0|+...``."""
    from costmeter.models.spaces.nb201._order import nb201_order

    if not 0 <= int(index) < SIZE:
        raise ConfigError(f"nb201: NAS-Bench-201 index {index} outside 0..{SIZE - 1}")
    return _string_table()[0][int(nb201_order()[int(index)])]


def arch_to_nb201_index(arch: str) -> int:
    """Published NAS-Bench-201 index of a cell string (inverse of :func:`nb201_index_to_arch`)."""
    from costmeter.models.spaces.nb201._order import nb201_inverse_order

    return int(nb201_inverse_order()[int(codes_to_index(parse(arch))[0])])


# ----------------------------------------------------------------------------- analytic features
def _cell_op_macs_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per op type, summed over the 15 cells: MACs, parameters, activation elements touched."""
    macs = np.zeros(len(OPS))
    params = np.zeros(len(OPS))
    elems = np.zeros(len(OPS))
    for c, h in zip(STAGE_CHANNELS, STAGE_RESOLUTION):
        act = c * h * h
        n = CELLS_PER_STAGE
        macs[_C1] += n * act * c
        macs[_C3] += n * act * c * 9
        params[_C1] += n * (c * c + 2 * c)            # conv weight (no bias) + BN affine
        params[_C3] += n * (9 * c * c + 2 * c)
        elems[[_NONE, _SKIP, _C1, _C3, _POOL]] += n * act
    return macs, params, elems


def fixed_macs_params() -> tuple[int, int]:
    """MACs and parameters of everything outside the cells (stem, reductions, head)."""
    macs = 32 * 32 * 3 * 16 * 9                      # stem conv
    params = 3 * 16 * 9 + 2 * 16                      # stem conv + BN
    for (cin, cout), h in zip(((16, 32), (32, 64)), (16, 8)):
        macs += h * h * (cin * cout * 9 + cout * cout * 9 + cin * cout)
        params += (cin * cout * 9 + 2 * cout) + (cout * cout * 9 + 2 * cout) + cin * cout
    params += 2 * 64 + 64 * NUM_CLASSES + NUM_CLASSES  # last BN + classifier
    macs += 64 * NUM_CLASSES
    return macs, params


def _live_edges(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(live edge mask (n, 6), output-reachable flag (n,)): edges on an input->output path."""
    on = codes != _NONE
    e01, e02, e12, e03, e13, e23 = (on[:, k] for k in range(6))
    reach1 = e01
    reach2 = e02 | (reach1 & e12)
    reach3 = e03 | (reach1 & e13) | (reach2 & e23)
    useful2 = e23
    useful1 = e13 | (e12 & useful2)
    src = np.stack([np.ones_like(e01), np.ones_like(e01), reach1,
                    np.ones_like(e01), reach1, reach2], axis=1)
    dst = np.stack([useful1, useful2, useful2, np.ones_like(e01),
                    np.ones_like(e01), np.ones_like(e01)], axis=1)
    return on & src & dst, reach3


def _longest_path(weights: np.ndarray) -> np.ndarray:
    """Longest input->output path weight over non-none edges (-inf where none exists)."""
    n = weights.shape[0]
    best = np.full((n, 4), -np.inf)
    best[:, 0] = 0.0
    for k, (i, j) in enumerate(EDGES):  # EDGES is in topological order of their targets
        cand = np.where(np.isfinite(weights[:, k]), best[:, i] + weights[:, k], -np.inf)
        best[:, j] = np.maximum(best[:, j], cand)
    return best[:, 3]


def feature_names() -> tuple[str, ...]:
    """Names of the analytic features, in the column order of :func:`features`."""
    names = [f"edge{i}{j}_{s}" for (i, j) in EDGES for s in OP_SHORT]
    names += [f"n_{s}" for s in OP_SHORT] + [f"live_{s}" for s in OP_SHORT]
    names += ["node1_inputs", "node2_inputs", "node3_inputs", "connected",
              "depth_ops", "depth_convs", "macs_total", "macs_live", "params_total",
              "act_elems_total", "act_elems_live"]
    return tuple(names)


def onehot_feature_names() -> tuple[str, ...]:
    """The 30 one-hot edge columns (the classic 'one-hot cell' encoding)."""
    return feature_names()[: N_EDGES * len(OPS)]


def to_index(archs: Iterable[Any] | np.ndarray | str) -> np.ndarray:
    """Space indices (``int64``) of cell strings, op-code rows or an ``(n, 6)`` code array."""
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, np.ndarray):
        items = list(archs)
        if items and all(isinstance(a, str) for a in items):
            lookup = _string_table()[1]
            idx = np.fromiter((lookup.get(a, -1) for a in items), dtype=np.int64,
                              count=len(items))
            bad = np.flatnonzero(idx < 0)
            if bad.size:  # not canonical: parse each (raises with the precise reason)
                idx[bad] = codes_to_index(np.stack([parse(items[int(b)]) for b in bad]))
            return idx
        archs = items
    return codes_to_index(to_codes(archs))


@lru_cache(maxsize=1)
def _feature_table() -> np.ndarray:
    table = _compute_features(index_to_codes(np.arange(SIZE)))
    table.setflags(write=False)
    return table


def feature_matrix(archs: Iterable[Any] | np.ndarray, validated: bool = False) -> np.ndarray:
    """Analytic features as a float64 ``(n, len(feature_names()))`` array.

    The space is finite, so the features of all 15,625 cells are computed once (vectorised
    numpy, ~20 ms) and looked up by index afterwards (``validated``, for the common signature:
    the lookup's index is checked either way).
    """
    return _feature_table()[to_index(archs)]


def _compute_features(codes: np.ndarray) -> np.ndarray:
    n = codes.shape[0]
    onehot = np.zeros((n, N_EDGES, len(OPS)))
    np.put_along_axis(onehot, codes[:, :, None].astype(np.int64), 1.0, axis=2)
    counts = onehot.sum(axis=1)
    live, connected = _live_edges(codes)
    live_counts = (onehot * live[:, :, None]).sum(axis=1)
    on = codes != _NONE
    oni = on.astype(np.int64)
    node_inputs = np.stack([oni[:, 0], oni[:, 1] + oni[:, 2], oni[:, 3:].sum(axis=1)], axis=1)
    step = np.where(on, 1.0, -np.inf)
    conv = np.where(on, ((codes == _C1) | (codes == _C3)).astype(float), -np.inf)
    depth_ops = np.maximum(_longest_path(step), 0.0)
    depth_convs = np.maximum(_longest_path(conv), 0.0)
    op_macs, op_params, op_elems = _cell_op_macs_params()
    fixed_macs, fixed_params = fixed_macs_params()
    cols = [onehot.reshape(n, -1), counts, live_counts, node_inputs.astype(float),
            connected[:, None].astype(float), depth_ops[:, None], depth_convs[:, None],
            (fixed_macs + counts @ op_macs)[:, None], (fixed_macs + live_counts @ op_macs)[:, None],
            (fixed_params + counts @ op_params)[:, None],
            (counts @ op_elems)[:, None], (live_counts @ op_elems)[:, None]]
    return np.concatenate(cols, axis=1)


def features(archs: Iterable[Any] | np.ndarray) -> Any:
    """Analytic features as a pandas DataFrame with named columns (see :func:`feature_names`).

    MACs are multiply-accumulates of the whole network at batch 1; ``params_total`` counts
    trainable parameters (BN running statistics excluded); ``live_*`` count the ops on some
    input->output path; ``act_elems_*`` sum the output elements of the cell ops.
    """
    import pandas as pd

    return pd.DataFrame(feature_matrix(archs), columns=list(feature_names()))


def param_count(arch: Any) -> int:
    """Trainable parameters of the CIFAR network for one architecture (analytic)."""
    names = feature_names()
    return int(feature_matrix([arch] if isinstance(arch, str) else arch)[0, names.index("params_total")])


def macs(arch: Any) -> int:
    """Multiply-accumulates of the CIFAR network at batch 1 (analytic)."""
    names = feature_names()
    return int(feature_matrix([arch] if isinstance(arch, str) else arch)[0, names.index("macs_total")])


def input_shape(arch: Any = None, batch: int = 1) -> tuple[int, ...]:
    """Input tensor shape of the network (NCHW)."""
    return (int(batch), *INPUT_CHW)


def build_torch(arch: Any, num_classes: int = NUM_CLASSES) -> Any:
    """The CIFAR network of ``arch`` as a ``torch.nn.Module`` (random init, eval mode)."""
    from costmeter.models.spaces.nb201.torch_module import NB201Network

    codes = to_codes([arch] if isinstance(arch, str) else arch)[0]
    return NB201Network([OPS[int(k)] for k in codes], num_classes=num_classes).eval()


def canonical(arch: Any) -> str:
    """Canonical cell string of a cell string or op-code row."""
    return _string_table()[0][int(to_index([arch])[0])]
