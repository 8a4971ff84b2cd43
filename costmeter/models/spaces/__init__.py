"""Search spaces: architecture encodings <-> torch modules, analytic features and LUT blocks.

One registry (:data:`_SPACES`) of space subpackages; each is a module following
:class:`SearchSpace`. What every space offers: ``NAME``, ``SIZE`` (number of architectures),
``FEATURE_SCHEMA_VERSION``, ``CAPABILITIES``, ``parse`` (one string -> canonical encoding row),
``format_arch`` (row -> canonical string), ``canonical``, ``to_array`` (many architectures ->
canonical integer array, vectorised), ``sample`` (seeded and nested: ``sample(60, s)`` starts
with ``sample(30, s)``), ``feature_names``, ``feature_matrix``, ``features``, ``param_count``,
``macs``, ``input_shape`` and ``build_torch``. Space modules import torch only inside
``build_torch`` and their block modules.

Optional parts are *declared* in ``CAPABILITIES`` (never probed):

- ``"enumerate"``: ``enumerate_archs()`` lists the whole space;
- ``"index"``: ``to_index(archs)`` and ``index_to_codes(index)`` -- a dense index over a small
  space, so a predictor can tabulate the whole space once;
- ``"onehot"``: ``onehot_feature_names()`` -- the per-layer (per-edge) choice columns among
  the features, one per (position, choice): the columns of a per-layer latency sum, which the
  default predictor penalises apart from the structured features;
- ``"lut"``: a ``lut`` submodule following :class:`~costmeter.models.spaces.blocks.LutBlocks`
  (lookup-table blocks; see :func:`lut_blocks`).

Example::

    space = get_space("nb201")
    archs = space.sample(1000, seed=0)
    X = space.features(archs)          # pandas DataFrame, named columns, no torch
"""
from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

from costmeter.errors import ConfigError

_SPACES: dict[str, str] = {
    "nb201": "costmeter.models.spaces.nb201",
    "ofa_mbv3": "costmeter.models.spaces.ofa_mbv3",
    "fbnet": "costmeter.models.spaces.fbnet",
}
CAPABILITY_NAMES = ("enumerate", "index", "onehot", "lut")
_LACKS = {"enumerate": "is too large to enumerate", "index": "has no dense index",
          "lut": "has no lookup-table blocks", "onehot": "has no one-hot choice columns"}


class SearchSpace(Protocol):
    """What every space module offers (modules satisfy this structurally)."""

    NAME: str
    SIZE: int
    FEATURE_SCHEMA_VERSION: int
    CAPABILITIES: frozenset[str]

    def parse(self, text: str) -> Any: ...
    def format_arch(self, row: Any) -> str: ...
    def canonical(self, arch: Any) -> str: ...
    def to_array(self, archs: Any) -> Any: ...
    def sample(self, n: int, seed: int = 0) -> list[str]: ...
    def feature_names(self) -> tuple[str, ...]: ...
    def feature_matrix(self, archs: Any, validated: bool = False) -> Any: ...
    def features(self, archs: Any) -> Any: ...
    def param_count(self, arch: Any) -> int: ...
    def macs(self, arch: Any) -> int: ...
    def input_shape(self, arch: Any, batch: int = 1) -> tuple[int, ...]: ...
    def build_torch(self, arch: Any, num_classes: int = ...) -> Any: ...


def space_names() -> tuple[str, ...]:
    """Names of the registered spaces."""
    return tuple(_SPACES)


def get_space(name: str) -> SearchSpace:
    """The space module registered as ``name``; ConfigError naming the known spaces otherwise."""
    if name not in _SPACES:
        raise ConfigError(f"unknown search space {name!r}; known spaces: {', '.join(_SPACES)}")
    module: ModuleType = importlib.import_module(_SPACES[name])
    return module  # type: ignore[return-value]


def has_capability(name: str, capability: str) -> bool:
    """Whether space ``name`` declares ``capability`` (one of :data:`CAPABILITY_NAMES`)."""
    if capability not in CAPABILITY_NAMES:
        raise ConfigError(f"unknown space capability {capability!r}; known: "
                          f"{', '.join(CAPABILITY_NAMES)}")
    return capability in get_space(name).CAPABILITIES


def spaces_with(capability: str) -> tuple[str, ...]:
    """Registered spaces that declare ``capability``."""
    return tuple(n for n in _SPACES if has_capability(n, capability))


def require_capability(name: str, capability: str) -> None:
    """ConfigError naming the spaces that have ``capability`` when ``name`` lacks it."""
    if not has_capability(name, capability):
        others = ", ".join(spaces_with(capability)) or "none"
        raise ConfigError(f"space {name!r} {_LACKS[capability]}; spaces that have it: {others}")


def lut_blocks(name: str) -> Any:
    """The ``lut`` module of space ``name`` (a
    :class:`~costmeter.models.spaces.blocks.LutBlocks`); ConfigError if it has none."""
    require_capability(name, "lut")
    return importlib.import_module(f"{_SPACES[name]}.lut")


def feature_schema(name: str) -> str:
    """Feature schema id of a space, e.g. ``nb201/v1``: predictors record and check it."""
    return f"{name}/v{get_space(name).FEATURE_SCHEMA_VERSION}"


def model_id(space: str, arch: Any) -> str:
    """Model identifier of an architecture, e.g. ``nb201:|nor_conv_3x3~0|+...``."""
    return f"{space}:{get_space(space).canonical(arch)}"


def arch_hash(space: str, arch: Any) -> str:
    """Content hash (16 hex digits) of an architecture's canonical encoding."""
    return hashlib.sha256(model_id(space, arch).encode()).hexdigest()[:16]


def sample(space: str, n: int, seed: int = 0) -> list[str]:
    """``n`` random architectures of ``space`` as canonical strings."""
    if n < 0:
        raise ConfigError(f"sample size must be >= 0, got {n}")
    return get_space(space).sample(n, seed=seed)


def enumerate_space(space: str) -> Sequence[str]:
    """All architectures of a finite space (ConfigError for spaces that cannot be listed)."""
    require_capability(space, "enumerate")
    return get_space(space).enumerate_archs()  # type: ignore[attr-defined]


def split_model_id(spec: str) -> tuple[str, str] | None:
    """``(space, canonical arch)`` of a ``space:arch`` model id, or None if ``spec`` names no
    registered space. ConfigError when the space is known but the architecture is malformed."""
    head, sep, arch = str(spec).partition(":")
    if not sep or head not in _SPACES:
        return None
    return head, get_space(head).canonical(arch)


def build_model(spec: str) -> tuple[Any, Any]:
    """``(torch module, example input at batch 1)`` of a ``space:arch`` model id: the contract
    of python-callable model sources, so the harness can measure search-space architectures."""
    import torch

    parsed = split_model_id(spec)
    if parsed is None:
        raise ConfigError(f"{spec!r} is not a search-space model id; write it as "
                          f"<space>:<arch> with space one of {', '.join(_SPACES)}")
    space, arch = parsed
    sp = get_space(space)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(sp.input_shape(arch, 1), generator=generator)
    torch.manual_seed(0)
    return sp.build_torch(arch), example


def sample_model_ids(space: str, n: int, seed: int = 0) -> list[str]:
    """``n`` random ``space:arch`` model ids (what ``bench collect`` measures)."""
    return [f"{space}:{arch}" for arch in sample(space, n, seed=seed)]
