"""Shape arithmetic (Shape, and the Concat of its values feeding a Reshape, as torch exports a
channel shuffle) is its own kernel type, priced at next to nothing rather than by the
FLOPs-linear fallback: on FBNet's grouped blocks the fallback put ~64 us on each of them."""
from __future__ import annotations

import numpy as np
import pandas as pd


def shuffle_model():
    """Conv, then a channel shuffle spelled with Shape/Gather/Concat/Reshape/Transpose."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "i0"),
            numpy_helper.from_array(np.array([2, 8, 8, 8], dtype=np.int64), "rest"),
            numpy_helper.from_array(np.array([0, 16, 8, 8], dtype=np.int64), "back")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "rest"], ["shape5"], axis=0),
             helper.make_node("Reshape", ["c", "shape5"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "back"], ["y"])]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_shape_arithmetic_is_a_shape_kernel_priced_as_negligible() -> None:
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.estimators.forest import KernelForest, ModelForest
    from costmeter.predictors.kernels.features import stack_tables
    from costmeter.predictors.kernels.fuse import NEGLIGIBLE_LATENCY_MS, fuse
    from costmeter.predictors.kernels.rules import builtin_rules

    graph = fuse(load_graph(shuffle_model()), builtin_rules("onnxruntime"))
    types = {k.ops[0].op_type: k.kernel_type for k in graph.kernels}
    assert types["Shape"] == types["Gather"] == types["Concat"] == "shape"  # int64 vectors, not feature maps
    assert types["Conv"] == "conv" and types["Transpose"] == "data"

    tables = stack_tables({"m": graph})
    conv = tables["conv"]
    train = pd.concat([conv] * 8)
    forest = KernelForest(ModelForest(n_estimators=8), on_unknown="flops_linear").fit(
        {"conv": train, "data": pd.concat([tables["data"]] * 8)},
        {"conv": np.full(len(train), 0.05), "data": np.full(8 * len(tables["data"]), 0.002)})
    kernels = forest.predict_kernels(tables)
    shape = kernels[kernels["kernel_type"] == "shape"]
    assert len(shape) == 3 and set(shape["priced_by"]) == {"negligible"}
    assert np.allclose(shape["latency_ms"], NEGLIGIBLE_LATENCY_MS)
    # a kernel type that is neither measured nor negligible still goes to the fallback
    view = kernels[kernels["kernel_type"] == "view"]
    assert len(view) and set(view["priced_by"]) == {"flops_linear"}


def test_feature_maps_stay_concat_and_token_ids_are_not_shapes() -> None:
    from onnx import TensorProto, helper

    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.kernels.rules import builtin_rules

    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             helper.make_node("ArgMax", ["c"], ["ids"], axis=1, keepdims=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8, 8]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    kernels = fuse(load_graph(model), builtin_rules("onnxruntime")).kernels
    assert [k.kernel_type for k in kernels][0] == "concat"
    assert "shape" not in {k.kernel_type for k in kernels}  # a 4-D int64 output is no shape vector
