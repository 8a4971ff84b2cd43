"""Torch modules of the FBNet CIFAR-100 network (imported lazily: this module loads torch).

Written from the block descriptions in Wu et al., "FBNet" (CVPR 2019), table 2, and the macro
network HW-NAS-Bench measured (Li et al., ICLR 2021); see :mod:`costmeter.models.spaces.fbnet`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from costmeter.models.spaces.fbnet.encoding import (
    BLOCK_EXPAND,
    BLOCK_GROUPS,
    BLOCK_KERNEL,
    BLOCKS,
    HEAD_WIDTH,
    LAYER_C_IN,
    LAYER_C_OUT,
    LAYER_STRIDE,
    SKIP,
    STEM_STRIDE,
    STEM_WIDTH,
)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution (no bias, padding ``kernel // 2``), batch norm, optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet): (g, c/g) -> (c/g, g)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape   # batch as -1: no shape arithmetic on it in exported graphs
        return x.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(-1, c, h, w)


class InvertedResidual(nn.Module):
    """FBNet block ``k<K>_e<E>[_g2]``: grouped 1x1 expansion to ``E * c_in`` channels + ReLU,
    channel shuffle when grouped, KxK depthwise conv (carries the stride) + ReLU, grouped 1x1
    linear projection; the input is added back when the shapes match (stride 1, c_in = c_out).
    The expansion is applied even for E = 1 (a 1x1 conv c_in -> c_in)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: int, stride: int,
                 groups: int = 1) -> None:
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = [conv_bn(c_in, mid, 1, groups=groups)]
        if groups > 1:
            layers.append(ChannelShuffle(groups))
        layers += [conv_bn(mid, mid, kernel, stride, groups=mid),
                   conv_bn(mid, c_out, 1, groups=groups, relu=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def make_block(code: int, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The module of block ``BLOCKS[code]`` between the given shapes. ``skip`` is an identity
    where the shapes allow and a 1x1 conv (with the stride) + BN + ReLU where they do not."""
    if code == SKIP:
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return conv_bn(c_in, c_out, 1, stride)
    return InvertedResidual(c_in, c_out, int(BLOCK_KERNEL[code]), int(BLOCK_EXPAND[code]), stride,
                            int(BLOCK_GROUPS[code]))


class FBNetCifar(nn.Module):
    """3x3 stem (16 channels) + BN + ReLU, 22 searchable layers, 1x1 head conv to 1504 + BN +
    ReLU, global average pool, linear classifier."""

    def __init__(self, codes: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if len(codes) != len(LAYER_C_IN):
            raise ValueError(f"fbnet: {len(codes)} block codes, expected {len(LAYER_C_IN)}")
        self.stem = conv_bn(3, STEM_WIDTH, 3, STEM_STRIDE)
        self.layers = nn.Sequential(*(
            make_block(int(c), int(LAYER_C_IN[i]), int(LAYER_C_OUT[i]), int(LAYER_STRIDE[i]))
            for i, c in enumerate(codes)))
        self.head = conv_bn(int(LAYER_C_OUT[-1]), HEAD_WIDTH, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes)
        self.blocks = tuple(BLOCKS[int(c)] for c in codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.layers(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
