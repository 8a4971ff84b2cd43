"""Real-GPU checks (marker ``gpu``): skipped with the reason on machines without an NVIDIA GPU and a
CUDA build of torch. Run them with ``python -m pytest -m gpu`` (benchmarks/gpu_check.sh does)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from costmeter.devices.base import Artifact, SessionOptions


def _why_no_gpu() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    if torch.cuda.device_count() == 0:
        return "no CUDA device visible: torch.cuda.device_count() == 0"
    return ""


NO_GPU = _why_no_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(NO_GPU), reason=NO_GPU or "GPU present")]


def small_cnn():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()


def cnn_artifact() -> Artifact:
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    return Artifact(kind="torch", inputs={"x": x}, module=small_cnn())


def cpu_reference(art: Artifact) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return small_cnn()(torch.from_numpy(art.inputs["x"])).numpy()


@pytest.mark.parametrize(
    "opts,tolerance",
    [
        ({}, 1e-3),
        ({"precision": "fp16"}, 5e-2),
        ({"precision": "bf16"}, 1e-1),
        ({"cuda_graph": "1"}, 1e-3),
        ({"l2_flush": "1", "cuda_graph": "1", "precision": "fp16"}, 5e-2),
    ],
)
def test_torch_cuda_session_times_runs_and_matches_cpu(opts: dict[str, str], tolerance: float) -> None:
    from costmeter.devices.cuda.torch_cuda import TorchCUDARuntime

    runtime = TorchCUDARuntime()
    assert runtime.is_available() == (True, "")
    art = cnn_artifact()
    expected = cpu_reference(art)
    session = runtime.prepare(art, SessionOptions(options=tuple(sorted(opts.items()))))
    try:
        samples = session.time_block(20)
        assert len(samples) == 20 and all(s > 0 for s in samples)
        health = session.block_health()
        assert isinstance(health["throttled"], bool)
        (out,) = session.outputs()
        np.testing.assert_allclose(out, expected, atol=tolerance, rtol=tolerance)
        memory = session.memory()
        assert memory["cuda_max_allocated_bytes"] > 0
        assert memory["cuda_max_reserved_bytes"] >= memory["cuda_max_allocated_bytes"]
        env = session.environment()
        assert env.get("gpu_name") or env.get("gpu_nvml_unavailable")
    finally:
        session.close()


def test_event_times_agree_with_the_host_clock_for_a_long_kernel() -> None:
    import torch

    from costmeter.devices.cuda.torch_cuda import TorchCUDARuntime

    class MatMul(torch.nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return a @ a

    a = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    session = TorchCUDARuntime().prepare(Artifact(kind="torch", inputs={"a": a}, module=MatMul()), SessionOptions())
    try:
        device_ns = statistics.median(session.time_block(20))
        host = []
        for _ in range(20):
            t0 = time.perf_counter_ns()
            session.run_once()
            session.synchronize()
            host.append(time.perf_counter_ns() - t0)
        host_ns = statistics.median(host)
        assert 0.5 < device_ns / host_ns <= 1.2, (device_ns, host_ns)
    finally:
        session.close()


def test_protocol_samples_a_real_session() -> None:
    from costmeter.devices.cuda.torch_cuda import TorchCUDARuntime
    from costmeter.devices.energy.nvml import NvmlEnergyMeter
    from costmeter.harness.config import ProtocolConfig
    from costmeter.harness.protocol import sample

    session = TorchCUDARuntime().prepare(cnn_artifact(), SessionOptions())
    meter = NvmlEnergyMeter(0)
    config = ProtocolConfig(warmup_count=5, warmup_s=0.1, min_count=50, min_time_s=0.3, max_time_s=10,
                            percentiles=(50.0,), block_size=10)
    try:
        outcome = sample(session, config, energy_meter=meter if meter.is_available()[0] else None)
    finally:
        session.close()
    assert len(outcome.samples_ns) >= 50 and outcome.blocks >= 5
    assert len(outcome.health) == outcome.blocks
    if outcome.energy is not None:
        assert outcome.energy.provenance in ("counter", "integrated-power")
        assert outcome.energy.energy_j is not None and outcome.energy.energy_j > 0


def test_nvml_energy_and_idle_power_are_plausible() -> None:
    import torch

    from costmeter.devices.energy.nvml import NvmlEnergyMeter

    meter = NvmlEnergyMeter(0)
    ok, reason = meter.is_available()
    if not ok:
        pytest.skip(reason)
    idle_w = meter.idle_power_w(0.5)
    assert idle_w is not None and 1.0 < idle_w < 2000.0, meter.idle_reason
    a = torch.randn(4096, 4096, device="cuda")
    meter.start()
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    reading = meter.stop()
    meter.close()
    assert reading.provenance in ("counter", "integrated-power")
    assert reading.energy_j is not None
    average_w = reading.energy_j / reading.window_s
    assert 1.0 < average_w < 2000.0
    assert reading.window_s >= 1.0 and not any("shorter" in w for w in reading.warnings)


def test_gpu_environment_names_the_gpu() -> None:
    pytest.importorskip("pynvml")
    from costmeter.devices.cuda.nvml import gpu_environment

    env = gpu_environment(0)
    if "gpu_nvml_unavailable" in env:
        pytest.skip(env["gpu_nvml_unavailable"])
    assert env["gpu_name"] and env["gpu_driver_version"] and env["cuda_driver_version"]
    assert env["gpu_sm_clock_mhz"] is not None and env["gpu_temperature_c"] is not None
    assert isinstance(env["gpu_throttle_reasons"], list)


def test_onnxruntime_cuda_matches_torch(tmp_path: Path) -> None:
    import torch

    from costmeter.devices.cuda.onnxruntime_cuda import OnnxRuntimeCUDA

    runtime = OnnxRuntimeCUDA()
    ok, reason = runtime.is_available()
    if not ok:
        pytest.skip(reason)
    art = cnn_artifact()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(small_cnn(), (torch.from_numpy(art.inputs["x"]),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)
    session = runtime.prepare(Artifact(kind="onnx", inputs=art.inputs, path=str(path)), SessionOptions())
    try:
        session.run_once()
        (out,) = session.outputs()
        np.testing.assert_allclose(out, cpu_reference(art), atol=1e-3, rtol=1e-3)
        assert "nvml_device_used_bytes" in session.memory() or session.guard.device is None
    finally:
        session.close()


def test_torch_compile_on_cuda() -> None:
    from costmeter.devices.cuda.torch_cuda import TorchCompileCUDARuntime

    runtime = TorchCompileCUDARuntime()
    ok, reason = runtime.is_available()
    if not ok:
        pytest.skip(reason)
    art = cnn_artifact()
    session = runtime.prepare(art, SessionOptions())
    try:
        assert all(s > 0 for s in session.time_block(10))
        (out,) = session.outputs()
        np.testing.assert_allclose(out, cpu_reference(art), atol=1e-3, rtol=1e-3)
    finally:
        session.close()
