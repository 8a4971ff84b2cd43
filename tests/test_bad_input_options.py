"""Runtime option schemas and the checks validate() makes before anything runs: every runtime
declares its options (agreeing with its adapter), and a bad option, model or batch anywhere in a
run stops the whole run before its first benchmark."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from costmeter.devices import base
from costmeter.devices.options import SCHEMAS, check_options, describe_options, option_specs
from costmeter.errors import ConfigError
from costmeter.harness.config import RunConfig
from costmeter.harness.runner import validate


@pytest.mark.parametrize("kind,name", sorted(base._RUNTIMES))
def test_every_runtime_declares_every_option_its_adapter_reads(kind: str, name: str) -> None:
    declared = option_specs(kind, name)
    adapter = base.get_runtime(kind, name)
    assert set(adapter.option_names) <= set(declared), describe_options(kind, name)
    assert "cpus" in declared  # the harness's own options are valid everywhere


def test_schemas_accept_exactly_what_the_adapters_accept() -> None:
    from costmeter.devices import fake
    from costmeter.devices.cpu import onnxruntime_cpu, openvino_cpu, torch_compile
    from costmeter.devices.cuda import onnxruntime_cuda, torch_cuda

    def choices(kind: str, runtime: str, option: str) -> set[str]:
        return set(SCHEMAS[(kind, runtime)][[s.name for s in SCHEMAS[(kind, runtime)]].index(option)].choices)

    assert choices("cpu", "onnxruntime", "opt_level") == set(onnxruntime_cpu.OPT_LEVELS)
    assert choices("cuda", "onnxruntime", "opt_level") == set(onnxruntime_cuda.OPT_LEVELS)
    assert choices("cuda", "onnxruntime", "provider") == set(onnxruntime_cuda.PROVIDERS)
    assert choices("cpu", "openvino", "precision") == set(openvino_cpu.PRECISIONS)
    assert choices("cpu", "openvino", "hint") == set(openvino_cpu.HINTS)
    assert choices("cpu", "torch_compile", "mode") == set(torch_compile.MODES)
    assert choices("cuda", "torch", "precision") == set(torch_cuda.PRECISIONS)
    assert choices("cuda", "torch_compile", "compile_mode") == set(torch_cuda.COMPILE_MODES)
    assert choices("fake", "fake", "fault") == set(fake.FAULTS)
    from costmeter.devices.base import get_runtime

    for runtime in ("onnxruntime", "torch", "litert", "executorch", "tvm"):  # what --precision sets
        adapter = get_runtime("cpu", runtime)  # and those it explains it cannot run (unsupported results)
        assert choices("cpu", runtime, "precision") == {*adapter.precisions, *getattr(adapter, "precision_unsupported", {})}, runtime


def test_an_unknown_option_is_refused_naming_the_ones_the_runtime_takes() -> None:
    with pytest.raises(ConfigError) as info:
        check_options("cpu", "onnxruntime", {"nosuch": "1", "opt_level": "all"})
    message = str(info.value)
    assert "'nosuch'" in message and "opt_level, inter_op_threads, execution_mode" in message
    with pytest.raises(ConfigError, match="unknown option 'interop_threads' for onnxruntime"):
        check_options("ssh", "onnxruntime", {"interop_threads": "2"})  # an SSH board runs the cpu adapters


@pytest.mark.parametrize("kind,runtime,options,allowed", [
    ("cpu", "onnxruntime", {"opt_level": "bogus"}, "disable|basic|extended|all"),
    ("cpu", "onnxruntime", {"opt_level": "ALL"}, "disable|basic|extended|all"),  # ORT's names are lower case
    ("cpu", "onnxruntime", {"inter_op_threads": "0"}, "[1, 4096]"),
    ("cpu", "onnxruntime", {"inter_op_threads": "2.5"}, "[1, 4096]"),
    ("cpu", "onnxruntime", {"inter_op_threads": "9" * 40}, "[1, 4096]"),
    ("cpu", "torch", {"precision": "int4"}, "fp32|fp16|bf16|int8"),
    ("cpu", "tvm", {"precision": "bf16"}, "fp32|int8"),
    ("cpu", "tvm", {"mcpu": "a b"}, "LLVM CPU name"),
    ("cpu", "tvm", {"tuning_trials": "-1"}, "tuning_trials="),
    ("cuda", "torch", {"cuda_graph": "yes"}, "0|1|true|false"),
    ("fake", "fake", {"latency_us": "inf"}, "latency_us="),
    ("fake", "fake", {"latency_us": "nan"}, "latency_us="),
    ("adb", "litert", {"delegate": "npu"}, "xnnpack|gpu|none"),
    ("cpu", "onnxruntime", {"cpus": "4-"}, "cpus="),
])
def test_a_bad_value_is_refused_naming_the_allowed_ones(kind: str, runtime: str, options: dict[str, str],
                                                       allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_options(kind, runtime, options)
    assert allowed in str(info.value) and "\n" not in str(info.value)


def test_good_values_pass() -> None:
    check_options("cpu", "onnxruntime", {"opt_level": "basic", "inter_op_threads": "2", "cpus": "0-3,5"})
    check_options("cpu", "openvino", {"precision": "BF16", "hint": "Throughput"})  # OpenVINO folds case
    check_options("cuda", "torch_compile", {"precision": "bf16", "cuda_graph": "True", "compile_mode": "default"})
    check_options("fake", "fake", {"latency_us": "20", "jitter": "0", "seed": "7", "fault": "raise"})


def test_a_bad_item_anywhere_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    """validate() checks every config before returning a job: the bad one may come last."""
    good = RunConfig(model="tiny_mlp", runtime="onnxruntime", workdir=str(tmp_path))
    cases = [
        (replace(good, options=(("opt_level", "bogus"),)), "opt_level"),
        (replace(good, model="resnet19"), "resnet18"),
        (replace(good, model="pkg with space:f"), "package.module:function"),
        (replace(good, threads=100_000), "--threads"),
        (replace(good, batch=2**40), "--batch"),
    ]
    for bad, fragment in cases:
        with pytest.raises(ConfigError, match=fragment.replace("+", r"\+")):
            validate([good, replace(good, batch=2), bad])


def test_batches_are_checked_against_inputs_and_free_memory(tmp_path: Path) -> None:
    cfg = RunConfig(model="tiny_mlp", runtime="onnxruntime", workdir=str(tmp_path), batch=1000)
    per_item = 64 * 4  # tiny_mlp: 64 float32 inputs per item
    jobs = validate([cfg], free_memory=lambda: 2 * 1000 * per_item)
    assert jobs[0].input_shape == (1000, 64)
    with pytest.raises(ConfigError, match=r"--batch 1000 needs .* use --batch 999 or less"):
        validate([cfg], free_memory=lambda: 2 * 999 * per_item)
    with pytest.raises(ConfigError, match="free some memory"):
        validate([cfg], free_memory=lambda: 10)
    fake = RunConfig(model="m", device="fake", runtime="fake", workdir=str(tmp_path), batch=10**6)
    with pytest.raises(ConfigError, match="--batch 1000000"):  # artifact-less runtimes too
        validate([fake], free_memory=lambda: 1024)


def test_onnx_inputs_are_checked_before_the_run(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def model(path: Path, dims: list) -> str:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return str(path)

    dynamic = model(tmp_path / "dynamic.onnx", ["N", "F"])
    fixed = model(tmp_path / "fixed.onnx", [4, 8])
    good = RunConfig(model="tiny_mlp", runtime="onnxruntime", workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown dims"):
        validate([good, replace(good, model=dynamic)])
    with pytest.raises(ConfigError, match="fixed batch of 4 .* use --batch 4"):
        validate([replace(good, model=fixed, batch=1)])
    assert validate([replace(good, model=fixed, batch=4)])[0].input_shape == (4, 8)
