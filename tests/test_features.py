"""Named kernel features against hand-computed values, model aggregates, property tests."""
from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmeter.predictors.kernels.features import (
    ACTIVATION_CODES,
    FEATURE_SCHEMA_VERSION,
    KERNEL_FEATURES,
    MODEL_FEATURES,
    feature_tables,
    kernel_features,
    model_feature_table,
    model_features,
    stack_tables,
)
from costmeter.models.onnx.graph import load_graph
from costmeter.predictors.kernels.fuse import fuse
from costmeter.models.onnx.microbench import GraphBuilder, chain_model


def _only(model: Any, runtime: str = "onnxruntime") -> dict[str, float]:
    (kernel,) = [k for k in fuse(load_graph(model), runtime).kernels if k.kernel_type != "constant"]
    return {"kernel_type": kernel.kernel_type, **kernel_features(kernel)}


def test_conv_features_match_hand_computed_values() -> None:
    f = _only(chain_model([("Conv", {"c_out": 16, "kernel": 3, "stride": 2}), ("HardSwish", {})],
                          (1, 8, 16, 16)))
    macs = 8 * 8 * 16 * (8 * 3 * 3)  # outputs x (C_in x k x k)
    assert f["kernel_type"] == "conv"
    assert (f["h_in"], f["w_in"], f["c_in"], f["c_out"], f["kernel_h"], f["stride"], f["groups"],
            f["h_out"], f["w_out"]) == (16, 16, 8, 16, 3, 2, 1, 8, 8)
    assert f["macs"] == macs
    assert f["flops"] == 2 * macs + 8 * 8 * 16 + 8 * 8 * 16  # + bias + HardSwish per output
    assert f["params"] == 16 * 8 * 9 + 16
    assert f["bytes_read"] == 4 * (8 * 16 * 16 + 16 * 8 * 9 + 16)
    assert f["bytes_written"] == 4 * 16 * 8 * 8
    assert f["intensity"] == pytest.approx(f["flops"] / (f["bytes_read"] + f["bytes_written"]))
    assert (f["fused_act"], f["act_code"], f["fused_add"], f["fused_bn"]) == (
        1, ACTIVATION_CODES["HardSwish"], 0, 0)


def test_depthwise_fc_and_matmul_shapes() -> None:
    dw = _only(chain_model([("DWConv", {"kernel": 5, "stride": 1})], (1, 32, 14, 14)))
    assert (dw["kernel_type"], dw["groups"], dw["c_in"], dw["c_out"], dw["kernel_h"]) == (
        "dwconv", 32, 32, 32, 5)
    assert dw["macs"] == 14 * 14 * 32 * 25
    gemm = _only(chain_model([("Gemm", {"n": 10}), ("Relu", {})], (1, 64)))
    assert (gemm["kernel_type"], gemm["m"], gemm["k"], gemm["n"], gemm["act_code"]) == (
        "fc", 1, 64, 10, ACTIVATION_CODES["Relu"])
    tokens = _only(chain_model([("MatMul", {"n": 48})], (1, 7, 32)))
    assert (tokens["kernel_type"], tokens["m"], tokens["k"], tokens["n"]) == ("fc", 7, 32, 48)
    builder = GraphBuilder()
    q = builder.input((1, 3, 9, 16), "q")
    out, shape = builder.apply("MatMul", q, (1, 3, 9, 16), n=9, weight=False)
    scores = _only(builder.model([(out, shape)]))
    assert (scores["kernel_type"], scores["batch_count"], scores["m"], scores["k"], scores["n"]) == (
        "matmul", 3, 9, 16, 9)


def test_attention_pool_norm_softmax_concat_features() -> None:
    builder = GraphBuilder()
    q = builder.input((1, 4, 10, 8), "q")
    x, shape = builder.apply("MatMul", q, (1, 4, 10, 8), n=10, weight=False)
    x, shape = builder.apply("Softmax", x, shape)
    x, shape = builder.apply("MatMul", x, shape, n=8, weight=False)
    attention = _only(builder.model([(x, shape)]), "openvino")
    assert (attention["kernel_type"], attention["heads"], attention["seq_q"], attention["seq_kv"],
            attention["head_dim"], attention["hidden"]) == ("attention", 4, 10, 10, 8, 32)
    pool = _only(chain_model([("MaxPool", {"kernel": 3, "stride": 2})], (1, 16, 32, 32)))
    assert (pool["kernel_type"], pool["c"], pool["h_out"], pool["pool_max"]) == ("pool", 16, 16, 1)
    gap = _only(chain_model([("GlobalAveragePool", {})], (1, 24, 7, 7)))
    assert (gap["kernel_type"], gap["h_in"], gap["c"]) == ("global_pool", 7, 24)
    layer_norm = _only(chain_model([("LayerNormalization", {})], (1, 12, 64)))
    assert (layer_norm["kernel_type"], layer_norm["rows"], layer_norm["hidden"]) == ("layernorm", 12, 64)
    softmax = _only(chain_model([("Softmax", {})], (1, 5, 30)))
    assert (softmax["rows"], softmax["row_len"]) == (5, 30)
    concat = _only(chain_model([("Concat", {"others": [8, 16]})], (1, 8, 4, 4)))
    assert (concat["kernel_type"], concat["n_inputs"], concat["axis_size"]) == ("concat", 3, 32)
    se_scale = _only(chain_model([("Mul", {"broadcast": True})], (1, 16, 8, 8)))
    assert (se_scale["kernel_type"], se_scale["broadcast"], se_scale["numel"]) == (
        "elementwise", 1, 16 * 64)


def test_tables_have_named_columns_in_schema_order_and_model_aggregates_add_up() -> None:
    graph = load_graph(chain_model([("Conv", {"c_out": 8}), ("Relu", {}), ("DWConv", {}),
                                    ("GlobalAveragePool", {})], (1, 4, 8, 8)))
    kernel_graph = fuse(graph)
    tables = feature_tables(kernel_graph)
    assert set(tables) == {"conv", "dwconv", "global_pool"}
    for kernel_type, table in tables.items():
        assert list(table.columns) == list(KERNEL_FEATURES[kernel_type])
        assert table.attrs == {"feature_schema_version": FEATURE_SCHEMA_VERSION,
                               "kernel_type": kernel_type}
    series = model_features(kernel_graph)
    assert list(series.index) == list(MODEL_FEATURES)
    assert series["flops"] == graph.totals()["flops"]
    assert series["conv_count"] == 1 and series["dwconv_count"] == 1
    assert series["flops"] == sum(series[f"{t}_flops"] for t in tables)
    assert series["n_kernels"] == 3 and series["n_ops"] == 4
    stacked = stack_tables({"a": kernel_graph, "b": kernel_graph})
    assert stacked["conv"].index.names == ["model", "kernel"]
    assert list(stacked["conv"].index.get_level_values("model")) == ["a", "b"]
    frame = model_feature_table({"a": kernel_graph})
    assert list(frame.columns) == list(MODEL_FEATURES) and list(frame.index) == ["a"]


@settings(max_examples=25, deadline=None)
@given(c_in=st.sampled_from([3, 8, 16, 24]), c_out=st.sampled_from([8, 16, 32]),
       kernel=st.sampled_from([1, 3, 5, 7]), stride=st.sampled_from([1, 2]),
       size=st.integers(7, 40), depthwise=st.booleans())
def test_conv_features_are_finite_and_follow_the_formula(c_in: int, c_out: int, kernel: int,
                                                         stride: int, size: int,
                                                         depthwise: bool) -> None:
    op = ("DWConv", {"kernel": kernel, "stride": stride}) if depthwise else (
        "Conv", {"c_out": c_out, "kernel": kernel, "stride": stride})
    f = _only(chain_model([op], (1, c_in, size, size)))
    out_size = (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1
    channels_out = c_in if depthwise else c_out
    per_output = kernel * kernel * (1 if depthwise else c_in)
    assert f["kernel_type"] == ("dwconv" if depthwise and c_in > 1 else "conv")
    assert f["h_out"] == out_size and f["c_out"] == channels_out
    assert f["macs"] == out_size * out_size * channels_out * per_output
    assert f["flops"] == 2 * f["macs"] + out_size * out_size * channels_out
    values = [v for k, v in f.items() if k != "kernel_type"]
    assert all(math.isfinite(v) and v >= 0 for v in values)
