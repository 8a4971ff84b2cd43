"""ONNX Runtime on the CPU execution provider."""
from __future__ import annotations

from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import ConfigError, UnsupportedError

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeSession:
    """An ``InferenceSession`` with its feeds bound; ``run_once`` is a bare ``session.run``."""

    synchronous = True

    def __init__(self, session: Any, feeds: dict[str, Any]) -> None:
        self._session = session
        self._feeds = feeds
        self.run_once = self._run  # bound once: the timed loop pays one call, nothing more

    def _run(self) -> None:
        self._session.run(None, self._feeds)

    def synchronize(self) -> None:
        """ONNX Runtime's CPU provider is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays."""
        return list(self._session.run(None, self._feeds))

    def close(self) -> None:
        """Drop the session."""
        self._session = None


class OnnxRuntimeCPU:
    """Runtime ``onnxruntime`` on ``cpu``. Options: ``opt_level`` (disable|basic|extended|all,
    default all), ``inter_op_threads`` (int), ``execution_mode`` (sequential|parallel)."""

    name = "onnxruntime"
    device_kind = "cpu"
    artifact_kind = "onnx"
    option_names = ("opt_level", "inter_op_threads", "execution_mode")

    def is_available(self) -> tuple[bool, str]:
        """Available when ``onnxruntime`` imports and has the CPU provider."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc}); install it with: pip install 'costmeter[onnx]'"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, "this onnxruntime build has no CPUExecutionProvider; pip install onnxruntime"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> OnnxRuntimeSession:
        """Create an InferenceSession for ``artifact.path`` with the requested threads and level."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        level = options.get("opt_level", "all")
        if level not in OPT_LEVELS:
            raise ConfigError(f"unknown opt_level {level!r} for onnxruntime; choose one of {', '.join(OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        inter = options.get("inter_op_threads")
        if inter is not None:
            so.inter_op_num_threads = int(inter)
        mode = options.get("execution_mode", "sequential")
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        try:
            session = ort.InferenceSession(artifact.path, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # vendor boundary: ORT raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedError(f"onnxruntime cannot load {artifact.path}: {first}") from exc
        names = [i.name for i in session.get_inputs()]
        feeds = dict(zip(names, artifact.inputs.values())) if set(names) != set(artifact.inputs) else {
            n: artifact.inputs[n] for n in names
        }
        return OnnxRuntimeSession(session, feeds)
