"""ONNX Runtime on an NVIDIA GPU: the CUDA execution provider, or TensorRT when asked.

Inputs are copied to the GPU once and bound with IOBinding; outputs stay on the GPU, so a timed
run is the model only, without host<->device copies. ``run_with_iobinding`` synchronizes the
provider's stream before returning, so the session is synchronous and the harness times it with
the host clock. Options (all part of the benchmark key):

- ``provider`` = ``cuda`` (default) | ``tensorrt`` (TensorrtExecutionProvider, CUDA for the rest).
- ``precision`` = ``fp32`` (default) | ``fp16``. fp16 is TensorRT's ``trt_fp16_enable``; the CUDA
  provider runs the graph's own types, so fp16 there needs an fp16 model (ConfigError otherwise).
- ``cuda_graph`` = ``0`` | ``1``: the CUDA provider's ``enable_cuda_graph`` (outputs pre-bound).
- ``opt_level`` = ``disable`` | ``basic`` | ``extended`` | ``all`` (default).

A session that silently fell back to the CPU provider is refused with the reason.
Seams: ``ort_module`` (default ``import onnxruntime``) and ``nvml``.
"""
from __future__ import annotations

import functools
from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.cuda.guard import ThrottleGuard
from costmeter.devices.cuda.nvml import NvmlDevice, load_nvml
from costmeter.errors import ConfigError, UnavailableError, UnsupportedError

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
PROVIDERS = {"cuda": CUDA_EP, "tensorrt": TENSORRT_EP}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
GPU_BUILD_HINT = "pip uninstall onnxruntime && pip install onnxruntime-gpu"


class OnnxRuntimeCUDASession:
    """An InferenceSession on the GPU with its inputs and outputs bound on the device."""

    synchronous = True

    def __init__(self, session: Any, binding: Any, guard: ThrottleGuard, details: dict[str, Any]) -> None:
        self._session = session
        self._binding = binding
        self.guard = guard
        self.details = details
        self.run_once = functools.partial(session.run_with_iobinding, binding)

    def synchronize(self) -> None:
        """``run_with_iobinding`` already waited for the GPU."""

    def block_health(self) -> dict[str, Any]:
        """SM clock, temperature and throttle reasons around the last block (see ThrottleGuard).
        The next block's 'before' reading is taken here too, since this session has no
        ``time_block``."""
        health = self.guard.block_health()
        self.guard.begin_block()
        return health

    def memory(self) -> dict[str, int]:
        """NVML memory used by this process and by the whole device (bytes); absent if unknown."""
        figures: dict[str, int] = {}
        if self.guard.device is not None:
            figures.update(self.guard.device.memory_figures())
        return figures

    def environment(self) -> dict[str, Any]:
        """GPU state now plus the providers this session really uses."""
        env: dict[str, Any] = dict(self.details)
        if self.guard.device is not None:
            env.update(self.guard.device.info())
        else:
            env["gpu_nvml_unavailable"] = self.guard.unavailable_reason
        return env

    def outputs(self) -> list[Any]:
        """Run once and copy the outputs to host numpy arrays."""
        self.run_once()
        return [value if hasattr(value, "dtype") else value.numpy() for value in self._binding.copy_outputs_to_cpu()]

    def close(self) -> None:
        """Drop the session and release NVML."""
        self.run_once = _closed
        self._binding = None
        self._session = None
        self.guard.close()


class OnnxRuntimeCUDA:
    """Runtime ``onnxruntime`` on ``cuda``: CUDA execution provider, TensorRT on request."""

    name = "onnxruntime"
    device_kind = "cuda"
    artifact_kind = "onnx"
    option_names = ("provider", "precision", "cuda_graph", "opt_level")

    def __init__(self, ort_module: Any = None, nvml: Any = None) -> None:
        self._ort = ort_module
        self._nvml = nvml

    def is_available(self) -> tuple[bool, str]:
        """Available when onnxruntime has the CUDA provider and, if NVML can tell, a GPU exists."""
        try:
            ort = self._load_ort()
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc}); pip install onnxruntime-gpu"
        providers = list(ort.get_available_providers())
        if CUDA_EP not in providers:
            return False, (
                f"onnxruntime {ort.__version__} has no {CUDA_EP} (it has {', '.join(providers) or 'none'}); "
                f"{GPU_BUILD_HINT}"
            )
        try:
            nvml = load_nvml(self._nvml)
        except UnavailableError:
            return True, ""  # no NVML bindings: prepare() still refuses a CPU fallback
        try:
            NvmlDevice.open(0, nvml=nvml).close()
        except UnavailableError as exc:
            return False, f"onnxruntime has {CUDA_EP} but no GPU is usable: {exc}"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> OnnxRuntimeCUDASession:
        """Create the GPU session, bind inputs/outputs on ``cuda:N`` and run once."""
        unknown = sorted(set(dict(options.options)) - set(self.option_names))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for onnxruntime on cuda; known: {', '.join(self.option_names)}"
            )
        provider_key = options.get("provider", "cuda") or "cuda"
        if provider_key not in PROVIDERS:
            raise ConfigError(f"unknown provider {provider_key!r}; choose one of {', '.join(PROVIDERS)}")
        precision = options.get("precision", "fp32") or "fp32"
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"onnxruntime on cuda supports precision fp32 or fp16 (tensorrt), not {precision!r}")
        if precision == "fp16" and provider_key != "tensorrt":
            raise ConfigError(
                "precision=fp16 with the CUDA provider needs an fp16 ONNX model; use provider=tensorrt "
                "or convert the model and keep precision=fp32"
            )
        graph_flag = (options.get("cuda_graph", "0") or "0").strip().lower()
        if graph_flag not in ("0", "1", "true", "false"):
            raise ConfigError(f"option cuda_graph must be 0 or 1 (got {graph_flag!r})")
        use_graph = graph_flag in ("1", "true")
        level = options.get("opt_level", "all") or "all"
        if level not in OPT_LEVELS:
            raise ConfigError(f"unknown opt_level {level!r}; choose one of {', '.join(OPT_LEVELS)}")
        if not artifact.path:
            raise UnsupportedError("onnxruntime on cuda needs an ONNX file; the artifact has no path")

        ort = self._load_ort()
        wanted = PROVIDERS[provider_key]
        available = list(ort.get_available_providers())
        if wanted not in available:
            hint = GPU_BUILD_HINT if wanted == CUDA_EP else (
                "install TensorRT and an onnxruntime-gpu built with it, or use provider=cuda")
            raise UnavailableError(f"onnxruntime {ort.__version__} has no {wanted}; {hint}")
        index = options.device_index
        providers = self._provider_list(provider_key, index, precision == "fp16", use_graph)
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        try:
            session = ort.InferenceSession(artifact.path, sess_options=so, providers=providers)
        except Exception as exc:  # vendor boundary: ORT raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedError(f"onnxruntime cannot load {artifact.path} on cuda:{index}: {first}") from exc
        used = list(session.get_providers())
        if not used or used[0] != wanted:
            raise UnavailableError(
                f"onnxruntime fell back to {', '.join(used) or 'nothing'} instead of {wanted}: the GPU provider "
                f"failed to load; check that the CUDA/cuDNN libraries match onnxruntime {ort.__version__}"
            )
        binding = self._bind(ort, session, artifact.inputs, index)
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # vendor boundary
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedError(f"onnxruntime failed to run the model on cuda:{index}: {first}") from exc
        if use_graph:  # CUDA graphs need fixed output buffers: re-bind the ones the first run made
            for meta, value in zip(session.get_outputs(), binding.get_outputs()):
                binding.bind_ortvalue_output(meta.name, value)
        guard = _open_guard(index, self._nvml)
        guard.begin_block()
        details = {
            "onnxruntime_version": str(ort.__version__),
            "onnxruntime_providers": used,
            "precision": precision,
            "cuda_graph": int(use_graph),
            "cuda_device": f"cuda:{index}",
        }
        return OnnxRuntimeCUDASession(session, binding, guard, details)

    def _provider_list(self, provider_key: str, index: int, fp16: bool, use_graph: bool) -> list[Any]:
        cuda_options = {"device_id": str(index)}
        if use_graph:
            cuda_options["enable_cuda_graph"] = "1"
        providers: list[Any] = []
        if provider_key == "tensorrt":
            providers.append((TENSORRT_EP, {"device_id": str(index), "trt_fp16_enable": "1" if fp16 else "0"}))
        providers.append((CUDA_EP, cuda_options))
        providers.append("CPUExecutionProvider")
        return providers

    def _bind(self, ort: Any, session: Any, inputs: dict[str, Any], index: int) -> Any:
        names = [meta.name for meta in session.get_inputs()]
        if set(names) == set(inputs):
            feeds = {name: inputs[name] for name in names}
        elif len(names) == len(inputs):
            feeds = dict(zip(names, inputs.values()))
        else:
            raise UnsupportedError(f"the model takes inputs {names} but {sorted(inputs)} were given")
        import numpy as np

        binding = session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", index)
            binding.bind_ortvalue_input(name, value)
        for meta in session.get_outputs():
            binding.bind_output(meta.name, "cuda", index)
        return binding

    def _load_ort(self) -> Any:
        if self._ort is None:
            import onnxruntime

            self._ort = onnxruntime
        return self._ort


def _open_guard(index: int, nvml: Any) -> ThrottleGuard:
    try:
        return ThrottleGuard(NvmlDevice.open(index, nvml=nvml))
    except UnavailableError as exc:
        return ThrottleGuard(None, str(exc))


def _closed() -> None:
    raise RuntimeError("this session is closed")
