"""Kernel configs: rebuilt from real kernels, sampled from a prior, re-sampled around errors,
measured (fake and real runner), saved and loaded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.features import kernel_features
from costmeter.predictors.graph import load_graph
from costmeter.predictors.kernel_rules import builtin_rules
from costmeter.predictors.kernel_samples import (
    FOLDED_LATENCY_MS,
    MIN_KERNEL_MS,
    KernelSamples,
    measure_kernels,
)
from costmeter.predictors.kernels import fuse
from costmeter.predictors.microbench import chain_model
from costmeter.predictors.sampling import (
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


def _fake_measure(latency_by_type: dict[str, float], overhead_ms: float) -> Any:
    calls: list[list[Path]] = []

    def measure(paths: list[Path]) -> list[float]:
        calls.append(list(paths))
        return [overhead_ms if p.name.startswith("overhead") else
                latency_by_type[p.name.split("-")[0]] for p in paths]

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_measure_kernels_subtracts_overhead_and_reports_split_configs(tmp_path: Path) -> None:
    good = [make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8}), ("Relu", {})]),
            make_config("activation", (1, 8, 8, 8), [("Sigmoid", {})])]
    # SiLU after a conv is its own kernel on ONNX Runtime: this config cannot be one conv kernel
    split = make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8}), ("SiLU", {})])
    measure = _fake_measure({"conv": 0.5, "activation": 0.01}, overhead_ms=0.02)
    samples = measure_kernels([*good, split], RULES, workdir=tmp_path, measure=measure)
    assert samples.split == [split]
    assert [r["latency_ms"] for r in samples.rows] == [pytest.approx(0.48), MIN_KERNEL_MS]
    assert sum(p.name.startswith("overhead") for p in measure.calls[0]) >= 2
    tables, latencies = samples.tables(), samples.latencies()
    assert list(tables) == ["activation", "conv"]
    assert list(tables["conv"].index) == [good[0].key] and list(latencies["conv"]) == [pytest.approx(0.48)]
    assert samples.configs() == good


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
    text = path.read_text().replace(",1,cpu,onnxruntime", ",99,cpu,onnxruntime")
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


def test_real_kernels_measured_through_the_runner_into_a_store(workdir: Path) -> None:
    from costmeter.results.store import ResultStore

    configs = [make_config("conv", (1, 8, 16, 16), [("Conv", {"c_out": 16}), ("Relu", {})]),
               make_config("global_pool", (1, 32, 8, 8), [("GlobalAveragePool", {})])]
    with ResultStore(f"sqlite:///{workdir / 'store.db'}") as store:
        samples = measure_kernels(configs, RULES, workdir=workdir, min_time_s=0.02, sink=store)
        stored = store.query(tag="kernels-sample")
    assert [r["kernel_type"] for r in samples.rows] == ["conv", "global_pool"]
    assert all(r["raw_ms"] > 0 and r["latency_ms"] >= MIN_KERNEL_MS for r in samples.rows)
    assert all(r["overhead_ms"] < r["raw_ms"] for r in samples.rows[:1])
    assert len(stored) == 5 and set(stored["status"]) == {"ok"}  # 2 kernels + 3 overhead runs


def test_sample_kernels_measures_resamples_and_extends_the_saved_samples(tmp_path: Path) -> None:
    from costmeter.predictors.kernel_prior import sample_kernels
    from costmeter.predictors.kernel_samples import samples_path

    graphs = [fuse(load_graph(_mobile_block()), RULES)]
    measured: list[str] = []

    def measure(paths: list[Path]) -> list[float]:
        measured.extend(p.name for p in paths if not p.name.startswith("overhead"))
        # latency from the file's content hash: irregular, so the forests miss some kernels
        return [0.01 if p.name.startswith("overhead") else 0.05 + int(p.stem[-4:], 16) / 65536
                for p in paths]

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


def test_a_second_round_keeps_the_lower_latency(tmp_path: Path) -> None:
    configs = [make_config("dwconv", (1, 8, 8, 8), [("DWConv", {"kernel": 3})]),
               make_config("conv", (1, 8, 8, 8), [("Conv", {"c_out": 8})])]
    first = measure_kernels(configs, RULES, workdir=tmp_path,
                            measure=_fake_measure({"dwconv": 0.3, "conv": 0.5}, 0.01))
    second = measure_kernels(configs, RULES, workdir=tmp_path,
                             measure=_fake_measure({"dwconv": 0.2, "conv": 0.9}, 0.01))
    first.merge_lower(second)
    assert [(r["kernel_type"], r["latency_ms"], r["rounds"]) for r in first.rows] == [
        ("dwconv", pytest.approx(0.19), 2), ("conv", pytest.approx(0.49), 2)]
