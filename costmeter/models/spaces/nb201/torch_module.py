"""Torch modules of the NAS-Bench-201 CIFAR network (imported lazily: this module loads torch).

Written from the definition in Dong & Yang, "NAS-Bench-201" (ICLR 2020), section 2. The stem is
the shared conv-BN of :mod:`costmeter.models.layers`; the cell convolutions are pre-activation
(ReLU -> conv -> BN), a different order from the library's conv-BN-act, so they are defined here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from costmeter.models.layers import ConvBNAct

EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution without bias, batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    """The ``none`` op: an all-zero tensor of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int) -> nn.Module:
    """One cell op at ``channels`` channels, stride 1."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"nb201: unknown op {name!r}")


class Cell(nn.Module):
    """A NAS-Bench-201 cell: node j = sum over i < j of op_ij(node i); output is node 3."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for j in range(1, 4):
            total = None
            for i in range(j):
                out = self.edges[k](nodes[i])
                total = out if total is None else total + out
                k += 1
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """Reduction block between stages: two 3x3 ReLU-Conv-BN (stride 2 then 1) plus a
    shortcut of 2x2 average pooling and a 1x1 convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """CIFAR network: stem, 3 stages x 5 cells (16/32/64 channels), BN-ReLU, pool, linear."""

    def __init__(self, ops: Sequence[str], num_classes: int = 10,
                 channels: Sequence[int] = (16, 32, 64), cells_per_stage: int = 5) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, channels[0], 3, act=None)
        layers: list[nn.Module] = []
        for s, c in enumerate(channels):
            if s > 0:
                layers.append(ResidualReduction(channels[s - 1], c))
            layers.extend(Cell(ops, c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
