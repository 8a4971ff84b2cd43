"""The layer library (models/layers.py), the zoo's parameterised CNN builders on it, and the
family grammar mapped onto those builders."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from costmeter.models import families, layers, zoo  # noqa: E402
from costmeter.models.zoo import cnn  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(module: Any, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, counted on the meta device (no arithmetic)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.to("meta")(torch.empty(shape, device="meta"))
    return int(counter.get_total_flops()) // 2


def _on_meta(build: Any) -> Any:
    """Build without allocating or drawing weights: enough for parameter counts and MACs."""
    with torch.device("meta"):
        return build()


# ------------------------------------------------------------------------------ layer library
@pytest.mark.parametrize(("channels", "expected"), [
    (32 * 0.35, 16),   # nearest multiple (8) would be 10% under: one step up
    (24 * 0.75, 24),   # 18 -> 16 is under 90% of 18
    (1280 * 1.1, 1408),
    (96 * 0.5, 48),
    (3, 8),            # never below the divisor
    (120 // 4, 32),    # the MobileNetV3 squeeze width of a 120-wide block
])
def test_make_divisible_rounds_as_the_mobilenet_papers(channels: float, expected: int) -> None:
    assert layers.make_divisible(channels) == expected
    assert layers.make_divisible(channels) % 8 == 0


def test_conv_bn_act_shapes_and_activations() -> None:
    x = torch.randn(2, 6, 15, 15)
    out = layers.ConvBNAct(6, 10, 3, 2, act="hswish")(x)
    assert out.shape == (2, 10, 8, 8)
    assert isinstance(layers.ConvBNAct(6, 6, 5, groups=6, act="silu")[2], torch.nn.SiLU)
    assert len(layers.ConvBNAct(6, 6, 1, act=None)) == 2  # linear: conv + BN only
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        layers.ConvBNAct(6, 6, 1, act="gelu")


def _zero_last_bn(block: Any) -> None:
    """Make the block's body output exactly zero (its last BatchNorm maps everything to 0)."""
    last_bn = [m for m in block.body.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    torch.nn.init.zeros_(last_bn.weight)
    torch.nn.init.zeros_(last_bn.bias)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("c_in", "expanded", "c_out"), [
    (16, 16, 16), (16, 96, 16), (16, 96, 24), (24, 24, 16), (24, 144, 24),
])
def test_inverted_residual_adds_its_input_exactly_when_shapes_allow(
    stride: int, c_in: int, expanded: int, c_out: int
) -> None:
    block = layers.InvertedResidual(c_in, expanded, c_out, 3, stride, act="relu6").eval()
    expected = stride == 1 and c_in == c_out
    assert block.residual is expected
    _zero_last_bn(block)  # body(x) == 0, so the output is the shortcut alone
    x = torch.randn(1, c_in, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (1, c_out, 9 if stride == 1 else 5, 9 if stride == 1 else 5)
    if expected:
        assert torch.equal(out, x)
    else:
        assert float(out.abs().max()) == 0.0


def test_inverted_residual_parameters_match_a_hand_count() -> None:
    c_in, e, c_out, k, s = 24, 72, 40, 5, 18
    block = layers.InvertedResidual(c_in, e, c_out, k, 2, act="hswish", se_channels=s,
                                    se_act="relu", se_gate="hsigmoid")
    expand = c_in * e + 2 * e
    depthwise = e * k * k + 2 * e
    squeeze_excite = (e * s + s) + (s * e + e)
    project = e * c_out + 2 * c_out
    assert _params(block) == expand + depthwise + squeeze_excite + project
    # no 1x1 expansion when the expanded width is the input width, no SE without se_channels
    plain = layers.InvertedResidual(c_in, c_in, c_out, 3, 1)
    assert _params(plain) == (c_in * 9 + 2 * c_in) + (c_in * c_out + 2 * c_out)
    assert not any(isinstance(m, layers.SqueezeExcite) for m in plain.modules())


def test_squeeze_excite_gates_each_channel() -> None:
    se = layers.SqueezeExcite(8, 4, act="silu", gate="sigmoid").eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        ratio = se(x) / x
    assert isinstance(se.gate, torch.nn.Sigmoid)
    # one gate per (item, channel): constant over the pixels, strictly between 0 and 1
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert bool(((ratio > 0) & (ratio < 1)).all())


@pytest.mark.parametrize(("block", "c_in", "width", "stride", "c_out", "projects"), [
    (layers.BasicBlock, 64, 64, 1, 64, False),
    (layers.BasicBlock, 64, 128, 2, 128, True),
    (layers.Bottleneck, 256, 64, 1, 256, False),
    (layers.Bottleneck, 64, 64, 1, 256, True),
    (layers.Bottleneck, 256, 128, 2, 512, True),
])
def test_resnet_blocks_shapes_and_shortcuts(block: Any, c_in: int, width: int, stride: int,
                                            c_out: int, projects: bool) -> None:
    module = block(c_in, width, stride).eval()
    with torch.no_grad():
        out = module(torch.randn(1, c_in, 8, 8))
    assert out.shape == (1, c_out, 8 // stride, 8 // stride) and bool((out >= 0).all())
    assert isinstance(module.shortcut, torch.nn.Identity) is not projects


def test_init_cnn_weights_is_deterministic_for_a_seed() -> None:
    def build() -> Any:
        torch.manual_seed(5)
        return layers.init_cnn_weights(torch.nn.Sequential(
            layers.ConvBNAct(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2)))

    with torch.no_grad():
        first, second = build(), build()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(first[0][1].weight, torch.ones(8))
    linear = first[2]
    assert float(linear.weight.detach().std()) < 0.05 and not linear.bias.detach().any()


# ------------------------------------------------------------------------------ zoo builders
def test_zoo_builders_refuse_unknown_depths_and_sizes() -> None:
    with pytest.raises(ValueError, match="resnet depth 19"):
        cnn.resnet(19)
    with pytest.raises(ValueError, match="size 'medium'"):
        cnn.mobilenet_v3("medium")


# ------------------------------------------------------------------------------ families
@pytest.mark.parametrize(("variant", "zoo_name"), sorted(families.ZOO_MODELS.items()))
def test_default_variant_is_the_zoo_model(variant: str, zoo_name: str) -> None:
    """Same layers in the same order, same parameter count and same MACs (flop counter)."""
    variant_module = families.build_torch(variant)
    zoo_module = zoo.zoo_entries()[zoo_name].build()  # architecture only
    assert [tuple(t.shape) for t in variant_module.state_dict().values()] == \
        [tuple(t.shape) for t in zoo_module.state_dict().values()]
    assert _params(variant_module) == _params(zoo_module)
    shape = families.input_shape(variant)
    assert shape == (1, *zoo.zoo_entries()[zoo_name].inputs[0].shape)
    assert _macs(variant_module, shape) == _macs(zoo_module, shape)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_width_and_depth_grow_parameters_monotonically(family: str) -> None:
    default_depth = {"resnet": 18.0}.get(family, 1.0)
    by_width = [_params(_on_meta(families.builder(families.format_variant(family, w, default_depth,
                                                                         224))))
                for w in families.WIDTHS[family]]
    by_depth = [_params(_on_meta(families.builder(families.format_variant(family, 1.0, d, 224))))
                for d in families.DEPTHS[family]]
    assert list(families.WIDTHS[family]) == sorted(families.WIDTHS[family])
    assert list(families.DEPTHS[family]) == sorted(families.DEPTHS[family])
    assert all(a < b for a, b in zip(by_width, by_width[1:])), by_width
    assert all(a < b for a, b in zip(by_depth, by_depth[1:])), by_depth


@pytest.mark.parametrize("family", families.FAMILIES)
def test_variant_ids_keep_naming_the_same_architecture(family: str) -> None:
    """Every width x depth of the grid has the parameters and MACs pinned in the fixture, so a
    stored variant id (``mobilenet_v2:w=0.75,d=1,r=160``) keeps meaning one network."""
    pinned = json.loads((FIXTURES / "family_architectures.json").read_text())["variants"]
    specs = [s for s in families.grid(family) if s.endswith(",r=160")]
    assert sorted(specs) == sorted(s for s in pinned if s.startswith(f"{family}:"))
    for spec in specs:
        module = _on_meta(families.builder(spec))
        assert [_params(module), _macs(module, families.input_shape(spec))] == pinned[spec], spec


@pytest.mark.parametrize(("variant", "call"), [
    ("resnet:w=0.5,d=26,r=128", partial(cnn.resnet, 26, width=0.5)),
    ("mobilenet_v2:w=0.75,d=1,r=160", partial(cnn.mobilenet_v2, width=0.75, depth=1.0)),
    ("mobilenet_v3:w=0.75,d=0,r=96", partial(cnn.mobilenet_v3_small, width=0.75)),
    ("efficientnet:w=1.1,d=0.5,r=192", partial(cnn.efficientnet, width=1.1, depth=0.5)),
])
def test_the_grammar_builds_what_the_parameterised_builder_builds(variant: str,
                                                                  call: Any) -> None:
    grammar = families.build_torch(variant).state_dict()
    direct = zoo.build_seeded(call).state_dict()
    assert list(grammar) == list(direct)
    for name in grammar:
        assert torch.equal(grammar[name], direct[name]), name


def test_resolution_changes_the_input_not_the_network() -> None:
    low, high = "mobilenet_v3:w=0.5,d=1,r=96", "mobilenet_v3:w=0.5,d=1,r=224"
    assert families.input_shape(low) == (1, 3, 96, 96)
    assert zoo.image_inputs(96) == (zoo.ZooInput("input", (3, 96, 96)),)
    a, b = families.build_torch(low).state_dict(), families.build_torch(high).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a) and list(a) == list(b)
    assert _macs(families.build_torch(low), (1, 3, 96, 96)) < \
        _macs(families.build_torch(high), (1, 3, 224, 224))


def test_family_builds_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    first = families.build_torch("resnet:w=0.25,d=10,r=96")
    assert torch.equal(torch.rand(2), expected)
    second = families.build_torch("resnet:w=0.25,d=10,r=96")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  second.state_dict().values()))
    assert not first.training


def test_ofa_blocks_are_the_library_blocks_and_their_specs_must_agree() -> None:
    from costmeter.models.spaces.ofa_mbv3.torch_module import FirstBlock, MBConv

    spec = {"in_channels": 24, "out_channels": 24, "mid_channels": 72, "kernel": 5, "stride": 1,
            "act": "h_swish", "se": True, "se_channels": 24, "residual": True}
    block = MBConv(spec)
    assert isinstance(block, layers.InvertedResidual) and block.residual
    assert isinstance(block.body[2], layers.SqueezeExcite)
    assert FirstBlock(16).residual and len(FirstBlock(16).body) == 2  # no 1x1 expansion
    with pytest.raises(ValueError, match="residual=True"):
        MBConv({**spec, "stride": 2})
