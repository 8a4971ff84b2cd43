"""Blocks of a search space, keyed the way Once-for-All's latency tables key them.

A *block* is the unit a latency lookup table prices: one piece of the network that runs on its
own input tensor and produces one output tensor. Its key names everything its latency depends
on, in OFA's spelling::

    Conv-input:224x224x3-output:112x112x16
    expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0-se:1-hs:0

Spaces:

- ``ofa_mbv3``: ``Conv`` (stem conv, BN, h-swish), the fixed first block (``expanded_conv`` with
  expand 1, kernel 3, identity skip), one ``expanded_conv`` per active MBConv block, ``Conv_1``
  (1x1 conv to 960, BN, h-swish) and ``Logits`` (global pool, 1x1 conv to 1280 + h-swish,
  classifier). A block's latency depends on the resolution only through its input size, so the
  table at a set of resolutions holds every (input size, stage position, kernel, expand).
- ``nb201``: per cell op (``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3``,
  ``avg_pool_3x3``) at each stage's shape, ``add`` (one sum of two tensors; each cell performs
  three), the stem ``Conv``, the two ``residual_block`` reductions and ``Logits``
  (BN-ReLU, pool, classifier). Every cell of a stage repeats the same six ops.

Everything here is pure Python/numpy except :func:`build_block_module` (imports torch).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

LUT_SPACES: tuple[str, ...] = ("ofa_mbv3", "nb201")
NB201_CELL_ADDS = 3  # node 2 sums two edges, node 3 three: 1 + 2 additions per cell


@dataclass(frozen=True)
class BlockSpec:
    """One block: kind, input and output (H, W, C), and the MBConv fields (0/False elsewhere).

    ``kind`` is ``Conv``, ``expanded_conv``, ``Conv_1``, ``Logits`` (ofa_mbv3) or an NB201 op
    name, ``add``, ``Conv``, ``residual_block``, ``Logits`` (nb201). ``space`` tells which
    network's modules build it. Classifier outputs are written ``1x1xCLASSES``.
    """

    space: str
    kind: str
    input_hwc: tuple[int, int, int]
    output_hwc: tuple[int, int, int]
    expand: int = 0
    kernel: int = 0
    stride: int = 1
    idskip: bool = False
    se: bool = False
    hs: bool = False

    @property
    def key(self) -> str:
        """The table key (OFA spelling; MBConv fields only for ``expanded_conv``)."""
        text = f"{self.kind}-input:{_hwc(self.input_hwc)}-output:{_hwc(self.output_hwc)}"
        if self.kind == "expanded_conv":
            text += (f"-expand:{self.expand}-kernel:{self.kernel}-stride:{self.stride}"
                     f"-idskip:{int(self.idskip)}-se:{int(self.se)}-hs:{int(self.hs)}")
        elif self.kind == "residual_block":
            text += f"-stride:{self.stride}"
        return text

    @property
    def module_key(self) -> str:
        """Identity of the block's torch module, which does not depend on H and W: blocks
        sharing it are exported once (with symbolic H/W) and measured at each size."""
        return (f"{self.space}-{self.kind}-c{self.input_hwc[2]}-o{self.output_hwc[2]}-e{self.expand}"
                f"-k{self.kernel}-s{self.stride}-i{int(self.idskip)}-se{int(self.se)}"
                f"-hs{int(self.hs)}")

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """NCHW shape of the block's input tensor."""
        h, w, c = self.input_hwc
        return (int(batch), c, h, w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the key."""
        d = asdict(self)
        d["input_hwc"], d["output_hwc"] = list(self.input_hwc), list(self.output_hwc)
        d["key"] = self.key
        return d


def _hwc(shape: tuple[int, int, int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def check_space(space: str) -> None:
    """ConfigError unless ``space`` has a block decomposition."""
    if space not in LUT_SPACES:
        raise ConfigError(f"no lookup-table blocks for space {space!r}; "
                          f"lookup tables exist for {', '.join(LUT_SPACES)}")


def space_resolutions(space: str) -> tuple[int, ...]:
    """Input resolutions a space can produce (nb201: its fixed 32)."""
    check_space(space)
    if space == "nb201":
        return (32,)
    from costmeter.models.spaces import ofa_mbv3

    return ofa_mbv3.RESOLUTIONS


def check_resolutions(space: str, resolutions: Sequence[int] | None) -> tuple[int, ...]:
    """Sorted, de-duplicated resolutions, all of them allowed in ``space`` (None = all)."""
    allowed = space_resolutions(space)
    if resolutions is None or len(resolutions) == 0:
        return allowed
    wanted = tuple(sorted({int(r) for r in resolutions}))
    bad = [r for r in wanted if r not in allowed]
    if bad:
        shown = (f"{allowed[0]}..{allowed[-1]} in steps of {allowed[1] - allowed[0]}"
                 if len(allowed) > 2 else ", ".join(map(str, allowed)))
        raise ConfigError(f"{space}: resolution {', '.join(map(str, bad))} is not in the space; "
                          f"allowed: {shown}")
    return wanted


# ----------------------------------------------------------------------------- ofa_mbv3
def _ofa() -> Any:
    from costmeter.models.spaces import ofa_mbv3

    return ofa_mbv3


def ofa_stage_inputs(resolution: int) -> list[int]:
    """Input height of each of the five stages (and, last, the head's) at ``resolution``."""
    s = _ofa()
    h = -(-int(resolution) // 2)
    sizes = [h]
    for stride in s.STAGE_STRIDES:
        h = -(-h // stride)
        sizes.append(h)
    return sizes


def ofa_block_spec(resolution: int, stage: int, first: bool, kernel: int, expand: int) -> BlockSpec:
    """The MBConv block at stage ``stage`` (0-based), first of its stage or not."""
    s = _ofa()
    sizes = ofa_stage_inputs(resolution)
    c_out = s.STAGE_WIDTHS[stage]
    if first:
        c_in = s.STEM_WIDTH if stage == 0 else s.STAGE_WIDTHS[stage - 1]
        h_in, stride = sizes[stage], s.STAGE_STRIDES[stage]
    else:
        c_in, h_in, stride = c_out, sizes[stage + 1], 1
    h_out = -(-h_in // stride)
    return BlockSpec("ofa_mbv3", "expanded_conv", (h_in, h_in, c_in), (h_out, h_out, c_out),
                     expand=int(expand), kernel=int(kernel), stride=stride,
                     idskip=stride == 1 and c_in == c_out, se=s.STAGE_SE[stage],
                     hs=s.STAGE_ACTS[stage] == "h_swish")


def ofa_fixed_specs(resolution: int) -> list[BlockSpec]:
    """Stem, first block, final expand and head at ``resolution``, in network order."""
    s = _ofa()
    r = int(resolution)
    sizes = ofa_stage_inputs(r)
    h0, h5, c0, c5 = sizes[0], sizes[-1], s.STEM_WIDTH, s.STAGE_WIDTHS[-1]
    return [
        BlockSpec("ofa_mbv3", "Conv", (r, r, 3), (h0, h0, c0), kernel=3, stride=2, hs=True),
        BlockSpec("ofa_mbv3", "expanded_conv", (h0, h0, c0), (h0, h0, c0), expand=1, kernel=3,
                  stride=1, idskip=True),
        BlockSpec("ofa_mbv3", "Conv_1", (h5, h5, c5), (h5, h5, s.FINAL_EXPAND_WIDTH), hs=True),
        BlockSpec("ofa_mbv3", "Logits", (h5, h5, s.FINAL_EXPAND_WIDTH), (1, 1, s.NUM_CLASSES)),
    ]


def ofa_arch_blocks(arch: Any) -> list[BlockSpec]:
    """Every block of one ofa_mbv3 architecture, in network order."""
    s = _ofa()
    a = s.to_array([arch])[0]
    r = int(a[0])
    fixed = ofa_fixed_specs(r)
    blocks = fixed[:2]
    for stage in range(s.N_STAGES):
        for b in range(int(a[1 + stage])):
            slot = stage * s.MAX_DEPTH + b
            blocks.append(ofa_block_spec(r, stage, b == 0, int(a[1 + s.N_STAGES + slot]),
                                         int(a[1 + s.N_STAGES + s.N_SLOTS + slot])))
    return blocks + fixed[2:]


def ofa_space_blocks(resolutions: Sequence[int]) -> list[BlockSpec]:
    """Every distinct block the space produces at ``resolutions`` (sorted by key)."""
    s = _ofa()
    found: dict[str, BlockSpec] = {}
    for r in resolutions:
        for spec in ofa_fixed_specs(r):
            found.setdefault(spec.key, spec)
        for stage in range(s.N_STAGES):
            for first in (True, False):
                for k in s.KERNELS:
                    for e in s.EXPANDS:
                        spec = ofa_block_spec(r, stage, first, k, e)
                        found.setdefault(spec.key, spec)
    return [found[k] for k in sorted(found)]


# ----------------------------------------------------------------------------- nb201
def _nb201() -> Any:
    from costmeter.models.spaces import nb201

    return nb201


def nb201_stage_specs(stage: int) -> tuple[list[BlockSpec], BlockSpec]:
    """(the five op blocks in op-code order, the ``add`` block) of stage ``stage`` (0-based)."""
    n = _nb201()
    c, h = n.STAGE_CHANNELS[stage], n.STAGE_RESOLUTION[stage]
    shape = (h, h, c)
    ops = [BlockSpec("nb201", op, shape, shape, kernel={"nor_conv_1x1": 1, "nor_conv_3x3": 3,
                                                         "avg_pool_3x3": 3}.get(op, 0))
           for op in n.OPS]
    return ops, BlockSpec("nb201", "add", shape, shape)


def nb201_fixed_specs() -> list[BlockSpec]:
    """Stem, the two residual reductions and the head, in network order."""
    n = _nb201()
    c, h = n.STAGE_CHANNELS, n.STAGE_RESOLUTION
    specs = [BlockSpec("nb201", "Conv", (h[0], h[0], 3), (h[0], h[0], c[0]), kernel=3)]
    for s in (1, 2):
        specs.append(BlockSpec("nb201", "residual_block", (h[s - 1], h[s - 1], c[s - 1]),
                               (h[s], h[s], c[s]), kernel=3, stride=2))
    specs.append(BlockSpec("nb201", "Logits", (h[-1], h[-1], c[-1]), (1, 1, n.NUM_CLASSES)))
    return specs


def nb201_arch_blocks(arch: Any) -> list[BlockSpec]:
    """Every block of one NB201 network: per stage, per cell, its six ops and three adds."""
    n = _nb201()
    codes = n.to_codes([arch] if isinstance(arch, str) else np.asarray(arch).reshape(1, -1))[0]
    fixed = nb201_fixed_specs()
    blocks = [fixed[0]]
    for stage in range(len(n.STAGE_CHANNELS)):
        if stage:
            blocks.append(fixed[stage])
        ops, add = nb201_stage_specs(stage)
        for _ in range(n.CELLS_PER_STAGE):
            blocks.extend(ops[int(c)] for c in codes)
            blocks.extend([add] * NB201_CELL_ADDS)
    return blocks + [fixed[-1]]


def nb201_space_blocks() -> list[BlockSpec]:
    """Every distinct NB201 block (sorted by key)."""
    found = {spec.key: spec for spec in nb201_fixed_specs()}
    for stage in range(len(_nb201().STAGE_CHANNELS)):
        ops, add = nb201_stage_specs(stage)
        found.update({spec.key: spec for spec in (*ops, add)})
    return [found[k] for k in sorted(found)]


# ----------------------------------------------------------------------------- dispatch
def space_blocks(space: str, resolutions: Sequence[int] | None = None) -> list[BlockSpec]:
    """Every distinct block of ``space`` at ``resolutions`` (None = every resolution)."""
    res = check_resolutions(space, resolutions)
    return ofa_space_blocks(res) if space == "ofa_mbv3" else nb201_space_blocks()


def arch_blocks(space: str, arch: Any) -> list[BlockSpec]:
    """Every block of one architecture, in network order (repeats included)."""
    check_space(space)
    return ofa_arch_blocks(arch) if space == "ofa_mbv3" else nb201_arch_blocks(arch)


def arch_resolution(space: str, arch: Any) -> int:
    """Input resolution of one architecture."""
    check_space(space)
    return int(_ofa().to_array([arch])[0, 0]) if space == "ofa_mbv3" else 32


# ----------------------------------------------------------------------------- torch modules
def build_block_module(spec: BlockSpec) -> Any:
    """The block as a ``torch.nn.Module`` (eval mode) built from the space's own modules."""
    if spec.space == "ofa_mbv3":
        return _ofa_module(spec).eval()
    if spec.space == "nb201":
        return _nb201_module(spec).eval()
    raise ConfigError(f"no block modules for space {spec.space!r}")


def _ofa_module(spec: BlockSpec) -> Any:
    import torch
    from torch import nn

    from costmeter.models.spaces import ofa_mbv3 as s
    from costmeter.models.spaces.ofa_mbv3.torch_module import (
        FirstBlock,
        MBConv,
        conv_bn_act,
    )

    c_in, c_out = spec.input_hwc[2], spec.output_hwc[2]
    if spec.kind == "Conv":
        return conv_bn_act(c_in, c_out, 3, 2, act="h_swish")
    if spec.kind == "expanded_conv" and spec.expand == 1:
        return FirstBlock(c_in)
    if spec.kind == "expanded_conv":
        mid = int(s.make_divisible(c_in * spec.expand))
        return MBConv({"in_channels": c_in, "out_channels": c_out, "mid_channels": mid,
                       "kernel": spec.kernel, "expand": spec.expand, "stride": spec.stride,
                       "act": "h_swish" if spec.hs else "relu", "se": spec.se,
                       "se_channels": int(s.make_divisible(mid // s.SE_REDUCTION)),
                       "residual": spec.idskip})
    if spec.kind == "Conv_1":
        return conv_bn_act(c_in, c_out, 1, 1, act="h_swish")
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

        return Logits()
    raise ConfigError(f"unknown ofa_mbv3 block kind {spec.kind!r}")


def _nb201_module(spec: BlockSpec) -> Any:
    import torch
    from torch import nn

    from costmeter.models.spaces import nb201 as n
    from costmeter.models.spaces.nb201.torch_module import ResidualReduction, make_op

    c_in, c_out = spec.input_hwc[2], spec.output_hwc[2]
    if spec.kind in n.OPS:
        return make_op(spec.kind, c_in)
    if spec.kind == "add":
        class Add(nn.Module):
            """The sum of two tensors, as a cell node sums its incoming edges."""

            def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return x + y

        return Add()
    if spec.kind == "Conv":
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
    if spec.kind == "residual_block":
        return ResidualReduction(c_in, c_out)
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

        return Logits()
    raise ConfigError(f"unknown nb201 block kind {spec.kind!r}")


def block_input_count(spec: BlockSpec) -> int:
    """Number of input tensors of the block's module (2 for ``add``, else 1)."""
    return 2 if spec.kind == "add" else 1
