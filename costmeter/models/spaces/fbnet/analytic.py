"""Analytic features of FBNet architectures (vectorised numpy, no torch).

Every quantity of a block depends only on its layer and its choice, so a ``(22, 9, Q)`` table
is computed once and gathered with the op codes; sums over layers or stages are then one
``sum``. Units: MACs are multiply-accumulates of convolutions and the classifier at batch 1;
``params`` are trainable parameters (convolution weights, BN scale and shift, classifier
weight and bias; BN running statistics excluded); ``act_elems`` are elements written by the
convolutions (x 4 bytes in float32); ``ops`` count the primitive tensor operations of the
module (convolution, BN, ReLU, channel shuffle, residual add), a proxy for kernel launches.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

from costmeter.models.spaces.fbnet.encoding import (
    BLOCK_EXPAND,
    BLOCK_GROUPS,
    BLOCK_KERNEL,
    BLOCKS,
    FINAL_HW,
    HEAD_WIDTH,
    LAYER_C_IN,
    LAYER_C_OUT,
    LAYER_H_IN,
    LAYER_H_OUT,
    LAYER_STAGE,
    N_LAYERS,
    N_STAGES,
    NUM_CLASSES,
    RESIDUAL,
    RESOLUTION,
    SKIP,
    SKIP_IS_CONV,
    STAGE_WIDTHS,
    STEM_STRIDE,
    STEM_WIDTH,
    to_codes,
)

FEATURE_SCHEMA_VERSION = 1
#: per-block quantities, the last axis of :func:`block_table`
QUANTITIES: tuple[str, ...] = ("macs_expand", "macs_depthwise", "macs_project", "macs_skip_conv",
                               "params", "act_elems", "convs", "ops", "shuffles", "adds")
_Q = {name: i for i, name in enumerate(QUANTITIES)}


@lru_cache(maxsize=1)
def block_table() -> np.ndarray:
    """``(22, 9, len(QUANTITIES))`` float64: each quantity of each block choice at each layer."""
    c_in = LAYER_C_IN[:, None].astype(np.float64)
    c_out = LAYER_C_OUT[:, None].astype(np.float64)
    h_in2 = (LAYER_H_IN[:, None] ** 2).astype(np.float64)
    h_out2 = (LAYER_H_OUT[:, None] ** 2).astype(np.float64)
    k2 = (BLOCK_KERNEL[None, :] ** 2).astype(np.float64)
    g = np.maximum(BLOCK_GROUPS[None, :], 1).astype(np.float64)
    conv = (np.arange(len(BLOCKS)) != SKIP)[None, :].astype(np.float64)   # an inverted residual
    mid = c_in * BLOCK_EXPAND[None, :] * conv
    skip_conv = (~conv.astype(bool)) & SKIP_IS_CONV[:, None]              # skip as 1x1 conv
    sc = skip_conv.astype(np.float64)
    shuffle = (BLOCK_GROUPS[None, :] > 1).astype(np.float64) * np.ones((N_LAYERS, 1))
    add = conv * RESIDUAL[:, None]
    q = np.zeros((N_LAYERS, len(BLOCKS), len(QUANTITIES)))
    q[..., _Q["macs_expand"]] = h_in2 * c_in * mid / g
    q[..., _Q["macs_depthwise"]] = h_out2 * mid * k2
    q[..., _Q["macs_project"]] = h_out2 * mid * c_out / g
    q[..., _Q["macs_skip_conv"]] = h_out2 * c_in * c_out * sc
    q[..., _Q["params"]] = (c_in * mid / g + mid * k2 + mid * c_out / g + 4 * mid + 2 * c_out * conv
                            + (c_in * c_out + 2 * c_out) * sc)
    q[..., _Q["act_elems"]] = h_in2 * mid + h_out2 * mid + h_out2 * c_out * conv + h_out2 * c_out * sc
    q[..., _Q["convs"]] = 3 * conv + sc
    q[..., _Q["ops"]] = 8 * conv + shuffle + add + 3 * sc      # 3 x (conv, BN) + 2 ReLU
    q[..., _Q["shuffles"]] = shuffle
    q[..., _Q["adds"]] = add
    q.setflags(write=False)
    return q


def fixed_costs() -> dict[str, float]:
    """MACs, parameters, activation elements, convolutions and ops of the stem and head."""
    h0 = -(-RESOLUTION // STEM_STRIDE)
    c_last = STAGE_WIDTHS[-1]
    return {
        "macs": float(h0 * h0 * 3 * STEM_WIDTH * 9 + FINAL_HW ** 2 * c_last * HEAD_WIDTH
                      + HEAD_WIDTH * NUM_CLASSES),
        "params": float(3 * STEM_WIDTH * 9 + 2 * STEM_WIDTH + c_last * HEAD_WIDTH
                        + 2 * HEAD_WIDTH + HEAD_WIDTH * NUM_CLASSES + NUM_CLASSES),
        "act_elems": float(h0 * h0 * STEM_WIDTH + FINAL_HW ** 2 * HEAD_WIDTH + NUM_CLASSES),
        "convs": 2.0,
        "ops": 8.0,   # stem conv/BN/ReLU, head conv/BN/ReLU, pool, linear
    }


_TOTALS = ("macs_total", "macs_expand", "macs_depthwise", "macs_project", "macs_skip_conv",
           "params_total", "act_elems_total", "n_convs", "n_ops", "n_shuffles", "n_adds",
           "n_identity")


@lru_cache(maxsize=1)
def feature_names() -> tuple[str, ...]:
    """Names of the analytic features (schema ``fbnet/v1``), in column order.

    ``l01_k3_e1`` .. ``l22_skip``: per-layer block one-hots; ``l01_macs`` ..: per-layer MACs;
    ``n_<block>``: counts over the network; ``s1_n_<block>`` ..: counts per stage;
    ``s1_macs`` ..: MACs per stage; then the network totals.
    """
    names = [f"l{i + 1:02d}_{b}" for i in range(N_LAYERS) for b in BLOCKS]
    names += [f"l{i + 1:02d}_macs" for i in range(N_LAYERS)]
    names += [f"n_{b}" for b in BLOCKS]
    names += [f"s{s + 1}_n_{b}" for s in range(N_STAGES) for b in BLOCKS]
    names += [f"s{s + 1}_macs" for s in range(N_STAGES)]
    names += list(_TOTALS)
    return tuple(names)


def onehot_feature_names() -> tuple[str, ...]:
    """The 198 per-layer one-hot columns (the classic encoding of this space)."""
    return feature_names()[: N_LAYERS * len(BLOCKS)]


@lru_cache(maxsize=1)
def _stage_matrix() -> np.ndarray:
    """``(22, 7)`` 0/1 matrix: layer -> stage."""
    m = np.zeros((N_LAYERS, N_STAGES))
    m[np.arange(N_LAYERS), LAYER_STAGE] = 1.0
    return m


_STAGE_STARTS = np.concatenate([[0], np.cumsum(np.bincount(LAYER_STAGE))[:-1]])


def feature_matrix(archs: Iterable[Any] | np.ndarray, validated: bool = False) -> np.ndarray:
    """Analytic features as a float64 ``(n, len(feature_names()))`` array.

    Vectorised: one scatter writes the per-layer one-hots, gathers from :func:`block_table`
    give the per-layer MACs, ``bincount`` the per-stage counts and one matrix product the
    network totals (100,000 architectures in about a second, most of it writing the output).
    ``validated``: ``archs`` is already what :func:`to_codes` returned, used as it is.
    """
    codes = (archs if validated else to_codes(archs)).astype(np.int64)
    n, nb = len(codes), len(BLOCKS)
    rows = np.arange(n)[:, None]
    flat = np.arange(N_LAYERS) * nb + codes                              # (n, 22) into 198
    table = block_table().reshape(N_LAYERS * nb, len(QUANTITIES))
    width = len(feature_names())
    n_onehot = N_LAYERS * nb
    out = np.empty((n, width))
    out[:, :n_onehot] = 0.0  # every other column is written below
    out.reshape(-1)[(rows * width + flat).ravel()] = 1.0
    col = n_onehot
    layer_macs = table[:, :4].sum(axis=1)[flat]
    counts = np.bincount((rows * nb + codes).ravel(), minlength=n * nb).reshape(n, nb)
    stage_key = rows * (N_STAGES * nb) + LAYER_STAGE[None, :] * nb + codes
    stage_counts = np.bincount(stage_key.ravel(), minlength=n * N_STAGES * nb)
    for block in (layer_macs, counts, stage_counts.reshape(n, N_STAGES * nb),
                  np.add.reduceat(layer_macs, _STAGE_STARTS, axis=1)):
        out[:, col:col + block.shape[1]] = block
        col += block.shape[1]
    totals = out[:, :n_onehot] @ table  # (n, Q); integer sums: exact in any order
    fixed = fixed_costs()
    identity = (codes[:, ~SKIP_IS_CONV] == SKIP).sum(axis=1)
    out[:, col:] = np.column_stack([
        fixed["macs"] + totals[:, :4].sum(axis=1),
        totals[:, _Q["macs_expand"]], totals[:, _Q["macs_depthwise"]],
        totals[:, _Q["macs_project"]], totals[:, _Q["macs_skip_conv"]],
        fixed["params"] + totals[:, _Q["params"]],
        fixed["act_elems"] + totals[:, _Q["act_elems"]],
        fixed["convs"] + totals[:, _Q["convs"]], fixed["ops"] + totals[:, _Q["ops"]],
        totals[:, _Q["shuffles"]], totals[:, _Q["adds"]], identity,
    ])
    return out


def features(archs: Iterable[Any] | np.ndarray) -> Any:
    """Analytic features as a pandas DataFrame with named columns (see :func:`feature_names`)."""
    import pandas as pd

    return pd.DataFrame(feature_matrix(archs), columns=list(feature_names()))


def param_count(arch: Any) -> int:
    """Trainable parameters of one architecture's CIFAR-100 network (analytic)."""
    return int(feature_matrix(_one(arch))[0, feature_names().index("params_total")])


def macs(arch: Any) -> int:
    """Multiply-accumulates of one architecture's network at batch 1 (analytic)."""
    return int(feature_matrix(_one(arch))[0, feature_names().index("macs_total")])


def _one(arch: Any) -> Any:
    return arch if isinstance(arch, np.ndarray) else [arch]
