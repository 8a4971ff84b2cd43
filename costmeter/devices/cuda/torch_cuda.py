"""PyTorch on an NVIDIA GPU: eager (``torch``) and ``torch.compile`` (``torch_compile``).

Timing uses CUDA events recorded on the current stream around each iteration; the block is
synchronized before any elapsed time is read (milliseconds, converted to ns). Options, all part of
the benchmark key:

- ``precision`` = ``fp32`` (default) | ``fp16`` | ``bf16``. The module and its floating-point
  inputs are *cast* (``module.to(dtype)``), not run under autocast: the whole network runs in the
  reduced type, as an fp16 ONNX/TensorRT engine would, and no per-op cast kernels are timed.
  Outputs are returned as float32 for parity checks.
- ``cuda_graph`` = ``0`` | ``1``: capture one forward pass in a CUDA graph after three warm-up passes
  on a side stream, then time ``graph.replay()`` (static inputs and outputs).
- ``l2_flush`` = ``0`` | ``1``: before each timed iteration, zero a buffer of max(256 MiB, 2 x L2)
  on the same stream, outside the events, so every iteration starts with a cold L2 (as Triton's
  ``do_bench`` does). The buffer is left out of the reported torch memory figures.
- ``torch_compile`` adds ``compile_mode`` = ``default`` | ``reduce-overhead`` | ``max-autotune`` |
  ``max-autotune-no-cudagraphs``; compilation happens in ``prepare`` (first call), not in warm-up.

Seams: ``torch_module`` (default ``import torch``) and ``nvml`` (default ``import pynvml``).
"""
from __future__ import annotations

import functools
import importlib.util
import time
from typing import Any, Callable

from costmeter.devices.base import Artifact, SessionOptions, flatten_outputs
from costmeter.devices.cuda.guard import ThrottleGuard
from costmeter.devices.cuda.nvml import NvmlDevice
from costmeter.errors import ConfigError, UnavailableError, UnsupportedError

PRECISIONS: dict[str, str | None] = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MIN_FLUSH_BYTES = 256 * 2**20
GRAPH_WARMUP_RUNS = 3


def cuda_status(torch: Any) -> tuple[bool, str]:
    """Whether this torch can run on a GPU here: (True, "") or (False, which part is missing)."""
    if getattr(getattr(torch, "version", None), "cuda", None) is None:
        return False, (
            f"torch was built without CUDA (torch {torch.__version__}); install a CUDA build of torch"
        )
    count = int(torch.cuda.device_count())
    if count == 0:
        return False, "no CUDA device visible: torch.cuda.device_count() == 0"
    if not torch.cuda.is_available():
        return False, (
            "CUDA devices are listed but not usable: torch.cuda.is_available() is False; check the NVIDIA driver"
        )
    return True, ""


def flush_size_bytes(l2_cache_bytes: int) -> int:
    """Size of the L2 flush buffer (bytes): max(256 MiB, twice the L2 cache), a multiple of 4."""
    return max(MIN_FLUSH_BYTES, 2 * l2_cache_bytes) // 4 * 4


class TorchCUDASession:
    """A module on ``cuda:N`` in inference mode, with device-timed blocks and a throttle guard."""

    def __init__(
        self,
        torch: Any,
        device_index: int,
        run: Callable[[], Any],
        produce_outputs: Callable[[], Any],
        guard: ThrottleGuard,
        flush_buffer: Any = None,
        flush_bytes: int = 0,
        inference_guard: Any = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._torch = torch
        self.device_index = device_index
        self.run_once = run  # bound once: the timed loop pays one call, nothing more
        self._produce_outputs = produce_outputs
        self.guard = guard
        self._flush = flush_buffer
        self._flush_bytes = flush_bytes
        self._inference_guard = inference_guard
        self.details = dict(details or {})
        self._events: tuple[list[Any], list[Any]] = ([], [])

    def synchronize(self) -> None:
        """Wait for every launched kernel on this device (``torch.cuda.synchronize``)."""
        self._torch.cuda.synchronize(self.device_index)

    def time_block(self, n: int) -> list[int]:
        """Run ``n`` iterations, each between two CUDA events; return their device times (ns).

        The L2 flush, when enabled, is enqueued before each start event and so is not timed.
        Throttle state is read before the block (and after it, in :meth:`block_health`)."""
        cuda = self._torch.cuda
        self.guard.begin_block()
        starts, ends = self._block_events(n)
        run = self.run_once
        flush = self._flush
        for i in range(n):
            if flush is not None:
                flush.zero_()
            starts[i].record()
            run()
            ends[i].record()
        cuda.synchronize(self.device_index)
        return [int(round(starts[i].elapsed_time(ends[i]) * 1e6)) for i in range(n)]

    def block_health(self) -> dict[str, Any]:
        """SM clock, temperature and throttle reasons around the last block (see ThrottleGuard)."""
        return self.guard.block_health()

    def memory(self) -> dict[str, int]:
        """Memory figures named as in the result schema (bytes): torch's peak allocated and
        reserved since the session started (L2 flush buffer excluded), NVML's memory used by this
        process and by the whole device. Figures NVML cannot give are left out."""
        cuda = self._torch.cuda
        figures = {
            "cuda_max_allocated_bytes": max(0, int(cuda.max_memory_allocated(self.device_index)) - self._flush_bytes),
            "cuda_max_reserved_bytes": max(0, int(cuda.max_memory_reserved(self.device_index)) - self._flush_bytes),
        }
        if self.guard.device is not None:
            figures.update(self.guard.device.memory_figures())
        return figures

    def environment(self) -> dict[str, Any]:
        """GPU name, driver, CUDA versions, clocks and temperature now, plus session details."""
        env: dict[str, Any] = {
            "torch_version": str(self._torch.__version__),
            "torch_cuda_version": self._torch.version.cuda,
            "cuda_device": f"cuda:{self.device_index}",
        }
        if self.guard.device is not None:
            env.update(self.guard.device.info())
        else:
            env["gpu_nvml_unavailable"] = self.guard.unavailable_reason
        env.update(self.details)
        return env

    def outputs(self) -> list[Any]:
        """Run once and return the outputs as numpy arrays (floating outputs as float32)."""
        out = self._produce_outputs()
        self.synchronize()
        return [_to_numpy(t) for t in flatten_outputs(out)]

    def close(self) -> None:
        """Leave inference mode, drop the model and buffers, release NVML."""
        if self._inference_guard is not None:
            self._inference_guard.__exit__(None, None, None)
            self._inference_guard = None
        self.run_once = _closed
        self._produce_outputs = _closed
        self._flush = None
        self._events = ([], [])
        self.guard.close()
        self._torch.cuda.empty_cache()

    def _block_events(self, n: int) -> tuple[list[Any], list[Any]]:
        starts, ends = self._events
        while len(starts) < n:
            starts.append(self._torch.cuda.Event(enable_timing=True))
            ends.append(self._torch.cuda.Event(enable_timing=True))
        return starts, ends


class TorchCUDARuntime:
    """Runtime ``torch`` on ``cuda``: eager execution in inference mode on ``cuda:N``."""

    name = "torch"
    device_kind = "cuda"
    artifact_kind = "torch"
    option_names: tuple[str, ...] = ("precision", "cuda_graph", "l2_flush")

    def __init__(self, torch_module: Any = None, nvml: Any = None, l2_flush_bytes: int | None = None) -> None:
        self._torch = torch_module
        self._nvml = nvml
        self._l2_flush_bytes = l2_flush_bytes

    def is_available(self) -> tuple[bool, str]:
        """Available when torch has CUDA and sees a device; the reason names what is missing."""
        try:
            torch = self._load_torch()
        except ImportError as exc:
            return False, f"torch is not installed ({exc}); install a CUDA build of torch"
        return cuda_status(torch)

    def prepare(self, artifact: Artifact, options: SessionOptions) -> TorchCUDASession:
        """Move the module and inputs to ``cuda:N`` in the requested precision, optionally capture
        a CUDA graph and allocate the L2 flush buffer, run once, and return the session."""
        unknown = sorted(set(dict(options.options)) - set(self.option_names))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for runtime {self.name} on cuda; "
                f"known: {', '.join(self.option_names)}"
            )
        precision = options.get("precision", "fp32") or "fp32"
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        use_graph = _flag(options, "cuda_graph")
        use_flush = _flag(options, "l2_flush")
        self._check_options(options, use_graph)
        if artifact.module is None:
            raise UnsupportedError(
                f"runtime {self.name} on cuda needs a torch module; got a {artifact.kind!r} artifact"
            )
        torch = self._load_torch()
        ok, reason = cuda_status(torch)
        if not ok:
            raise UnavailableError(reason)
        index = options.device_index
        count = int(torch.cuda.device_count())
        if not 0 <= index < count:
            raise ConfigError(
                f"cuda:{index} does not exist: {count} CUDA device(s) visible; use cuda:0..cuda:{count - 1}"
            )

        torch.cuda.set_device(index)
        torch.cuda.reset_peak_memory_stats(index)
        props = torch.cuda.get_device_properties(index)
        device = torch.device(f"cuda:{index}")
        dtype = getattr(torch, PRECISIONS[precision]) if PRECISIONS[precision] else None
        module = artifact.module.eval().to(device=device)
        if dtype is not None:
            module = module.to(dtype=dtype)
        args = tuple(_to_device(torch, value, device, dtype) for value in artifact.inputs.values())

        inference = torch.inference_mode()
        inference.__enter__()
        try:
            call = self._wrap(torch, module, options)
            started = time.perf_counter()
            call(*args)
            torch.cuda.synchronize(index)
            first_run_s = time.perf_counter() - started
            if use_graph:
                run, produce = _capture_graph(torch, call, args, index)
            else:
                run = functools.partial(call, *args)
                produce = run
        except Exception:
            inference.__exit__(None, None, None)
            raise

        flush_buffer, flush_bytes = None, 0
        if use_flush:
            flush_bytes = self._l2_flush_bytes or flush_size_bytes(int(getattr(props, "L2_cache_size", 0) or 0))
            flush_buffer = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
        guard = _open_guard(index, self._nvml, getattr(props, "uuid", None))
        details = {
            "precision": precision,
            "cuda_graph": int(use_graph),
            "l2_flush_bytes": flush_bytes,
            "first_run_s": first_run_s,
            "gpu_name_torch": getattr(props, "name", None),
        }
        return TorchCUDASession(torch, index, run, produce, guard, flush_buffer, flush_bytes, inference, details)

    # -- hooks for the torch.compile subclass ------------------------------------------------

    def _check_options(self, options: SessionOptions, use_graph: bool) -> None:
        """Reject option combinations that cannot work (none for eager)."""

    def _wrap(self, torch: Any, module: Any, options: SessionOptions) -> Callable[..., Any]:
        """The callable timed: the module itself in eager mode."""
        return module

    def _load_torch(self) -> Any:
        if self._torch is None:
            import torch

            self._torch = torch
        return self._torch


class TorchCompileCUDARuntime(TorchCUDARuntime):
    """Runtime ``torch_compile`` on ``cuda``: ``torch.compile(module, mode=compile_mode)``.

    Inductor on CUDA generates Triton kernels, so Triton must be importable. ``cuda_graph=1``
    captures the compiled module manually and cannot be combined with ``reduce-overhead``
    (which already uses CUDA graphs)."""

    name = "torch_compile"
    option_names = ("precision", "cuda_graph", "l2_flush", "compile_mode")

    def __init__(
        self,
        torch_module: Any = None,
        nvml: Any = None,
        l2_flush_bytes: int | None = None,
        find_spec: Callable[[str], Any] = importlib.util.find_spec,
    ) -> None:
        super().__init__(torch_module, nvml, l2_flush_bytes)
        self._find_spec = find_spec

    def is_available(self) -> tuple[bool, str]:
        """As ``torch`` on cuda, plus Triton for Inductor's GPU kernels."""
        ok, reason = super().is_available()
        if not ok:
            return ok, reason
        if self._find_spec("triton") is None:
            return False, "torch.compile on CUDA needs Triton, which is not installed; pip install triton"
        return True, ""

    def _check_options(self, options: SessionOptions, use_graph: bool) -> None:
        mode = options.get("compile_mode", "default") or "default"
        if mode not in COMPILE_MODES:
            raise ConfigError(f"unknown compile_mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if use_graph and mode in ("reduce-overhead", "max-autotune"):
            raise ConfigError(
                f"cuda_graph=1 cannot be combined with compile_mode={mode} (it already uses CUDA graphs); "
                "drop one of them or use max-autotune-no-cudagraphs"
            )

    def _wrap(self, torch: Any, module: Any, options: SessionOptions) -> Callable[..., Any]:
        mode = options.get("compile_mode", "default") or "default"
        return torch.compile(module, mode=mode) if mode != "default" else torch.compile(module)


def _capture_graph(
    torch: Any, call: Callable[..., Any], args: tuple[Any, ...], index: int
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Warm up on a side stream and capture one call in a CUDA graph. Returns (replay, a function
    that replays and returns the graph's static outputs)."""
    cuda = torch.cuda
    try:
        side = cuda.Stream()
        side.wait_stream(cuda.current_stream())
        with cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                call(*args)
        cuda.current_stream().wait_stream(side)
        graph = cuda.CUDAGraph()
        with cuda.graph(graph):
            static_out = call(*args)
        cuda.synchronize(index)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedError(
            f"this model cannot be captured in a CUDA graph ({first}); run it without cuda_graph=1"
        ) from exc
    def replay_and_read() -> Any:
        graph.replay()
        return static_out

    return graph.replay, replay_and_read


def _open_guard(index: int, nvml: Any, uuid: Any) -> ThrottleGuard:
    """A throttle guard on the NVML device matching ``cuda:index`` (by UUID when torch gives one)."""
    try:
        device = NvmlDevice.open(index, nvml=nvml, uuid=str(uuid) if uuid else None)
    except UnavailableError as by_uuid:
        if not uuid:
            return ThrottleGuard(None, str(by_uuid))
        try:
            device = NvmlDevice.open(index, nvml=nvml)
        except UnavailableError as by_index:
            return ThrottleGuard(None, str(by_index))
    return ThrottleGuard(device)


def _flag(options: SessionOptions, name: str) -> bool:
    value = (options.get(name, "0") or "0").strip().lower()
    if value not in ("0", "1", "false", "true"):
        raise ConfigError(f"option {name} must be 0 or 1 (got {value!r})")
    return value in ("1", "true")


def _to_device(torch: Any, value: Any, device: Any, dtype: Any) -> Any:
    import numpy as np

    tensor = torch.from_numpy(np.ascontiguousarray(value)).to(device=device)
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype=dtype)
    return tensor


def _to_numpy(tensor: Any) -> Any:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _closed() -> None:
    raise RuntimeError("this session is closed")
