"""Scriptable fakes for the CUDA seams: an NVML module and a ``torch`` with a fake ``torch.cuda``.

:class:`FakeNvml` has the pynvml function names the project calls; tests script what they return
(energy counter values, power samples, clocks, throttle masks) and which ones fail with
NOT_SUPPORTED. :class:`FakeCudaTorch` forwards everything to the real (CPU) torch except
``torch.cuda``, ``torch.version.cuda`` and ``torch.device``: tensors then stay on the CPU while the
session believes it talks to a GPU, so precision casting and outputs are exercised for real.
CUDA events return scripted elapsed times and refuse to be read before a synchronize, as real
ones do.
"""
from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code in ``value``."""

    def __init__(self, value: int, text: str = "") -> None:
        super().__init__(text or f"NVML error {value}")
        self.value = value


class _Script:
    """Values handed out in order; the last one repeats. A callable is called each time."""

    def __init__(self, values: Sequence[Any] | Callable[[], Any]) -> None:
        self._values = values
        self._i = 0
        self._lock = threading.Lock()

    def next(self) -> Any:
        if callable(self._values):
            return self._values()
        with self._lock:
            value = self._values[min(self._i, len(self._values) - 1)]
            self._i += 1
        return value


class FakeNvml:
    """A stand-in for the ``pynvml`` module, for one or more GPUs that share one script.

    ``energy_mj``/``power_mw``/``sm_clock_mhz``/``throttle_masks`` are sequences (consumed in
    order, last value repeated) or zero-argument callables. ``unsupported`` names functions that
    raise NOT_SUPPORTED; ``init_error`` makes ``nvmlInit`` fail with that NVML code.
    """

    NVMLError = FakeNVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(
        self,
        *,
        device_count: int = 1,
        name: str = "Fake GPU 80GB",
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        energy_mj: Sequence[int] | Callable[[], int] = (0,),
        power_mw: Sequence[int] | Callable[[], int] = (100_000,),
        sm_clock_mhz: Sequence[int] | Callable[[], int] = (1980,),
        max_sm_clock_mhz: int = 1980,
        mem_clock_mhz: int = 2619,
        temperature_c: Sequence[int] | Callable[[], int] = (45,),
        throttle_masks: Sequence[int] | Callable[[], int] = (0,),
        memory_total_bytes: int = 80 * 2**30,
        memory_used_bytes: int = 2 * 2**30,
        processes: Sequence[tuple[int, int | None]] = (),
        power_limit_mw: int = 700_000,
        unsupported: Sequence[str] = (),
        init_error: int | None = None,
        uuids: Sequence[str] = (),
    ) -> None:
        self.device_count = device_count
        self._name = name
        self._driver = driver_version
        self._cuda = cuda_driver_version
        self._energy = _Script(energy_mj)
        self._power = _Script(power_mw)
        self._sm = _Script(sm_clock_mhz)
        self._max_sm = max_sm_clock_mhz
        self._mem_clock = mem_clock_mhz
        self._temp = _Script(temperature_c)
        self._masks = _Script(throttle_masks)
        self._mem_total = memory_total_bytes
        self._mem_used = memory_used_bytes
        self.processes = list(processes)
        self._power_limit = power_limit_mw
        self.unsupported = set(unsupported)
        self.init_error = init_error
        self.uuids = list(uuids) or [f"GPU-fake-{i}" for i in range(device_count)]
        self.calls: dict[str, int] = {}
        self.init_count = 0
        self._lock = threading.Lock()

    # -- bookkeeping ------------------------------------------------------------------------

    def _enter(self, fn: str, needs_init: bool = True) -> None:
        with self._lock:
            self.calls[fn] = self.calls.get(fn, 0) + 1
        if needs_init and self.init_count <= 0:
            raise FakeNVMLError(self.NVML_ERROR_UNINITIALIZED, "Uninitialized")
        if fn in self.unsupported:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")

    # -- pynvml functions -------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit", needs_init=False)
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error, "NVML Shared Library Not Found")
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return self.device_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < self.device_count:
            raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND, "Not Found")
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        self._enter("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        if text not in self.uuids:
            raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND, "Not Found")
        return ("handle", self.uuids.index(text))

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName")
        return self._name

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self._driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self._cuda

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        self._enter("nvmlDeviceGetClockInfo")
        return int(self._sm.next()) if clock_type == self.NVML_CLOCK_SM else self._mem_clock

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock_type: int) -> int:
        self._enter("nvmlDeviceGetMaxClockInfo")
        return self._max_sm if clock_type == self.NVML_CLOCK_SM else self._mem_clock

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature")
        return int(self._temp.next())

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons")
        return int(self._masks.next())

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetTotalEnergyConsumption")
        return int(self._energy.next())

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetPowerUsage")
        return int(self._power.next())

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetPowerManagementLimit")
        return self._power_limit

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=self._mem_total, used=self._mem_used, free=self._mem_total - self._mem_used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        self._enter("nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes]


# ------------------------------------------------------------------------------ torch.cuda


class FakeEvent:
    """A CUDA event whose ``elapsed_time`` comes from the fake's script (milliseconds)."""

    def __init__(self, cuda: FakeCuda, enable_timing: bool = False) -> None:
        self._cuda = cuda
        self.enable_timing = enable_timing
        self.recorded_at: int | None = None

    def record(self, stream: Any = None) -> None:
        self._cuda.timeline.append("record")
        self.recorded_at = len(self._cuda.timeline)

    def synchronize(self) -> None:
        self._cuda.synchronize()

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with enable_timing=True")
        if self.recorded_at is None or end.recorded_at is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time")
        if self._cuda.last_sync_at < end.recorded_at:
            raise RuntimeError("elapsed_time read before the end event completed (no synchronize)")
        self._cuda.elapsed_reads += 1
        return float(self._cuda.elapsed_ms.next())


class FakeGraph:
    """``torch.cuda.CUDAGraph``: counts captures and replays."""

    def __init__(self, cuda: FakeCuda) -> None:
        self._cuda = cuda
        self.captured = False
        self.replays = 0

    def replay(self) -> None:
        self._cuda.timeline.append("replay")
        self.replays += 1


class FakeCuda:
    """The ``torch.cuda`` namespace: device count, events, synchronize, memory stats, graphs."""

    def __init__(
        self,
        device_count: int,
        elapsed_ms: Sequence[float] | Callable[[], float],
        max_allocated_bytes: int,
        max_reserved_bytes: int,
        l2_cache_bytes: int,
        device_name: str,
        uuid: str | None,
    ) -> None:
        self._count = device_count
        self.elapsed_ms = _Script(elapsed_ms)
        self.max_allocated = max_allocated_bytes
        self.max_reserved = max_reserved_bytes
        self.l2_cache_bytes = l2_cache_bytes
        self.device_name = device_name
        self.uuid = uuid
        self.timeline: list[str] = []
        self.sync_count = 0
        self.last_sync_at = -1
        self.elapsed_reads = 0
        self.reset_peak_calls = 0
        self.current_device: int | None = None
        self.graphs: list[FakeGraph] = []
        self.Event = lambda enable_timing=False, **_: FakeEvent(self, enable_timing)
        self.CUDAGraph = lambda: self._new_graph()

    def _new_graph(self) -> FakeGraph:
        graph = FakeGraph(self)
        self.graphs.append(graph)
        return graph

    def is_available(self) -> bool:
        return self._count > 0

    def device_count(self) -> int:
        return self._count

    def set_device(self, index: int) -> None:
        self.current_device = index

    def synchronize(self, device: Any = None) -> None:
        self.timeline.append("sync")
        self.sync_count += 1
        self.last_sync_at = len(self.timeline)

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.reset_peak_calls += 1

    def max_memory_allocated(self, device: Any = None) -> int:
        return self.max_allocated

    def max_memory_reserved(self, device: Any = None) -> int:
        return self.max_reserved

    def empty_cache(self) -> None:
        self.timeline.append("empty_cache")

    def get_device_properties(self, index: int) -> Any:
        return SimpleNamespace(name=self.device_name, L2_cache_size=self.l2_cache_bytes, uuid=self.uuid,
                               total_memory=80 * 2**30)

    def current_stream(self, device: Any = None) -> Any:
        return SimpleNamespace(wait_stream=lambda other: None)

    def Stream(self, device: Any = None) -> Any:  # noqa: N802 - torch's name
        return SimpleNamespace(wait_stream=lambda other: None)

    @contextlib.contextmanager
    def stream(self, stream: Any) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def graph(self, graph: FakeGraph, **_: Any) -> Iterator[None]:
        self.timeline.append("capture-begin")
        yield
        graph.captured = True
        self.timeline.append("capture-end")


class FakeCudaTorch:
    """``torch`` with a fake CUDA: ``cuda``/``version.cuda``/``device`` are fake, the rest is the
    real torch (imported here), so tensors and modules work on the CPU."""

    def __init__(
        self,
        *,
        device_count: int = 1,
        cuda_version: str | None = "12.4",
        torch_version: str | None = None,
        elapsed_ms: Sequence[float] | Callable[[], float] = (1.0,),
        max_allocated_bytes: int = 300 * 2**20,
        max_reserved_bytes: int = 512 * 2**20,
        l2_cache_bytes: int = 50 * 2**20,
        device_name: str = "Fake GPU 80GB",
        uuid: str | None = None,
        compile_fn: Callable[..., Any] | None = None,
    ) -> None:
        import torch

        self._real = torch
        self.cuda = FakeCuda(device_count, elapsed_ms, max_allocated_bytes, max_reserved_bytes, l2_cache_bytes,
                             device_name, uuid)
        self.version = SimpleNamespace(cuda=cuda_version)
        self.__version__ = torch_version or torch.__version__
        self.compile_calls: list[dict[str, Any]] = []
        self._compile_fn = compile_fn

    def device(self, spec: Any) -> Any:
        """Every ``cuda:N`` device is the CPU here."""
        return self._real.device("cpu")

    def compile(self, module: Any, **kwargs: Any) -> Any:
        """Records the call; returns the module (or what ``compile_fn`` returns)."""
        self.compile_calls.append(kwargs)
        return self._compile_fn(module, **kwargs) if self._compile_fn else module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
