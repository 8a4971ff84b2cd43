"""Edge runtimes on CPU (torch.compile, OpenVINO, TVM, LiteRT, ExecuTorch): each one converts and
runs a tiny zoo model for real in a worker process, with its outputs compared against torch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from costmeter.devices.base import get_runtime
from costmeter.errors import UnsupportedError
from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.convert.artifacts import CONVERTED_KINDS, _run_child, converter_problem, host_cpu_fingerprint
from costmeter.harness.runner import Runner, validate
from costmeter.results.schema import Status

EDGE_RUNTIMES = ("torch_compile", "openvino", "tvm", "litert", "executorch")
FAST = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=20, min_time_s=0.05, max_time_s=5,
                      percentiles=(50.0,), max_cv=1000.0)


def _unusable(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (its package or converter missing), or None."""
    adapter = get_runtime("cpu", runtime)
    ok, reason = adapter.is_available()
    if not ok:
        return reason
    if adapter.artifact_kind in CONVERTED_KINDS:
        return converter_problem(adapter.artifact_kind)
    return None


def _config(workdir: Path, model: str, runtime: str, **options: str) -> RunConfig:
    return RunConfig(model=model, device="cpu", runtime=runtime, protocol=FAST, workdir=str(workdir),
                     threads=1, timeout_s=600, options=tuple(options.items()))


@pytest.fixture(scope="module")
def edge_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of tiny_cnn on torch eager, ONNX Runtime and every installed edge runtime."""
    workdir = tmp_path_factory.mktemp("edge")
    runtimes = ["torch", "onnxruntime"] + [r for r in EDGE_RUNTIMES if _unusable(r) is None]
    jobs = validate([_config(workdir, "tiny_cnn", r) for r in runtimes])
    results = Runner(None, workdir).run(jobs)
    return {r.key.runtime: r for r in results}


@pytest.mark.edge
@pytest.mark.slow
@pytest.mark.parametrize("runtime", EDGE_RUNTIMES)
def test_runtime_runs_tiny_cnn_and_matches_torch(runtime: str, edge_results: dict[str, Any]) -> None:
    why = _unusable(runtime)
    if why:
        pytest.skip(why)
    result = edge_results[runtime]
    assert result.status is Status.OK, result.error
    assert result.measurement.count >= FAST.min_count
    assert result.extra["parity_ok"], result.extra
    assert result.extra["max_abs_diff"] < 1e-4
    assert result.extra["prepare_s"] > 0  # preparation recorded apart from latency
    if runtime == "tvm":
        assert "llvm" in result.extra["target"] and result.extra["tuning_trials"] == 0
    if runtime == "openvino":
        assert result.extra["openvino_inference_precision"] == "f32"
    if runtime == "torch_compile":
        assert result.extra["compile_s"] > 0


@pytest.mark.edge
@pytest.mark.slow
def test_runtime_all_table_marks_fastest_valid_and_speedup(
        edge_results: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.cli import render

    results = list(edge_results.values())
    comparison = render.runtime_comparison(results)
    assert sum(1 for c in comparison.values() if c.get("fastest")) == 1
    torch_index = [i for i, r in enumerate(results) if r.key.runtime == "torch"][0]
    assert comparison[torch_index]["speedup_vs_torch"] == pytest.approx(1.0)
    monkeypatch.setenv("COLUMNS", "400")
    render.print_results(results, (50.0,), wide=True)
    text = capsys.readouterr().out
    assert "× torch" in text and "prepare s" in text
    assert re.search(r"\w \*", text), text


@pytest.mark.edge
def test_openvino_precision_is_an_explicit_recorded_setting(tmp_path: Path) -> None:
    why = _unusable("openvino")
    if why:
        pytest.skip(why)
    import numpy as np
    import torch

    from costmeter.devices.base import Artifact, SessionOptions

    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    x = np.random.default_rng(0).standard_normal((1, 16), dtype=np.float32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"])
    adapter = get_runtime("cpu", "openvino")
    session = adapter.prepare(Artifact("onnx", {"x": x}, str(path)), SessionOptions(threads=1))
    assert session.info()["openvino_inference_precision"] == "f32"
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(session.outputs()[0] - expected).max() < 1e-5
    session.close()
    plugin = adapter.prepare(Artifact("onnx", {"x": x}, str(path)),
                             SessionOptions(options=(("precision", "default"),)))
    info = plugin.info()
    assert info["openvino_precision_option"] == "default"
    assert info["openvino_inference_precision"] in ("f32", "bf16", "f16")


@pytest.mark.edge
@pytest.mark.slow
def test_model_the_converter_rejects_is_unsupported_and_the_run_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    why = _unusable("executorch")
    if why:
        pytest.skip(why)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "branchy_models.py").write_text(textwrap.dedent('''
        import torch

        class Branchy(torch.nn.Module):
            def forward(self, x):
                if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                    return x * 2
                return x - 1

        def branchy():
            return Branchy().eval(), torch.ones(1, 4)
    '''))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")]))
    configs = [_config(tmp_path, "branchy_models:branchy", "executorch"),
               _config(tmp_path, "branchy_models:branchy", "torch")]
    results = Runner(None, tmp_path).run(validate(configs))
    assert results[0].status is Status.UNSUPPORTED
    assert "converter" in results[0].error and "\n" not in results[0].error
    assert results[1].status is Status.OK
    assert not list((tmp_path / "cache" / "pte").glob("*.pte"))  # nothing half-written


@pytest.mark.edge
@pytest.mark.slow
def test_tvm_runs_the_transformer_encoder(tmp_path: Path) -> None:
    """bert_tiny's exported ONNX has float64 scalars from shape arithmetic that TVM's ONNX importer
    rejects; the converter then imports the torch.export program instead."""
    why = _unusable("tvm")
    if why:
        pytest.skip(why)
    import numpy as np

    from costmeter.devices.base import Artifact, SessionOptions
    from costmeter.harness.convert.artifacts import convert
    from costmeter.models.source import resolve_model
    from costmeter.harness.runner import torch_reference

    source = resolve_model("bert_tiny")
    converted = convert("tvm", source, tmp_path, 1)
    assert converted.meta["tvm_frontend"] in ("onnx", "torch.export")
    inputs = source.example_inputs(1)
    np.savez(tmp_path / "inputs.npz", **inputs)
    session = get_runtime("cpu", "tvm").prepare(Artifact("tvm", inputs, str(converted.path)), SessionOptions(threads=1))
    got = session.outputs()
    expected = torch_reference(source, str(tmp_path / "inputs.npz"))
    assert len(got) == len(expected) == 2
    assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) < 1e-4


def test_a_converter_that_dies_gives_unsupported_with_the_signal(tmp_path: Path) -> None:
    def crashing(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs["stdout"].write(b"Fatal Python error: Segmentation fault\n")
        return subprocess.CompletedProcess(argv, -11)

    with pytest.raises(UnsupportedError, match=r"died \(signal 11\).*Segmentation fault"):
        _run_child({"kind": "tvm"}, tmp_path / "out.tvm", sys.executable, crashing)


def test_runtime_all_lists_the_installed_runtimes_whose_converter_is_here() -> None:
    from costmeter.cli.run_cmd import _runtimes

    names = _runtimes("all", ["cpu"], executors=None)
    assert {"torch", "onnxruntime"} <= set(names)
    for runtime in EDGE_RUNTIMES:
        assert (runtime in names) == (_unusable(runtime) is None)
    assert _runtimes("torch,tvm", ["cpu"], executors=None) == ["torch", "tvm"]


def test_converted_artifacts_are_keyed_by_model_batch_and_target() -> None:
    fingerprint = host_cpu_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", fingerprint)
    assert host_cpu_fingerprint() == fingerprint


@pytest.mark.edge
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COSTMETER_TEST_TVM_TUNING"),
                    reason="MetaSchedule tuning takes minutes; set COSTMETER_TEST_TVM_TUNING=1 to run it")
def test_tvm_tuning_is_cached_and_its_time_reported(tmp_path: Path) -> None:
    why = _unusable("tvm")
    if why:
        pytest.skip(why)
    config = _config(tmp_path, "tiny_mlp", "tvm", tuning_trials="4")
    first = Runner(None, tmp_path).run(validate([config]))[0]
    assert first.status is Status.OK, first.error
    assert first.extra["tune_s"] > 0 and not first.extra["tuning_cached"]
    assert first.extra["parity_ok"]
    second = Runner(None, tmp_path).run(validate([config]))[0]
    assert second.extra["tuning_cached"] and second.extra["tune_s"] == first.extra["tune_s"]


INT8_RUNTIMES = ("onnxruntime", "openvino", "executorch", "litert", "torch")


@pytest.fixture(scope="module")
def int8_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tiny_cnn at int8 (random:8 calibration) on every runtime that declares int8, and TVM."""
    from costmeter.harness.quantize.precision import with_precision

    workdir = tmp_path_factory.mktemp("int8")
    runtimes = [r for r in INT8_RUNTIMES + ("tvm",) if _unusable(r) is None]
    configs = [with_precision(_config(workdir, "tiny_cnn", r), "int8", "random:8") for r in runtimes]
    return {r.key.runtime: r for r in Runner(None, workdir).run(validate(configs))}


@pytest.mark.edge
@pytest.mark.slow
@pytest.mark.parametrize("runtime", INT8_RUNTIMES)
def test_int8_runs_quantized_with_recipe_and_fidelity(runtime: str, int8_results: dict[str, Any]) -> None:
    why = _unusable(runtime)
    if why:
        pytest.skip(why)
    result = int8_results[runtime]
    assert result.status is Status.OK, result.error
    extra = result.extra
    assert result.key.dtype == "int8" and dict(result.key.options)["calibration"] == "random:8"
    assert extra["quant_recipe"]["method"] in ("static", "dynamic")
    assert extra["quantize_s"] is not None and extra["quantize_s"] >= 0
    # the compiled model was inspected: int8 ran (torch eager quantizes only nn.Linear: mixed)
    assert extra["precision_compute_share"] > 0, extra.get("precision_evidence")
    expected = "mixed" if runtime == "torch" else "int8"
    assert str(extra["precision_effective"]).startswith(expected), extra.get("precision_evidence")
    assert 0 < extra["fidelity_max_abs_diff"] < 0.5 and extra["fidelity_cosine"] > 0.99
    assert extra["fidelity_top1_agreement"] is not None and extra["fidelity_samples"] == 32
    if runtime != "torch" and extra["quant_recipe"]["method"] == "static":
        assert any("random inputs" in w for w in result.warnings)


@pytest.mark.edge
@pytest.mark.slow
def test_tvm_int8_is_unsupported_with_the_reason(int8_results: dict[str, Any]) -> None:
    if _unusable("tvm"):
        pytest.skip(_unusable("tvm"))
    result = int8_results["tvm"]
    assert result.status is Status.UNSUPPORTED
    assert "dequantize + float32 conv2d" in (result.error or "")


@pytest.mark.edge
def test_an_int8_request_on_a_float_model_is_detected_as_fp32(tmp_path: Path) -> None:
    """The adapter reads ONNX Runtime's optimized graph: a float file asked to run int8 shows
    0 integer ops, which the harness turns into INVALID rather than an int8 label."""
    from costmeter.devices.base import Artifact, SessionOptions
    from costmeter.models.export import export_onnx
    from costmeter.models.source import resolve_model

    source = resolve_model("tiny_cnn")
    path = export_onnx(source, tmp_path)
    session = get_runtime("cpu", "onnxruntime").prepare(
        Artifact("onnx", source.example_inputs(1), str(path)), SessionOptions(threads=1, options=(("precision", "int8"),)))
    info = session.info()
    session.close()
    assert info["precision_compute_share"] == 0.0
    assert info["ort_compute_ops"] and all(op in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul")
                                           for op in info["ort_compute_ops"])


@pytest.mark.edge
@pytest.mark.slow
def test_openvino_bf16_reports_the_precision_it_ran(tmp_path: Path) -> None:
    if _unusable("openvino"):
        pytest.skip(_unusable("openvino"))
    from costmeter.harness.quantize.precision import with_precision

    config = with_precision(_config(tmp_path, "tiny_cnn", "openvino"), "bf16", None)
    result = Runner(None, tmp_path).run(validate([config]))[0]
    assert result.status is Status.OK, result.error
    census = result.extra["openvino_compute_precisions"]
    assert sum(census.values()) >= 3  # tiny_cnn's convs and its classifier
    share = result.extra["precision_compute_share"]
    assert share == census.get("bf16", 0) / sum(census.values())
    assert result.extra["precision_effective"] in ("bf16", "fp32") or result.extra["precision_effective"].startswith("mixed")
    assert result.extra["fidelity_max_abs_diff"] < 0.1
