"""ONNX Runtime on the CPU execution provider.

Precision ``int8`` runs a quantized ONNX file (the harness quantizes: static QDQ, or dynamic for
transformers). ONNX Runtime fuses QDQ pairs into integer kernels (QLinearConv, QGemm,
MatMulInteger, ...) when it optimizes the graph; the session writes its optimized graph once and
counts which compute ops ended up integer, so a model that silently stays float is reported.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import ConfigError, UnsupportedError

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


# compute ops of ONNX Runtime's optimized CPU graphs, integer and float
INT8_COMPUTE_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat"})
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
                               "ConvTranspose", "Attention", "MultiHeadAttention"})
CORE_INT8_OPS = frozenset({"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
                           "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"})


def compute_op_census(model_path: str) -> dict[str, int]:
    """Op-type counts of the conv/matmul-like compute ops in an ONNX file (integer and float)."""
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in CORE_INT8_OPS or node.op_type in FLOAT_COMPUTE_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class OnnxRuntimeSession:
    """An ``InferenceSession`` with its feeds bound; ``run_once`` is a bare ``session.run``."""

    synchronous = True

    def __init__(self, session: Any, feeds: dict[str, Any], facts: dict[str, Any] | None = None) -> None:
        self._session = session
        self._feeds = feeds
        self._facts = facts or {}
        self.run_once = self._run  # bound once: the timed loop pays one call, nothing more

    def _run(self) -> None:
        self._session.run(None, self._feeds)

    def synchronize(self) -> None:
        """ONNX Runtime's CPU provider is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays."""
        return list(self._session.run(None, self._feeds))

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs (numpy arrays) of one run on other inputs (same names or order as the bound ones)."""
        return list(self._session.run(None, dict(zip(self._feeds, inputs.values()))))

    def info(self) -> dict[str, Any]:
        """The precision check of a reduced-precision session (empty for fp32)."""
        return dict(self._facts)

    def close(self) -> None:
        """Drop the session."""
        self._session = None


class OnnxRuntimeCPU:
    """Runtime ``onnxruntime`` on ``cpu``. Options: ``opt_level`` (disable|basic|extended|all,
    default all), ``inter_op_threads`` (int), ``execution_mode`` (sequential|parallel)."""

    name = "onnxruntime"
    device_kind = "cpu"
    artifact_kind = "onnx"
    option_names = ("opt_level", "inter_op_threads", "execution_mode", "precision", "calibration", "quant")
    precisions = ("fp32", "int8")

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
        precision = (options.get("precision") or "fp32").lower()
        if precision not in ("fp32", "int8"):
            raise ConfigError(f"onnxruntime on cpu runs fp32 or int8, not {precision!r}")
        census_dir = tempfile.mkdtemp(prefix="costmeter-ort-") if precision == "int8" else None
        if census_dir:  # the optimized graph shows which ops really run as integer kernels
            so.optimized_model_filepath = os.path.join(census_dir, "optimized.onnx")
            so.log_severity_level = 3
        try:
            session = ort.InferenceSession(artifact.path, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # vendor boundary: ORT raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedError(f"onnxruntime cannot load {artifact.path}: {first}") from exc
        facts: dict[str, Any] = {}
        if census_dir:
            facts = _int8_facts(os.path.join(census_dir, "optimized.onnx"))
            for name in os.listdir(census_dir):
                os.unlink(os.path.join(census_dir, name))
            os.rmdir(census_dir)
        names = [i.name for i in session.get_inputs()]
        feeds = dict(zip(names, artifact.inputs.values())) if set(names) != set(artifact.inputs) else {
            n: artifact.inputs[n] for n in names
        }
        return OnnxRuntimeSession(session, feeds, facts)


def _int8_facts(optimized_path: str) -> dict[str, Any]:
    """Share of the optimized graph's compute ops that are integer kernels, with the census."""
    census = compute_op_census(optimized_path)
    integer = sum(n for op, n in census.items() if op in CORE_INT8_OPS)
    total = sum(census.values())
    return {"precision_compute_share": integer / total if total else 0.0,
            "precision_evidence": f"ONNX Runtime optimized graph: {integer}/{total} conv/matmul ops integer",
            "ort_compute_ops": census}
