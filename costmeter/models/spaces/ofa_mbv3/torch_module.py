"""Torch modules of the OFA MobileNetV3 space (imported lazily: this module loads torch).

Written from the architecture description in Cai et al., "Once-for-All" (ICLR 2020) and
Howard et al., "Searching for MobileNetV3" (ICCV 2019): MBConv blocks (1x1 expand, kxk
depthwise, optional squeeze-excite with h-sigmoid gate, 1x1 linear projection), ReLU or
h-swish activations, residual connections where shapes allow. The blocks are the shared
layers of :mod:`costmeter.models.layers`; this module maps the space's block specs onto them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from costmeter.models import layers
from costmeter.models.spaces.ofa_mbv3 import (
    FEATURE_MIX_WIDTH,
    FINAL_EXPAND_WIDTH,
    STEM_WIDTH,
)

# the space's activation names -> the layer library's
_ACTS = {"relu": "relu", "h_swish": "hswish"}


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1,
                act: str | None = "relu") -> layers.ConvBNAct:
    """Convolution (no bias, 'same' padding), batch norm, optional activation ("relu",
    "h_swish" or None): ``(N, c_in, H, W)`` -> ``(N, c_out, ceil(H / stride),
    ceil(W / stride))``."""
    return layers.ConvBNAct(c_in, c_out, kernel, stride, groups=groups,
                            act=None if act is None else _ACTS[act])


class MBConv(layers.InvertedResidual):
    """Inverted bottleneck block described by one entry of ``ofa_mbv3.blocks(arch)``: 1x1 expand
    (left out when ``mid_channels == in_channels``), depthwise, squeeze-excite (ReLU, h-sigmoid;
    ``se_channels`` wide) when ``se``, linear 1x1 projection, residual where shapes allow."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec["in_channels"], spec["mid_channels"], spec["out_channels"],
                         spec["kernel"], spec["stride"], act=_ACTS[spec["act"]],
                         se_channels=spec["se_channels"] if spec["se"] else None,
                         se_act="relu", se_gate="hsigmoid")
        if bool(spec["residual"]) != self.residual:
            raise ValueError(f"ofa_mbv3 block spec asks residual={spec['residual']} but stride "
                             f"{spec['stride']}, {spec['in_channels']} -> "
                             f"{spec['out_channels']} channels decide {self.residual}")


class FirstBlock(layers.InvertedResidual):
    """Fixed first block: depthwise 3x3 + ReLU, pointwise projection, residual (an inverted
    residual of expansion 1 at ``channels`` channels, stride 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, channels, 3, 1, act="relu")


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
