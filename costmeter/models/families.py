"""Width / depth / resolution variants of the zoo's CNN families, for cost-model training data.

A variant is written ``family:w=<width>,d=<depth>,r=<resolution>``, e.g.
``mobilenet_v2:w=0.75,d=1.0,r=160``:

- ``resnet``: basic-block ResNet; ``d`` picks the blocks per stage (:data:`RESNET_DEPTHS`,
  18 = [2, 2, 2, 2]); stage widths ``64 * w * 2^i``;
- ``mobilenet_v2``: repeats per stage ``ceil(n * d)``, channels rounded to multiples of 8;
- ``mobilenet_v3``: ``d`` is 0 for Small, 1 for Large; width as in the paper's multipliers;
- ``efficientnet``: B0 stages with ``ceil(n * d)`` repeats (compound scaling's depth).

Blocks, activations and squeeze-excite follow :mod:`costmeter.models.zoo.cnn` (whose block
builders this module reuses), so a variant at ``w=1, d=<default>, r=224`` has the zoo model's
architecture.
"""
from __future__ import annotations

import math
import random
import re
from typing import Any

from costmeter.errors import ConfigError

FAMILIES: tuple[str, ...] = ("resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet")
RESNET_DEPTHS: dict[int, list[int]] = {10: [1, 1, 1, 1], 14: [1, 2, 2, 1], 18: [2, 2, 2, 2],
                                       26: [2, 3, 4, 3], 34: [3, 4, 6, 3]}
WIDTHS: dict[str, tuple[float, ...]] = {
    "resnet": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.25),
    "mobilenet_v3": (0.5, 0.75, 1.0, 1.25), "efficientnet": (0.5, 0.75, 1.0, 1.1),
}
DEPTHS: dict[str, tuple[float, ...]] = {
    "resnet": tuple(float(d) for d in RESNET_DEPTHS), "mobilenet_v2": (0.5, 0.75, 1.0),
    "mobilenet_v3": (0.0, 1.0), "efficientnet": (0.5, 0.75, 1.0, 1.2),
}
RESOLUTIONS: tuple[int, ...] = tuple(range(96, 225, 32))
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


def build_torch(spec: str) -> Any:
    """The variant as a torch module (eval mode, seeded random weights)."""
    import torch

    family, width, depth, _ = parse(spec)
    builders = {"resnet": _resnet, "mobilenet_v2": _mobilenet_v2, "mobilenet_v3": _mobilenet_v3,
                "efficientnet": _efficientnet}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return builders[family](width, depth).eval()


def _resnet(width: float, depth: float) -> Any:
    import torch.nn as nn

    from costmeter.models.zoo.cnn import _conv_bn_act, _init_cnn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(_conv_bn_act(cin, cout, 3, stride, act=nn.ReLU()),
                                      _conv_bn_act(cout, cout, 3))
            self.shortcut = (_conv_bn_act(cin, cout, 1, stride)
                             if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.relu(self.body(x) + self.shortcut(x))

    stem = max(8, int(64 * width))
    layers: list[Any] = [_conv_bn_act(3, stem, 7, 2, act=nn.ReLU()), nn.MaxPool2d(3, 2, 1)]
    cin = stem
    for stage, count in enumerate(RESNET_DEPTHS[int(depth)]):
        cout = max(8, int(64 * width)) * 2**stage
        for index in range(count):
            layers.append(Block(cin, cout, 2 if stage > 0 and index == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return _init_cnn(nn.Sequential(*layers))


def _mobilenet_v2(width: float, depth: float) -> Any:
    import torch.nn as nn

    from costmeter.models.zoo.cnn import _conv_bn_act, _init_cnn, _inverted_residual, round_channels

    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    stem = round_channels(32 * width)
    layers: list[Any] = [_conv_bn_act(3, stem, 3, 2, act=nn.ReLU6())]
    cin = stem
    for t, c, n, s in settings:
        cout = round_channels(c * width)
        for index in range(max(1, math.ceil(n * depth))):
            layers.append(_inverted_residual(cin, cin * t, cout, 3, s if index == 0 else 1, nn.ReLU6))
            cin = cout
    last = round_channels(1280 * max(1.0, width))
    layers += [_conv_bn_act(cin, last, 1, act=nn.ReLU6()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(last, 1000)]
    return _init_cnn(nn.Sequential(*layers))


def _mobilenet_v3(width: float, depth: float) -> Any:
    import torch.nn as nn

    from costmeter.models.zoo.cnn import (
        _MBV3_LARGE,
        _MBV3_SMALL,
        _conv_bn_act,
        _init_cnn,
        _inverted_residual,
        _squeeze_excite,
        round_channels,
    )

    config, last_channel = (_MBV3_LARGE, 1280) if depth >= 1 else (_MBV3_SMALL, 1024)
    acts = {"RE": nn.ReLU, "HS": nn.Hardswish}

    def se(channels: int) -> Any:
        return _squeeze_excite(channels, round_channels(channels // 4), nn.ReLU, nn.Hardsigmoid)

    stem = round_channels(16 * width)
    layers: list[Any] = [_conv_bn_act(3, stem, 3, 2, act=nn.Hardswish(), bn_eps=1e-3)]
    cin = stem
    for kernel, expanded, cout, use_se, act, stride in config:
        cout, expanded = round_channels(cout * width), round_channels(expanded * width)
        layers.append(_inverted_residual(cin, expanded, cout, kernel, stride, acts[act],
                                         se if use_se else None, 1e-3))
        cin = cout
    layers += [_conv_bn_act(cin, 6 * cin, 1, act=nn.Hardswish(), bn_eps=1e-3),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6 * cin, last_channel),
               nn.Hardswish(), nn.Linear(last_channel, 1000)]
    return _init_cnn(nn.Sequential(*layers))


def _efficientnet(width: float, depth: float) -> Any:
    import torch.nn as nn

    from costmeter.models.zoo.cnn import (
        _conv_bn_act,
        _init_cnn,
        _inverted_residual,
        _squeeze_excite,
        round_channels,
    )

    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    stem = round_channels(32 * width)
    layers: list[Any] = [_conv_bn_act(3, stem, 3, 2, act=nn.SiLU())]
    cin = stem
    for expansion, kernel, stride, cout, repeats in stages:
        cout = round_channels(cout * width)
        for index in range(max(1, math.ceil(repeats * depth))):
            squeezed = max(1, cin // 4)

            def se(channels: int, squeezed: int = squeezed) -> Any:
                return _squeeze_excite(channels, squeezed, nn.SiLU, nn.Sigmoid)

            layers.append(_inverted_residual(cin, cin * expansion, cout, kernel,
                                             stride if index == 0 else 1, nn.SiLU, se))
            cin = cout
    last = round_channels(1280 * width)
    layers += [_conv_bn_act(cin, last, 1, act=nn.SiLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(last, 1000)]
    return _init_cnn(nn.Sequential(*layers))
