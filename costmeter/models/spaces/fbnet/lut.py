"""Lookup-table blocks of fbnet (the :class:`~costmeter.models.spaces.blocks.LutBlocks` of this
space).

Blocks, in network order: ``Conv`` (3x3 stem to 16 channels + BN + ReLU), one block per
searchable layer, ``Conv_1`` (1x1 head conv to 1504 + BN + ReLU) and ``Logits`` (global average
pool + linear classifier). A layer's block is

- ``expanded_conv`` for the eight inverted residuals, with ``expand``, ``kernel``, ``stride``,
  ``idskip`` (the input added back) and, for the ``_g2`` choices, ``groups:2`` in the key: both
  1x1 convolutions grouped and the channel shuffle after the first are part of the block;
- ``skip_conv`` for ``skip`` where the layer changes the shape (a 1x1 conv with the stride +
  BN + ReLU; 6 of the 22 layers);
- nothing for ``skip`` where it is an identity: the exported network has no operation there,
  so it costs nothing (a zero in the dense table).

Layers with the same shapes (3-5, 7-9, 11-13, 15-17, 19-21) share their entries: 12 distinct
layer shapes x 8 inverted residuals + 6 skip convolutions + 3 fixed blocks = 105 entries. The
space has one input resolution (32).

Blocks are timed alone (:data:`INTERLEAVE` 1). Against 41 measured networks (ONNX Runtime, one
thread, an x86 CPU shared at load 15-20 on 2 cores, so compared with each network's fastest
run: the medians were 7x that), the table's sum was 1.24x the fastest run (median ratio,
0.85-1.48) with Spearman rho 0.88; groups of 4 sampled round-robin ranked alike (0.90-0.94 on
the same networks) but priced 1.5-1.8x.

Everything here is numpy except :func:`block_module` (imports torch).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.models.spaces.blocks import BlockSpec, EntryValue
from costmeter.models.spaces.fbnet import encoding as e

NAME = "fbnet"
RESOLUTIONS: tuple[int, ...] = (e.RESOLUTION,)
INTERLEAVE = 1  # each block sampled alone (see costmeter.predictors.lut.measure)


def _hwc(h: int, c: int) -> tuple[int, int, int]:
    return (int(h), int(h), int(c))


def layer_spec(layer: int, code: int) -> BlockSpec | None:
    """The block of choice ``BLOCKS[code]`` at 0-based ``layer``; None for an identity skip."""
    c_in, c_out = int(e.LAYER_C_IN[layer]), int(e.LAYER_C_OUT[layer])
    stride = int(e.LAYER_STRIDE[layer])
    shape_in, shape_out = _hwc(e.LAYER_H_IN[layer], c_in), _hwc(e.LAYER_H_OUT[layer], c_out)
    if code == e.SKIP:
        if not e.SKIP_IS_CONV[layer]:
            return None
        return BlockSpec(NAME, "skip_conv", shape_in, shape_out, kernel=1, stride=stride)
    return BlockSpec(NAME, "expanded_conv", shape_in, shape_out, expand=int(e.BLOCK_EXPAND[code]),
                     kernel=int(e.BLOCK_KERNEL[code]), stride=stride,
                     idskip=bool(e.RESIDUAL[layer]), groups=int(e.BLOCK_GROUPS[code]))


@lru_cache(maxsize=1)
def layer_specs() -> tuple[tuple[BlockSpec | None, ...], ...]:
    """``[layer][code]``: the block of every choice at every layer (None: identity skip)."""
    return tuple(tuple(layer_spec(layer, code) for code in range(len(e.BLOCKS)))
                 for layer in range(e.N_LAYERS))


def fixed_specs() -> list[BlockSpec]:
    """Stem, head conv and classifier, in network order."""
    r, h_last, c_last = e.RESOLUTION, e.FINAL_HW, int(e.LAYER_C_OUT[-1])
    h0 = -(-r // e.STEM_STRIDE)
    return [
        BlockSpec(NAME, "Conv", _hwc(r, 3), _hwc(h0, e.STEM_WIDTH), kernel=3, stride=e.STEM_STRIDE),
        BlockSpec(NAME, "Conv_1", _hwc(h_last, c_last), _hwc(h_last, e.HEAD_WIDTH), kernel=1),
        BlockSpec(NAME, "Logits", _hwc(h_last, e.HEAD_WIDTH), (1, 1, e.NUM_CLASSES)),
    ]


def arch_blocks(arch: Any) -> list[BlockSpec]:
    """Every block of one network in order (identity skips have none)."""
    codes = e.to_codes([arch] if not isinstance(arch, np.ndarray) else arch)[0]
    stem, head, logits = fixed_specs()
    table = layer_specs()
    layers = [table[i][int(c)] for i, c in enumerate(codes)]
    return [stem, *(spec for spec in layers if spec is not None), head, logits]


def space_blocks(resolutions: Sequence[int] = RESOLUTIONS) -> list[BlockSpec]:
    """Every distinct block (sorted by key); the space has one resolution."""
    found = {spec.key: spec for spec in fixed_specs()}
    for row in layer_specs():
        found.update({spec.key: spec for spec in row if spec is not None})
    return [found[k] for k in sorted(found)]


def arch_resolution(arch: Any) -> int:
    """Input resolution (pixels): always 32 (CIFAR)."""
    return RESOLUTIONS[0]


def sample_at(n: int, resolutions: Sequence[int] = RESOLUTIONS, seed: int = 0) -> list[str]:
    """``n`` random architectures (the resolution is fixed); see :func:`encoding.sample`."""
    return e.sample(n, seed=seed)


def dense_tables(value: EntryValue, resolutions: Sequence[int] = RESOLUTIONS,
                 overhead_ms: float = 0.0) -> tuple[np.ndarray, ...]:
    """(per-layer-and-choice mean ms, its variance ms^2), both ``(22, 9)``, and the constant
    part (stem, head, classifier and ``overhead_ms``; mean and variance as 1-element arrays).
    An identity skip is 0; an entry the table lacks is NaN (the lookup then names it)."""
    mean = np.zeros((e.N_LAYERS, len(e.BLOCKS)))
    var = np.zeros_like(mean)
    for layer, row in enumerate(layer_specs()):
        for code, spec in enumerate(row):
            if spec is not None:
                mean[layer, code], var[layer, code] = value(spec.key)
    fixed = [value(spec.key) for spec in fixed_specs()]
    const_mean = float(overhead_ms) + sum(m for m, _ in fixed)
    const_var = sum(v for _, v in fixed)
    return mean, var, np.array([const_mean]), np.array([const_var])


def dense_predict(tables: tuple[np.ndarray, ...],
                  encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean ms, variance ms^2) of each op-code row ``(n, 22)``: one gather and one sum."""
    mean, var, const_mean, const_var = tables
    codes = np.asarray(encoded, dtype=np.int64)
    layers = np.arange(e.N_LAYERS)
    return (mean[layers, codes].sum(axis=1) + const_mean[0],
            var[layers, codes].sum(axis=1) + const_var[0])


def block_module(spec: BlockSpec) -> Any:
    """The block as a ``torch.nn.Module`` (eval mode) built from the network's own modules."""
    from torch import nn

    from costmeter.models.spaces.fbnet.torch_module import InvertedResidual, conv_bn

    c_in, c_out = spec.input_hwc[2], spec.output_hwc[2]
    if spec.kind == "expanded_conv":
        return InvertedResidual(c_in, c_out, spec.kernel, spec.expand, spec.stride,
                                spec.groups).eval()
    if spec.kind in ("Conv", "skip_conv", "Conv_1"):
        return conv_bn(c_in, c_out, spec.kernel, spec.stride).eval()
    if spec.kind == "Logits":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c_in, c_out)).eval()
    raise ConfigError(f"unknown fbnet block kind {spec.kind!r}; known: Conv, expanded_conv, "
                      "skip_conv, Conv_1, Logits")
