"""Fusion rules: known patterns, rule-set files, the ONNX Runtime oracle, no op ever dropped."""
from __future__ import annotations

import collections
import hashlib
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from costmeter.errors import ConfigError
from costmeter.models.onnx.graph import load_graph
from costmeter.predictors.kernels.rules import (
    FusionRule,
    RuleSet,
    builtin_rules,
    load_rules,
    read_rules,
    rules_path,
    save_rules,
)
from costmeter.predictors.kernels.fuse import KERNEL_TYPES, fuse
from costmeter.models.onnx.microbench import GraphBuilder, chain_model


def _kernels(model: Any, runtime: str = "onnxruntime") -> list[tuple[str, list[str]]]:
    return [(k.kernel_type, k.unit_types) for k in fuse(load_graph(model), runtime).kernels]


def test_conv_bn_relu_is_one_kernel() -> None:
    model = chain_model([("Conv", {"c_out": 8, "bias": False}), ("BatchNormalization", {}),
                         ("Relu", {})], (1, 4, 8, 8))
    kernel_graph = fuse(load_graph(model))
    (kernel,) = kernel_graph.kernels
    assert (kernel.kernel_type, kernel.unit_types) == ("conv", ["Conv", "BatchNormalization", "Relu"])
    # conv MACs 8*8*8*4*9 = 18432 -> 36864 FLOPs, BN 2/element, ReLU 1/element (512 elements)
    assert kernel.flops == 36864 + 2 * 512 + 512
    # boundary traffic: input (4*64*4 B) + weights/BN params in, one output out; no intermediates
    assert kernel.bytes_read == 4 * (256 + 8 * 4 * 9 + 4 * 8)
    assert kernel.bytes_written == 4 * 512


def test_residual_add_and_clip_fuse_into_conv_and_relu6_is_clip() -> None:
    model = chain_model([("Conv", {"c_out": 4}), ("Add", {}), ("Clip", {})], (1, 4, 8, 8))
    assert _kernels(model) == [("conv", ["Conv", "Add", "Clip"])]


def test_depthwise_conv_with_silu_stays_two_kernels_on_onnxruntime() -> None:
    # ONNX Runtime runs SiLU (Sigmoid*Mul) as its own QuickGelu kernel, not in the conv
    model = chain_model([("DWConv", {"kernel": 5}), ("SiLU", {})], (1, 16, 8, 8))
    assert _kernels(model) == [("dwconv", ["Conv"]), ("activation", ["SiLU"])]
    assert _kernels(model, "openvino") == [("dwconv", ["Conv", "SiLU"])]


def test_matmul_bias_gelu_and_gemm_relu() -> None:
    model = chain_model([("MatMul", {"n": 32}), ("AddConst", {}), ("GELU", {})], (1, 6, 16))
    assert _kernels(model) == [("fc", ["MatMul"]), ("activation", ["Add", "GELU"])]
    assert _kernels(model, "openvino") == [("fc", ["MatMul", "Add", "GELU"])]
    gemm = chain_model([("Gemm", {"n": 8}), ("Relu", {})], (2, 16))
    assert _kernels(gemm) == [("fc", ["Gemm", "Relu"])]


def test_intermediate_with_two_readers_is_not_fused() -> None:
    builder = GraphBuilder()
    x = builder.input((1, 4, 8, 8), "input")
    conv, shape = builder.apply("Conv", x, (1, 4, 8, 8))
    relu, _ = builder.apply("Relu", conv, shape)
    model = builder.model([(relu, shape), (conv, shape)])  # the conv output is also a graph output
    assert _kernels(model) == [("conv", ["Conv"]), ("activation", ["Relu"])]


def test_attention_chain_fuses_where_the_runtime_has_sdpa() -> None:
    builder = GraphBuilder()
    q = builder.input((1, 2, 6, 8), "q")
    scores, shape = builder.apply("MatMul", q, (1, 2, 6, 8), n=6, weight=False)
    scaled, _ = builder.apply("MulConst", scores, shape)
    probs, _ = builder.apply("Softmax", scaled, shape)
    context, out_shape = builder.apply("MatMul", probs, shape, n=8, weight=False)
    model = builder.model([(context, out_shape)])
    assert _kernels(model, "openvino") == [("attention", ["MatMul", "Mul", "Softmax", "MatMul"])]
    assert [t for t, _ in _kernels(model)] == ["matmul", "elementwise", "softmax", "matmul"]


def test_runtime_without_rules_runs_every_op_alone() -> None:
    model = chain_model([("Conv", {}), ("Relu", {})], (1, 4, 8, 8))
    assert _kernels(model, "tvm") == [("conv", ["Conv"]), ("activation", ["Relu"])]


def test_unknown_op_is_reported_with_its_share_not_dropped() -> None:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Foo", ["r"], ["y"], domain="custom.ops")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("custom.ops", 1)])
    kernel_graph = fuse(load_graph(model))
    assert sorted(op.op_type for k in kernel_graph.kernels for op in k.ops) == ["Foo", "Relu"]
    (row,) = kernel_graph.unknown_report()
    assert (row["op_type"], row["reason"], row["count"], row["flops"]) == ("Foo", "no cost formula", 1, 0)
    assert 0 < row["bytes_share"] < 1


def test_rule_set_round_trips_through_json_and_detected_file_wins(tmp_path: Path) -> None:
    rules = RuleSet("onnxruntime", (FusionRule.from_dict(
        {"name": "conv_relu", "steps": [{"types": ["Conv"]}, {"types": ["Relu"], "optional": True}]}),),
        device="cpu", source="detected", evidence=({"op1": "Conv", "op2": "Relu", "fused": True},))
    path = save_rules(rules, tmp_path)
    assert path == rules_path(tmp_path, "cpu", "onnxruntime")
    assert read_rules(path) == rules
    assert load_rules("onnxruntime", "cpu", tmp_path).source == "detected"
    assert load_rules("onnxruntime", "cpu", tmp_path / "empty") == builtin_rules("onnxruntime")
    model = chain_model([("Conv", {}), ("Clip", {})], (1, 4, 8, 8))
    assert _kernels(model, load_rules("onnxruntime", "cpu", tmp_path)) == [
        ("conv", ["Conv"]), ("activation", ["Clip"])]


def test_bad_rule_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bench kernels detect"):
        read_rules(bad)
    bad.write_text(json.dumps({"runtime": "onnxruntime", "format_version": 99}))
    with pytest.raises(ConfigError, match="format version 99"):
        read_rules(bad)
    with pytest.raises(ConfigError, match="unknown op-type group"):
        FusionRule.from_dict({"name": "r", "steps": [{"types": ["@nope"]}]})
    with pytest.raises(ConfigError, match="anchor"):
        FusionRule.from_dict({"name": "r", "steps": [{"types": ["Conv"], "optional": True}]})


# ------------------------------------------------------------------------- every zoo model
def _zoo_source_digest() -> str:
    """The zoo's source and the layer library it builds on: the key of the exported-ONNX cache."""
    from costmeter.models import layers, zoo

    digest = hashlib.sha256()
    for path in [*sorted(Path(str(zoo.__file__)).parent.glob("*.py")), Path(layers.__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="module")
def zoo_onnx(request: pytest.FixtureRequest) -> dict[str, Path]:
    """Every zoo model exported once (legacy exporter), cached across runs by zoo source."""
    import torch

    from costmeter.models import zoo

    folder = Path(request.config.cache.mkdir(f"zoo-onnx-{_zoo_source_digest()}"))
    paths = {}
    for name, entry in zoo.zoo_entries().items():
        path = folder / f"{name}.onnx"
        if not path.exists():
            module = zoo.build_zoo_model(name)
            args = tuple(torch.zeros((1, *i.shape), dtype=getattr(torch, i.dtype)) for i in entry.inputs)
            names = [i.name for i in entry.inputs]
            with torch.no_grad():
                outputs = module(*args)
            count = len(outputs) if isinstance(outputs, tuple) else 1
            out_names = [f"output_{i}" for i in range(count)]
            buffer = io.BytesIO()  # dynamic batch, as the harness exports: ORT fuses by it
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, buffer, dynamo=False, opset_version=17,
                                  input_names=names, output_names=out_names,
                                  dynamic_axes={n: {0: "batch"} for n in names + out_names})
            path.write_bytes(buffer.getvalue())
        paths[name] = path
    return paths


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "torch", "torch_compile"])
def test_every_zoo_op_lands_in_exactly_one_kernel(zoo_onnx: dict[str, Path], runtime: str) -> None:
    for name, path in zoo_onnx.items():
        graph = load_graph(path)
        kernel_graph = fuse(graph, runtime)
        placed = collections.Counter(op.index for k in kernel_graph.kernels for op in k.ops)
        assert sorted(placed) == [op.index for op in graph.ops], name
        assert set(placed.values()) == {1}, name
        assert {k.kernel_type for k in kernel_graph.kernels} <= set(KERNEL_TYPES)
        assert sum(k.flops for k in kernel_graph.kernels) == graph.totals()["flops"], name
        assert kernel_graph.unknown_report() == [], name


def _ort_optimized(path: Path, tmp_path: Path) -> Any:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


_ORT_CONV_TYPES = ("Conv", "FusedConv")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small",
                                  "efficientnet_b0", "bert_tiny", "tiny_mlp"])
def test_onnxruntime_rules_match_the_graph_onnxruntime_runs(zoo_onnx: dict[str, Path], name: str,
                                                            tmp_path: Path) -> None:
    """The built-in rules give the kernels ORT's own optimizer leaves (the oracle on x86)."""
    optimized = _ort_optimized(zoo_onnx[name], tmp_path)
    ort_kernels: collections.Counter[str] = collections.Counter()
    for node in optimized.graph.node:
        activation = next((a.s.decode() for a in node.attribute if a.name == "activation"), "")
        if node.op_type in _ORT_CONV_TYPES:
            ort_kernels[f"Conv+{activation}" if activation else "Conv"] += 1
        elif node.op_type in ("FusedGemm", "Gemm"):
            ort_kernels[f"Gemm+{activation}" if activation else "Gemm"] += 1
        elif node.op_type in ("QuickGelu", "BiasGelu", "Softmax", "LayerNormalization",
                              "GlobalAveragePool", "MaxPool", "MatMul"):
            ort_kernels[node.op_type] += 1
    ours: collections.Counter[str] = collections.Counter()
    chains = replace(builtin_rules("onnxruntime"), blocks=())  # the fusion chains, not the blocks
    for kernel in fuse(load_graph(zoo_onnx[name]), chains).kernels:
        types = kernel.unit_types
        if types[0] == "Conv":
            act = [t for t in types[1:] if t not in ("Add", "BatchNormalization")]
            ours[f"Conv+{act[0]}" if act else "Conv"] += 1
        elif types[0] == "Gemm":
            ours["+".join(types)] += 1
        elif types == ["SiLU"]:
            ours["QuickGelu"] += 1
        elif types == ["Add", "GELU"]:
            ours["BiasGelu"] += 1
        elif types[0] in ("Softmax", "LayerNormalization", "GlobalAveragePool", "MaxPool", "MatMul"):
            ours[types[0]] += 1
    assert ours == ort_kernels


# ------------------------------------------------------------------------ fusion detection
def test_pairs_become_chain_rules_with_nn_meters_verdict() -> None:
    from costmeter.predictors.sampling.fusion_detect import PairTiming, rules_from_pairs

    timings = [PairTiming("Conv", "Relu", 1.0, 0.2, 1.02, 0.01),       # saving 0.18 > 0.1: fused
               PairTiming("Conv", "Add", 1.0, 0.3, 1.05, 0.01),        # 0.25 > 0.15: fused
               PairTiming("Conv", "HardSwish", 1.0, 0.3, 1.28, 0.01),  # 0.02 < 0.15: not fused
               PairTiming("AddConst", "GELU", 0.1, 0.2, 0.12, 0.01)]   # 0.18 > 0.05: fused
    assert [t.fused for t in timings] == [True, True, False, True]
    rule_set = rules_from_pairs(timings, "onnxruntime", "cpu")
    assert rule_set.source == "detected" and len(rule_set.evidence) == 4
    model = chain_model([("Conv", {}), ("Add", {}), ("Relu", {}), ("Conv", {}), ("HardSwish", {})],
                        (1, 4, 8, 8))
    assert [k.unit_types for k in fuse(load_graph(model), rule_set).kernels] == [
        ["Conv", "Add", "Relu"], ["Conv"], ["HardSwish"]]
    bias_gelu = chain_model([("MatMul", {}), ("AddConst", {}), ("GELU", {})], (1, 4, 8))
    assert [k.unit_types for k in fuse(load_graph(bias_gelu), rule_set).kernels] == [
        ["MatMul"], ["Add", "GELU"]]


def test_detect_fusion_measures_three_models_per_pair_and_stores_the_rules(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.fusion_detect import detect_fusion

    times = {"overhead": 0.01, "Conv": 0.51, "Relu": 0.11, "Conv_Relu": 0.52,
             "Gemm": 0.21, "Sigmoid": 0.11, "Gemm_Sigmoid": 0.31}
    rounds: list[int] = []

    def measure(paths: list[Path]) -> list[float]:
        rounds.append(len(paths))
        return [times[p.name.rsplit("-", 1)[0]] for p in paths]

    rule_set = detect_fusion([("Conv", "Relu"), ("Gemm", "Sigmoid")], workdir=tmp_path,
                             repeats=2, measure=measure)
    assert rounds == [7, 7]  # overhead + 3 models per pair, each round
    verdicts = {(e["op1"], e["op2"]): e["fused"] for e in rule_set.evidence}
    assert verdicts == {("Conv", "Relu"): True, ("Gemm", "Sigmoid"): False}
    assert rule_set.evidence[0]["t1_ms"] == pytest.approx(0.5)
    assert load_rules("onnxruntime", "cpu", tmp_path) == rule_set


def test_bad_pairs_are_refused() -> None:
    from costmeter.predictors.sampling.fusion_detect import detect_fusion, parse_pairs

    assert parse_pairs("Conv+Relu, Gemm+Relu") == [("Conv", "Relu"), ("Gemm", "Relu")]
    with pytest.raises(ConfigError, match="bad op pair 'Conv-Relu'"):
        parse_pairs("Conv-Relu")
    with pytest.raises(ConfigError, match="bad op pair 'Conv\\+Foo'"):
        detect_fusion([("Conv", "Foo")], measure=lambda paths: [])


def test_detect_fusion_through_the_real_runner(workdir: Path) -> None:
    from costmeter.predictors.sampling.fusion_detect import detect_fusion

    rule_set = detect_fusion([("Conv", "Relu")], workdir=workdir, repeats=1, min_time_s=0.02)
    (evidence,) = rule_set.evidence
    assert evidence["t1_ms"] > 0 and evidence["t12_ms"] > 0 and evidence["overhead_ms"] > 0
    # each model was measured and kept apart: a 1x1 conv over 16x56x56 (12.8 M MACs) costs far
    # more than a ReLU over the same 50k values (a swapped or shared median would not)
    assert evidence["t1_ms"] > 3 * evidence["t2_ms"], evidence
    # whatever the timing decided, the stored rules split a Conv->Relu chain accordingly
    chain = chain_model([("Conv", {"kernel": 1}), ("Relu", {})], (1, 16, 56, 56))
    split = [k.unit_types for k in fuse(load_graph(chain), rule_set).kernels]
    assert split == ([["Conv", "Relu"]] if evidence["fused"] else [["Conv"], ["Relu"]])
    assert read_rules(rules_path(workdir, "cpu", "onnxruntime")) == rule_set


# ------------------------------------------------------------------------ blocks (squeeze-excite)
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_every_squeeze_excite_is_one_se_kernel_that_its_micro_benchmark_rebuilds(
        zoo_onnx: dict[str, Path], name: str) -> None:
    from costmeter.models import zoo
    from costmeter.models.layers import SqueezeExcite
    from costmeter.predictors.kernels.features import kernel_features
    from costmeter.predictors.sampling.configs import config_from_kernel

    blocks = sum(isinstance(m, SqueezeExcite) for m in zoo.build_zoo_model(name).modules())
    graph = load_graph(zoo_onnx[name])
    grouped = fuse(graph, "onnxruntime")
    pieces = fuse(graph, replace(builtin_rules("onnxruntime"), blocks=()))
    se = [k for k in grouped.kernels if k.kernel_type == "se"]
    assert blocks > 0 and len(se) == blocks
    holder = {op.index: k.index for k in pieces.kernels for op in k.ops}
    merged = [{holder[op.index] for op in k.ops} for k in se]  # the pieces each block took whole
    for kernel, taken in zip(se, merged):
        assert 4 <= len(taken) <= 5  # pool, conv(+act), [act], conv+gate, Mul
        assert {op.index for op in kernel.ops} == \
            {op.index for k in pieces.kernels if k.index in taken for op in k.ops}
    assert len(pieces.kernels) - len(grouped.kernels) == sum(len(t) - 1 for t in merged)
    assert [k.index for k in grouped.kernels] == list(range(len(grouped.kernels)))
    assert sorted(op.index for k in grouped.kernels for op in k.ops) == \
        sorted(op.index for k in pieces.kernels for op in k.ops)  # nothing dropped
    assert not [k for k in grouped.kernels if k.unit_types == ["Mul"]]
    for kernel in se:
        assert kernel.unit_types[0] == "GlobalAveragePool" and kernel.unit_types[-1] == "Mul"
        assert kernel.outputs[0].shape == kernel.inputs[0].shape  # the block keeps its input's shape
        config = config_from_kernel(kernel)
        assert config is not None and config.kernel_type == "se"
        rebuilt = [k for k in fuse(load_graph(config.build()), "onnxruntime").kernels
                   if k.kernel_type != "constant"]
        assert [k.kernel_type for k in rebuilt] == ["se"]
        assert kernel_features(rebuilt[0]) == kernel_features(kernel)


def test_a_mul_by_a_gate_that_is_not_an_se_block_stays_an_elementwise_kernel() -> None:
    builder = GraphBuilder("notse")
    x = builder.input((1, 16, 8, 8), "x")
    pooled, shape = builder.apply("GlobalAveragePool", x, (1, 16, 8, 8))
    gate, shape = builder.apply("Sigmoid", pooled, shape)  # no 1x1 convs in between
    out = builder.node("Mul", [x, gate])
    kernels = fuse(load_graph(builder.model([(out, (1, 16, 8, 8))])), "onnxruntime").kernels
    assert "se" not in {k.kernel_type for k in kernels}
    assert {"global_pool", "elementwise"} <= {k.kernel_type for k in kernels}


def test_block_patterns_are_validated_and_kept_with_the_rule_set() -> None:
    with pytest.raises(ConfigError, match="unknown block pattern"):
        RuleSet(runtime="onnxruntime", rules=(), blocks=("transformer",))
    rules = builtin_rules("onnxruntime")
    assert rules.blocks == ("se",)
    assert RuleSet.from_dict(rules.to_dict()).blocks == ("se",)
    assert "blocks" not in replace(rules, blocks=()).to_dict()  # older rule files keep their digest


def test_onnx_runtime_runs_an_se_blocks_mul_off_the_blocked_layout(tmp_path: Path) -> None:
    """Why the block is priced whole: in its micro-benchmark, as in a network, ONNX Runtime
    converts the block's input out of NCHWc for the per-channel Mul and the product back."""
    import onnx
    import onnxruntime as ort

    from costmeter.models.onnx.microbench import context_chain

    model, _ = context_chain([("SE", {"c_mid": 24, "act": "Relu", "gate": "HardSigmoid"})],
                             (1, 72, 16, 16))
    path = tmp_path / "se.onnx"
    onnx.save(model, path)
    optimized = _ort_optimized(path, tmp_path)
    nodes = list(optimized.graph.node)
    if not any(n.domain == "com.microsoft.nchwc" for n in nodes):
        pytest.skip("this CPU build of ONNX Runtime has no blocked (NCHWc) layout")
    produced_by = {o: n for n in nodes for o in n.output}
    mul = next(n for n in nodes if n.op_type == "Mul")
    assert {produced_by[i].op_type for i in mul.input} == {"ReorderOutput"}
    pool = next(n for n in nodes if n.op_type == "GlobalAveragePool")
    assert pool.domain == ""  # the pool runs on the plain layout too
