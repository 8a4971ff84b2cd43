"""Width / depth / resolution variants of the zoo's CNN families, for cost-model training data.

A variant is written ``family:w=<width>,d=<depth>,r=<resolution>``, e.g.
``mobilenet_v2:w=0.75,d=1.0,r=160``, and is built by the family's zoo builder
(:mod:`costmeter.models.zoo.cnn`) at that width and depth; the resolution is the input's:

- ``resnet``: :func:`~costmeter.models.zoo.cnn.resnet`; ``d`` is the ResNet depth, which picks
  the basic blocks per stage (:data:`RESNET_DEPTHS`, 18 = [2, 2, 2, 2]); stage widths
  ``max(8, int(64 * w)) * 2^i``;
- ``mobilenet_v2``: :func:`~costmeter.models.zoo.cnn.mobilenet_v2`; repeats per stage
  ``ceil(n * d)``, channels rounded to multiples of 8;
- ``mobilenet_v3``: :func:`~costmeter.models.zoo.cnn.mobilenet_v3`; ``d`` is 0 for Small,
  1 for Large; width as in the paper's multipliers;
- ``efficientnet``: :func:`~costmeter.models.zoo.cnn.efficientnet`; B0 stages with
  ``ceil(n * d)`` repeats (compound scaling's depth).

A variant at ``w=1``, the default depth and ``r=224`` is the zoo model of :data:`ZOO_MODELS`
(same architecture; the zoo model's BatchNorm statistics are calibrated, a variant's are not).
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from costmeter.errors import ConfigError
from costmeter.models.zoo import build_seeded, cnn

FAMILIES: tuple[str, ...] = ("resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet")
RESNET_DEPTHS: dict[int, list[int]] = {d: list(s) for d, s in cnn.RESNET_BASIC.items()}
WIDTHS: dict[str, tuple[float, ...]] = {
    "resnet": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.25),
    "mobilenet_v3": (0.5, 0.75, 1.0, 1.25), "efficientnet": (0.5, 0.75, 1.0, 1.1),
}
DEPTHS: dict[str, tuple[float, ...]] = {
    "resnet": tuple(float(d) for d in RESNET_DEPTHS), "mobilenet_v2": (0.5, 0.75, 1.0),
    "mobilenet_v3": (0.0, 1.0), "efficientnet": (0.5, 0.75, 1.0, 1.2),
}
RESOLUTIONS: tuple[int, ...] = tuple(range(96, 225, 32))
# the variant of each family that is a zoo model: variant -> zoo name
ZOO_MODELS: dict[str, str] = {
    "resnet:w=1,d=18,r=224": "resnet18",
    "mobilenet_v2:w=1,d=1,r=224": "mobilenet_v2",
    "mobilenet_v3:w=1,d=0,r=224": "mobilenet_v3_small",
    "mobilenet_v3:w=1,d=1,r=224": "mobilenet_v3_large",
    "efficientnet:w=1,d=1,r=224": "efficientnet_b0",
}
_SPEC = re.compile(r"^([a-z0-9_]+):w=([0-9.]+),d=([0-9.]+),r=(\d+)$")


def parse(spec: str) -> tuple[str, float, float, int]:
    """``family:w=..,d=..,r=..`` -> (family, width, depth, resolution); ConfigError if malformed."""
    match = _SPEC.match(str(spec).strip())
    if match is None:
        raise ConfigError(f"bad family variant {spec!r}; write family:w=1.0,d=1.0,r=224 "
                          f"with family in {', '.join(FAMILIES)}")
    family, width, depth, resolution = match.group(1), float(match.group(2)), \
        float(match.group(3)), int(match.group(4))
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r} in {spec!r}; use one of {', '.join(FAMILIES)}")
    if family == "resnet" and int(depth) not in RESNET_DEPTHS:
        raise ConfigError(f"resnet depth {depth:g} is not one of {sorted(RESNET_DEPTHS)}")
    if not 0 < width <= 4 or not 32 <= resolution <= 512:
        raise ConfigError(f"width {width:g} or resolution {resolution} out of range in {spec!r}")
    return family, width, depth, resolution


def format_variant(family: str, width: float, depth: float, resolution: int) -> str:
    """Inverse of :func:`parse`."""
    return f"{family}:w={width:g},d={depth:g},r={resolution}"


def canonical(spec: str) -> str:
    """The one spelling of a variant (``mobilenet_v2:w=0.75,d=1,r=160``): its model id."""
    return format_variant(*parse(spec))


def is_variant(spec: str) -> bool:
    """Whether ``spec`` is written as a family variant (``<family>:w=..,d=..,r=..``) of a known
    family; a malformed variant of a known family is still one (``parse`` says what is wrong)."""
    head, sep, _ = str(spec).strip().partition(":")
    return bool(sep) and head in FAMILIES


def grid(family: str) -> list[str]:
    """Every variant of ``family`` on the sampling grid (widths x depths x resolutions)."""
    return [format_variant(family, w, d, r) for w in WIDTHS[family] for d in DEPTHS[family]
            for r in RESOLUTIONS]


def sample(family: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct random variants of ``family`` (deterministic for a seed, and nested: the
    first ``k`` of ``sample(f, n, s)`` are ``sample(f, k, s)``)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}-{seed}")
    total = len(WIDTHS[family]) * len(DEPTHS[family]) * len(RESOLUTIONS)
    out: list[str] = []
    while len(out) < min(n, total):
        spec = format_variant(family, rng.choice(WIDTHS[family]), rng.choice(DEPTHS[family]),
                              rng.choice(RESOLUTIONS))
        if spec not in out:
            out.append(spec)
    return out


def input_shape(spec: str, batch: int = 1) -> tuple[int, int, int, int]:
    """NCHW input shape of a variant."""
    resolution = parse(spec)[3]
    return (batch, 3, resolution, resolution)


def builder(spec: str) -> Callable[[], Any]:
    """The zoo builder call that makes variant ``spec`` (no arguments left; weights unseeded)."""
    family, width, depth, _ = parse(spec)
    if family == "resnet":
        return partial(cnn.resnet, depth=int(depth), width=width)
    if family == "mobilenet_v2":
        return partial(cnn.mobilenet_v2, width=width, depth=depth)
    if family == "mobilenet_v3":
        return partial(cnn.mobilenet_v3, "large" if depth >= 1 else "small", width=width)
    return partial(cnn.efficientnet, width=width, depth=depth)


def build_torch(spec: str) -> Any:
    """The variant as a torch module (eval mode, random weights from the zoo's seed)."""
    return build_seeded(builder(spec))
