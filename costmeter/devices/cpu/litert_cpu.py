"""LiteRT (formerly TensorFlow Lite) interpreter on the CPU, from a ``.tflite`` file.

XNNPACK is LiteRT's default CPU delegate and is on unless ``xnnpack=off``, which runs the
built-in kernels without any default delegate. Converted models keep the torch model's layout
(NCHW for images), and a ``.tflite`` file has fixed shapes: one file per batch size.
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

    def __init__(self, interpreter: Any, output_indices: list[int], xnnpack: bool) -> None:
        self._interpreter = interpreter
        self._outputs = output_indices
        self._xnnpack = xnnpack
        self.run_once = interpreter.invoke

    def synchronize(self) -> None:
        """``invoke`` is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays (copies)."""
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(i).copy() for i in self._outputs]

    def info(self) -> dict[str, Any]:
        """Whether the XNNPACK delegate was asked for."""
        return {"litert_xnnpack": self._xnnpack}

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
    option_names = ("xnnpack",)

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
            interp.set_tensor(detail["index"], array.astype(detail["dtype"], copy=False))
        outputs = [d["index"] for d in _details_in_order(interp, "outputs")]
        return LiteRTSession(interp, outputs, xnnpack)


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
