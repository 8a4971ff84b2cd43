"""Kernel configs: rebuilt from real kernels, sampled from a prior, re-sampled around errors,
measured (fake and real runner), saved and loaded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION, kernel_features
from costmeter.models.onnx.graph import load_graph
from costmeter.predictors.kernels.rules import builtin_rules
from costmeter.predictors.sampling.measure import (
    FOLDED_LATENCY_MS,
    MIN_KERNEL_MS,
    KernelSamples,
    measure_kernels,
)
from costmeter.predictors.kernels.fuse import fuse
from costmeter.models.onnx.microbench import chain_model
from costmeter.predictors.sampling.configs import (
    KernelConfig,
    adaptive_configs,
    build_prior,
    config_from_kernel,
    make_config,
    sample_configs,
)

RULES = builtin_rules("onnxruntime")


def _mobile_block() -> Any:
    """An inverted-residual-like chain: expand, depthwise with HardSwish, SE scale, project."""
    return chain_model([("Conv", {"c_out": 48, "kernel": 1}), ("Relu", {}),
                        ("DWConv", {"kernel": 5, "stride": 2}), ("HardSwish", {}),
                        ("Mul", {"broadcast": True}), ("Conv", {"c_out": 24, "kernel": 1}),
                        ("Add", {}), ("GlobalAveragePool", {})], (1, 16, 28, 28))


def test_every_rebuildable_kernel_rebuilds_to_identical_features() -> None:
    kernel_graph = fuse(load_graph(_mobile_block()), RULES)
    rebuilt = 0
    for kernel in kernel_graph.kernels:
        config = config_from_kernel(kernel)
        if config is None:
            continue
        (again,) = [k for k in fuse(load_graph(config.build()), RULES).kernels
                    if k.kernel_type != "constant"]
        assert again.kernel_type == kernel.kernel_type
        assert kernel_features(again) == kernel_features(kernel), kernel.name
        rebuilt += 1
    assert rebuilt == len(kernel_graph.kernels) == 5  # conv+relu, dw+hs, mul, conv+add, gap


def test_config_round_trips_through_json_and_keys_are_stable() -> None:
    config = make_config("concat", (1, 8, 4, 4), [("Concat", {"others": [8, 16]}), ("Relu", {})])
    again = KernelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.key == config.key
    assert make_config("conv", (1, 8, 4, 4), [("Conv", {"kernel": 3, "c_out": 8})]).key == \
        make_config("conv", (1, 8, 4, 4), [("Conv", {"c_out": 8, "kernel": 3})]).key


def test_sampling_draws_distinct_configs_within_the_prior() -> None:
    prior = build_prior([fuse(load_graph(_mobile_block()), RULES)])
    assert prior.counts() == {"conv": 2, "dwconv": 1, "elementwise": 1, "global_pool": 1}
    first = sample_configs(prior, {"conv": 6, "dwconv": 4}, seed=3)
    assert first == sample_configs(prior, {"conv": 6, "dwconv": 4}, seed=3)
    assert len({c.key for c in first}) == len(first) == 10
    for config in first:
        params = dict(config.ops[0][1])
        assert params["kernel"] in ({1} if config.kernel_type == "conv" else {5})
        assert params["stride"] in ({1} if config.kernel_type == "conv" else {2})
        assert config.input_shape[1] % 8 == 0
        assert config.input_shape[2] in ({28, 14} if config.kernel_type == "conv" else {28})
    with pytest.raises(ConfigError, match="no softmax kernels"):
        sample_configs(prior, {"softmax": 2})


def test_adaptive_configs_only_around_large_errors() -> None:
    prior = build_prior([fuse(load_graph(_mobile_block()), RULES)])
    configs = sample_configs(prior, {"conv": 4}, seed=0)
    errors = [0.02, -0.25, 0.08, 0.4]
    extra = adaptive_configs(configs, errors, per_point=3, threshold=0.10, seed=1)
    assert len(extra) == 6 and len({c.key for c in extra}) == 6
    assert not {c.key for c in extra} & {c.key for c in configs}
    assert adaptive_configs(configs, [0.0] * 4) == []
    with pytest.raises(ConfigError, match="align"):
        adaptive_configs(configs, [0.5])


def test_adaptive_neighbours_go_to_the_costliest_misses_first() -> None:
    """A cap on re-sampled kernels keeps the neighbours of the misses that cost the most time
    (|error| x latency), not those of the kernel type that happens to come first."""
    prior = build_prior([fuse(load_graph(_mobile_block()), RULES)])
    cheap = sample_configs(prior, {"dwconv": 3}, seed=0)  # listed first, badly predicted
    costly = sample_configs(prior, {"conv": 3}, seed=0)
    configs = cheap + costly
    errors = [0.6, -0.5, 0.4, 0.15, -0.2, 0.12]
    stakes = [0.005, 0.004, 0.006, 0.9, 0.7, 1.1]  # ms: 3-4 us against ~0.1 ms at stake
    capped = adaptive_configs(configs, errors, per_point=2, seed=1, stakes=stakes)[:6]
    assert {c.kernel_type for c in capped} == {"conv"}
    in_order = adaptive_configs(configs, errors, per_point=2, seed=1)
    assert [c.kernel_type for c in in_order[:2]] == ["dwconv", "dwconv"]
    with pytest.raises(ConfigError, match="stakes"):
        adaptive_configs(configs, errors, stakes=[1.0])


def _fake_measure(latency_by_type: dict[str, float], overhead_ms: float,
                  baseline_ms: float = 0.0) -> Any:
    """Groups of files -> medians: a kernel in context costs its latency plus half a baseline per
    boundary tensor (its input and output); a baseline (two context ops) costs ``baseline_ms``."""
    calls: list[list[list[Path]]] = []

    def median(path: Path, boundaries: int) -> float:
        if path.name.startswith("overhead"):
            return overhead_ms
        if path.name.startswith("baseline"):
            return baseline_ms
        kernel_type, _, rest = path.name.partition("-")
        if kernel_type.endswith("_ctx"):
            return latency_by_type[kernel_type[:-4]] + boundaries * (baseline_ms - overhead_ms) / 2 + overhead_ms
        return latency_by_type[kernel_type] + overhead_ms

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        calls.append([list(g) for g in groups])
        return [[median(p, 2) for p in group] for group in groups]

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


@pytest.mark.parametrize("context", [True, False])
def test_measure_kernels_subtracts_baselines_and_reports_split_configs(tmp_path: Path, context: bool) -> None:
    good = [make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8}), ("Relu", {})]),
            make_config("activation", (1, 8, 8, 8), [("Sigmoid", {})]),
            make_config("fc", (1, 64), [("Gemm", {"n": 10})])]
    # SiLU after a conv is its own kernel on ONNX Runtime: this config cannot be one conv kernel
    split = make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8}), ("SiLU", {})])
    measure = _fake_measure({"conv": 0.5, "activation": 0.00001, "fc": 0.1}, overhead_ms=0.02,
                            baseline_ms=0.3)
    samples = measure_kernels([*good, split], RULES, workdir=tmp_path, measure=measure,
                              context=context)
    assert samples.split == [split] and samples.method == ("context" if context else "isolated")
    assert [r["latency_ms"] for r in samples.rows] == [pytest.approx(0.5), MIN_KERNEL_MS,
                                                       pytest.approx(0.1)]
    groups = measure.calls[0]
    assert sum(g == [g[0]] and g[0].name.startswith("overhead") for g in groups) >= 2
    kernel_groups = [g for g in groups if not g[0].name.startswith("overhead")]
    # in context, image kernels are timed with one baseline (input and output shapes agree);
    # the fc kernel on a 2-D tensor is timed alone either way
    assert [len(g) for g in kernel_groups] == ([2, 2, 1] if context else [1, 1, 1])
    if context:
        assert kernel_groups[0][0].name.startswith("conv_ctx-")
        assert samples.rows[0]["baseline_ms"] == pytest.approx(0.3)
    tables, latencies = samples.tables(), samples.latencies()
    assert list(tables) == ["activation", "conv", "fc"]
    assert list(tables["conv"].index) == [good[0].key] and list(latencies["conv"]) == [pytest.approx(0.5)]
    assert samples.configs() == good


def test_context_model_wraps_every_image_input_and_output() -> None:
    from costmeter.predictors.sampling.measure import _fuses_into_edge
    from costmeter.models.onnx.microbench import context_baseline, context_chain

    model, boundary = context_chain([("Mul", {"broadcast": True}), ("Relu", {})], (1, 16, 8, 8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 3 and ops[-1] == "Conv"  # a 1x1 depthwise conv on both inputs, the output
    assert boundary == [(1, 16, 8, 8), (1, 16, 1, 1), (1, 16, 8, 8)]
    assert [n.op_type for n in context_baseline((1, 16, 8, 8)).graph.node] == ["Conv", "Conv"]
    # nothing of the kernel fuses with its context: it is still one elementwise, one activation kernel
    kernels = [k.kernel_type for k in fuse(load_graph(model), RULES).kernels]
    assert kernels.count("elementwise") == 1 and kernels.count("activation") == 1
    # a ReLU would fuse into the conv before it: a max pool goes in between, in the baseline too
    relu = make_config("activation", (1, 16, 8, 8), [("Relu", {})])
    assert _fuses_into_edge(relu, RULES)
    assert not _fuses_into_edge(make_config("activation", (1, 16, 8, 8), [("SiLU", {})]), RULES)
    model, _ = context_chain([("Relu", {})], (1, 16, 8, 8), barrier=True)
    assert [k.kernel_type for k in fuse(load_graph(model), RULES).kernels] == ["dwconv", "pool", "activation", "dwconv"]
    assert [n.op_type for n in context_baseline((1, 16, 8, 8), barrier=True).graph.node] == ["Conv", "MaxPool", "Conv"]


def test_samples_of_two_methods_do_not_mix(tmp_path: Path) -> None:
    config = [make_config("dwconv", (1, 8, 8, 8), [("DWConv", {"kernel": 3})])]
    alone = measure_kernels(config, RULES, workdir=tmp_path, measure=_fake_measure({"dwconv": 0.3}, 0.01),
                            context=False)
    other = [make_config("dwconv", (1, 16, 8, 8), [("DWConv", {"kernel": 3})])]
    in_context = measure_kernels(other, RULES, workdir=tmp_path, measure=_fake_measure({"dwconv": 0.3}, 0.01),
                                 context=True)
    with pytest.raises(ConfigError, match="timed context into samples timed isolated"):
        alone.extend(in_context)


def test_samples_save_load_and_refuse_another_schema(tmp_path: Path) -> None:
    config = make_config("dwconv", (1, 8, 8, 8), [("DWConv", {"kernel": 3})])
    samples = measure_kernels([config], RULES, workdir=tmp_path,
                              measure=_fake_measure({"dwconv": 0.3}, 0.01))
    samples.add_folded([fuse(load_graph(_clip_with_constant_nodes()), RULES)])
    assert samples.summary() == {"dwconv": 1, "constant": 1}  # the two scalars: one feature row
    assert samples.latencies()["constant"].tolist() == [FOLDED_LATENCY_MS]
    path = samples.save(tmp_path / "samples.csv")
    loaded = KernelSamples.load(path)
    assert pd.DataFrame(loaded.rows).equals(pd.DataFrame(samples.rows))  # NaN raw_ms of folded rows
    assert (loaded.device, loaded.runtime) == ("cpu", "onnxruntime")
    text = path.read_text().replace(f",{FEATURE_SCHEMA_VERSION},cpu,onnxruntime", ",99,cpu,onnxruntime")
    path.write_text(text)
    with pytest.raises(StoreError, match="feature schema"):
        KernelSamples.load(path)


def _clip_with_constant_nodes() -> Any:
    """ReLU6 as the legacy exporter writes it: Clip with min/max from Constant nodes."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Constant", [], ["lo"], value=helper.make_tensor("a", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Constant", [], ["hi"], value=helper.make_tensor("b", TensorProto.FLOAT, [], [6.0])),
             helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_real_kernels_measured_in_context_in_a_batch_worker(workdir: Path) -> None:
    configs = [make_config("conv", (1, 8, 16, 16), [("Conv", {"c_out": 16}), ("Relu", {})]),
               make_config("global_pool", (1, 32, 8, 8), [("GlobalAveragePool", {})])]
    samples = measure_kernels(configs, RULES, workdir=workdir, min_time_s=0.02, context=True)
    assert [r["kernel_type"] for r in samples.rows] == ["conv", "global_pool"]
    assert all(r["raw_ms"] > 0 and r["latency_ms"] >= MIN_KERNEL_MS for r in samples.rows)
    # the baselines (context ops and the run call) cost more than an empty run, less than the kernel
    assert all(r["overhead_ms"] < r["baseline_ms"] < r["raw_ms"] for r in samples.rows)


def test_real_kernels_measured_through_the_runner_into_a_store(workdir: Path) -> None:
    from costmeter.predictors.sampling.measure import _runner_measure
    from costmeter.results.store import ResultStore

    configs = [make_config("global_pool", (1, 32, 8, 8), [("GlobalAveragePool", {})])]
    with ResultStore(f"sqlite:///{workdir / 'store.db'}") as store:
        measure = _runner_measure("cpu", "onnxruntime", workdir, 1, 0.02, store, None)
        samples = measure_kernels(configs, RULES, workdir=workdir, measure=measure, context=False)
        stored = store.query(tag="kernels-sample")
    assert samples.rows[0]["raw_ms"] > samples.rows[0]["overhead_ms"] > 0
    assert len(stored) == 3 and set(stored["status"]) == {"ok"}  # the kernel + 2 overhead runs


def test_sample_kernels_measures_resamples_and_extends_the_saved_samples(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.prior import sample_kernels
    from costmeter.predictors.sampling.measure import samples_path

    graphs = [fuse(load_graph(_mobile_block()), RULES)]
    measured: list[str] = []

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        measured.extend(g[0].name for g in groups if not g[0].name.startswith("overhead"))
        # latency from the file's content hash: irregular, so the forests miss some kernels
        return [[0.01 if p.name.startswith(("overhead", "baseline")) else
                 0.05 + int(p.stem[-4:], 16) / 65536 for p in g] for g in groups]

    messages: list[str] = []
    samples = sample_kernels(RULES, workdir=tmp_path, counts={"conv": 12, "dwconv": 12},
                             graphs=graphs, measure=measure, log=messages.append, per_point=1)
    first = len(measured)
    assert samples.summary()["conv"] + samples.summary()["dwconv"] == first > 24
    assert any("adaptive round 1" in m and "neighbours" in m for m in messages)
    assert samples_path(tmp_path, "cpu", "onnxruntime").exists()
    again = sample_kernels(RULES, workdir=tmp_path, counts={"conv": 12, "dwconv": 12},
                           graphs=graphs, measure=measure, adaptive_rounds=0)
    assert len(measured) == first  # nothing measured twice
    assert len(again.rows) == len(samples.rows)
    with pytest.raises(ConfigError, match="timed isolated.*without --context"):
        sample_kernels(RULES, workdir=tmp_path, counts={"conv": 12}, graphs=graphs, measure=measure,
                       context=True)


def test_a_second_round_keeps_the_lower_latency(tmp_path: Path) -> None:
    configs = [make_config("dwconv", (1, 8, 8, 8), [("DWConv", {"kernel": 3})]),
               make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8})])]
    first = measure_kernels(configs, RULES, workdir=tmp_path,
                            measure=_fake_measure({"dwconv": 0.3, "conv": 0.5}, 0.01))
    second = measure_kernels(configs, RULES, workdir=tmp_path,
                             measure=_fake_measure({"dwconv": 0.2, "conv": 0.9}, 0.01))
    first.merge_lower(second)
    assert [(r["kernel_type"], r["latency_ms"], r["rounds"]) for r in first.rows] == [
        ("dwconv", pytest.approx(0.2), 2), ("conv", pytest.approx(0.5), 2)]


def test_batch_chunks_never_cut_a_kernel_from_its_baselines() -> None:
    from costmeter.harness.batch import _chunks, _groups

    entries = [{"key": str(i), "group": i // 3} for i in range(10)]
    assert _chunks(entries, 4) == [(0, 6), (6, 10)]
    assert [[e["key"] for e in g] for g in _groups(entries[:6], 1)] == [["0", "1", "2"], ["3", "4", "5"]]
    plain = [{"key": str(i)} for i in range(5)]
    assert _chunks(plain, 2) == [(0, 2), (2, 4), (4, 5)]
    assert [len(g) for g in _groups(plain, 2)] == [2, 2, 1]


def test_heavy_kernels_in_context_are_also_timed_with_cold_weights(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.measure import MAX_COLD_COPIES, cold_copies

    assert cold_copies(1000) == 0 and cold_copies(64 * 2**20) == 2 and cold_copies(300_000) == MAX_COLD_COPIES
    heavy = make_config("conv", (1, 256, 8, 8), [("Conv", {"c_out": 256, "kernel": 1})])  # 256 KiB of weights
    light = make_config("dwconv", (1, 16, 8, 8), [("DWConv", {"kernel": 3})])
    seen: list[list[Path]] = []

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        seen.extend(groups)
        out = []
        for group in groups:
            kernels = sum(p.name.startswith(("conv_ctx", "dwconv_ctx")) for p in group)
            out.append([0.01 if p.name.startswith("overhead") else 0.3 if p.name.startswith("baseline")
                        else (0.9 if kernels > 1 else 0.5) + 0.3 for p in group])
        return out

    samples = measure_kernels([heavy, light], RULES, workdir=tmp_path, measure=measure, context=True)
    conv, dw = samples.rows
    assert conv["latency_ms"] == pytest.approx(0.5) and conv["cold_ms"] == pytest.approx(0.9)
    assert dw["latency_ms"] == pytest.approx(0.5) and dw["cold_ms"] == pytest.approx(0.5)  # light: cold = warm
    cold_group = next(g for g in seen if sum(p.name.startswith("conv_ctx") for p in g) > 1)
    copies = [p for p in cold_group if p.name.startswith("conv_ctx")]
    assert len(copies) == MAX_COLD_COPIES and len({p.name for p in copies}) == MAX_COLD_COPIES  # own weights each
    assert samples.latencies(cold=True)["conv"].tolist() == [pytest.approx(0.9)]
    alone = measure_kernels([light], RULES, workdir=tmp_path, measure=measure)
    with pytest.raises(ConfigError, match="--context"):
        alone.latencies(cold=True)


def test_samples_timed_by_another_clock_threads_or_pinning_do_not_mix(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.measure import KernelSamples, time_files

    row = {"key": "k", "kernel_type": "conv", "config": "", "features": {}, "raw_ms": 1.0,
           "overhead_ms": 0.0, "baseline_ms": 0.0, "latency_ms": 1.0, "cold_ms": 1.0,
           "source": "measured", "rounds": 1}
    cpu = KernelSamples("cpu", "onnxruntime", [row], method="context", threads=1, cpus="1", clock="thread_cpu")
    path = cpu.save(tmp_path / "s.csv")
    loaded = KernelSamples.load(path)
    assert (loaded.threads, loaded.cpus, loaded.clock) == (1, "1", "thread_cpu")
    for other in (dict(clock="wall"), dict(threads=2), dict(cpus="0")):
        settings = {**dict(threads=1, cpus="1", clock="thread_cpu"), **other}
        new = KernelSamples("cpu", "onnxruntime", [{**row, "key": "j"}], method="context", **settings)
        with pytest.raises(ConfigError, match="use the same --threads and --cpus"):
            KernelSamples.load(path).extend(new)
    with pytest.raises(ConfigError, match="one intra-op thread"):
        time_files([], "cpu", "onnxruntime", 2, None, clock="thread_cpu")
