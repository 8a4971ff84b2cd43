"""Convolutional zoo models in plain torch: ResNet, MobileNetV2/V3, EfficientNet-B0.

Layer configurations follow the papers (and torchvision's reference implementations, whose
documented parameter counts are the reference in ``zoo.REFERENCE_PARAMS``). Weights are random;
call these through :func:`costmeter.models.zoo.build_zoo_model`, which fixes the seed.
"""
from __future__ import annotations

from typing import Any


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (never below it, and never
    more than 10% under ``channels``), as the MobileNet papers do for width multipliers."""
    rounded = max(divisor, (int(channels + divisor / 2) // divisor) * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: Any = None,
    bn_eps: float = 1e-5,
) -> Any:
    """Conv (no bias, 'same' padding) -> BatchNorm -> optional activation module."""
    from torch import nn

    layers = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=bn_eps),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


def _init_cnn(model: Any) -> Any:
    """He-normal convs, unit BatchNorm, small-normal linears (keeps random activations tame)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    return model


def _resnet(bottleneck: bool, blocks_per_stage: list[int], classes: int = 1000) -> Any:
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * (4 if bottleneck else 1)
            relu = nn.ReLU(inplace=True)
            if bottleneck:  # 1x1 reduce, 3x3 (carries the stride, "ResNet v1.5"), 1x1 expand
                self.body = nn.Sequential(
                    _conv_bn_act(cin, width, 1, act=nn.ReLU(inplace=True)),
                    _conv_bn_act(width, width, 3, stride, act=nn.ReLU(inplace=True)),
                    _conv_bn_act(width, cout, 1),
                )
            else:
                self.body = nn.Sequential(
                    _conv_bn_act(cin, width, 3, stride, act=nn.ReLU(inplace=True)),
                    _conv_bn_act(width, cout, 3),
                )
            self.shortcut = (
                _conv_bn_act(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
            )
            self.relu = relu

        def forward(self, x: Any) -> Any:
            return self.relu(self.body(x) + self.shortcut(x))

    layers: list[Any] = [
        _conv_bn_act(3, 64, 7, 2, act=nn.ReLU(inplace=True)),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for stage, count in enumerate(blocks_per_stage):
        width = 64 * 2**stage
        for index in range(count):
            layers.append(Block(cin, width, 2 if stage > 0 and index == 0 else 1))
            cin = width * (4 if bottleneck else 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return _init_cnn(nn.Sequential(*layers))


def resnet18() -> Any:
    """ResNet-18 (He et al. 2016): basic blocks [2, 2, 2, 2]."""
    return _resnet(False, [2, 2, 2, 2])


def resnet50() -> Any:
    """ResNet-50 (He et al. 2016): bottleneck blocks [3, 4, 6, 3]."""
    return _resnet(True, [3, 4, 6, 3])


def _inverted_residual(
    cin: int, expanded: int, cout: int, kernel: int, stride: int, act: Any,
    se: Any = None, bn_eps: float = 1e-5,
) -> Any:
    """MobileNet/EfficientNet block: [1x1 expand] -> depthwise -> [squeeze-excite] -> 1x1 project.

    ``act`` is an activation class; ``se`` builds the squeeze-excite module from the expanded
    width (or is None). A residual connection is added when stride is 1 and widths match.
    """
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = []
            if expanded != cin:
                layers.append(_conv_bn_act(cin, expanded, 1, act=act(), bn_eps=bn_eps))
            layers.append(
                _conv_bn_act(expanded, expanded, kernel, stride, expanded, act(), bn_eps=bn_eps)
            )
            if se is not None:
                layers.append(se(expanded))
            layers.append(_conv_bn_act(expanded, cout, 1, bn_eps=bn_eps))
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.body(x) if self.residual else self.body(x)

    return Block()


def _squeeze_excite(channels: int, squeezed: int, inner_act: Any, gate: Any) -> Any:
    """Squeeze-and-excitation (Hu et al. 2018): pool, 1x1 reduce, act, 1x1 expand, gate, scale."""
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, squeezed, 1)
            self.act = inner_act()
            self.expand = nn.Conv2d(squeezed, channels, 1)
            self.gate = gate()

        def forward(self, x: Any) -> Any:
            return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))

    return SqueezeExcite()


def mobilenet_v2(classes: int = 1000) -> Any:
    """MobileNetV2 (Sandler et al. 2018), width 1.0, ReLU6, last conv 1280."""
    from torch import nn

    # expansion t, output channels c, repeats n, first stride s (paper table 2)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[Any] = [_conv_bn_act(3, 32, 3, 2, act=nn.ReLU6(inplace=True))]
    cin = 32
    for t, c, n, s in settings:
        for index in range(n):
            layers.append(
                _inverted_residual(cin, cin * t, c, 3, s if index == 0 else 1, nn.ReLU6)
            )
            cin = c
    layers += [
        _conv_bn_act(cin, 1280, 1, act=nn.ReLU6(inplace=True)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes),
    ]
    return _init_cnn(nn.Sequential(*layers))


# MobileNetV3 bottlenecks (paper tables 1-2):
# kernel, expanded width, output width, squeeze-excite, activation, stride
_MBV3_LARGE = [
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
]
_MBV3_SMALL = [
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]


def _mobilenet_v3(config: list[tuple], last_channel: int, classes: int = 1000) -> Any:
    from torch import nn

    eps = 1e-3
    acts = {"RE": nn.ReLU, "HS": nn.Hardswish}

    def se(channels: int) -> Any:
        return _squeeze_excite(channels, round_channels(channels // 4), nn.ReLU, nn.Hardsigmoid)

    layers: list[Any] = [_conv_bn_act(3, 16, 3, 2, act=nn.Hardswish(), bn_eps=eps)]
    cin = 16
    for kernel, expanded, cout, use_se, act, stride in config:
        layers.append(
            _inverted_residual(
                cin, expanded, cout, kernel, stride, acts[act], se if use_se else None, eps
            )
        )
        cin = cout
    layers += [
        _conv_bn_act(cin, 6 * cin, 1, act=nn.Hardswish(), bn_eps=eps),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6 * cin, last_channel), nn.Hardswish(), nn.Dropout(0.2),
        nn.Linear(last_channel, classes),
    ]
    return _init_cnn(nn.Sequential(*layers))


def mobilenet_v3_large() -> Any:
    """MobileNetV3-Large (Howard et al. 2019), width 1.0."""
    return _mobilenet_v3(_MBV3_LARGE, 1280)


def mobilenet_v3_small() -> Any:
    """MobileNetV3-Small (Howard et al. 2019), width 1.0."""
    return _mobilenet_v3(_MBV3_SMALL, 1024)


def efficientnet_b0(classes: int = 1000) -> Any:
    """EfficientNet-B0 (Tan & Le 2019): MBConv stages with SiLU and squeeze-excite."""
    from torch import nn

    # expansion, kernel, first stride, output channels, repeats (paper table 1)
    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    layers: list[Any] = [_conv_bn_act(3, 32, 3, 2, act=nn.SiLU(inplace=True))]
    cin = 32
    for expansion, kernel, stride, cout, repeats in stages:
        for index in range(repeats):
            # the squeeze width is a quarter of the block's *input* width
            squeezed = max(1, cin // 4)

            def se(channels: int, squeezed: int = squeezed) -> Any:
                return _squeeze_excite(channels, squeezed, nn.SiLU, nn.Sigmoid)

            layers.append(
                _inverted_residual(
                    cin, cin * expansion, cout, kernel, stride if index == 0 else 1, nn.SiLU, se
                )
            )
            cin = cout
    layers += [
        _conv_bn_act(cin, 4 * cin, 1, act=nn.SiLU(inplace=True)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * cin, classes),
    ]
    return _init_cnn(nn.Sequential(*layers))
