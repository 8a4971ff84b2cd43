"""The one layer library of the zoo and the search spaces: conv-BN-activation, squeeze-excite,
the inverted residual (MBConv), the ResNet blocks, channel rounding and weight initialisation.

Shapes are NCHW: ``N`` items, ``C`` channels, ``H x W`` pixels. Every convolution pads by
``(kernel - 1) // 2`` ("same" for odd kernels), so a layer of stride ``s`` maps ``H x W`` to
``ceil(H / s) x ceil(W / s)``. Convolutions followed by BatchNorm carry no bias.

This module imports torch at import time: import it inside the functions that build modules
(the zoo and the spaces do), so that importing :mod:`costmeter.models` stays cheap.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Activation names the library understands, and their modules.
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "hsigmoid": nn.Hardsigmoid,
}


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never below ``divisor`` and
    never more than 10% under ``channels`` (the MobileNet/EfficientNet width-multiplier rule).

    >>> make_divisible(32 * 0.35), make_divisible(1280 * 1.1), make_divisible(3)
    (16, 1408, 8)
    """
    rounded = max(divisor, (int(channels + divisor / 2) // divisor) * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module called ``name`` (a key of :data:`ACTIVATIONS`).

    ``inplace`` is passed where the module takes it (``sigmoid`` has no in-place form); it saves
    one allocation per call in eager torch and changes nothing else (ONNX, parameters, MACs).
    """
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}") \
            from None
    return factory() if name == "sigmoid" else factory(inplace=inplace)


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> optional activation; children ``0``, ``1``, ``2``.

    Input ``(N, c_in, H, W)``, output ``(N, c_out, ceil(H / stride), ceil(W / stride))``.
    ``groups == c_in == c_out`` makes it depthwise. ``act=None`` leaves the output linear (the
    projection of an inverted residual, a ResNet block's last conv, a shortcut).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", bn_eps: float = 1e-5, inplace: bool = False) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=bn_eps),
        ]
        if act is not None:
            layers.append(activation(act, inplace))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): per-channel gate from the global average.

    ``(N, C, H, W)`` -> pool ``(N, C, 1, 1)`` -> 1x1 conv to ``squeezed`` (bias) -> ``act`` ->
    1x1 conv back to ``C`` (bias) -> ``gate`` -> the input scaled by the gate, ``(N, C, H, W)``.
    MobileNetV3 and OFA use ``relu`` + ``hsigmoid``; EfficientNet ``silu`` + ``sigmoid``.
    """

    def __init__(self, channels: int, squeezed: int, act: str = "relu",
                 gate: str = "hsigmoid") -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = activation(act)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = activation(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Inverted residual / MBConv (Sandler et al. 2018; Howard et al. 2019; Tan & Le 2019).

    ``body``: 1x1 expand ``c_in -> expanded`` + ``act`` (left out when ``expanded == c_in``),
    ``kernel x kernel`` depthwise conv of ``stride`` + ``act``, optional squeeze-excite to
    ``se_channels`` (``se_act``, ``se_gate``), linear 1x1 projection ``expanded -> c_out``.
    Input ``(N, c_in, H, W)``, output ``(N, c_out, ceil(H / stride), ceil(W / stride))``; the
    input is added to the output exactly when the shapes allow it (``stride == 1`` and
    ``c_in == c_out``), as :attr:`residual` says.
    """

    def __init__(self, c_in: int, expanded: int, c_out: int, kernel: int, stride: int,
                 act: str = "relu", se_channels: int | None = None, se_act: str = "relu",
                 se_gate: str = "hsigmoid", bn_eps: float = 1e-5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvBNAct(c_in, expanded, 1, act=act, bn_eps=bn_eps))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act,
                                bn_eps=bn_eps))
        if se_channels:
            layers.append(SqueezeExcite(expanded, se_channels, se_act, se_gate))
        layers.append(ConvBNAct(expanded, c_out, 1, act=None, bn_eps=bn_eps))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BN (ResNet's projection "B")."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return ConvBNAct(c_in, c_out, 1, stride, act=None)


class _ResNetBlock(nn.Module):
    """A ResNet block: ``relu(body(x) + shortcut(x))``; subclasses build ``body``."""

    expansion = 1

    def __init__(self, body: list[nn.Module], c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class BasicBlock(_ResNetBlock):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN (ReLU between), shortcut, ReLU.

    Input ``(N, c_in, H, W)``, output ``(N, width, ceil(H / stride), ceil(W / stride))``; the
    first conv carries the stride, the shortcut projects (1x1 conv-BN) when the shapes differ.
    """

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__([ConvBNAct(c_in, width, 3, stride, act="relu", inplace=True),
                          ConvBNAct(width, width, 3, act=None)], c_in, width, stride)


class Bottleneck(_ResNetBlock):
    """ResNet bottleneck block: 1x1 reduce to ``width``, 3x3 (carries the stride, as in
    "ResNet v1.5"), 1x1 expand to ``4 * width``; shortcut and ReLU as :class:`BasicBlock`.
    Output ``(N, 4 * width, ceil(H / stride), ceil(W / stride))``."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        c_out = width * self.expansion
        super().__init__([ConvBNAct(c_in, width, 1, act="relu", inplace=True),
                          ConvBNAct(width, width, 3, stride, act="relu", inplace=True),
                          ConvBNAct(width, c_out, 1, act=None)], c_in, c_out, stride)


def init_cnn_weights(model: nn.Module, linear_std: float = 0.01) -> nn.Module:
    """Initialise ``model`` in place, module by module in registration order (so a seeded RNG
    gives the same weights every time): convolutions He-normal (fan-out, ReLU gain) with zero
    bias, BatchNorm weight 1 and bias 0, linear layers normal with std ``linear_std`` and zero
    bias. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)
    return model


def classifier_head(c_in: int, classes: int, dropout: float = 0.2) -> list[nn.Module]:
    """Global average pool, flatten, dropout (left out at 0), linear: ``(N, c_in, H, W)`` ->
    ``(N, classes)``. A list, to be spliced into a ``nn.Sequential`` network."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return [*layers, nn.Linear(c_in, classes)]
