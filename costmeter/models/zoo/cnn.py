"""Convolutional zoo models, parameterised by width and depth: ResNet, MobileNetV2/V3, EfficientNet.

Each family has one builder taking a width multiplier and a depth (see each docstring for what
depth means); at their defaults the builders give the published networks of
``zoo.REFERENCE_PARAMS`` (ResNet-18, MobileNetV2 1.0, MobileNetV3-Large 1.0, EfficientNet-B0),
and the named functions (:func:`resnet18`, :func:`mobilenet_v3_small`, ...) are those defaults.
The input resolution is not an argument: every network ends in a global pool, so it runs at any
resolution, and the resolution is only the input spec (``zoo.image_inputs``).
:mod:`costmeter.models.families` maps its grammar (``mobilenet_v2:w=0.75,d=1,r=160``) onto
these builders.

Layer configurations follow the papers (and torchvision's reference implementations, whose
documented parameter counts are the reference in ``zoo.REFERENCE_PARAMS``). The blocks come
from :mod:`costmeter.models.layers`. Weights are random; build through
:func:`costmeter.models.zoo.build_zoo_model` or :func:`costmeter.models.zoo.build_seeded`,
which fix the seed. Torch is imported inside the builders, so importing this module is cheap.
"""
from __future__ import annotations

import math
from typing import Any

# blocks per stage of the basic-block ResNets, by depth (18 and 34 are He et al.'s; 10, 14 and
# 26 are shallower and intermediate members of the family) and of the bottleneck ResNets
RESNET_BASIC: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1), 14: (1, 2, 2, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3),
}
RESNET_BOTTLENECK: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3)}

# MobileNetV2 (paper table 2): expansion t, output channels c, repeats n, first stride s
MBV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# MobileNetV3 bottlenecks (paper tables 1-2):
# kernel, expanded width, output width, squeeze-excite, activation, stride
MBV3_LARGE: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
MBV3_SMALL: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)
# size -> (bottlenecks, width of the classifier's hidden layer)
MBV3_SIZES: dict[str, tuple[tuple[tuple[int, int, int, bool, str, int], ...], int]] = {
    "large": (MBV3_LARGE, 1280), "small": (MBV3_SMALL, 1024),
}

# EfficientNet-B0 (paper table 1): expansion, kernel, first stride, output channels, repeats
EFFNET_B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)


def repeats(count: int, depth: float) -> int:
    """Blocks in a stage of ``count`` blocks at depth multiplier ``depth``: ``ceil(count *
    depth)``, at least 1 (EfficientNet's compound depth scaling)."""
    return max(1, math.ceil(count * depth))


def resnet(depth: int = 18, width: float = 1.0, classes: int = 1000) -> Any:
    """ResNet (He et al. 2016) of ``depth`` layers (a key of :data:`RESNET_BASIC` or
    :data:`RESNET_BOTTLENECK`) and width multiplier ``width``.

    Stem: 7x7 stride-2 conv-BN-ReLU to ``base = max(8, int(64 * width))`` channels, 3x3 stride-2
    max pool; four stages of blocks of width ``base * 2**i`` (the first block of stages 2-4 has
    stride 2); global pool, linear. ``(N, 3, H, W)`` -> ``(N, classes)``.
    """
    from torch import nn

    from costmeter.models import layers

    if depth in RESNET_BASIC:
        block, stages = layers.BasicBlock, RESNET_BASIC[depth]
    elif depth in RESNET_BOTTLENECK:
        block, stages = layers.Bottleneck, RESNET_BOTTLENECK[depth]
    else:
        known = sorted({*RESNET_BASIC, *RESNET_BOTTLENECK})
        raise ValueError(f"resnet depth {depth} is not one of {known}")
    base = max(8, int(64 * width))
    net: list[Any] = [layers.ConvBNAct(3, base, 7, 2, act="relu", inplace=True),
                      nn.MaxPool2d(3, 2, 1)]
    c_in = base
    for stage, count in enumerate(stages):
        for index in range(count):
            net.append(block(c_in, base * 2**stage, 2 if stage > 0 and index == 0 else 1))
            c_in = base * 2**stage * block.expansion
    net += layers.classifier_head(c_in, classes, dropout=0.0)
    return layers.init_cnn_weights(nn.Sequential(*net))


def resnet18() -> Any:
    """ResNet-18 (He et al. 2016): basic blocks [2, 2, 2, 2]."""
    return resnet(18)


def resnet50() -> Any:
    """ResNet-50 (He et al. 2016): bottleneck blocks [3, 4, 6, 3]."""
    return resnet(50)


def mobilenet_v2(width: float = 1.0, depth: float = 1.0, classes: int = 1000) -> Any:
    """MobileNetV2 (Sandler et al. 2018) with width multiplier ``width`` and depth multiplier
    ``depth`` (stage repeats ``ceil(n * depth)``, :data:`MBV2_STAGES`), ReLU6.

    Stem and stage widths are ``make_divisible(c * width)``, the expansion is ``t`` times a
    block's input width, the last conv ``make_divisible(1280 * max(1, width))`` wide; global pool,
    dropout 0.2, linear. ``(N, 3, H, W)`` -> ``(N, classes)``.
    """
    from torch import nn

    from costmeter.models import layers

    c_in = layers.make_divisible(32 * width)
    net: list[Any] = [layers.ConvBNAct(3, c_in, 3, 2, act="relu6", inplace=True)]
    for t, c, n, s in MBV2_STAGES:
        c_out = layers.make_divisible(c * width)
        for index in range(repeats(n, depth)):
            net.append(layers.InvertedResidual(c_in, c_in * t, c_out, 3, s if index == 0 else 1,
                                               act="relu6"))
            c_in = c_out
    last = layers.make_divisible(1280 * max(1.0, width))
    net += [layers.ConvBNAct(c_in, last, 1, act="relu6", inplace=True),
            *layers.classifier_head(last, classes)]
    return layers.init_cnn_weights(nn.Sequential(*net))


def mobilenet_v3(size: str = "large", width: float = 1.0, classes: int = 1000) -> Any:
    """MobileNetV3 (Howard et al. 2019) ``size`` "large" or "small" (:data:`MBV3_SIZES`) with
    width multiplier ``width``; BatchNorm eps 1e-3.

    Stem 3x3 stride-2 conv-BN-h-swish to ``make_divisible(16 * width)``; each bottleneck's
    expanded and output widths are ``make_divisible(c * width)``, its squeeze-excite (ReLU,
    h-sigmoid gate) ``make_divisible(expanded // 4)`` wide; a 1x1 conv to 6x the last width,
    global pool, linear to the hidden width (1280 or 1024, not scaled), h-swish, dropout 0.2,
    linear. ``(N, 3, H, W)`` -> ``(N, classes)``.
    """
    from torch import nn

    from costmeter.models import layers

    if size not in MBV3_SIZES:
        raise ValueError(f"mobilenet_v3 size {size!r} is not one of {', '.join(MBV3_SIZES)}")
    config, hidden = MBV3_SIZES[size]
    eps = 1e-3
    c_in = layers.make_divisible(16 * width)
    net: list[Any] = [layers.ConvBNAct(3, c_in, 3, 2, act="hswish", bn_eps=eps)]
    for kernel, expanded, c_out, use_se, act, stride in config:
        expanded = layers.make_divisible(expanded * width)
        c_out = layers.make_divisible(c_out * width)
        squeezed = layers.make_divisible(expanded // 4) if use_se else None
        net.append(layers.InvertedResidual(c_in, expanded, c_out, kernel, stride, act=act,
                                           se_channels=squeezed, se_act="relu",
                                           se_gate="hsigmoid", bn_eps=eps))
        c_in = c_out
    net += [
        layers.ConvBNAct(c_in, 6 * c_in, 1, act="hswish", bn_eps=eps),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6 * c_in, hidden), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(hidden, classes),
    ]
    return layers.init_cnn_weights(nn.Sequential(*net))


def mobilenet_v3_large(width: float = 1.0) -> Any:
    """MobileNetV3-Large (Howard et al. 2019)."""
    return mobilenet_v3("large", width)


def mobilenet_v3_small(width: float = 1.0) -> Any:
    """MobileNetV3-Small (Howard et al. 2019)."""
    return mobilenet_v3("small", width)


def efficientnet(width: float = 1.0, depth: float = 1.0, classes: int = 1000) -> Any:
    """EfficientNet (Tan & Le 2019): the B0 stages (:data:`EFFNET_B0_STAGES`) with width
    multiplier ``width`` and depth multiplier ``depth`` (stage repeats ``ceil(n * depth)``).

    MBConv blocks with SiLU and squeeze-excite (SiLU, sigmoid gate) a quarter of the block's
    *input* width; stem ``make_divisible(32 * width)``, stage widths ``make_divisible(c *
    width)``, last conv ``make_divisible(1280 * width)``; global pool, dropout 0.2, linear.
    ``(N, 3, H, W)`` -> ``(N, classes)``. (Resolution, the third compound axis, is the input.)
    """
    from torch import nn

    from costmeter.models import layers

    c_in = layers.make_divisible(32 * width)
    net: list[Any] = [layers.ConvBNAct(3, c_in, 3, 2, act="silu", inplace=True)]
    for expansion, kernel, stride, c, n in EFFNET_B0_STAGES:
        c_out = layers.make_divisible(c * width)
        for index in range(repeats(n, depth)):
            net.append(layers.InvertedResidual(
                c_in, c_in * expansion, c_out, kernel, stride if index == 0 else 1, act="silu",
                se_channels=max(1, c_in // 4), se_act="silu", se_gate="sigmoid"))
            c_in = c_out
    last = layers.make_divisible(1280 * width)
    net += [layers.ConvBNAct(c_in, last, 1, act="silu", inplace=True),
            *layers.classifier_head(last, classes)]
    return layers.init_cnn_weights(nn.Sequential(*net))


def efficientnet_b0() -> Any:
    """EfficientNet-B0 (Tan & Le 2019)."""
    return efficientnet()
