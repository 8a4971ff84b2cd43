"""`bench predictor build --precision int8`: micro-benchmarks and calibration networks quantized
with ONNX Runtime's static QDQ recipe, kernels fused as a quantized network fuses them, and a
predictor that answers only at its own precision (fake hardware seams as in test_build)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.errors import ConfigError
from costmeter.predictors.workflows.build import BuildSpec, build_predictor
from costmeter.workdir import Workdir
from test_build import seams, spec


def quantized(path: Path) -> bool:
    """Whether an ONNX file holds quantize/dequantize nodes."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "QuantizeLinear" in ops and "DequantizeLinear" in ops


def kernels_of(ops: list, shape: tuple[int, ...], precision: str) -> list:
    """The kernels a micro-benchmark of ``ops`` measures at ``precision``."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.configs import make_config
    from costmeter.predictors.sampling.quantized import quantize_model, sampled_kernels
    from costmeter.predictors.sampling.samples import FOLDED_TYPES

    model = make_config("x", shape, ops).build()
    if precision == "int8":
        model = quantize_model(model)
    graph = fuse(load_graph(model), builtin_rules("onnxruntime"))
    return sampled_kernels(graph, {i.name for i in model.graph.input}, FOLDED_TYPES)


def test_quantized_micro_benchmarks_form_the_kernels_a_quantized_network_runs() -> None:
    from costmeter.predictors.kernels.features import kernel_precision_bits

    # Conv + ReLU + the output's pair: one QLinearConv (the input's pair is the producer's work)
    (conv,) = kernels_of([("Conv", {"c_out": 16, "kernel": 3}), ("Relu", {})], (1, 8, 16, 16), "int8")
    assert (conv.kernel_type, conv.rule, kernel_precision_bits(conv)) == ("conv", "qlinear_conv", 8)
    # an op without an integer kernel runs in float between a DQ and a Q: it takes its output's pair
    (act,) = kernels_of([("Sigmoid", {})], (1, 8, 16, 16), "int8")
    assert act.kernel_type == "activation" and act.rule == "float_requantize"
    assert [u.op_type for u in act.units] == ["Sigmoid", "QDQPair"]
    # the same chain in float keeps the float rules and precision
    (fconv,) = kernels_of([("Conv", {"c_out": 16, "kernel": 3}), ("Relu", {})], (1, 8, 16, 16), "fp32")
    assert fconv.rule == "conv_bn_add_act" and kernel_precision_bits(fconv) == 32
    # Conv + Add of a tensor splits at int8 (QLinearConv, then QLinearAdd): not one kernel
    split = kernels_of([("Conv", {"c_out": 8, "kernel": 1}), ("Add", {}), ("Relu", {})], (1, 8, 8, 8), "int8")
    assert [k.rule for k in split] == ["qlinear_conv", "qlinear_add"]


@pytest.mark.slow
def test_an_int8_build_times_quantized_files_and_shares_a_folder_with_an_fp32_build(tmp_path: Path) -> None:
    from costmeter.predictors.artifacts import read_manifest

    files: list[tuple[str, bool]] = []  # (file name, quantized?) of every file timed
    timed = seams()

    def measure(groups):
        files.extend((p.name, quantized(p)) for g in groups for p in g)
        return base(groups)

    base, timed.kernel_measure = timed.kernel_measure, measure
    wd = tmp_path / "wd"
    result = build_predictor(spec(precision="int8"), tmp_path / "q.costmodel", wd, seams=timed)
    kernel_files = [q for name, q in files if not name.startswith("overhead")]
    assert kernel_files and all(kernel_files)  # every kernel and baseline
    assert not any(q for name, q in files if name.startswith("overhead"))  # the run's overhead
    extra = read_manifest(result.output)["extra"]
    assert extra["precision"] == "int8" and extra["quantization"]["format"] == "QDQ"
    from costmeter.predictors.sampling.measure import KernelSamples

    rows = KernelSamples.load(Workdir(wd).kernel_samples("cpu", "onnxruntime-int8")).rows
    assert rows and any(r["features"]["precision_bits"] == 8 for r in rows)
    # an fp32 build in the same folder has files of its own; the int8 state is left alone
    state_int8 = Workdir(wd).build_state("cpu", "onnxruntime-int8").read_text()
    fp32 = build_predictor(spec(), tmp_path / "f.costmodel", wd, seams=seams())
    assert read_manifest(fp32.output)["extra"]["precision"] == "fp32"
    assert "quantization" not in read_manifest(fp32.output)["extra"]
    assert Workdir(wd).build_state("cpu", "onnxruntime").exists()
    assert Workdir(wd).build_state("cpu", "onnxruntime-int8").read_text() == state_int8
    assert json.loads(state_int8)["identity"]["precision"] == "int8"
    assert "precision" not in json.loads(Workdir(wd).build_state("cpu", "onnxruntime").read_text())["identity"]


def test_int8_kernel_samples_carry_8_bit_features(tmp_path: Path) -> None:
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.configs import make_config
    from costmeter.predictors.sampling.measure import measure_kernels

    configs = [make_config("conv", (1, 8, 16, 16), [("Conv", {"c_out": 16, "kernel": 3}), ("Relu", {})]),
               make_config("dwconv", (1, 16, 16, 16), [("DWConv", {"kernel": 3, "stride": 1})])]
    fake = lambda groups: [[0.01 if p.name.startswith("overhead") else 0.05 for p in g] for g in groups]  # noqa: E731
    for precision, bits in (("int8", 8), ("fp32", 32)):
        samples = measure_kernels(configs, builtin_rules("onnxruntime"), workdir=tmp_path, measure=fake,
                                  context=True, precision=precision)
        assert len(samples.rows) == 2 and not samples.split
        assert {r["features"]["precision_bits"] for r in samples.rows} == {bits}
    # ONNX Runtime's calibration session rejects a 16x16 conv on a 1x1 input in context (the float
    # session pads it): that config is reported as not measurable, the others are measured
    odd = make_config("conv", (1, 16, 1, 1), [("Conv", {"c_out": 120, "kernel": 16, "stride": 1})])
    samples = measure_kernels([odd, *configs], builtin_rules("onnxruntime"), workdir=tmp_path, measure=fake,
                              context=True, precision="int8")
    assert samples.split == [odd] and len(samples.rows) == 2


def test_int8_needs_onnx_runtime_and_a_known_precision() -> None:
    with pytest.raises(ConfigError, match="use --runtime onnxruntime"):
        BuildSpec(threads=1, runtime="litert", precision="int8")
    with pytest.raises(ConfigError, match="fp32 or int8"):
        BuildSpec(threads=1, precision="fp16")
    assert BuildSpec(threads=1, precision="int8").slot == "onnxruntime-int8"
    assert BuildSpec(threads=1).slot == "onnxruntime"


def test_graph_cache_keys_keep_fp32_and_separate_int8(tmp_path: Path) -> None:
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.workflows.graphs import hashed_source, rows_path

    source = hashed_source("resnet18", tmp_path)
    rules = builtin_rules("onnxruntime")
    plain = rows_path(source, tmp_path, rules)
    assert rows_path(source, tmp_path, rules, precision="fp32") == plain
    assert rows_path(source, tmp_path, rules, precision="int8")[0] != plain[0]


def test_predict_refuses_another_precision_than_the_build(tmp_path: Path, capsys) -> None:
    from costmeter.cli import main

    out = tmp_path / "f.costmodel"
    build_predictor(spec(), out, tmp_path / "wd", seams=seams())
    rc = main(["predict", str(out), "-m", "resnet18", "--precision", "int8", "--workdir", str(tmp_path / "wd")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "predicts latencies at fp32, not int8" in err and "--precision int8" in err
    table = tmp_path / "t.json"
    table.write_text("{}")
    rc = main(["predict", str(table), "-m", "nb201:x", "--precision", "int8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "leave --precision out" in err
    rc = main(["predictor", "build", "--threads", "1", "--budget", "30m", "--precision", "int8",
               "--runtime", "openvino", "-o", str(tmp_path / "x.costmodel"), "--workdir", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "onnxruntime" in err
    assert not (tmp_path / "new").exists()


def test_a_chain_that_splits_when_quantized_is_measured_as_the_kernels_it_splits_into(tmp_path: Path) -> None:
    """SiLU is one float kernel but two int8 ones (QLinearSigmoid, QLinearMul): an int8 build
    measures those, so that a quantized EfficientNet's sigmoids are priced from sigmoids."""
    import json as _json

    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.configs import make_config
    from costmeter.predictors.sampling.measure import measure_kernels

    silu = make_config("activation", (1, 32, 16, 16), [("SiLU", {})])
    fake = lambda groups: [[0.01 if p.name.startswith("overhead") else 0.05 for p in g] for g in groups]  # noqa: E731
    int8 = measure_kernels([silu], builtin_rules("onnxruntime"), workdir=tmp_path, measure=fake,
                           context=True, precision="int8")
    assert int8.split == [silu]
    measured = sorted((r["kernel_type"], _json.loads(r["config"])["ops"][0][0]) for r in int8.rows)
    assert measured == [("activation", "Sigmoid"), ("elementwise", "Mul")]
    assert {r["features"]["precision_bits"] for r in int8.rows} == {8}
    fp32 = measure_kernels([silu], builtin_rules("onnxruntime"), workdir=tmp_path, measure=fake, context=True)
    assert not fp32.split and [r["key"] for r in fp32.rows] == [silu.key]  # one float kernel
