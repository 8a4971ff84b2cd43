"""Blocks of a search space for lookup tables: space-independent access through each space's
``lut`` module (see :mod:`costmeter.models.spaces.blocks`; no per-space branches here)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from costmeter.models.spaces import lut_blocks, spaces_with
from costmeter.models.spaces.blocks import BlockSpec, check_resolutions as _check

__all__ = ["BlockSpec", "arch_blocks", "arch_resolution", "block_input_count",
           "build_block_module", "check_resolutions", "check_space", "lut_spaces",
           "space_blocks", "space_resolutions"]


def lut_spaces() -> tuple[str, ...]:
    """Spaces that declare lookup-table blocks."""
    return spaces_with("lut")


def check_space(space: str) -> None:
    """ConfigError unless ``space`` has a block decomposition."""
    lut_blocks(space)


def space_resolutions(space: str) -> tuple[int, ...]:
    """Input resolutions (pixels) a space can produce."""
    return tuple(lut_blocks(space).RESOLUTIONS)


def check_resolutions(space: str, resolutions: Sequence[int] | None) -> tuple[int, ...]:
    """Sorted, de-duplicated resolutions, all of them allowed in ``space`` (None = all)."""
    return _check(space, space_resolutions(space), resolutions)


def space_blocks(space: str, resolutions: Sequence[int] | None = None) -> list[BlockSpec]:
    """Every distinct block of ``space`` at ``resolutions`` (None = every resolution)."""
    return lut_blocks(space).space_blocks(check_resolutions(space, resolutions))


def arch_blocks(space: str, arch: Any) -> list[BlockSpec]:
    """Every block of one architecture, in network order (repeats included)."""
    return lut_blocks(space).arch_blocks(arch)


def arch_resolution(space: str, arch: Any) -> int:
    """Input resolution (pixels) of one architecture."""
    return int(lut_blocks(space).arch_resolution(arch))


def build_block_module(spec: BlockSpec) -> Any:
    """The block as a ``torch.nn.Module`` (eval mode) built from the space's own modules."""
    return lut_blocks(spec.space).block_module(spec)


def block_input_count(spec: BlockSpec) -> int:
    """Number of input tensors of the block's module."""
    return spec.inputs
