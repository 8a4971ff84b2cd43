"""The analytic peak live set of activations on small hand-built ONNX graphs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from costmeter.errors import ConfigError
from costmeter.models.onnx.graph import load_graph
from costmeter.models.onnx.live_memory import peak_activation_bytes, peak_live_set

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_chain_frees_each_input_after_its_last_use():
    # x -> a -> b, 4000 bytes each: never more than two alive at once
    model = _model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                   [("x", [1, 1000])], [("b", [1, 1000])])
    live = peak_live_set(load_graph(model))
    assert live.peak_bytes == 8000
    assert live.total_bytes == 12000
    assert live.peak_op == 0 and live.peak_tensors == ("a", "x")


def test_skip_connection_keeps_its_source_alive():
    # a is read by the last op, so a, b and c are alive during op 2 (and a, c, d during op 3)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["d"])]
    live = peak_live_set(load_graph(_model(nodes, [("x", [1, 1000])], [("d", [1, 1000])])))
    assert live.peak_bytes == 12000
    assert live.peak_op == 2 and live.peak_tensors == ("a", "b", "c")


def test_weights_are_not_activations_and_the_wide_layer_sets_the_peak():
    # x: 400 B -> a: 4000 B -> b: 4000 B -> y: 40 B; the weights (400 kB) are not counted
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["y"])]
    weights = [("w1", np.zeros((100, 1000), np.float32)), ("w2", np.zeros((1000, 10), np.float32))]
    graph = load_graph(_model(nodes, [("x", [1, 100])], [("y", [1, 10])], weights))
    live = peak_live_set(graph)
    assert live.peak_bytes == 8000 and live.peak_op == 1
    assert live.total_bytes == 400 + 4000 + 4000 + 40
    assert graph.param_bytes == 4 * (100 * 1000 + 1000 * 10)


def test_views_share_their_input_buffer():
    # x: 40 B -> a: 4000 B -> Reshape r (a view of a) -> y: 40 B
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    weights = [("w1", np.zeros((10, 1000), np.float32)), ("shape", np.array([1, 1000], np.int64)),
               ("w2", np.zeros((1000, 10), np.float32))]
    graph = load_graph(_model(nodes, [("x", [1, 10])], [("y", [1, 10])], weights))
    assert peak_live_set(graph).peak_bytes == 4040
    copied = peak_live_set(graph, alias_views=False)
    assert copied.peak_bytes == 8000 and copied.peak_op == 1


def test_batch_scales_the_live_set():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    model = _model(nodes, [("x", ["N", 250])], [("b", ["N", 250])])
    assert peak_activation_bytes(model, batch=1) == 2000
    assert peak_activation_bytes(model, batch=8) == 16000


def test_graph_outputs_live_to_the_end():
    # y is a graph output produced first: it stays alive while b and c are computed
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"])]
    live = peak_live_set(load_graph(_model(nodes, [("x", [1, 1000])],
                                           [("y", [1, 1000]), ("c", [1, 1000])])))
    assert live.peak_bytes == 12000
    assert "y" in live.peak_tensors


def test_unknown_sizes_are_listed_not_guessed():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Mystery", ["a"], ["b"], domain="custom.ops"),
             helper.make_node("Relu", ["b"], ["c"])]
    model = _model(nodes, [("x", [1, 1000])], [("c", [1, 1000])])
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    live = peak_live_set(load_graph(model))
    assert "b" in live.unknown_tensors
    assert live.peak_bytes == 8000  # x + a; b counts 0, c is known from the output annotation


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="OpGraph"):
        peak_live_set("model.onnx")
    with pytest.raises(ConfigError, match="not found"):
        peak_activation_bytes("/nonexistent/model.onnx")


def test_graph_target_predictor_recovers_a_linear_memory_model():
    import pandas as pd

    from costmeter.predictors import GraphTargetPredictor, memory_features

    rng = np.random.default_rng(0)
    rows = []
    for width in (100, 200, 400, 800, 1600):
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
        weights = [("w1", rng.standard_normal((64, width)).astype(np.float32))]
        rows.append(memory_features(load_graph(_model(nodes, [("x", [1, 64])], [("y", [1, width])], weights))))
    table = pd.DataFrame(rows)
    assert table["peak_activation_bytes"].tolist() == [8 * w for w in (100, 200, 400, 800, 1600)]  # a + y
    assert (table["matmul_weight_bytes"] == table["param_bytes"]).all() and not table["conv_weight_bytes"].any()
    truth = 50e6 + 2.5 * table["param_bytes"] + 1.0 * table["peak_activation_bytes"]
    model = GraphTargetPredictor().fit(table.iloc[:4], truth.iloc[:4])
    assert model.predict(table.iloc[4:])[0] == pytest.approx(truth.iloc[4], rel=1e-6)  # extrapolates
    assert "peak_memory = " in model.describe()


def test_graph_target_predictor_bad_input():
    import pandas as pd

    from costmeter.predictors import GraphTargetPredictor

    table = pd.DataFrame({"conv_weight_bytes": [1.0, 2.0, 3.0], "peak_activation_bytes": [1.0, 2.0, 3.0]})
    with pytest.raises(ConfigError, match="matmul_weight_bytes"):
        GraphTargetPredictor().fit(table, [1, 2, 3])
    full = table.assign(matmul_weight_bytes=0.0)
    with pytest.raises(ConfigError, match="unknown target"):
        GraphTargetPredictor(target="power").fit(full, [1, 2, 3])
    with pytest.raises(ConfigError, match="at least 3"):
        GraphTargetPredictor().fit(full.head(2), [1, 2])
    with pytest.raises(ConfigError, match="2 target values"):
        GraphTargetPredictor().fit(full, [1, 2])
