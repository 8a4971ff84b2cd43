"""Lookup-table blocks of ofa_mbv3 (the :class:`~costmeter.models.spaces.blocks.LutBlocks` of
this space).

Blocks: ``Conv`` (stem conv, BN, h-swish), the fixed first block (``expanded_conv`` with expand
1, kernel 3, identity skip), one ``expanded_conv`` per active MBConv block, ``Conv_1`` (1x1 conv
to 960, BN, h-swish) and ``Logits`` (global pool, 1x1 conv to 1280 + h-swish, classifier). A
block's latency depends on the resolution only through its input size, so the table at a set
of resolutions holds every (input size, stage position, kernel, expand).

Everything here is numpy except :func:`block_module` (imports torch).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.models.spaces import ofa_mbv3 as s
from costmeter.models.spaces.blocks import BlockSpec, EntryValue

RESOLUTIONS: tuple[int, ...] = s.RESOLUTIONS
INTERLEAVE = 4  # groups of four blocks sampled round-robin (see predictors.lut.measure)

_RAW = 8  # dense tables are indexed by the raw kernel and expand values (0: inactive slot)
_SLOT_OFFSET = np.arange(s.N_SLOTS, dtype=np.int64) * _RAW * _RAW
DENSE_CHUNK = 4096  # rows looked up per pass (their index arrays stay in cache)


def stage_inputs(resolution: int) -> list[int]:
    """Input height of each of the five stages (and, last, the head's) at ``resolution``."""
    h = -(-int(resolution) // 2)
    sizes = [h]
    for stride in s.STAGE_STRIDES:
        h = -(-h // stride)
        sizes.append(h)
    return sizes


def block_spec(resolution: int, stage: int, first: bool, kernel: int, expand: int) -> BlockSpec:
    """The MBConv block at stage ``stage`` (0-based), first of its stage or not."""
    sizes = stage_inputs(resolution)
    c_out = s.STAGE_WIDTHS[stage]
    if first:
        c_in = s.STEM_WIDTH if stage == 0 else s.STAGE_WIDTHS[stage - 1]
        h_in, stride = sizes[stage], s.STAGE_STRIDES[stage]
    else:
        c_in, h_in, stride = c_out, sizes[stage + 1], 1
    h_out = -(-h_in // stride)
    return BlockSpec(s.NAME, "expanded_conv", (h_in, h_in, c_in), (h_out, h_out, c_out),
                     expand=int(expand), kernel=int(kernel), stride=stride,
                     idskip=stride == 1 and c_in == c_out, se=s.STAGE_SE[stage],
                     hs=s.STAGE_ACTS[stage] == "h_swish")


def fixed_specs(resolution: int) -> list[BlockSpec]:
    """Stem, first block, final expand and head at ``resolution``, in network order."""
    r = int(resolution)
    sizes = stage_inputs(r)
    h0, h5, c0, c5 = sizes[0], sizes[-1], s.STEM_WIDTH, s.STAGE_WIDTHS[-1]
    return [
        BlockSpec(s.NAME, "Conv", (r, r, 3), (h0, h0, c0), kernel=3, stride=2, hs=True),
        BlockSpec(s.NAME, "expanded_conv", (h0, h0, c0), (h0, h0, c0), expand=1, kernel=3,
                  stride=1, idskip=True),
        BlockSpec(s.NAME, "Conv_1", (h5, h5, c5), (h5, h5, s.FINAL_EXPAND_WIDTH), hs=True),
        BlockSpec(s.NAME, "Logits", (h5, h5, s.FINAL_EXPAND_WIDTH), (1, 1, s.NUM_CLASSES)),
    ]


def arch_blocks(arch: Any) -> list[BlockSpec]:
    """Every block of one architecture, in network order."""
    a = s.to_array([arch])[0]
    r = int(a[0])
    fixed = fixed_specs(r)
    out = fixed[:2]
    for stage in range(s.N_STAGES):
        for b in range(int(a[1 + stage])):
            slot = stage * s.MAX_DEPTH + b
            out.append(block_spec(r, stage, b == 0, int(a[1 + s.N_STAGES + slot]),
                                  int(a[1 + s.N_STAGES + s.N_SLOTS + slot])))
    return out + fixed[2:]


def space_blocks(resolutions: Sequence[int]) -> list[BlockSpec]:
    """Every distinct block the space produces at ``resolutions`` (sorted by key)."""
    found: dict[str, BlockSpec] = {}
    for r in resolutions:
        for spec in fixed_specs(r):
            found.setdefault(spec.key, spec)
        for stage in range(s.N_STAGES):
            for first in (True, False):
                for k in s.KERNELS:
                    for e in s.EXPANDS:
                        spec = block_spec(r, stage, first, k, e)
                        found.setdefault(spec.key, spec)
    return [found[k] for k in sorted(found)]


def arch_resolution(arch: Any) -> int:
    """Input resolution (pixels) of one architecture."""
    return int(s.to_array([arch])[0, 0])


def sample_at(n: int, resolutions: Sequence[int], seed: int = 0) -> list[str]:
    """``n`` random architectures whose resolution is drawn from ``resolutions``."""
    a = s.sample_array(n, seed=seed)
    a[:, 0] = np.random.default_rng(seed + 1).choice(np.asarray(resolutions), size=n)
    return [s.format_arch(row) for row in a]


def dense_tables(value: EntryValue, resolutions: Sequence[int],
                 overhead_ms: float) -> tuple[np.ndarray, ...]:
    """(slot mean, slot var) flat over (resolution, slot, kernel, expand), the last two by their
    raw values (0 to 7: an inactive slot has both 0 and costs nothing; values outside the space
    are NaN, never reached by a validated encoding), and (fixed mean, fixed var) per
    resolution, in ms and ms^2; NaN where the table has no entry. ``overhead_ms`` (the per-run
    overhead, paid once per network) is added to the fixed part."""
    n_res = len(s.RESOLUTIONS)
    slot = np.full((n_res, s.N_SLOTS, _RAW, _RAW, 2), np.nan)
    slot[:, :, 0, 0, :] = 0.0  # inactive slots cost nothing
    fixed = np.full((n_res, 2), np.nan)
    for ri, r in enumerate(s.RESOLUTIONS):
        if r not in resolutions:
            continue
        values = [value(spec.key) for spec in fixed_specs(r)]
        fixed[ri] = [sum(v[0] for v in values) + overhead_ms, sum(v[1] for v in values)]
        for stage in range(s.N_STAGES):
            for b in range(s.MAX_DEPTH):
                for k in s.KERNELS:
                    for e in s.EXPANDS:
                        spec = block_spec(r, stage, b == 0, k, e)
                        slot[ri, stage * s.MAX_DEPTH + b, k, e] = value(spec.key)
    flat = slot.reshape(-1, 2)
    return (np.ascontiguousarray(flat[:, 0]), np.ascontiguousarray(flat[:, 1]),
            fixed[:, 0].copy(), fixed[:, 1].copy())


def dense_predict(tables: tuple[np.ndarray, ...],
                  encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean ms, variance ms^2) of each canonical ``(n, 46)`` row; NaN where an entry is
    missing (a resolution or block the table lacks). :data:`DENSE_CHUNK` rows at a time: one
    index per slot (``((resolution, slot) * 8 + kernel) * 8 + expand``), two gathers, two sums."""
    slot_mean, slot_var, fixed_mean, fixed_var = tables
    n = len(encoded)
    mean, var = np.empty(n), np.empty(n)
    k0, e0 = 1 + s.N_STAGES, 1 + s.N_STAGES + s.N_SLOTS
    for start in range(0, n, DENSE_CHUNK):
        a = encoded[start:start + DENSE_CHUNK]
        r_index = (a[:, 0] - s.RESOLUTIONS[0]) // 4
        flat = a[:, k0:e0] * _RAW
        flat += a[:, e0:]
        flat += _SLOT_OFFSET
        flat += (r_index * (s.N_SLOTS * _RAW * _RAW))[:, None]
        part = slice(start, start + DENSE_CHUNK)
        mean[part] = np.take(slot_mean, flat).sum(axis=1) + fixed_mean[r_index]
        var[part] = np.take(slot_var, flat).sum(axis=1) + fixed_var[r_index]
    return mean, var


def block_module(spec: BlockSpec) -> Any:
    """The block as a ``torch.nn.Module`` (eval mode) built from the space's own modules."""
    import torch
    from torch import nn

    from costmeter.models.spaces.ofa_mbv3.torch_module import FirstBlock, MBConv, conv_bn_act

    c_in, c_out = spec.input_hwc[2], spec.output_hwc[2]
    if spec.kind == "Conv":
        return conv_bn_act(c_in, c_out, 3, 2, act="h_swish").eval()
    if spec.kind == "expanded_conv" and spec.expand == 1:
        return FirstBlock(c_in).eval()
    if spec.kind == "expanded_conv":
        mid = int(s.make_divisible(c_in * spec.expand))
        return MBConv({"in_channels": c_in, "out_channels": c_out, "mid_channels": mid,
                       "kernel": spec.kernel, "expand": spec.expand, "stride": spec.stride,
                       "act": "h_swish" if spec.hs else "relu", "se": spec.se,
                       "se_channels": int(s.make_divisible(mid // s.SE_REDUCTION)),
                       "residual": spec.idskip}).eval()
    if spec.kind == "Conv_1":
        return conv_bn_act(c_in, c_out, 1, 1, act="h_swish").eval()
    if spec.kind == "Logits":
        class Logits(nn.Module):
            """Global pool, feature-mix 1x1 conv + h-swish, classifier (as OFAMobileNetV3)."""

            def __init__(self) -> None:
                super().__init__()
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.feature_mix = nn.Sequential(
                    nn.Conv2d(c_in, s.FEATURE_MIX_WIDTH, 1, bias=False), nn.Hardswish())
                self.classifier = nn.Linear(s.FEATURE_MIX_WIDTH, c_out)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.classifier(torch.flatten(self.feature_mix(self.pool(x)), 1))

        return Logits().eval()
    raise ConfigError(f"unknown ofa_mbv3 block kind {spec.kind!r}")
