"""ONNX graph analysis: shapes, MACs, FLOPs and bytes against hand-computed values."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from costmeter.errors import ConfigError  # noqa: E402
from costmeter.models.export import export_onnx  # noqa: E402
from costmeter.models.source import resolve_model, zoo_names  # noqa: E402
from costmeter.models.onnx.graph import OpGraph, load_graph  # noqa: E402

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes: list, inputs: list, outputs: list, inits: dict | None = None) -> Any:
    """A model from (name, elem_type, shape) inputs/outputs and name -> array initializers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _w(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def _only(graph: OpGraph, op_type: str) -> Any:
    (op,) = [op for op in graph.ops if op.op_type == op_type]
    return op


def test_conv_with_bias_hand_computed(tmp_path: Path) -> None:
    model = _model(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])],
        [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 4, 8, 8])],
        {"W": _w(4, 3, 3, 3), "B": _w(4)},
    )
    onnx.save(model, str(tmp_path / "conv.onnx"))
    graph = load_graph(tmp_path / "conv.onnx", batch=2)
    conv = _only(graph, "Conv")
    outputs = 2 * 4 * 8 * 8
    assert conv.outputs[0].shape == (2, 4, 8, 8)
    assert conv.macs == outputs * 3 * 3 * 3
    assert conv.flops == 2 * conv.macs + outputs  # + one add per output for the bias
    assert conv.bytes_read == 4 * (2 * 3 * 8 * 8 + 4 * 3 * 3 * 3 + 4)
    assert conv.bytes_written == 4 * outputs
    assert conv.weight_bytes == 4 * (4 * 27 + 4)
    assert conv.intensity == pytest.approx(conv.flops / (conv.bytes_read + conv.bytes_written))
    assert conv.attributes == {
        "pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "strides": [1, 1], "dilations": [1, 1],
        "group": 1,
    }
    assert conv.category == "conv" and conv.known and conv.shapes_complete
    assert graph.totals()["param_count"] == 4 * 27 + 4


def test_depthwise_conv_hand_computed() -> None:
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=8, strides=[2, 2], pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3])],
        [("x", F32, [1, 8, 10, 10])], [("y", F32, [1, 8, 5, 5])], {"W": _w(8, 1, 3, 3)},
    )
    conv = _only(load_graph(model), "Conv")
    assert conv.outputs[0].shape == (1, 8, 5, 5)
    assert conv.macs == 8 * 5 * 5 * 9  # one input channel per output channel
    assert conv.flops == 2 * conv.macs
    assert conv.bytes_read == 4 * (8 * 10 * 10 + 8 * 9)
    assert conv.bytes_written == 4 * 8 * 5 * 5
    assert conv.attributes["group"] == 8 and conv.attributes["strides"] == [2, 2]


def test_batched_matmul_with_weight_hand_computed() -> None:
    model = _model(
        [helper.make_node("MatMul", ["a", "B"], ["y"])],
        [("a", F32, ["N", 3, 4, 5])], [("y", F32, ["N", 3, 4, 6])], {"B": _w(5, 6)},
    )
    matmul = _only(load_graph(model, batch=2), "MatMul")
    assert matmul.outputs[0].shape == (2, 3, 4, 6)
    assert matmul.macs == 2 * 3 * 4 * 6 * 5 and matmul.flops == 2 * matmul.macs
    assert matmul.bytes_read == 4 * (2 * 3 * 4 * 5 + 5 * 6)
    assert matmul.bytes_written == 4 * 2 * 3 * 4 * 6 and matmul.weight_bytes == 4 * 30


def test_attention_matmul_chain() -> None:
    heads, seq, dim = 2, 16, 8
    model = _model(
        [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["y"]),
        ],
        [(n, F32, ["B", heads, seq, dim]) for n in "qkv"], [("y", F32, ["B", heads, seq, dim])],
    )
    graph = load_graph(model, batch=3)
    first, second = [op for op in graph.ops if op.op_type == "MatMul"]
    assert first.macs == 3 * heads * seq * seq * dim  # Q K^T
    assert second.macs == 3 * heads * seq * dim * seq  # P V
    assert first.weight_bytes == second.weight_bytes == 0
    assert _only(graph, "Softmax").flops == 5 * 3 * heads * seq * seq
    transpose = _only(graph, "Transpose")
    moved = 4 * 3 * heads * seq * dim
    assert transpose.flops == 0 and transpose.bytes_read == transpose.bytes_written == moved
    totals = graph.totals()
    assert totals["macs"] == first.macs + second.macs and totals["ops"] == 4
    assert totals["flops"] == 2 * totals["macs"] + 5 * 3 * heads * seq * seq


def test_gemm_pool_norm_resize_elementwise_conventions() -> None:
    model = _model(
        [
            helper.make_node("Gemm", ["a", "W", "C"], ["g"], transB=1),
            helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
            helper.make_node("BatchNormalization", ["x", "S", "Z", "Z", "S"], ["bn"]),
            helper.make_node("LayerNormalization", ["t", "S16", "Z16"], ["ln"], axis=-1),
            helper.make_node("Add", ["t", "Z16"], ["add"]),
            helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="linear"),
            helper.make_node("Resize", ["x", "", "", "sizes"], ["near"], mode="nearest"),
        ],
        [("a", F32, [2, 16]), ("x", F32, [1, 4, 8, 8]), ("t", F32, [2, 10, 16])],
        [(n, F32, None) for n in ("g", "mp", "gap", "bn", "ln", "add", "up", "near")],
        {"W": _w(8, 16), "C": _w(8), "S": _w(4), "Z": _w(4), "S16": _w(16), "Z16": _w(16),
         "sizes": np.array([1, 4, 16, 16], np.int64)},
    )
    graph = load_graph(model)
    by_output = {op.outputs[0].name: op for op in graph.ops}
    assert (by_output["g"].macs, by_output["g"].flops) == (2 * 8 * 16, 2 * 2 * 8 * 16 + 2 * 8)
    assert by_output["mp"].outputs[0].shape == (1, 4, 4, 4)
    assert by_output["mp"].flops == 4 * 4 * 4 * 9 and by_output["mp"].macs == 0
    assert by_output["mp"].attributes["dilations"] == [1, 1]
    assert by_output["gap"].flops == 4 * 8 * 8
    assert by_output["bn"].flops == 2 * 4 * 8 * 8
    assert by_output["ln"].flops == 7 * 2 * 10 * 16
    assert by_output["add"].flops == 2 * 10 * 16 and by_output["add"].weight_bytes == 64
    assert by_output["up"].flops == (4 * 16 * 16) * 2 * 2**2  # 2 taps on each of 2 axes
    assert by_output["near"].flops == 0 and by_output["near"].bytes_written == 4 * 4 * 16 * 16
    assert not graph.unknown_ops() and not graph.incomplete_ops()


def test_unknown_ops_are_kept_and_listed() -> None:
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("FancyOp", ["r"], ["f"], domain="com.example"),
            helper.make_node("LRN", ["r"], ["l"], size=3),
            helper.make_node("Relu", ["l"], ["y"]),
        ],
        [("x", F32, ["N", 4, 8, 8])], [("f", F32, None), ("y", F32, None)],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    graph = load_graph(model, batch=2)
    assert [op.op_type for op in graph.ops] == ["Relu", "FancyOp", "LRN", "Relu"]
    assert [op.op_type for op in graph.unknown_ops()] == ["FancyOp", "LRN"]
    assert all(op.flops == 0 and op.category == "unknown" for op in graph.unknown_ops())
    lrn = graph.unknown_ops()[1]
    assert lrn.bytes_read == 4 * 2 * 256  # bytes still counted where shapes are known
    totals = graph.totals()
    assert totals["unknown_ops"] == 2 and totals["ops"] == 4
    assert totals["flops"] == 2 * (2 * 256)  # the two Relus


def test_views_move_no_data_and_gather_reads_rows_only() -> None:
    model = _model(
        [
            helper.make_node("Gather", ["E", "ids"], ["emb"]),
            helper.make_node("Constant", [], ["shape"],
                             value=numpy_helper.from_array(np.array([0, -1], np.int64))),
            helper.make_node("Reshape", ["emb", "shape"], ["y"]),
        ],
        [("ids", I64, ["N", 5])], [("y", F32, None)], {"E": _w(100, 8)},
    )
    graph = load_graph(model, batch=3)
    gather, _, reshape = graph.ops
    assert gather.weight_bytes == 100 * 8 * 4
    assert gather.bytes_read == 3 * 5 * 8 + 3 * 5 * 8 * 4  # indices + gathered rows
    assert reshape.outputs[0].shape == (3, 40)
    assert reshape.bytes_read == reshape.bytes_written == 0 and reshape.category == "view"
    assert graph.constant_value("shape").tolist() == [0, -1]
    assert graph.producer_of("emb") is gather and graph.consumers_of("emb") == [reshape]


def test_constant_subgraphs_count_as_weights() -> None:
    model = _model(
        [helper.make_node("Identity", ["B"], ["b2"]), helper.make_node("Add", ["x", "b2"], ["y"])],
        [("x", F32, ["N", 16])], [("y", F32, ["N", 16])], {"B": _w(16)},
    )
    add = _only(load_graph(model), "Add")
    assert add.inputs[1].constant and add.weight_bytes == 64


def test_runtime_shape_computations_are_folded() -> None:
    # the pattern exported BERT models use: slice a position-id buffer by the input length
    model = _model(
        [
            helper.make_node("Shape", ["ids"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["length"]),
            helper.make_node("Unsqueeze", ["length", "zero1"], ["end"]),
            helper.make_node("Slice", ["pos", "zero1", "end", "one1"], ["positions"]),
            helper.make_node("Gather", ["P", "positions"], ["pemb"]),
            helper.make_node("Gather", ["E", "ids"], ["temb"]),
            helper.make_node("Add", ["temb", "pemb"], ["h"]),
            helper.make_node("MatMul", ["h", "W"], ["y"]),
        ],
        [("ids", I64, ["N", "L"])], [("y", F32, None)],
        {"one": np.array(1, np.int64), "zero1": np.array([0], np.int64),
         "one1": np.array([1], np.int64), "pos": np.arange(64, dtype=np.int64)[None],
         "P": _w(64, 8), "E": _w(100, 8), "W": _w(8, 4)},
    )
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12
    graph = load_graph(model, batch=2)
    assert not graph.incomplete_ops()
    assert _only(graph, "Slice").outputs[0].shape == (1, 12)
    assert _only(graph, "MatMul").macs == 2 * 12 * 8 * 4
    assert graph.constant_value("end").tolist() == [12]


def test_batch_binding_scales_costs() -> None:
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"])],
        [("x", F32, ["batch", 3, 8, 8])], [("y", F32, ["batch", 2, 6, 6])], {"W": _w(2, 3, 3, 3)},
    )
    one, four = load_graph(model, batch=1), load_graph(model, batch=4)
    assert four.totals()["macs"] == 4 * one.totals()["macs"] > 0
    assert four.outputs[0].shape == (4, 2, 6, 6) and four.inputs[0].shape == (4, 3, 8, 8)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # untouched
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a fixed-batch file
    fixed = load_graph(model, batch=4)
    assert fixed.batch == 2 and fixed.totals()["macs"] == 2 * one.totals()["macs"]


def test_local_functions_are_inlined() -> None:
    double_relu = helper.make_function(
        "local", "DoubleRelu", ["a"], ["b"],
        [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Add", ["r", "r"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    model = _model(
        [helper.make_node("DoubleRelu", ["x"], ["y"], domain="local")],
        [("x", F32, ["N", 8])], [("y", F32, None)],
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(double_relu)
    graph = load_graph(model, batch=3)
    assert [op.op_type for op in graph.ops] == ["Relu", "Add"]
    assert graph.totals()["flops"] == 2 * 3 * 8 and not graph.unknown_ops()


def test_records_are_json_ready() -> None:
    import json

    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"])],
        [("x", F32, [1, 3, 8, 8])], [("y", F32, None)], {"W": _w(2, 3, 3, 3)},
    )
    graph = load_graph(model)
    record = json.loads(json.dumps([op.to_dict() for op in graph.ops]))[0]
    assert record["macs"] == graph.ops[0].macs and record["inputs"][1]["constant"] is True
    assert graph.by_op_type()["Conv"]["count"] == 1


def test_bad_graph_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_graph(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfenot onnx" * 20)
    with pytest.raises(ConfigError, match="cannot read"):
        load_graph(tmp_path / "junk.onnx")
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [1, 2])], [("y", F32, None)]
    )
    with pytest.raises(ConfigError, match="batch"):
        load_graph(model, batch=0)
    broken = _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, [1, 3])], [("y", F32, None)],
        {"W": _w(4, 2)},
    )
    graph = load_graph(broken)  # inconsistent shapes: reported, the op kept and flagged
    assert graph.warnings and "shape inference" in graph.warnings[0]
    assert [op.op_type for op in graph.incomplete_ops()] == ["MatMul"]


# ---------------------------------------------------------------- exported models


def _torch_macs(name: str) -> int:
    return int(resolve_model(name).info()["macs"])


@pytest.mark.slow
def test_legacy_and_dynamo_exports_agree(tmp_path: Path) -> None:
    from costmeter.models import export

    source = resolve_model("tiny_cnn")
    legacy = load_graph(export_onnx(source, tmp_path))
    dynamo_path = tmp_path / "dynamo.onnx"
    args = tuple(torch.from_numpy(a) for a in source.example_inputs(2).values())
    export._dynamo_export(source.build_torch(), args, dynamo_path, 17, ["input"], ["output"],
                          {"input": {0: "batch"}})
    dynamo = load_graph(dynamo_path)
    legacy_types, dynamo_types = set(legacy.by_op_type()), set(dynamo.by_op_type())
    # the two exporters spell the same model differently (RUNTIMES.md)
    assert {"GlobalAveragePool", "Flatten"} <= legacy_types
    assert {"ReduceMean", "Clip"} <= dynamo_types and "BatchNormalization" not in dynamo_types
    expected = _torch_macs("tiny_cnn")
    for graph in (legacy, dynamo):
        assert graph.totals()["macs"] == expected
        assert not graph.unknown_ops() and not graph.incomplete_ops()
    assert resolve_model(str(dynamo_path)).info()["macs"] == expected  # an ONNX-file source


@pytest.fixture(scope="module")
def zoo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo_exports")


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names())
def test_zoo_graph_macs_match_flop_counter(name: str, zoo_workdir: Path) -> None:
    source = resolve_model(name)
    graph = load_graph(export_onnx(source, zoo_workdir), batch=1)
    torch_macs = source.info()["macs"]
    assert graph.totals()["macs"] == pytest.approx(torch_macs, rel=0.03)
    assert not graph.unknown_ops() and not graph.incomplete_ops()
