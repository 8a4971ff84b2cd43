"""Android over adb: the benchmark_model output parser on fixtures, and the adb transport and
executor checked by the commands they issue (a fake command runner stands in for adb).

The fixtures ``tests/fixtures/benchmark_model_*.txt`` follow the output format documented with
LiteRT/TensorFlow Lite's benchmark tool (``tensorflow/lite/tools/benchmark`` README and the
"Performance measurement" guide): parameter echo, ``Initialized session in X ms.``, one
``count=... avg=... std=...`` line per phase (newer builds add ``p5/median/p95`` and an
``INFO:`` prefix), the ``Inference timings in us`` summary and the memory-footprint lines.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from costmeter.devices.remote.adb import AdbTransport, BenchmarkModelArgs, cpu_mask, parse_adb_serial
from costmeter.devices.remote.benchmark_model import parse_benchmark_model
from costmeter.devices.remote.transport import CommandResult
from costmeter.errors import ConfigError, MeasurementError, UnavailableError
from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.executors.remote import DeviceExecutors, RemoteSettings
from costmeter.harness.executors.adb import AdbExecutor
from costmeter.harness.worker import WorkerJob
from costmeter.results.schema import EnergyProvenance, Status, Validity

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_parses_android_output_with_percentiles_and_peak_memory() -> None:
    report = parse_benchmark_model(_fixture("benchmark_model_android_xnnpack.txt"))
    assert report.inference.count == 368
    assert report.inference.avg_us == pytest.approx(10401.7)
    assert report.inference.std_us == 402 and report.inference.median_us == 10301
    assert report.warmup.count == 47 and report.warmup.first_us == 18412
    assert report.init_ms == pytest.approx(41.207)
    assert report.first_inference_us == 18412 and report.warmup_avg_us == pytest.approx(10712.4)
    assert report.inference_avg_us == pytest.approx(10401.7)
    assert report.model_size_mb == pytest.approx(13.9832)
    assert (report.memory_init_delta_mb, report.memory_overall_delta_mb) == (32.1406, 41.0273)
    assert report.peak_memory_mb == pytest.approx(49.8047)
    assert any("XNNPACK" in line for line in report.delegate_lines)


def test_parses_legacy_output_without_prefix_or_percentiles() -> None:
    report = parse_benchmark_model(_fixture("benchmark_model_legacy.txt"))
    assert report.inference.count == 50 and report.inference.avg_us == pytest.approx(72420.2)
    assert report.inference.median_us is None
    assert report.warmup.count == 7
    assert report.init_ms == pytest.approx(2.874)
    assert report.peak_memory_mb is None and report.memory_overall_delta_mb == pytest.approx(12.8359)


def test_failed_run_gives_the_tools_reason_in_one_line() -> None:
    with pytest.raises(MeasurementError) as info:
        parse_benchmark_model(_fixture("benchmark_model_gpu_failed.txt"))
    assert "Failed to apply GPU delegate" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MeasurementError, match="no run statistics"):
        parse_benchmark_model("STARTING!\nLoaded model x.tflite\n")


class FakeAdb:
    """Records every adb command; answers get-state, getprop and benchmark_model."""

    def __init__(self, output: str, state: str = "device") -> None:
        self.calls: list[list[str]] = []
        self.output = output
        self.state = state

    def __call__(self, argv: list[str], timeout_s: float | None) -> CommandResult:
        self.calls.append(argv)
        if argv[3] == "get-state":
            ok = self.state == "device"
            return CommandResult(0 if ok else 1, self.state + "\n" if ok else "",
                                 "" if ok else f"error: device {self.state}")
        if argv[3] == "shell":
            words = shlex.split(argv[4])
            if words[0] == "getprop":
                return CommandResult(0, {"ro.product.model": "Pixel 8", "ro.product.cpu.abi": "arm64-v8a"}
                                     .get(words[1], "") + "\n", "")
            if any(w.endswith("/benchmark_model") for w in words):
                return CommandResult(0, self.output, "")
        return CommandResult(0, "", "")

    def shell_commands(self) -> list[list[str]]:
        return [shlex.split(c[4]) for c in self.calls if c[3] == "shell"]


def _job(tmp_path: Path, **options: str) -> tuple[WorkerJob, RunConfig]:
    model = tmp_path / "abc-b1.tflite"
    model.write_bytes(b"TFL3")
    config = RunConfig(model="mobilenet_v2", device="adb://R58M123ABC", runtime="litert", threads=4,
                       protocol=ProtocolConfig(warmup_count=10, warmup_s=0.5, min_time_s=2.0, max_time_s=60),
                       options=tuple(options.items()))
    return WorkerJob(config.to_dict(), "tflite", str(model), None, str(tmp_path / "outputs.npz")), config


def test_adb_executor_issues_the_documented_commands(tmp_path: Path) -> None:
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    fake = FakeAdb(_fixture("benchmark_model_android_xnnpack.txt"))
    executor = AdbExecutor(AdbTransport("R58M123ABC", runner=fake), str(binary))
    assert executor.preflight()["properties"]["ro.product.model"] == "Pixel 8"
    job, _ = _job(tmp_path, cpus="4-7")
    outcome = executor(job, 600)
    assert outcome.status == "ok", outcome.error
    assert all(c[:3] == ["adb", "-s", "R58M123ABC"] for c in fake.calls)
    pushes = [c[3:] for c in fake.calls if c[3] == "push"]
    assert pushes == [["push", str(binary), "/data/local/tmp/costmeter/benchmark_model"],
                      ["push", job.artifact_path, "/data/local/tmp/costmeter/abc-b1.tflite"]]
    shells = fake.shell_commands()
    assert ["chmod", "755", "/data/local/tmp/costmeter/benchmark_model"] in shells
    run = next(c for c in shells if "/data/local/tmp/costmeter/benchmark_model" in c and c[0] == "taskset")
    assert run[:2] == ["taskset", "f0"]
    assert "--graph=/data/local/tmp/costmeter/abc-b1.tflite" in run
    assert "--num_threads=4" in run and "--use_xnnpack=true" in run
    assert "--warmup_runs=10" in run and "--min_secs=2" in run and "--max_secs=60" in run
    executor.close()
    assert ["rm", "-rf", "/data/local/tmp/costmeter"] in fake.shell_commands()


def test_gpu_delegate_and_quoting() -> None:
    args = BenchmarkModelArgs(binary="/data/local/tmp/x/benchmark_model", graph="/data/local/tmp/my model.tflite",
                              delegate="gpu")
    assert "--use_gpu=true" in args.argv() and not any("xnnpack" in a for a in args.argv())
    calls: list[list[str]] = []
    transport = AdbTransport("SER", runner=lambda argv, t: calls.append(argv) or CommandResult(0, "", ""))
    transport.run(args.argv())
    assert shlex.split(calls[0][4])[1] == "--graph=/data/local/tmp/my model.tflite"  # one argument on the device
    assert cpu_mask([0, 1]) == "3" and cpu_mask([4, 5, 6, 7]) == "f0"
    with pytest.raises(ConfigError):
        BenchmarkModelArgs(binary="b", graph="g", delegate="npu").argv()


def test_outcome_becomes_the_same_result_type(tmp_path: Path) -> None:
    from costmeter.harness.runner import assemble

    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    fake = FakeAdb(_fixture("benchmark_model_android_xnnpack.txt"))
    settings = RemoteSettings(benchmark_model=str(binary))
    executors = DeviceExecutors(settings, make_transport=lambda device, s: AdbTransport(parse_adb_serial(device),
                                                                                          runner=fake))
    job, config = _job(tmp_path)
    outcome = executors(job, 600)
    base = dict(key=None, run_id="r", tag=None, started_at="t", model_info={})
    result = assemble(config, [outcome], base, {}, job.artifact_path, {})
    assert result.status is Status.OK
    assert result.measurement.all_samples_ns() == [pytest.approx(10401.7e3)]
    assert result.validity is Validity.INVALID  # one mean is not a distribution, and it says so
    assert result.extra["samples_are_means_of_runs"] == 368
    assert result.extra["device_report"]["inference"]["median_us"] == 10301
    assert result.memory.peak_rss_bytes == int(49.8047 * 2**20)
    assert result.energy.provenance is EnergyProvenance.UNAVAILABLE and "RAPL" in result.energy.reason
    assert result.environment["device"]["ro.product.cpu.abi"] == "arm64-v8a"


def test_bad_input_is_reported_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--benchmark-model"):
        AdbExecutor(AdbTransport("SER", runner=FakeAdb("")), None).preflight()
    with pytest.raises(ConfigError, match="not found"):
        AdbExecutor(AdbTransport("SER", runner=FakeAdb("")), str(tmp_path / "missing")).preflight()
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    with pytest.raises(UnavailableError, match="unauthorized") as info:
        AdbExecutor(AdbTransport("SER", runner=FakeAdb("", state="unauthorized")), str(binary)).preflight()
    assert "\n" not in str(info.value)
    failed = AdbExecutor(AdbTransport("SER", runner=FakeAdb(_fixture("benchmark_model_gpu_failed.txt"))),
                         str(binary))(_job(tmp_path, delegate="gpu")[0], 600)
    assert failed.status == "failed" and "GPU delegate" in failed.error
    for bad in ("adb://", "adb://-s", "adb://a b"):
        with pytest.raises(ConfigError):
            parse_adb_serial(bad)


def test_missing_adb_client_names_the_package() -> None:
    def no_adb(argv: list[str], timeout_s: Any) -> CommandResult:
        raise FileNotFoundError(2, "No such file", "adb")

    with pytest.raises(UnavailableError, match="platform-tools"):
        AdbTransport("SER", runner=no_adb).check_device()
