"""Protocols every device adapter implements, and the small explicit registry of runtimes.

Adapters only execute: the harness owns warm-up, timing and statistics. This module imports
nothing from ``harness``, ``results``, ``predictors`` or ``reports``; vendor libraries are
imported inside the adapters, never here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from costmeter.errors import ConfigError, UnavailableError


@dataclass
class Artifact:
    """What a runtime loads: a file on disk (``path``) and/or an in-memory torch module.

    ``kind`` is one of ``torch`` (``module`` set), ``onnx``, ``tflite``, ``pte``.
    ``inputs`` maps input names to numpy arrays, batch dimension included.
    """

    kind: str
    inputs: dict[str, Any]
    path: str | None = None
    module: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionOptions:
    """Execution settings handed to ``Runtime.prepare``; all of them are recorded in the key."""

    threads: int | None = None
    device_index: int = 0
    options: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of a runtime option by name, or ``default``."""
        return dict(self.options).get(name, default)


@runtime_checkable
class Session(Protocol):
    """A prepared model on a device, ready to execute."""

    def run_once(self) -> None:
        """Execute one inference on the prepared inputs (asynchronous devices may return early)."""

    def synchronize(self) -> None:
        """Block until every launched inference has finished (no-op on synchronous devices)."""

    def outputs(self) -> list[Any]:
        """Run once and return the outputs as numpy arrays (for parity checks; not timed)."""

    def close(self) -> None:
        """Release the session's resources."""


# Optional session features, declared by implementing these protocols (the harness checks them
# with isinstance, never by probing attribute names at call sites).
@runtime_checkable
class SynchronousSession(Protocol):
    """``run_once`` returns only when the inference has finished (``synchronous`` is True), so
    ``synchronize`` is not called in the timed loop."""

    synchronous: bool


@runtime_checkable
class BlockTimedSession(Protocol):
    """Times blocks of runs with the device's own clock (CUDA events)."""

    def time_block(self, n: int) -> list[int]:
        """Run ``n`` iterations; per-iteration latency in ns."""


@runtime_checkable
class HealthCheckedSession(Protocol):
    """Reports the device's health (clocks, throttling) after each block of runs."""

    def block_health(self) -> dict[str, Any]:
        """``{"throttled": bool, "reasons": [...], ...}`` for the block just run."""


@runtime_checkable
class MemoryProbe(Protocol):
    """Reports device memory figures (bytes) after sampling."""

    def memory(self) -> dict[str, Any]:
        """Named memory figures in bytes (e.g. ``cuda_max_allocated_bytes``)."""


@runtime_checkable
class EnvironmentProbe(Protocol):
    """Reports the device's environment (driver, clocks) for the result."""

    def environment(self) -> dict[str, Any]:
        """Named environment facts (JSON-ready)."""


@runtime_checkable
class InfoSession(Protocol):
    """Reports what the runtime actually did (e.g. the precision it compiled to)."""

    def info(self) -> dict[str, Any]:
        """Named facts about the prepared session (JSON-ready)."""


@runtime_checkable
class ReinputSession(Protocol):
    """Runs on inputs other than the bound ones (held-out inputs for the fidelity figures of a
    reduced-precision run); called only after timing."""

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs (numpy arrays) of one run on ``inputs`` (same names/shapes as the bound ones)."""


@runtime_checkable
class PrecisionDeclaration(Protocol):
    """A runtime that declares the precisions it runs (fp32 | fp16 | bf16 | int8); it may also
    explain, in ``precision_unsupported``, why it cannot run others."""

    precisions: tuple[str, ...]


@runtime_checkable
class IdlePowerMeter(Protocol):
    """An energy meter that can measure the device's idle power before a run."""

    def idle_power_w(self, seconds: float) -> float | None:
        """Mean power (W) over ``seconds`` of idling, or None when it cannot be read."""


def is_synchronous(session: Any) -> bool:
    """True when the session declares synchronous execution."""
    return isinstance(session, SynchronousSession) and bool(session.synchronous)


@runtime_checkable
class RuntimeDeclaration(Protocol):
    """What every registered runtime declares: name, device kind, artifact, options, and
    whether it is installed. Runtimes that execute in this process are :class:`Runtime`s; a
    runtime that runs in a tool on another device (LiteRT's ``benchmark_model`` over adb) is
    only declared, and its device's executor runs it."""

    name: str
    device_kind: str
    artifact_kind: str
    option_names: tuple[str, ...]

    def is_available(self) -> tuple[bool, str]:
        """(True, "") if usable here; else (False, reason naming the extra to install)."""


@runtime_checkable
class Runtime(RuntimeDeclaration, Protocol):
    """One runtime on one device kind that executes here (e.g. onnxruntime on cpu)."""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> Session:
        """Load ``artifact`` and return a ready session. Raises UnsupportedError for models it rejects."""


@dataclass
class EnergyReading:
    """Energy over a window, as a meter reports it (the harness turns it into a result field)."""

    provenance: str  # "counter" | "integrated-power" | "estimated" | "unavailable"
    energy_j: float | None
    window_s: float
    domains_j: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


@runtime_checkable
class EnergyMeter(Protocol):
    """Reads an energy counter (or integrates power) around a measured window."""

    def is_available(self) -> tuple[bool, str]:
        """(True, "") if the counter can be read; else (False, why not)."""

    def start(self) -> None:
        """Begin a window."""

    def stop(self) -> EnergyReading:
        """End the window and return its energy."""


def flatten_outputs(out: Any) -> list[Any]:
    """Leaves of nested tuples/lists/dicts of model outputs, in order (None leaves dropped)."""
    flat: list[Any] = []
    stack = [out]
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
        elif item is not None:
            flat.append(item)
    return flat


# name -> "module:Class"; adapters are imported only when asked for.
_RUNTIMES: dict[tuple[str, str], str] = {
    ("cpu", "torch"): "costmeter.devices.cpu.torch_eager:TorchCPURuntime",
    ("cpu", "onnxruntime"): "costmeter.devices.cpu.onnxruntime_cpu:OnnxRuntimeCPU",
    ("cpu", "torch_compile"): "costmeter.devices.cpu.torch_compile:TorchCompileCPURuntime",
    ("cpu", "openvino"): "costmeter.devices.cpu.openvino_cpu:OpenVinoCPU",
    ("cpu", "tvm"): "costmeter.devices.cpu.tvm_cpu:TvmCPU",
    ("cpu", "litert"): "costmeter.devices.cpu.litert_cpu:LiteRTCPU",
    ("cpu", "executorch"): "costmeter.devices.cpu.executorch_cpu:ExecuTorchCPU",
    ("adb", "litert"): "costmeter.devices.remote.adb:AdbLiteRTRuntime",
    ("cuda", "torch"): "costmeter.devices.cuda.torch_cuda:TorchCUDARuntime",
    ("cuda", "torch_compile"): "costmeter.devices.cuda.torch_cuda:TorchCompileCUDARuntime",
    ("cuda", "onnxruntime"): "costmeter.devices.cuda.onnxruntime_cuda:OnnxRuntimeCUDA",
    ("fake", "fake"): "costmeter.devices.fake:FakeRuntime",
}


# Device kinds whose runtimes are another kind's, run elsewhere: an SSH board runs the cpu adapters.
_RUNTIME_KIND_OF: dict[str, str] = {"ssh": "cpu"}


def registry_kind(device_kind: str) -> str:
    """The device kind whose adapters serve ``device_kind`` (``ssh`` -> ``cpu``; others: itself)."""
    return _RUNTIME_KIND_OF.get(device_kind, device_kind)


def register_runtime(device_kind: str, name: str, target: str) -> None:
    """Add a runtime adapter (``target`` is ``"module:Class"``) for a device kind."""
    _RUNTIMES[(device_kind, name)] = target


def device_kinds() -> list[str]:
    """Device kinds that have at least one registered runtime."""
    return sorted({k for k, _ in _RUNTIMES})


def runtime_names(device_kind: str) -> list[str]:
    """Runtimes registered for a device kind (installed or not)."""
    device_kind = registry_kind(device_kind)
    return sorted(n for k, n in _RUNTIMES if k == device_kind)


def get_runtime(device_kind: str, name: str, **kwargs: Any) -> RuntimeDeclaration:
    """Instantiate the adapter for ``name`` on ``device_kind``; ConfigError if unknown."""
    device_kind = registry_kind(device_kind)
    target = _RUNTIMES.get((device_kind, name))
    if target is None:
        known = ", ".join(runtime_names(device_kind)) or "none"
        raise ConfigError(
            f"unknown runtime {name!r} for device {device_kind!r}; choose one of: {known}"
        )
    module_name, cls_name = target.split(":")
    cls: Callable[..., RuntimeDeclaration] = getattr(importlib.import_module(module_name), cls_name)
    return cls(**kwargs)


def require_available(runtime: Runtime) -> None:
    """Raise UnavailableError with the adapter's reason if it cannot run here."""
    ok, reason = runtime.is_available()
    if not ok:
        raise UnavailableError(reason)
