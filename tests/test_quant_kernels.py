"""The cost model on quantized graphs: the fusion rules' kernels match the integer ops ONNX Runtime
really runs (read from its optimized graph), and precision is a feature."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from costmeter.devices.cpu.onnxruntime_cpu import compute_op_census
from costmeter.harness.convert.quant_backends import quantize_onnx
from costmeter.models.export import export_onnx
from costmeter.models.onnx.graph import load_graph
from costmeter.models.source import resolve_model
from costmeter.predictors.kernels.features import (
    FEATURE_SCHEMA_VERSION,
    KERNEL_FEATURES,
    MODEL_FEATURES,
    kernel_features,
    model_features,
)
from costmeter.predictors.kernels.fuse import fuse


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny_cnn exported, statically quantized (QDQ) and dynamically quantized; ORT's optimized
    graph of the static one."""
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("quant-kernels")
    source = resolve_model("tiny_cnn")
    fp32 = export_onnx(source, folder)
    feeds = [source.example_inputs(1, seed=100 + i) for i in range(4)]
    static, dynamic = folder / "static.onnx", folder / "dynamic.onnx"
    quantize_onnx(str(fp32), str(static), feeds, dynamic=False)
    quantize_onnx(str(fp32), str(dynamic), [], dynamic=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(static), options, providers=["CPUExecutionProvider"])
    return {"fp32": fp32, "static": static, "dynamic": dynamic, "optimized": folder / "optimized.onnx"}


def test_qdq_kernels_are_the_integer_ops_onnx_runtime_runs(quantized: dict[str, Path]) -> None:
    census = compute_op_census(str(quantized["optimized"]))
    kernels = fuse(load_graph(str(quantized["static"]), batch=1), "onnxruntime").kernels
    rules = Counter(k.rule for k in kernels)
    assert census.get("QLinearConv", 0) >= 2
    assert rules["qlinear_conv"] == census.get("QLinearConv", 0)
    assert rules["qgemm"] == census.get("QGemm", 0)
    # no float conv/gemm is left over in either: everything quantized fused
    assert not any(k.rule == "single" and k.kernel_type in ("conv", "dwconv", "fc") for k in kernels)
    assert sum(census.get(op, 0) for op in ("Conv", "FusedConv", "Gemm", "FusedGemm")) == 0


def test_dynamic_quantized_matmuls_fuse_like_matmul_integer_to_float(quantized: dict[str, Path]) -> None:
    kernels = fuse(load_graph(str(quantized["dynamic"]), batch=1), "onnxruntime").kernels
    fused = [k for k in kernels if k.rule == "matmul_integer_to_float"]
    import onnx

    integer_ops = sum(n.op_type == "MatMulInteger" for n in onnx.load(str(quantized["dynamic"])).graph.node)
    assert integer_ops >= 1 and len(fused) == integer_ops
    assert all([u.op_type for u in k.units][:3] == ["MatMulInteger", "Cast", "Mul"] for k in fused)


def test_precision_is_a_feature_of_kernels_and_models(quantized: dict[str, Path]) -> None:
    assert FEATURE_SCHEMA_VERSION >= 2  # 2 added precision_bits
    assert all(names[-1] == "precision_bits" for names in KERNEL_FEATURES.values())
    assert MODEL_FEATURES[-2:] == ("precision_bits", "int8_macs_share")
    fp32 = fuse(load_graph(str(quantized["fp32"]), batch=1), "onnxruntime")
    static = fuse(load_graph(str(quantized["static"]), batch=1), "onnxruntime")
    conv = [k for k in static.kernels if k.kernel_type == "conv"]
    assert {kernel_features(k)["precision_bits"] for k in conv} == {8.0}
    assert {kernel_features(k)["precision_bits"] for k in fp32.kernels} == {32.0}
    fp32_conv = next(k for k in fp32.kernels if k.kernel_type == "conv")
    assert kernel_features(fp32_conv, "int8")["precision_bits"] == 8  # a runtime quantizing a float graph
    assert kernel_features(fp32_conv, "bf16")["precision_bits"] == 16
    assert model_features(static)["int8_macs_share"] == pytest.approx(1.0, abs=0.01)
    assert model_features(fp32)["int8_macs_share"] == 0.0
    assert model_features(fp32, "bf16")["precision_bits"] == 16
    # same shapes, same MACs: the quantized graph's conv kernels keep their fp32 MAC counts
    assert sum(k.macs for k in conv) == sum(k.macs for k in fp32.kernels if k.kernel_type == "conv")
    assert np.isfinite(list(kernel_features(conv[0]).values())).all()


@pytest.mark.parametrize("runtime", ["executorch", "litert"])
def test_xnnpack_runtimes_fuse_quantized_graphs_like_integer_kernels(
        runtime: str, quantized: dict[str, Path]) -> None:
    static = fuse(load_graph(str(quantized["static"]), batch=1), runtime)
    onnxruntime = fuse(load_graph(str(quantized["static"]), batch=1), "onnxruntime")
    assert Counter(k.rule for k in static.kernels if k.rule.startswith("q")) == \
        Counter(k.rule for k in onnxruntime.kernels if k.rule.startswith("q"))
    fp32 = fuse(load_graph(str(quantized["fp32"]), batch=1), runtime)
    convs = [k for k in fp32.kernels if k.kernel_type == "conv"]
    assert convs and all(k.rule == "conv_clamp" for k in convs)
    assert any(len(k.units) > 1 for k in convs)  # tiny_cnn's ReLUs are the convs' clamps
