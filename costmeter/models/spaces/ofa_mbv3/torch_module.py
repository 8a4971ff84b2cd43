"""Torch modules of the OFA MobileNetV3 space (imported lazily: this module loads torch).

Written from the architecture description in Cai et al., "Once-for-All" (ICLR 2020) and
Howard et al., "Searching for MobileNetV3" (ICCV 2019): MBConv blocks (1x1 expand, kxk
depthwise, optional squeeze-excite with h-sigmoid gate, 1x1 linear projection), ReLU or
h-swish activations, residual connections where shapes allow.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from costmeter.models.spaces.ofa_mbv3 import (
    FEATURE_MIX_WIDTH,
    FINAL_EXPAND_WIDTH,
    STEM_WIDTH,
)


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "h_swish" else nn.ReLU()


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1,
                act: str | None = "relu") -> nn.Sequential:
    """Convolution (no bias, 'same' padding), batch norm, optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias) + h-sigmoid, channel gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Inverted bottleneck block described by one entry of ``ofa_mbv3.blocks(arch)``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        c_in, mid, c_out = spec["in_channels"], spec["mid_channels"], spec["out_channels"]
        layers: list[nn.Module] = []
        if mid != c_in:
            layers.append(conv_bn_act(c_in, mid, 1, 1, act=spec["act"]))
        layers.append(conv_bn_act(mid, mid, spec["kernel"], spec["stride"], groups=mid,
                                  act=spec["act"]))
        if spec["se"]:
            layers.append(SqueezeExcite(mid, spec["se_channels"]))
        layers.append(conv_bn_act(mid, c_out, 1, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = bool(spec["residual"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class FirstBlock(nn.Module):
    """Fixed first block: depthwise 3x3 + ReLU, pointwise projection, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(channels, channels, 3, 1, groups=channels, act="relu"),
            conv_bn_act(channels, channels, 1, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class OFAMobileNetV3(nn.Module):
    """Stem, first block, the given MBConv blocks, final expand, pool, feature mix, classifier."""

    def __init__(self, block_specs: Sequence[dict[str, Any]], num_classes: int = 1000) -> None:
        super().__init__()
        last = block_specs[-1]["out_channels"]
        self.stem = conv_bn_act(3, STEM_WIDTH, 3, 2, act="h_swish")
        self.blocks = nn.Sequential(FirstBlock(STEM_WIDTH), *(MBConv(s) for s in block_specs))
        self.final_expand = conv_bn_act(last, FINAL_EXPAND_WIDTH, 1, 1, act="h_swish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(
            nn.Conv2d(FINAL_EXPAND_WIDTH, FEATURE_MIX_WIDTH, 1, bias=False), nn.Hardswish()
        )
        self.classifier = nn.Linear(FEATURE_MIX_WIDTH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(self.blocks(self.stem(x)))
        x = self.feature_mix(self.pool(x))
        return self.classifier(torch.flatten(x, 1))
