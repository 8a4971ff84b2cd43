"""Lookup-table blocks of nb201 (the :class:`~costmeter.models.spaces.blocks.LutBlocks` of this
space).

Blocks: per cell op (``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3``,
``avg_pool_3x3``) at each stage's shape, ``add`` (one sum of two tensors; each cell performs
three), the stem ``Conv``, the two ``residual_block`` reductions and ``Logits`` (BN-ReLU, pool,
classifier). Every cell of a stage repeats the same six ops.

Everything here is numpy except :func:`block_module` (imports torch).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.models.spaces import nb201 as n
from costmeter.models.spaces.blocks import BlockSpec, EntryValue

RESOLUTIONS: tuple[int, ...] = (n.INPUT_CHW[1],)
INTERLEAVE = 1  # each block sampled alone
CELL_ADDS = 3  # node 2 sums two edges, node 3 three: 1 + 2 additions per cell
_KERNELS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3, "avg_pool_3x3": 3}


def stage_specs(stage: int) -> tuple[list[BlockSpec], BlockSpec]:
    """(the five op blocks in op-code order, the ``add`` block) of stage ``stage`` (0-based)."""
    c, h = n.STAGE_CHANNELS[stage], n.STAGE_RESOLUTION[stage]
    shape = (h, h, c)
    ops = [BlockSpec(n.NAME, op, shape, shape, kernel=_KERNELS.get(op, 0)) for op in n.OPS]
    return ops, BlockSpec(n.NAME, "add", shape, shape, inputs=2)


def fixed_specs() -> list[BlockSpec]:
    """Stem, the two residual reductions and the head, in network order."""
    c, h = n.STAGE_CHANNELS, n.STAGE_RESOLUTION
    specs = [BlockSpec(n.NAME, "Conv", (h[0], h[0], 3), (h[0], h[0], c[0]), kernel=3)]
    for st in (1, 2):
        specs.append(BlockSpec(n.NAME, "residual_block", (h[st - 1], h[st - 1], c[st - 1]),
                               (h[st], h[st], c[st]), kernel=3, stride=2))
    specs.append(BlockSpec(n.NAME, "Logits", (h[-1], h[-1], c[-1]), (1, 1, n.NUM_CLASSES)))
    return specs


def arch_blocks(arch: Any) -> list[BlockSpec]:
    """Every block of one network: per stage, per cell, its six ops and three adds."""
    codes = n.to_codes([arch] if isinstance(arch, str) else np.asarray(arch).reshape(1, -1))[0]
    fixed = fixed_specs()
    out = [fixed[0]]
    for stage in range(len(n.STAGE_CHANNELS)):
        if stage:
            out.append(fixed[stage])
        ops, add = stage_specs(stage)
        for _ in range(n.CELLS_PER_STAGE):
            out.extend(ops[int(c)] for c in codes)
            out.extend([add] * CELL_ADDS)
    return out + [fixed[-1]]


def space_blocks(resolutions: Sequence[int] = RESOLUTIONS) -> list[BlockSpec]:
    """Every distinct block (sorted by key); the space has one resolution."""
    found = {spec.key: spec for spec in fixed_specs()}
    for stage in range(len(n.STAGE_CHANNELS)):
        ops, add = stage_specs(stage)
        found.update({spec.key: spec for spec in (*ops, add)})
    return [found[k] for k in sorted(found)]


def arch_resolution(arch: Any) -> int:
    """Input resolution (pixels): always 32."""
    return RESOLUTIONS[0]


def sample_at(n_archs: int, resolutions: Sequence[int] = RESOLUTIONS, seed: int = 0) -> list[str]:
    """``n_archs`` random cells (the resolution is fixed)."""
    return n.sample(n_archs, seed=seed)


def dense_tables(value: EntryValue, resolutions: Sequence[int] = RESOLUTIONS,
                 overhead_ms: float = 0.0) -> tuple[np.ndarray, ...]:
    """(per-op mean, per-op var) summed over the 15 cells, and the constant part (ms, ms^2),
    ``overhead_ms`` included in the constant. ConfigError naming missing entries."""
    op_mean, op_var = np.zeros(len(n.OPS)), np.zeros(len(n.OPS))
    const_mean, const_var = float(overhead_ms), 0.0
    missing: list[str] = []
    for spec in fixed_specs():
        m, v = value(spec.key)
        const_mean, const_var = const_mean + m, const_var + v
        missing += [spec.key] if not math.isfinite(m) else []
    for stage in range(len(n.STAGE_CHANNELS)):
        ops, add = stage_specs(stage)
        for code, spec in enumerate(ops):
            m, v = value(spec.key)
            op_mean[code] += n.CELLS_PER_STAGE * m
            op_var[code] += n.CELLS_PER_STAGE * v
            missing += [spec.key] if not math.isfinite(m) else []
        m, v = value(add.key)
        const_mean += n.CELLS_PER_STAGE * CELL_ADDS * m
        const_var += n.CELLS_PER_STAGE * CELL_ADDS * v
        missing += [add.key] if not math.isfinite(m) else []
    if missing:
        raise ConfigError(f"table lacks entries {', '.join(missing[:3])}; rebuild it with "
                          "`bench lut build --space nb201`")
    return op_mean, op_var, np.array([const_mean]), np.array([const_var])


def dense_predict(tables: tuple[np.ndarray, ...],
                  encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean ms, variance ms^2) of each op-code row ``(n, 6)``."""
    op_mean, op_var, const_mean, const_var = tables
    codes = encoded.astype(np.int64)
    return op_mean[codes].sum(axis=1) + const_mean[0], op_var[codes].sum(axis=1) + const_var[0]


def block_module(spec: BlockSpec) -> Any:
    """The block as a ``torch.nn.Module`` (eval mode) built from the space's own modules."""
    import torch
    from torch import nn

    from costmeter.models.spaces.nb201.torch_module import ResidualReduction, make_op

    c_in, c_out = spec.input_hwc[2], spec.output_hwc[2]
    if spec.kind in n.OPS:
        return make_op(spec.kind, c_in).eval()
    if spec.kind == "add":
        class Add(nn.Module):
            """The sum of two tensors, as a cell node sums its incoming edges."""

            def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return x + y

        return Add().eval()
    if spec.kind == "Conv":
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                             nn.BatchNorm2d(c_out)).eval()
    if spec.kind == "residual_block":
        return ResidualReduction(c_in, c_out).eval()
    if spec.kind == "Logits":
        class Logits(nn.Module):
            """BN-ReLU, global pool, classifier (as NB201Network's head)."""

            def __init__(self) -> None:
                super().__init__()
                self.head = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=False))
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.classifier = nn.Linear(c_in, c_out)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.classifier(torch.flatten(self.pool(self.head(x)), 1))

        return Logits().eval()
    raise ConfigError(f"unknown nb201 block kind {spec.kind!r}")
