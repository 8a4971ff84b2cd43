"""OpenVINO on the CPU plugin, from an ONNX file.

Precision is an explicit setting: on CPUs with AMX or AVX512-BF16 the plugin's default runs in
bf16 (faster, ~1e-4 off float32), which would make comparisons with float32 runtimes unfair. The
default here is ``f32``; ``precision=default`` leaves the choice to the plugin, and the precision
it actually used is recorded with the result (``openvino_inference_precision``).

Precision ``int8`` runs the OpenVINO IR that NNCF quantized (the harness does it), compiled with
an f32 hint for the layers NNCF left in float. With any reduced precision the runtime model is
read back: the share of compute layers (convolutions, matmuls, fully connected) whose runtime
precision is the one asked for is recorded, so a silent fallback shows.
"""
from __future__ import annotations

from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import ConfigError, UnsupportedError

PRECISIONS = {"f32": "f32", "float32": "f32", "fp32": "f32", "bf16": "bf16", "bfloat16": "bf16",
              "f16": "f16", "fp16": "f16", "default": None, "int8": "f32"}
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
_RUNTIME_NAMES = {"int8": ("i8", "u8"), "bf16": ("bf16",), "f16": ("f16",), "fp16": ("f16",)}
HINTS = ("latency", "throughput")


class OpenVinoSession:
    """A compiled model's infer request with its input tensors set once; ``run_once`` = ``infer``."""

    synchronous = True

    def __init__(self, compiled: Any, request: Any, precision: str, arrays: list[Any]) -> None:
        self._compiled = compiled
        self._arrays = arrays  # ov.Tensor shares their memory: keep them alive
        self._request = request
        self._precision = precision
        self.run_once = request.infer  # bound once: no argument conversion in the timed loop

    def synchronize(self) -> None:
        """``infer`` is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays (copies)."""
        import numpy as np

        self._request.infer()
        return [np.array(self._request.get_output_tensor(i).data, copy=True)
                for i in range(len(self._compiled.outputs))]

    def info(self) -> dict[str, Any]:
        """The precision asked for and the one the plugin reports using."""
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        used = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        facts: dict[str, Any] = {"openvino_precision_option": self._precision,
                                 "openvino_inference_precision": used}
        if self._precision in _RUNTIME_NAMES:
            facts.update(runtime_precision_facts(self._compiled, _RUNTIME_NAMES[self._precision]))
        return facts

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs (numpy arrays) of one run on other inputs, in the model's input order."""
        import numpy as np

        arrays = [np.ascontiguousarray(a) for a in inputs.values()]
        results = self._compiled(arrays)
        return [np.array(results[out], copy=True) for out in self._compiled.outputs]

    def close(self) -> None:
        """Drop the request and the compiled model."""
        self._request = None
        self._compiled = None


def runtime_precision_facts(compiled: Any, wanted: tuple[str, ...]) -> dict[str, Any]:
    """Share of the runtime model's compute layers executing in one of ``wanted`` (OpenVINO's
    runtime precision names, e.g. ``i8``/``u8``), with the per-precision census."""
    census: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in COMPUTE_LAYERS:
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            census[precision] = census.get(precision, 0) + 1
    total = sum(census.values())
    hits = sum(n for p, n in census.items() if p in wanted)
    return {"precision_compute_share": hits / total if total else 0.0,
            "precision_evidence": f"OpenVINO runtime model: {hits}/{total} compute layers in {'/'.join(wanted)}",
            "openvino_compute_precisions": census}


class OpenVinoCPU:
    """Runtime ``openvino`` on ``cpu``. Options: ``precision`` (f32 | bf16 | f16 | default, or
    fp32 | fp16 | int8 as ``--precision`` spells them; default f32), ``hint`` (latency | throughput; default latency). ``threads`` sets
    ``INFERENCE_NUM_THREADS``."""

    name = "openvino"
    device_kind = "cpu"
    artifact_kind = "onnx"
    option_names = ("precision", "hint", "calibration", "quant")
    precisions = ("fp32", "fp16", "bf16", "int8")

    def is_available(self) -> tuple[bool, str]:
        """Available when ``openvino`` imports and lists a CPU device."""
        try:
            import openvino as ov
        except ImportError as exc:
            return False, f"openvino is not installed ({exc}); install it with: pip install 'costmeter[edge]'"
        if "CPU" not in ov.Core().available_devices:
            return False, "this OpenVINO build has no CPU plugin; reinstall it: pip install --force-reinstall openvino"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> OpenVinoSession:
        """Read the ONNX file, compile it for CPU with the settings, bind the inputs."""
        import numpy as np
        import openvino as ov

        precision = (options.get("precision", "f32") or "f32").lower()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown openvino precision {precision!r}; choose f32, bf16, f16, int8 or default")
        hint = (options.get("hint", "latency") or "latency").lower()
        if hint not in HINTS:
            raise ConfigError(f"unknown openvino hint {hint!r}; choose latency or throughput")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        if PRECISIONS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(artifact.path)), "CPU", config)
        except Exception as exc:  # vendor boundary: OpenVINO raises RuntimeError subclasses
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            # the first line is often only "Exception from src/...cpp:84:"; the reason follows it
            detail = " ".join(lines)[:400] if lines else type(exc).__name__
            raise UnsupportedError(f"openvino cannot compile {artifact.path}: {detail}") from exc
        request = compiled.create_infer_request()
        arrays = _ordered_inputs([p.get_any_name() for p in compiled.inputs], artifact.inputs)
        arrays = [np.ascontiguousarray(a) for a in arrays]
        for index, array in enumerate(arrays):
            request.set_input_tensor(index, ov.Tensor(array))
        return OpenVinoSession(compiled, request, precision, arrays)


def _ordered_inputs(names: list[str], inputs: dict[str, Any]) -> list[Any]:
    """Input arrays in the model's order: by name when the names match, else by position."""
    if set(names) == set(inputs):
        return [inputs[n] for n in names]
    if len(names) != len(inputs):
        raise UnsupportedError(f"the model expects {len(names)} inputs ({', '.join(names)}), "
                               f"got {len(inputs)}; give inputs matching the model")
    return list(inputs.values())
