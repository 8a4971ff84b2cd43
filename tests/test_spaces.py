"""Search spaces: encodings round-trip, errors name the bad part, analytic features match the
torch networks, NAS-Bench-201 index order, vectorised featurisation speed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.models.spaces import (
    arch_hash,
    get_space,
    model_id,
    nb201,
    ofa_mbv3,
    space_names,
)

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"
EXAMPLE = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
EMPTY = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
             "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")


def torch_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_space() -> None:
    assert {"nb201", "ofa_mbv3"} <= set(space_names())
    assert get_space("nb201") is nb201
    with pytest.raises(ConfigError, match="unknown search space 'darts'.*nb201"):
        get_space("darts")


PROTOCOL = ("NAME", "SIZE", "FEATURE_SCHEMA_VERSION", "CAPABILITIES", "parse", "format_arch",
            "canonical", "to_array", "sample", "feature_names", "feature_matrix", "features",
            "param_count", "macs", "input_shape", "build_torch")
OPTIONAL = {"enumerate": ("enumerate_archs",), "index": ("to_index", "index_to_codes"),
            "onehot": ("onehot_feature_names",)}
LUT_PROTOCOL = ("RESOLUTIONS", "INTERLEAVE", "space_blocks", "arch_blocks", "arch_resolution",
                "block_module", "dense_tables", "dense_predict", "sample_at")


@pytest.mark.parametrize("name", space_names())
def test_every_space_follows_the_protocol_and_declares_its_options(name: str) -> None:
    from costmeter.models.spaces import CAPABILITY_NAMES, has_capability, lut_blocks

    sp = get_space(name)
    assert sp.NAME == name
    assert [a for a in PROTOCOL if not hasattr(sp, a)] == []
    assert set(sp.CAPABILITIES) <= set(CAPABILITY_NAMES)
    for capability, attributes in OPTIONAL.items():
        if has_capability(name, capability):
            assert [a for a in attributes if not hasattr(sp, a)] == []
    if has_capability(name, "onehot"):  # named feature columns, one per (position, choice)
        onehot = list(sp.onehot_feature_names())
        assert set(onehot) <= set(sp.feature_names())
        assert (sp.features(sp.sample(8, seed=1))[onehot].to_numpy() > 0).sum(axis=1).tolist() == [
            len(onehot) // len({n.split("_", 1)[1] for n in onehot})] * 8
    if has_capability(name, "lut"):
        lut = lut_blocks(name)
        assert [a for a in LUT_PROTOCOL if not hasattr(lut, a)] == []
    else:
        with pytest.raises(ConfigError, match="has no lookup-table blocks"):
            lut_blocks(name)
    archs = sp.sample(20, seed=5)
    encoded = sp.to_array(archs)
    assert [sp.format_arch(row) for row in encoded] == [sp.canonical(a) for a in archs]


@pytest.mark.parametrize("name", space_names())
def test_sampling_is_nested(name: str) -> None:
    """A larger draw with the same seed contains the smaller one, as its start."""
    sp = get_space(name)
    assert sp.sample(60, seed=7)[:30] == sp.sample(30, seed=7)
    assert sp.sample(30, seed=7) != sp.sample(30, seed=8)


def test_model_id_and_hash_are_canonical() -> None:
    codes = nb201.parse(EXAMPLE)
    assert model_id("nb201", list(codes)) == f"nb201:{EXAMPLE}"
    assert arch_hash("nb201", EXAMPLE) == arch_hash("nb201", f"  {EXAMPLE} ")
    assert arch_hash("nb201", EXAMPLE) != arch_hash("nb201", EMPTY)


# ---------------------------------------------------------------------------------- nb201
def test_nb201_parse_format_round_trip_all_cells() -> None:
    archs = nb201.enumerate_archs()
    assert len(archs) == nb201.SIZE == 15_625 and len(set(archs)) == 15_625
    codes = nb201.to_codes(archs)
    assert np.array_equal(nb201.codes_to_index(codes), np.arange(15_625))
    assert all(nb201.format_arch(nb201.parse(a)) == a for a in archs[::97])
    assert nb201.parse(EXAMPLE).tolist() == [3, 0, 1, 1, 2, 4]


@pytest.mark.parametrize("bad, message", [
    (EXAMPLE.replace("skip_connect~1", "skip~1"), "edge 1->2 has unknown op 'skip'"),
    (EXAMPLE.replace("avg_pool_3x3~2", "avg_pool_3x3~1"), "edge 2->3 .* names input ~1"),
    ("|nor_conv_3x3~0|+|none~0|", "2 node groups"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 input edges, expected 2"),
    (EXAMPLE.replace("|+|skip_connect~0|", "|+skip_connect~0|"), "node 3 group"),
])
def test_nb201_malformed_strings_name_the_problem(bad: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        nb201.to_codes([EXAMPLE, bad])


def test_nb201_param_counts_by_hand() -> None:
    # Outside the cells: stem conv 3*16*9 + BN 2*16; reduction blocks (3x3 conv a, BN,
    # 3x3 conv b, BN, 1x1 shortcut conv); last BN 2*64; classifier 64*10 + 10.
    stem = 3 * 16 * 9 + 2 * 16
    red1 = (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + 16 * 32
    red2 = (32 * 64 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + 32 * 64
    head = 2 * 64 + 64 * 10 + 10
    fixed = stem + red1 + red2 + head
    assert fixed == 73_306
    # A conv op with C channels: k*k*C*C weights + 2*C BN; 5 cells per stage at C = 16/32/64.
    conv3 = sum(5 * (9 * c * c + 2 * c) for c in (16, 32, 64))
    conv1 = sum(5 * (c * c + 2 * c) for c in (16, 32, 64))
    assert nb201.param_count(EMPTY) == fixed
    assert nb201.param_count(ALL_CONV3) == fixed + 6 * conv3 == 1_531_546
    assert nb201.param_count(EXAMPLE) == fixed + conv3 + conv1 == 344_346
    for arch in (EMPTY, ALL_CONV3, EXAMPLE):
        assert torch_params(nb201.build_torch(arch)) == nb201.param_count(arch)


def test_nb201_macs_match_torch_hooks() -> None:
    import torch

    for arch in (EXAMPLE, ALL_CONV3):
        net = nb201.build_torch(arch)
        total = 0

        def hook(mod, inp, out) -> None:
            nonlocal total
            if isinstance(mod, torch.nn.Conv2d):
                total += out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] ** 2
            elif isinstance(mod, torch.nn.Linear):
                total += mod.in_features * mod.out_features

        for m in net.modules():
            m.register_forward_hook(hook)
        out = net(torch.randn(1, *nb201.INPUT_CHW))
        assert out.shape == (1, 10)
        assert total == nb201.macs(arch)


def test_nb201_live_features_and_disconnected_cells() -> None:
    f = nb201.features([EXAMPLE, EMPTY, "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|none~2|"])
    assert f["connected"].tolist() == [1.0, 0.0, 0.0]
    assert f.loc[0, ["node1_inputs", "node2_inputs", "node3_inputs"]].tolist() == [1, 1, 3]
    assert f.loc[0, "depth_ops"] == 3 and f.loc[0, "depth_convs"] == 2
    assert f.loc[2, "n_conv3x3"] == 1 and f.loc[2, "live_conv3x3"] == 0
    assert f.loc[0, [f"edge01_{s}" for s in nb201.OP_SHORT]].tolist() == [0, 0, 0, 1, 0]


def test_nb201_index_order_matches_the_published_table() -> None:
    table = pd.read_csv(FIXTURE, usecols=["index", "arch"])
    for index, arch in zip(table["index"], table["arch"]):
        assert nb201.nb201_index_to_arch(int(index)) == arch
        assert nb201.arch_to_nb201_index(arch) == index
    assert nb201.nb201_index_to_arch(0).startswith("|avg_pool_3x3~0|+|nor_conv_1x1~0|")


def test_nb201_sampling_is_seeded_and_unique() -> None:
    a, b = nb201.sample(500, seed=3), nb201.sample(500, seed=3)
    assert a == b and len(set(a)) == 500 and a != nb201.sample(500, seed=4)


# ---------------------------------------------------------------------------------- ofa_mbv3
@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_ofa_round_trips(seed: int) -> None:
    row = ofa_mbv3.sample_array(1, seed=seed)[0]
    text = ofa_mbv3.format_arch(row)
    assert np.array_equal(ofa_mbv3.parse(text), row)
    assert np.array_equal(ofa_mbv3.to_array([ofa_mbv3.to_ofa_dict(text)])[0], row)
    assert ofa_mbv3.canonical(ofa_mbv3.to_ofa_dict(text)) == text


@pytest.mark.parametrize("bad, message", [
    ("r225|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4", "resolution = 225"),
    ("r224|k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4", "stage 1 has 1 blocks"),
    ("r224|k3e4,k3e4|k3e4,k9e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4", "stage 2 block 2 kernel = 9"),
    ("r224|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e5", "stage 5 block 2 expand = 5"),
    ("r224|k3e4,k3e4", "5 stage groups"),
    ("r224|k3e4,k3x4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4", "token 'k3x4'"),
])
def test_ofa_malformed_strings_name_the_field(bad: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ofa_mbv3.to_array([bad])


def test_ofa_array_and_dict_errors_name_the_field() -> None:
    row = ofa_mbv3.sample_array(3, seed=0)
    row[2, 1 + ofa_mbv3.N_STAGES + 4] = 4  # stage 2 block 1 kernel (always active)
    with pytest.raises(ConfigError, match=r"stage 2 block 1 kernel \(row 2\) = 4"):
        ofa_mbv3.feature_matrix(row)
    with pytest.raises(ConfigError, match="lacks e, d, r"):
        ofa_mbv3.to_array([{"ks": [3] * 20}])


def test_ofa_params_and_macs_match_torch() -> None:
    import torch

    for text in ofa_mbv3.sample(3, seed=11):
        net = ofa_mbv3.build_torch(text)
        assert torch_params(net) == ofa_mbv3.param_count(text)
        out = net(torch.randn(ofa_mbv3.input_shape(text)))
        assert out.shape == (1, 1000)
    # largest network of the space: OFA reports 7.7M parameters for the full MobileNetV3 w1.0
    biggest = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [224]}
    assert ofa_mbv3.param_count(biggest) == torch_params(ofa_mbv3.build_torch(biggest))
    assert 7.6e6 < ofa_mbv3.param_count(biggest) < 7.8e6


def test_ofa_blocks_have_se_hswish_and_residuals_where_mobilenetv3_does() -> None:
    blocks = ofa_mbv3.blocks("r160|k3e4,k5e6|k3e4,k5e6,k7e3|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4,k5e6,k7e6")
    assert [b["se"] for b in blocks if b["block"] == 1] == [False, True, False, True, True]
    assert {b["act"] for b in blocks if b["stage"] >= 3} == {"h_swish"}
    assert [b["residual"] for b in blocks if b["stage"] == 2] == [False, True, True]
    assert blocks[0]["input_hw"] == 80 and blocks[-1]["output_hw"] == 5
    # stage 2 block 2 (k5e6): 40 * 6 = 240 mid channels, SE 240 // 4 = 60 rounded to 8 -> 64
    assert blocks[2]["mid_channels"] == 24 * 4
    assert blocks[3]["mid_channels"] == 240 and blocks[3]["se_channels"] == 64


def test_ofa_enumeration_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="cannot be enumerated"):
        ofa_mbv3.enumerate_archs()
    assert ofa_mbv3.SIZE == 7371 ** 5 * 25


# ---------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("space", ["nb201", "ofa_mbv3"])
def test_batch_features_equal_row_by_row_features(space: str) -> None:
    """The vectorised path over a large batch agrees with featurising rows one at a time
    (its speed is measured in benchmarks/nas_throughput.py, not asserted here)."""
    sp = get_space(space)
    archs = sp.sample(20_000, seed=1)
    matrix = sp.feature_matrix(sp.to_array(archs))
    assert matrix.shape == (20_000, len(sp.feature_names()))
    assert np.isfinite(matrix).all()
    picks = [0, 17, 9_999, 19_999]
    rows = np.vstack([sp.feature_matrix([archs[i]]) for i in picks])
    assert np.allclose(matrix[picks], rows)


def test_features_are_named_and_versioned() -> None:
    for name in space_names():
        sp = get_space(name)
        frame = sp.features(sp.sample(5, seed=0))
        assert list(frame.columns) == list(sp.feature_names())
        assert len(set(frame.columns)) == len(frame.columns)
        assert sp.FEATURE_SCHEMA_VERSION >= 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_search_space_model_ids_build_exportable_networks(tmp_path: Path) -> None:
    import onnx
    import torch

    from costmeter.models.spaces import (
        build_model,
        sample_model_ids,
        split_model_id,
    )

    assert split_model_id("resnet18") is None
    assert split_model_id(f"nb201:{EXAMPLE}") == ("nb201", EXAMPLE)
    with pytest.raises(ConfigError, match="unknown op"):
        split_model_id("nb201:" + EXAMPLE.replace("skip_connect~1", "skip~1"))
    ids = sample_model_ids("ofa_mbv3", 2, seed=1)
    assert all(i.startswith("ofa_mbv3:r") for i in ids)
    module, example = build_model(f"nb201:{EXAMPLE}")
    assert tuple(example.shape) == (1, 3, 32, 32)
    torch.onnx.export(module, (example,), tmp_path / "cell.onnx", dynamo=False)
    ops = [n.op_type for n in onnx.load(tmp_path / "cell.onnx").graph.node]
    # stem 1 + two reduction blocks x 3 convs + 15 cells x (one 3x3 + one 1x1 conv)
    assert ops.count("Conv") == 1 + 2 * 3 + 15 * 2
    assert ops.count("AveragePool") == 15 + 2  # cell pools + reduction shortcuts
