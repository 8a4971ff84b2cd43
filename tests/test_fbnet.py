"""FBNet space: encodings and their errors, nested sampling, analytic features against torch
counts, and the torch network's shapes on CIFAR inputs."""
from __future__ import annotations

import numpy as np
import pytest

from costmeter.errors import ConfigError
from costmeter.models.spaces import enumerate_space, fbnet, get_space, model_id, space_names

ALL_SKIP = "|".join(["skip"] * 22)
ALL_BIG = "|".join(["k5_e6"] * 22)
ALL_G2 = "|".join(["k3_e1_g2", "k5_e1_g2"] * 11)


def test_registered_with_the_protocol_attributes() -> None:
    assert "fbnet" in space_names() and get_space("fbnet") is fbnet
    assert fbnet.SIZE == 9 ** 22 and fbnet.N_LAYERS == 22
    assert fbnet.BLOCKS == ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3",
                            "k5_e6", "skip")
    assert fbnet.input_shape(ALL_SKIP, batch=4) == (4, 3, 32, 32)
    assert fbnet.CAPABILITIES == frozenset({"onehot", "lut"})  # lookup-table blocks: test_fbnet_lut.py
    with pytest.raises(ConfigError, match="'fbnet' is too large to enumerate"):
        enumerate_space("fbnet")
    np.testing.assert_array_equal(fbnet.to_array([ALL_SKIP]), np.full((1, 22), 8))


def test_macro_network_shapes() -> None:
    stage, c_in, c_out, stride, h_in, h_out = fbnet.LAYERS.T
    assert np.bincount(stage).tolist() == [1, 4, 4, 4, 4, 4, 1]
    assert c_out[[0, 4, 8, 12, 16, 20, 21]].tolist() == [16, 24, 32, 64, 112, 184, 352]
    assert np.flatnonzero(stride == 2).tolist() == [5, 9, 17]
    assert h_out[[0, 4, 8, 12, 16, 20, 21]].tolist() == [32, 32, 16, 8, 8, 4, 4]
    # skip cannot be an identity at the first layer of stages 2..7 (channel change or stride)
    assert np.flatnonzero(fbnet.SKIP_IS_CONV).tolist() == [1, 5, 9, 13, 17, 21]


def test_round_trips_between_encodings() -> None:
    archs = fbnet.sample(50, seed=3)
    codes = fbnet.to_codes(archs)
    assert codes.shape == (50, 22) and codes.dtype == np.int8
    assert fbnet.format_many(codes) == archs
    assert [fbnet.format_arch(fbnet.parse(a)) for a in archs[:5]] == archs[:5]
    a = archs[0]
    names = a.split("|")
    op_idx = [fbnet.BLOCKS.index(n) for n in names]
    for encoding in (a, f"  {a.replace('|', ' | ')} ", names, op_idx, np.asarray(op_idx),
                     {"op_idx_list": op_idx}):
        assert fbnet.canonical(encoding) == a
    assert model_id("fbnet", names) == f"fbnet:{a}"
    # the C-speed path and the per-string parser agree, also on non-canonical spacing
    spaced = [x.replace("|", " |") for x in archs]
    np.testing.assert_array_equal(fbnet.to_codes(spaced), codes)


@pytest.mark.parametrize("arch, message", [
    ("|".join(["k3_e1"] * 21), "has 21 layers separated by '\\|', expected 22"),
    ("|".join(["k3_e1"] * 4 + ["k7_e6"] + ["k3_e1"] * 17),
     "layer 5 \\(stage 2, block 4 of 4\\) has unknown block 'k7_e6'; allowed: k3_e1, k3_e1_g2, "
     "k3_e3, k3_e6, k5_e1, k5_e1_g2, k5_e3, k5_e6, skip"),
    ("|".join(["skip"] * 21 + ["ir_k3_e1"]), "layer 22 \\(stage 7, block 1 of 1\\) has unknown"),
    ([0] * 21 + [9], "op code 9 at layer 22 .* is outside 0..8"),
    ({"ops": [0] * 22}, "needs the key 'op_idx_list'"),
    (17, "cannot read an architecture from a int"),
])
def test_malformed_architectures_name_the_layer(arch: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        fbnet.canonical(arch)
    assert "\n" not in str(info.value)


def test_sampling_is_seeded_nested_and_spread() -> None:
    first = fbnet.sample(30, seed=7)
    assert fbnet.sample(60, seed=7)[:30] == first
    assert fbnet.sample(30, seed=7) == first and fbnet.sample(30, seed=8) != first
    codes = fbnet.sample_codes(2000, seed=0)
    counts = np.bincount(codes.ravel(), minlength=9) / codes.size
    assert np.all(np.abs(counts - 1 / 9) < 0.01)       # every block drawn about equally
    assert len(set(fbnet.sample(500, seed=1))) == 500


def test_feature_table_is_named_and_consistent() -> None:
    archs = fbnet.sample(40, seed=2) + [ALL_SKIP, ALL_BIG]
    names = fbnet.feature_names()
    X = fbnet.feature_matrix(archs)
    assert X.shape == (42, len(names)) and len(set(names)) == len(names)
    np.testing.assert_array_equal(X, fbnet.feature_matrix(fbnet.to_codes(archs)))
    F = fbnet.features(archs)
    onehot = F[list(fbnet.onehot_feature_names())].to_numpy().reshape(42, 22, 9)
    np.testing.assert_array_equal(onehot.argmax(axis=2), fbnet.to_codes(archs))
    layer_macs = F[[f"l{i + 1:02d}_macs" for i in range(22)]].to_numpy()
    stage_macs = F[[f"s{s + 1}_macs" for s in range(7)]].to_numpy()
    np.testing.assert_allclose(stage_macs.sum(axis=1), layer_macs.sum(axis=1))
    kinds = F[["macs_expand", "macs_depthwise", "macs_project", "macs_skip_conv"]].sum(axis=1)
    np.testing.assert_allclose(kinds, layer_macs.sum(axis=1))
    stage_counts = F[[f"s{s + 1}_n_{b}" for s in range(7) for b in fbnet.BLOCKS]].to_numpy()
    np.testing.assert_array_equal(stage_counts.reshape(42, 7, 9).sum(axis=1),
                                  F[[f"n_{b}" for b in fbnet.BLOCKS]].to_numpy())
    assert F["n_identity"].iloc[-2] == 16 and F["macs_skip_conv"].iloc[-1] == 0
    assert F["n_shuffles"].iloc[-1] == 0 and F["n_adds"].iloc[-1] == 16


@pytest.mark.parametrize("arch", [ALL_SKIP, ALL_BIG, ALL_G2, fbnet.sample(1, seed=11)[0]])
def test_macs_and_params_equal_torch_counts(arch: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    model = fbnet.build_torch(arch)
    x = torch.randn(fbnet.input_shape(arch, batch=1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(x)
    assert out.shape == (1, 100)
    assert counter.get_total_flops() == 2 * fbnet.macs(arch)      # one MAC = two FLOPs
    assert sum(p.numel() for p in model.parameters()) == fbnet.param_count(arch)


def test_torch_network_layer_shapes_and_skips() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    arch = fbnet.sample(1, seed=5)[0].split("|")
    arch[2], arch[5] = "skip", "skip"                     # an identity and a strided 1x1 conv
    model = fbnet.build_torch("|".join(arch))
    assert isinstance(model.layers[2], nn.Identity)
    conv = model.layers[5][0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    shapes: list[tuple[int, ...]] = []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    expected = [(2, int(c), int(h), int(h)) for c, h in zip(fbnet.LAYERS[:, 2], fbnet.LAYERS[:, 5])]
    assert shapes == expected


def test_model_source_and_onnx_export_keep_a_dynamic_batch() -> None:
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    import io
    import warnings

    from costmeter.models.spaces import build_model, split_model_id

    with pytest.raises(ConfigError, match="layer 3 \\(stage 2, block 2 of 4\\)"):
        split_model_id("fbnet:" + "|".join(["skip", "skip", "k9_e1"] + ["skip"] * 19))
    model, example = build_model(f"fbnet:{ALL_G2}")          # grouped convs + channel shuffles
    assert tuple(example.shape) == (1, 3, 32, 32)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4)
