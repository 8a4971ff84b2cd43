"""Benchmarks on Android devices: push the ``.tflite`` and the user's ``benchmark_model``, run
it with the run's threads, delegate, CPU mask and protocol, and turn its report into the same
worker outcome a local run gives.

``benchmark_model`` reports aggregates, not per-run latencies: each invocation gives one sample,
the mean of its timed runs (``extra["samples_are_means_of_runs"]`` says over how many). With one
process that is one sample, so the result is judged INVALID for too few samples unless
``--processes`` asks for more invocations: the numbers are shown, never passed off as a
distribution. Energy is unavailable (Android exposes no RAPL counter); the tool's memory figures
are kept (``peak_rss_bytes`` from its peak-footprint monitor when reported).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from costmeter.devices.remote.adb import DEVICE_DIR, AdbTransport, BenchmarkModelArgs
from costmeter.devices.remote.benchmark_model import BenchmarkModelReport, parse_benchmark_model
from costmeter.devices.remote.transport import CommandTimeout
from costmeter.errors import ConfigError, MeasurementError, UnavailableError
from costmeter.harness.worker import WorkerJob, WorkerOutcome

BINARY_NAME = "benchmark_model"
_PROPS = ("ro.product.model", "ro.product.manufacturer", "ro.build.version.release", "ro.product.cpu.abi")


class AdbExecutor:
    """Runs ``.tflite`` jobs on one Android device through ``benchmark_model``."""

    def __init__(self, transport: AdbTransport, benchmark_model: str | None, device_dir: str = DEVICE_DIR) -> None:
        self.transport = transport
        self.benchmark_model = benchmark_model
        self.device_dir = device_dir
        self._binary: str | None = None
        self._pushed: dict[str, str] = {}
        self._props: dict[str, str] | None = None

    def preflight(self) -> dict[str, Any]:
        """Check the binary is given and exists here, and the device is attached and authorized."""
        if not self.benchmark_model:
            raise ConfigError("adb devices need LiteRT's benchmark_model binary for the device's ABI; pass "
                              "--benchmark-model PATH (build it from tensorflow/lite/tools/benchmark or use the "
                              "prebuilt android_aarch64 binary)")
        if not Path(self.benchmark_model).is_file():
            raise ConfigError(f"benchmark_model binary not found at {self.benchmark_model}; check --benchmark-model")
        self.transport.check_device()
        return {"properties": self.properties()}

    def properties(self) -> dict[str, str]:
        """A few ``getprop`` values (model, maker, Android version, ABI), read once."""
        if self._props is None:
            self._props = {}
            for prop in _PROPS:
                result = self.transport.run(["getprop", prop], 30.0)
                self._props[prop] = result.stdout.strip() if result.ok else ""
        return self._props

    def _push_binary(self) -> str:
        if self._binary is None:
            self._mkdir()
            remote = f"{self.device_dir}/{BINARY_NAME}"
            self.transport.put(Path(str(self.benchmark_model)), remote)
            result = self.transport.run(["chmod", "755", remote], 30.0)
            if not result.ok:
                raise UnavailableError(f"cannot make {remote} executable on {self.transport.serial}: "
                                       f"{result.stderr.strip()[:200]}")
            self._binary = remote
        return self._binary

    def _mkdir(self) -> None:
        result = self.transport.run(["mkdir", "-p", self.device_dir], 30.0)
        if not result.ok:
            raise UnavailableError(f"cannot create {self.device_dir} on {self.transport.serial}; check storage")

    def _push_model(self, local: str) -> str:
        if local not in self._pushed:
            self._mkdir()
            remote = f"{self.device_dir}/{Path(local).name}"
            self.transport.put(Path(local), remote)
            self._pushed[local] = remote
        return self._pushed[local]

    def command(self, job: WorkerJob) -> BenchmarkModelArgs:
        """The benchmark_model invocation for ``job`` (binary and model pushed first)."""
        from costmeter.harness.config import RunConfig
        from costmeter.harness.executors.remote import parse_cpus

        if job.artifact_kind != "tflite" or not job.artifact_path:
            raise ConfigError("adb devices run .tflite models only; use --runtime litert")
        config = RunConfig.from_dict(job.config)
        options = dict(config.options)
        protocol = config.protocol
        return BenchmarkModelArgs(
            binary=self._push_binary(), graph=self._push_model(job.artifact_path), threads=config.threads,
            delegate=options.get("delegate", "xnnpack"), warmup_runs=max(1, protocol.warmup_count),
            warmup_min_secs=protocol.warmup_s, num_runs=protocol.target_count(), min_secs=protocol.min_time_s,
            max_secs=protocol.max_time_s, cpus=tuple(parse_cpus(options["cpus"])) if options.get("cpus") else ())

    def __call__(self, job: WorkerJob, timeout_s: float) -> WorkerOutcome:
        """Run the job on the device; a failed outcome (never an exception) when anything breaks."""
        try:
            args = self.command(job)
            result = self.transport.run(args.argv(), timeout_s)
            if not result.ok and "not found" in (result.stderr + result.stdout).lower() and "count=" not in result.stdout:
                return WorkerOutcome("failed", f"benchmark_model could not start on {self.transport.serial}: "
                                               f"{(result.stderr or result.stdout).strip()[:200]}; check --benchmark-model "
                                               "is built for the device's ABI")
            report = parse_benchmark_model(result.stdout + "\n" + result.stderr)
        except CommandTimeout:
            return WorkerOutcome("failed", f"benchmark_model ran past {timeout_s:g} s on {self.transport.serial}; "
                                           "raise --timeout or lower --max-time")
        except (ConfigError, UnavailableError, MeasurementError, OSError) as exc:
            return WorkerOutcome("failed", str(exc))
        return WorkerOutcome("ok", data=outcome_data(report, args, self.properties(), self.transport.serial))

    def close(self) -> None:
        """Remove the pushed files from the device (best effort)."""
        if self._binary is not None or self._pushed:
            try:
                self.transport.run(["rm", "-rf", self.device_dir], 60.0)
            except (UnavailableError, CommandTimeout):
                pass  # an unplugged device keeps its files under /data/local/tmp
        self._binary = None
        self._pushed.clear()


def outcome_data(report: BenchmarkModelReport, args: BenchmarkModelArgs, props: dict[str, str],
                 serial: str) -> dict[str, Any]:
    """The worker-outcome fields for one benchmark_model report (times in ns / s)."""
    run = report.inference
    avg_us = run.avg_us if run.avg_us is not None else report.inference_avg_us
    if avg_us is None:
        raise MeasurementError("benchmark_model reported no average latency; check its output")
    warm = report.warmup
    warm_avg = (warm.avg_us if warm and warm.avg_us is not None else report.warmup_avg_us) or 0.0
    memory: dict[str, Any] = {}
    if report.peak_memory_mb is not None:
        memory["peak_rss_bytes"] = int(report.peak_memory_mb * 2**20)
    return {
        "samples_ns": [int(round(avg_us * 1e3))],
        "warmup_count": warm.count if warm else 0,
        "warmup_s": (warm.count if warm else 0) * warm_avg / 1e6,
        "sampling_s": run.count * avg_us / 1e6,
        "hit_max_time": False,
        "blocks": 0,
        "throttled_blocks": 0,
        "health": [],
        "energy": {"provenance": "unavailable", "energy_j": None, "window_s": run.count * avg_us / 1e6,
                   "domains_j": {}, "reason": "Android devices expose no RAPL counter over adb", "warnings": []},
        "memory": memory,
        "prepare_session_s": (report.init_ms or 0.0) / 1e3,
        "environment": {"device": {"kind": "android", "serial": serial, **props},
                        "benchmark_model_argv": args.argv()},
        "extra": {"samples_are_means_of_runs": run.count, "device_report": report.to_dict(),
                  "first_inference_us": report.first_inference_us},
    }
