"""LiteRT (formerly TensorFlow Lite) interpreter on the CPU, from a ``.tflite`` file.

XNNPACK is LiteRT's default CPU delegate and is on unless ``xnnpack=off``, which runs the
built-in kernels without any default delegate. Converted models keep the torch model's layout
(NCHW for images), and a ``.tflite`` file has fixed shapes: one file per batch size.

Precision ``int8`` runs a ``.tflite`` file the harness quantized with PT2E. Such a file may take
and give int8 tensors: float inputs are then quantized with the input's scale and zero point once,
before timing, and outputs are dequantized when read. The share of conv/fully-connected ops
with int8 weights is read from the interpreter's op list.
"""
from __future__ import annotations

from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import ConfigError, UnsupportedError

_ON = ("on", "true", "1", "yes")
_OFF = ("off", "false", "0", "no")


class LiteRTSession:
    """An interpreter with its input tensors set once; ``run_once`` is ``interpreter.invoke``."""

    synchronous = True

    def __init__(self, interpreter: Any, output_indices: list[int], xnnpack: bool,
                 input_details: list[dict[str, Any]] | None = None, facts: dict[str, Any] | None = None) -> None:
        self._interpreter = interpreter
        self._outputs = output_indices
        self._xnnpack = xnnpack
        self._input_details = input_details or []
        self._facts = facts or {}
        self.run_once = interpreter.invoke

    def synchronize(self) -> None:
        """``invoke`` is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays (copies)."""
        self._interpreter.invoke()
        return [_dequantized(self._interpreter, i) for i in self._outputs]

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs of one run on other inputs (same shapes as the bound ones); the bound inputs
        are left replaced, so call this only after timing."""
        for detail, array in zip(self._input_details, inputs.values()):
            self._interpreter.set_tensor(detail["index"], _as_input(detail, array))
        return self.outputs()

    def info(self) -> dict[str, Any]:
        """Whether the XNNPACK delegate was asked for, and the int8 census of a quantized file."""
        return {"litert_xnnpack": self._xnnpack, **self._facts}

    def close(self) -> None:
        """Drop the interpreter."""
        self._interpreter = None
        self.run_once = _closed


def _closed() -> None:
    raise RuntimeError("session closed")


class LiteRTCPU:
    """Runtime ``litert`` on ``cpu``. ``threads`` sets the interpreter's ``num_threads``.
    Option ``xnnpack`` (on | off; default on)."""

    name = "litert"
    device_kind = "cpu"
    artifact_kind = "tflite"
    option_names = ("xnnpack", "precision", "calibration", "quant")
    precisions = ("fp32", "int8")

    def is_available(self) -> tuple[bool, str]:
        """Available when the ``ai_edge_litert`` interpreter imports (the harness checks the converter)."""
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as exc:
            return False, f"ai-edge-litert is not installed ({exc}); install it with: pip install 'costmeter[edge]'"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> LiteRTSession:
        """Load the ``.tflite`` file, allocate tensors, set the inputs."""
        from ai_edge_litert import interpreter as litert

        flag = (options.get("xnnpack", "on") or "on").lower()
        if flag not in _ON + _OFF:
            raise ConfigError(f"bad litert option xnnpack={flag!r}; use on or off")
        xnnpack = flag in _ON
        resolver = (litert.OpResolverType.AUTO if xnnpack
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            interp = litert.Interpreter(model_path=str(artifact.path), num_threads=options.threads,
                                        experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UnsupportedError(f"LiteRT cannot load {artifact.path}: {first}") from exc
        details = _details_in_order(interp, "inputs")
        arrays = list(artifact.inputs.values())
        if len(details) != len(arrays):
            raise UnsupportedError(f"the .tflite model has {len(details)} inputs, got {len(arrays)}; "
                                   "re-convert the model")
        for detail, array in zip(details, arrays):
            if tuple(detail["shape"]) != tuple(array.shape):
                raise UnsupportedError(f"the .tflite input {detail['name']} has shape {tuple(detail['shape'])}, "
                                       f"inputs have {tuple(array.shape)}; convert for this batch size")
            interp.set_tensor(detail["index"], _as_input(detail, array))
        outputs = [d["index"] for d in _details_in_order(interp, "outputs")]
        facts: dict[str, Any] = {}
        if (options.get("precision") or "fp32").lower() == "int8":
            facts = int8_census(interp)
            facts["litert_io"] = "/".join(sorted({str(d["dtype"].__name__) for d in details}))
        return LiteRTSession(interp, outputs, xnnpack, details, facts)


_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def int8_census(interp: Any) -> dict[str, Any]:
    """Share of conv/fully-connected ops whose weights (or inputs) are int8 in the interpreter's op
    list (the ops before delegation: XNNPACK runs int8 ops with its quantized kernels)."""
    import numpy as np

    try:
        ops = interp._get_ops_details()  # the only op-level listing the Python interpreter offers
        tensors = {d["index"]: d for d in interp.get_tensor_details()}
    except (AttributeError, ValueError, RuntimeError):
        return {}
    total = hits = 0
    for op in ops:
        if op.get("op_name") in _COMPUTE_OPS:
            total += 1
            dtypes = [tensors[i]["dtype"] for i in op.get("inputs", []) if i in tensors]
            hits += any(np.dtype(d) == np.int8 for d in dtypes)
    return {"precision_compute_share": hits / total if total else 0.0,
            "precision_evidence": f"LiteRT op list: {hits}/{total} conv/fully-connected ops with int8 tensors"}


def _as_input(detail: dict[str, Any], array: Any) -> Any:
    """``array`` in the input tensor's type; float data for an int8/uint8 input is quantized with
    the tensor's scale and zero point."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and np.asarray(array).dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
    return array.astype(dtype, copy=False)


def _dequantized(interp: Any, index: int) -> Any:
    """An output tensor as float when it is quantized (scale, zero point), else a copy."""
    import numpy as np

    value = interp.get_tensor(index).copy()
    detail = next((d for d in interp.get_output_details() if d["index"] == index), None)
    scale, zero = detail.get("quantization", (0.0, 0)) if detail else (0.0, 0)
    if value.dtype.kind in "iu" and scale:
        return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
    return value


def _details_in_order(interp: Any, which: str) -> list[dict[str, Any]]:
    """Input or output details (``which`` = inputs | outputs) in the torch model's order.

    litert-torch names a signature's tensors ``args_0, args_1, ...`` and ``output_0, ...``; when
    the default signature uses such names, they give the order, else the file's order is used.
    """
    details = interp.get_input_details() if which == "inputs" else interp.get_output_details()
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        return details
    names = next(iter(signatures.values())).get(which, [])
    if not names or any(_trailing_number(n) < 0 for n in names):
        return details
    runner = interp.get_signature_runner()
    named = runner.get_input_details() if which == "inputs" else runner.get_output_details()
    by_index = {d["index"]: d for d in details}
    ordered = sorted(names, key=_trailing_number)
    if not all(n in named and named[n]["index"] in by_index for n in ordered):
        return details
    return [by_index[named[n]["index"]] for n in ordered]


def _trailing_number(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1
