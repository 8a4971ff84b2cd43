"""Blocks of a search space, keyed the way Once-for-All's latency tables key them.

A *block* is the unit a latency lookup table prices: one piece of the network that runs on its
own input tensor and produces one output tensor. Its key names everything its latency depends
on, in OFA's spelling::

    Conv-input:224x224x3-output:112x112x16
    expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0-se:1-hs:0

Grouped 1x1 convolutions (FBNet's ``_g2`` blocks) add ``-groups:G`` to an ``expanded_conv``
key; keys of ungrouped blocks keep OFA's spelling unchanged.

A space that offers lookup tables declares the ``lut`` capability and has a ``lut`` module
following :class:`LutBlocks`: which blocks it produces, how an architecture decomposes into
them, their torch modules, and dense arrays for summing an encoded batch without a Python loop.
Lookup-table code elsewhere goes through that protocol only (no per-space branches).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from costmeter.errors import ConfigError

# Mean and variance (ms, ms^2) of one table entry, NaN when the table lacks it.
EntryValue = Callable[[str], tuple[float, float]]


@dataclass(frozen=True)
class BlockSpec:
    """One block: kind, input and output (H, W, C), and the MBConv fields (0/False elsewhere;
    ``groups`` is the group count of the block's 1x1 convolutions, 1 when not grouped).

    ``kind`` is the space's block name (``Conv``, ``expanded_conv``, ``Conv_1``, ``Logits``, an
    NB201 op name, ``add``, ``residual_block`` ...); ``space`` tells which space's modules build
    it. Classifier outputs are written ``1x1xCLASSES``. ``inputs`` is the number of input
    tensors of the block's module (2 for a sum of two tensors).
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
    inputs: int = 1
    groups: int = 1

    @property
    def key(self) -> str:
        """The table key (OFA spelling; MBConv fields only for ``expanded_conv``)."""
        text = f"{self.kind}-input:{hwc_text(self.input_hwc)}-output:{hwc_text(self.output_hwc)}"
        if self.kind == "expanded_conv":
            text += (f"-expand:{self.expand}-kernel:{self.kernel}-stride:{self.stride}"
                     f"-idskip:{int(self.idskip)}-se:{int(self.se)}-hs:{int(self.hs)}")
            if self.groups != 1:
                text += f"-groups:{self.groups}"
        elif self.kind == "residual_block":
            text += f"-stride:{self.stride}"
        return text

    @property
    def module_key(self) -> str:
        """Identity of the block's torch module, which does not depend on H and W: blocks
        sharing it are exported once (with symbolic H/W) and measured at each size."""
        text = (f"{self.space}-{self.kind}-c{self.input_hwc[2]}-o{self.output_hwc[2]}-e{self.expand}"
                f"-k{self.kernel}-s{self.stride}-i{int(self.idskip)}-se{int(self.se)}"
                f"-hs{int(self.hs)}")
        return text if self.groups == 1 else f"{text}-g{self.groups}"

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """NCHW shape of (each of) the block's input tensor(s)."""
        h, w, c = self.input_hwc
        return (int(batch), c, h, w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the key."""
        d = asdict(self)
        d["input_hwc"], d["output_hwc"] = list(self.input_hwc), list(self.output_hwc)
        d["key"] = self.key
        return d


def hwc_text(shape: tuple[int, int, int]) -> str:
    """``HxWxC`` as written in table keys."""
    return "x".join(str(int(v)) for v in shape)


class LutBlocks(Protocol):
    """What a space's ``lut`` module offers to lookup-table building, checking and lookup."""

    RESOLUTIONS: tuple[int, ...]  # input resolutions the space can produce (pixels)
    INTERLEAVE: int  # blocks sampled round-robin per group when measuring (1 = each alone)

    def space_blocks(self, resolutions: Sequence[int]) -> list[BlockSpec]: ...
    def arch_blocks(self, arch: Any) -> list[BlockSpec]: ...
    def arch_resolution(self, arch: Any) -> int: ...
    def block_module(self, spec: BlockSpec) -> Any: ...
    def dense_tables(self, value: EntryValue, resolutions: Sequence[int],
                     overhead_ms: float) -> tuple[np.ndarray, ...]: ...
    def dense_predict(self, tables: tuple[np.ndarray, ...],
                      encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def sample_at(self, n: int, resolutions: Sequence[int], seed: int = 0) -> list[str]: ...


def check_resolutions(space: str, allowed: tuple[int, ...],
                      resolutions: Sequence[int] | None) -> tuple[int, ...]:
    """Sorted, de-duplicated ``resolutions``, all in ``allowed`` (None or empty = all)."""
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
