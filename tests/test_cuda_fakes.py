"""The CUDA adapters without a GPU: the throttle guard, the torch CUDA session (CUDA
events, graphs, L2 flush, precision, memory) on a fake ``torch.cuda``, the protocol end to end, and
ONNX Runtime on cuda with a fake onnxruntime."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.cuda.fake import FakeCudaTorch, FakeNvml
from costmeter.devices.cuda.guard import ThrottleGuard
from costmeter.devices.cuda.nvml import NvmlDevice
from costmeter.devices.cuda.onnxruntime_cuda import OnnxRuntimeCUDA
from costmeter.devices.cuda.torch_cuda import (
    TorchCompileCUDARuntime,
    TorchCUDARuntime,
    flush_size_bytes,
)
from costmeter.devices.energy.nvml import NvmlEnergyMeter
from costmeter.errors import ConfigError, UnavailableError, UnsupportedError
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.protocol import judge, sample
from fakes_cuda import FakeOrt

HW_THERMAL = 0x40
IDLE = 0x1


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def artifact(module: torch.nn.Module | None = None) -> Artifact:
    rng = np.random.default_rng(0)
    return Artifact(kind="torch", inputs={"x": rng.standard_normal((2, 8)).astype(np.float32)},
                    module=module if module is not None else tiny_model())


def options(**opts: str) -> SessionOptions:
    return SessionOptions(device_index=0, options=tuple(sorted(opts.items())))


def reference_output(art: Artifact) -> np.ndarray:
    with torch.inference_mode():
        return copy.deepcopy(art.module)(torch.from_numpy(art.inputs["x"])).numpy()


# -------------------------------------------------------------------------------- guard


def test_guard_marks_a_block_throttled_when_either_reading_is() -> None:
    nvml = FakeNvml(throttle_masks=[0, HW_THERMAL], sm_clock_mhz=[1980, 1410])
    guard = ThrottleGuard(NvmlDevice.open(0, nvml=nvml, env={}))
    guard.begin_block()
    health = guard.block_health()
    assert health["throttled"] is True
    assert health["reasons"] == ["hw_thermal_slowdown"]
    assert health["sm_clock_mhz_before"] == 1980 and health["sm_clock_mhz_after"] == 1410
    assert health["temperature_c"] == 45


def test_guard_ignores_idle_and_respects_a_custom_reason_set() -> None:
    guard = ThrottleGuard(NvmlDevice.open(0, nvml=FakeNvml(throttle_masks=[IDLE | 0x4]), env={}))
    guard.begin_block()
    health = guard.block_health()
    assert health["throttled"] is True and health["reasons"] == ["sw_power_cap"]
    assert health["all_reasons"] == ["gpu_idle", "sw_power_cap"]
    lenient = ThrottleGuard(guard.device, throttling_reasons={"hw_thermal_slowdown"})
    lenient.begin_block()
    assert lenient.block_health()["throttled"] is False


def test_guard_without_nvml_reports_not_throttled_and_why() -> None:
    guard = ThrottleGuard(None, "no driver")
    guard.begin_block()
    assert guard.block_health() == {"throttled": False, "reasons": [], "guard": "unavailable: no driver"}


def test_guard_says_when_reasons_are_not_reported() -> None:
    nvml = FakeNvml(unsupported=("nvmlDeviceGetCurrentClocksEventReasons",))
    guard = ThrottleGuard(NvmlDevice.open(0, nvml=nvml, env={}))
    guard.begin_block()
    health = guard.block_health()
    assert health["throttled"] is False and "not reported" in health["guard"]


# -------------------------------------------------------------------------------- availability


def test_cpu_only_torch_is_refused_with_the_build_named() -> None:
    runtime = TorchCUDARuntime(torch_module=FakeCudaTorch(cuda_version=None, torch_version="2.13.0+cpu"))
    assert runtime.is_available() == (
        False, "torch was built without CUDA (torch 2.13.0+cpu); install a CUDA build of torch")


def test_no_visible_device_is_refused() -> None:
    runtime = TorchCUDARuntime(torch_module=FakeCudaTorch(device_count=0))
    assert runtime.is_available() == (False, "no CUDA device visible: torch.cuda.device_count() == 0")
    with pytest.raises(UnavailableError, match="device_count"):
        runtime.prepare(artifact(), options())


def test_the_real_cpu_torch_here_is_refused() -> None:
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    ok, reason = TorchCUDARuntime().is_available()
    assert not ok and reason.startswith("torch was built without CUDA (torch 2.")


def test_torch_compile_needs_triton() -> None:
    fake = FakeCudaTorch()
    assert TorchCompileCUDARuntime(torch_module=fake, find_spec=lambda name: None).is_available()[1].startswith(
        "torch.compile on CUDA needs Triton")
    assert TorchCompileCUDARuntime(torch_module=fake, find_spec=lambda name: object()).is_available() == (True, "")


# -------------------------------------------------------------------------------- torch session


def test_time_block_reads_events_after_synchronizing_and_converts_ms_to_ns() -> None:
    fake = FakeCudaTorch(elapsed_ms=[1.5, 2.0, 0.25])
    session = TorchCUDARuntime(torch_module=fake, nvml=FakeNvml()).prepare(artifact(), options())
    fake.cuda.timeline.clear()
    assert session.time_block(3) == [1_500_000, 2_000_000, 250_000]
    # six event records, then one synchronize, then the reads (the fake refuses reads before it)
    assert fake.cuda.timeline == ["record"] * 6 + ["sync"]
    assert fake.cuda.elapsed_reads == 3
    session.close()


def test_fp32_outputs_match_the_cpu_module() -> None:
    art = artifact()
    expected = reference_output(art)
    session = TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(art, options())
    assert torch.is_inference_mode_enabled()
    (out,) = session.outputs()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    session.close()
    assert not torch.is_inference_mode_enabled()
    with pytest.raises(RuntimeError, match="closed"):
        session.run_once()


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_precision_casts_the_module_and_returns_float32(precision: str, dtype: torch.dtype) -> None:
    art = artifact()
    expected = reference_output(art)
    session = TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(art, options(precision=precision))
    assert {p.dtype for p in art.module.parameters()} == {dtype}
    (out,) = session.outputs()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=5e-2)
    assert session.environment()["precision"] == precision
    session.close()


def test_cuda_graph_is_captured_and_replayed() -> None:
    fake = FakeCudaTorch(elapsed_ms=[1.0])
    art = artifact()
    expected = reference_output(art)
    session = TorchCUDARuntime(torch_module=fake, nvml=FakeNvml()).prepare(art, options(cuda_graph="1"))
    (graph,) = fake.cuda.graphs
    assert graph.captured and graph.replays == 0
    fake.cuda.timeline.clear()
    session.time_block(2)
    assert fake.cuda.timeline == ["record", "replay", "record", "record", "replay", "record", "sync"]
    (out,) = session.outputs()
    assert graph.replays == 3
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    session.close()


def test_a_model_that_cannot_be_captured_is_unsupported() -> None:
    class Flaky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("operation not permitted when stream is capturing")
            return x

    with pytest.raises(UnsupportedError, match="cannot be captured in a CUDA graph"):
        runtime = TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml())
        runtime.prepare(artifact(Flaky()), options(cuda_graph="1"))
    assert not torch.is_inference_mode_enabled()


def test_l2_flush_runs_before_each_start_event_and_is_left_out_of_memory() -> None:
    fake = FakeCudaTorch(max_allocated_bytes=10_000_000, max_reserved_bytes=20_000_000)
    runtime = TorchCUDARuntime(torch_module=fake, nvml=FakeNvml(), l2_flush_bytes=4096)
    session = runtime.prepare(artifact(), options(l2_flush="1"))
    assert session._flush.numel() * 4 == 4096

    class Recorder:
        def zero_(self) -> None:
            fake.cuda.timeline.append("flush")

    session._flush = Recorder()
    fake.cuda.timeline.clear()
    session.time_block(2)
    assert fake.cuda.timeline == ["flush", "record", "record", "flush", "record", "record", "sync"]
    memory = session.memory()
    assert memory["cuda_max_allocated_bytes"] == 10_000_000 - 4096
    assert memory["cuda_max_reserved_bytes"] == 20_000_000 - 4096
    assert session.environment()["l2_flush_bytes"] == 4096
    session.close()


def test_flush_buffer_is_larger_than_l2() -> None:
    assert flush_size_bytes(0) == 256 * 2**20
    assert flush_size_bytes(50 * 2**20) == 256 * 2**20
    assert flush_size_bytes(200 * 2**20) == 400 * 2**20


def test_memory_names_every_figure_and_peaks_are_reset_at_start() -> None:
    fake = FakeCudaTorch(max_allocated_bytes=111, max_reserved_bytes=222)
    nvml = FakeNvml(processes=[(os.getpid(), 333)], memory_used_bytes=444)
    session = TorchCUDARuntime(torch_module=fake, nvml=nvml).prepare(artifact(), options())
    assert fake.cuda.reset_peak_calls == 1
    assert session.memory() == {
        "cuda_max_allocated_bytes": 111,
        "cuda_max_reserved_bytes": 222,
        "nvml_process_used_bytes": 333,
        "nvml_device_used_bytes": 444,
    }
    session.close()
    assert nvml.init_count == 0


def test_without_nvml_latency_and_torch_memory_still_work() -> None:
    fake = FakeCudaTorch(elapsed_ms=[3.0])
    session = TorchCUDARuntime(torch_module=fake, nvml=FakeNvml(init_error=12)).prepare(artifact(), options())
    assert session.time_block(2) == [3_000_000, 3_000_000]
    assert set(session.memory()) == {"cuda_max_allocated_bytes", "cuda_max_reserved_bytes"}
    health = session.block_health()
    assert health["throttled"] is False and "NVML could not start" in health["guard"]
    assert "NVML could not start" in session.environment()["gpu_nvml_unavailable"]
    session.close()


def test_environment_names_the_gpu_and_versions() -> None:
    session = TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(artifact(), options())
    env = session.environment()
    assert env["gpu_name"] == "Fake GPU 80GB" and env["cuda_driver_version"] == "12.4"
    assert env["torch_cuda_version"] == "12.4" and env["cuda_device"] == "cuda:0"
    assert env["gpu_temperature_c"] == 45
    session.close()


def test_gpu_is_found_in_nvml_by_torch_uuid() -> None:
    nvml = FakeNvml(device_count=2, uuids=["GPU-aaa", "GPU-bbb"], name="second")
    session = TorchCUDARuntime(torch_module=FakeCudaTorch(uuid="bbb"), nvml=nvml).prepare(artifact(), options())
    assert session.guard.device is not None and session.guard.device.handle == ("handle", 1)
    session.close()


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"cuda_graph": "yes"}, "cuda_graph must be 0 or 1"),
        ({"threads_per_block": "4"}, "unknown option(s) threads_per_block"),
    ],
)
def test_bad_options_are_config_errors(opts: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(artifact(), options(**opts))
    assert message in str(info.value)


def test_missing_device_index_is_a_config_error() -> None:
    opts = SessionOptions(device_index=3)
    with pytest.raises(ConfigError, match=r"cuda:3 does not exist: 1 CUDA device\(s\) visible"):
        TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(artifact(), opts)


def test_an_onnx_artifact_is_unsupported_by_torch() -> None:
    art = Artifact(kind="onnx", inputs={}, path="m.onnx")
    with pytest.raises(UnsupportedError, match="needs a torch module"):
        TorchCUDARuntime(torch_module=FakeCudaTorch(), nvml=FakeNvml()).prepare(art, options())


def test_torch_compile_compiles_in_prepare_with_the_mode() -> None:
    fake = FakeCudaTorch()
    runtime = TorchCompileCUDARuntime(torch_module=fake, nvml=FakeNvml())
    runtime.prepare(artifact(), options(compile_mode="max-autotune")).close()
    runtime.prepare(artifact(), options()).close()
    assert fake.compile_calls == [{"mode": "max-autotune"}, {}]
    with pytest.raises(ConfigError, match="already uses CUDA graphs"):
        runtime.prepare(artifact(), options(compile_mode="reduce-overhead", cuda_graph="1"))
    with pytest.raises(ConfigError, match="unknown compile_mode"):
        runtime.prepare(artifact(), options(compile_mode="fast"))


# -------------------------------------------------------------------------------- protocol end to end


def test_protocol_counts_throttled_blocks_and_judges_the_run_invalid() -> None:
    # guard readings alternate before/after; blocks 2 and 3 (0-based 1, 2) see thermal slowdown
    masks = [0, 0, 0, HW_THERMAL, HW_THERMAL, 0] + [0] * 100
    fake = FakeCudaTorch(elapsed_ms=[1.0])
    nvml = FakeNvml(throttle_masks=masks, energy_mj=[0, 1_000, 9_000])
    session = TorchCUDARuntime(torch_module=fake, nvml=nvml).prepare(artifact(), options())
    meter = NvmlEnergyMeter(0, nvml=nvml, env={})
    config = ProtocolConfig(warmup_count=1, warmup_s=0.0, min_count=20, min_time_s=0.0, max_time_s=30.0,
                            percentiles=(50.0,), auto_min_count=False, block_size=5, max_throttled_share=0.1)
    outcome = sample(session, config, energy_meter=meter)
    session.close()
    assert outcome.samples_ns == [1_000_000] * 20
    assert outcome.blocks == 4 and outcome.throttled_blocks == 2
    assert [h["throttled"] for h in outcome.health] == [False, True, True, False]
    assert outcome.health[1]["reasons"] == ["hw_thermal_slowdown"]
    assert outcome.energy is not None and outcome.energy.provenance == "counter"
    assert outcome.energy.energy_j == pytest.approx(8.0)
    valid, reasons = judge(outcome.samples_ns, config, outcome.hit_max_time, outcome.blocks, outcome.throttled_blocks)
    assert not valid
    assert any("2 of 4 blocks ran while the device was throttled" in r for r in reasons)


def test_protocol_run_without_throttling_is_valid() -> None:
    fake = FakeCudaTorch(elapsed_ms=[1.0, 1.1, 0.9, 1.05])
    session = TorchCUDARuntime(torch_module=fake, nvml=FakeNvml()).prepare(artifact(), options())
    config = ProtocolConfig(warmup_count=1, warmup_s=0.0, min_count=20, min_time_s=0.0, max_time_s=30.0,
                            percentiles=(50.0,), auto_min_count=False, block_size=5)
    outcome = sample(session, config)
    session.close()
    assert outcome.throttled_blocks == 0
    verdict = judge(outcome.samples_ns, config, outcome.hit_max_time, outcome.blocks, outcome.throttled_blocks)
    assert verdict == (True, [])


# -------------------------------------------------------------------------------- onnxruntime on cuda


def onnx_artifact() -> Artifact:
    return Artifact(kind="onnx", inputs={"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, path="model.onnx")


def test_ort_without_the_cuda_provider_names_the_package() -> None:
    runtime = OnnxRuntimeCUDA(ort_module=FakeOrt(providers=("CPUExecutionProvider",)), nvml=FakeNvml())
    ok, reason = runtime.is_available()
    assert not ok
    assert "has no CUDAExecutionProvider (it has CPUExecutionProvider)" in reason
    assert "pip install onnxruntime-gpu" in reason


def test_ort_with_the_provider_but_no_driver_is_unavailable() -> None:
    assert OnnxRuntimeCUDA(ort_module=FakeOrt(), nvml=FakeNvml()).is_available() == (True, "")
    ok, reason = OnnxRuntimeCUDA(ort_module=FakeOrt(), nvml=FakeNvml(init_error=9)).is_available()
    assert not ok and "no GPU is usable" in reason


def test_the_real_cpu_onnxruntime_here_is_refused() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    ok, reason = OnnxRuntimeCUDA().is_available()
    assert not ok and "onnxruntime-gpu" in reason


def test_ort_binds_on_the_gpu_and_runs_synchronously() -> None:
    ort = FakeOrt()
    nvml = FakeNvml(processes=[(os.getpid(), 777)])
    runtime = OnnxRuntimeCUDA(ort_module=ort, nvml=nvml)
    session = runtime.prepare(onnx_artifact(), SessionOptions(device_index=0, threads=2))
    (fake_session,) = ort.sessions
    assert fake_session.providers == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert fake_session.sess_options.intra_op_num_threads == 2
    assert fake_session.sess_options.graph_optimization_level == 99
    assert session.synchronous is True
    assert fake_session.runs == 1  # one run in prepare
    session.run_once()
    assert fake_session.runs == 2
    (out,) = session.outputs()
    np.testing.assert_array_equal(out, onnx_artifact().inputs["x"] * 2)
    assert session.memory() == {"nvml_process_used_bytes": 777, "nvml_device_used_bytes": 2 * 2**30}
    assert session.block_health()["throttled"] is False
    assert session.environment()["onnxruntime_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session.close()
    assert nvml.init_count == 0


def test_ort_cuda_graph_rebinds_fixed_outputs() -> None:
    ort = FakeOrt()
    session = OnnxRuntimeCUDA(ort_module=ort, nvml=FakeNvml()).prepare(
        onnx_artifact(), SessionOptions(options=(("cuda_graph", "1"),)))
    (fake_session,) = ort.sessions
    assert fake_session.providers[0] == ("CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "1"})
    assert session._binding.rebound == ["output"]
    np.testing.assert_array_equal(session.outputs()[0], onnx_artifact().inputs["x"] * 2)


def test_ort_silent_cpu_fallback_is_refused() -> None:
    with pytest.raises(UnavailableError, match="fell back to CPUExecutionProvider instead of CUDAExecutionProvider"):
        runtime = OnnxRuntimeCUDA(ort_module=FakeOrt(fallback_to_cpu=True), nvml=FakeNvml())
        runtime.prepare(onnx_artifact(), SessionOptions())


def test_ort_tensorrt_when_installed_and_refused_when_not() -> None:
    ort = FakeOrt(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    opts = SessionOptions(options=(("precision", "fp16"), ("provider", "tensorrt")))
    OnnxRuntimeCUDA(ort_module=ort, nvml=FakeNvml()).prepare(onnx_artifact(), opts).close()
    assert ort.sessions[0].providers[0] == ("TensorrtExecutionProvider", {"device_id": "0", "trt_fp16_enable": "1"})
    with pytest.raises(UnavailableError, match="has no TensorrtExecutionProvider"):
        OnnxRuntimeCUDA(ort_module=FakeOrt(), nvml=FakeNvml()).prepare(onnx_artifact(), opts)


@pytest.mark.parametrize(
    "opts,error,message",
    [
        ((("precision", "fp16"),), ConfigError, "needs an fp16 ONNX model"),
        ((("provider", "rocm"),), ConfigError, "unknown provider 'rocm'"),
        ((("l2_flush", "1"),), ConfigError, "unknown option(s) l2_flush"),
        ((("cuda_graph", "on"),), ConfigError, "cuda_graph must be 0 or 1"),
    ],
)
def test_ort_bad_options(opts: tuple[tuple[str, str], ...], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        OnnxRuntimeCUDA(ort_module=FakeOrt(), nvml=FakeNvml()).prepare(onnx_artifact(), SessionOptions(options=opts))
    assert message in str(info.value)


def test_ort_load_failure_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="cannot load model.onnx on cuda:0: bad graph"):
        OnnxRuntimeCUDA(ort_module=FakeOrt(load_error="bad graph\ndetails"), nvml=FakeNvml()).prepare(
            onnx_artifact(), SessionOptions())
