"""Fusion rules as data: which ONNX ops each runtime runs as one kernel.

A :class:`RuleSet` holds two kinds of patterns, both plain JSON-ready data:

- *composites*: multi-op spellings of one function that exporters emit (SiLU as
  ``Sigmoid`` then ``Mul``, erf-GELU as five ops, LayerNorm as nine), named so that fusion rules
  and features can treat them as one logical op. Each composite is a list of nodes
  ``[op_type, [refs...]]`` where a ref is ``"x"`` (the composite's input), ``"c"`` (any constant)
  or an int (the output of an earlier node). Inputs of ``Add``/``Mul`` match in either order.
- *rules*: chains of steps starting at an anchor, e.g. Conv, optional BatchNormalization,
  optional Add, optional activation. A step lists op types (``"@activation"`` expands to
  :data:`TYPE_GROUPS`), whether it is ``optional``, whether it may ``repeat``, and what the
  step's other operand must be: ``"const"`` (a bias), ``"tensor"`` (a residual) or ``"any"``.

The built-in sets were read off each runtime's own optimized graphs on x86 (ONNX Runtime with
``ORT_ENABLE_ALL``: Conv+BN+Add+activation into one NCHWc Conv, Gemm+activation into FusedGemm,
SiLU into QuickGelu, bias Add+GELU into BiasGelu) and from the runtimes' documented fusions.
Measured rule sets (``bench kernels detect``) are stored as JSON in the working folder and take
precedence when loaded with :func:`load_rules`.

Quantized graphs. A static QDQ graph (onnxruntime.quantization) spells every int8 tensor as
``QuantizeLinear`` -> ``DequantizeLinear`` around float ops; weights are ``DequantizeLinear`` of
int8 constants (folded). The composite ``QDQPair`` names one activation Q -> DQ pair; ONNX
Runtime then runs Conv [+ activation] + the output's pair as one ``QLinearConv`` (and Add + pair
as ``QLinearAdd``, Gemm + pair as ``QGemm``, pool + pair as ``QLinearGlobalAveragePool``), read off
its optimized graph of QDQ mobilenet_v2 (52 QLinearConv, 10 QLinearAdd, 1 QGemm, 1 QLinear pool,
the input's QuantizeLinear and the output's DequantizeLinear left alone). An op with no integer
kernel runs in float between a DequantizeLinear and a QuantizeLinear; it takes its output's pair
(rule ``float_requantize``), so a network's kernel and the micro-benchmark of that op, quantized
alone, cover the same work. A dynamic graph
(``quantize_dynamic``) spells a quantized matmul as ``MatMulInteger`` -> ``Cast`` -> ``Mul`` by the
scales (+ bias ``Add``), which ONNX Runtime runs as ``MatMulIntegerToFloat`` /
``DynamicQuantizeMatMul``; ``DynamicQuantizeLinear`` of an input shared by several matmuls stays
its own kernel. XNNPACK (ExecuTorch, LiteRT) runs the same shapes as its QS8 conv / fully-connected
kernels with the requantization fused, so the same rules apply there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError
from costmeter.predictors.kernels.blocks import BLOCK_PATTERNS

RULES_FORMAT_VERSION = 1

ACTIVATION_TYPES: tuple[str, ...] = (
    "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu",
    "Gelu", "Softplus", "Softsign", "Mish", "PRelu", "ThresholdedRelu", "Erf", "Exp", "Log",
    "Sqrt", "Reciprocal", "Neg", "Abs", "Celu", "SiLU", "GELU", "HardSwishMul",
)
BINARY_TYPES: tuple[str, ...] = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean")

TYPE_GROUPS: dict[str, tuple[str, ...]] = {
    "@activation": ACTIVATION_TYPES,
    "@binary": BINARY_TYPES,
    "@elementwise": ACTIVATION_TYPES + BINARY_TYPES,
}

# name -> nodes; see the module docstring for the reference syntax
COMPOSITE_PATTERNS: dict[str, list[list[Any]]] = {
    "SiLU": [["Sigmoid", ["x"]], ["Mul", ["x", 0]]],
    "HardSwishMul": [["HardSigmoid", ["x"]], ["Mul", ["x", 0]]],
    # x * 0.5 * (1 + erf(x / sqrt(2))), as torch's legacy exporter writes nn.GELU
    "GELU": [["Div", ["x", "c"]], ["Erf", [0]], ["Add", [1, "c"]], ["Mul", ["x", 2]],
             ["Mul", [3, "c"]]],
    # (x - mean) / sqrt(var + eps) * scale + shift, as older exporters write LayerNorm
    "LayerNormPieces": [["ReduceMean", ["x"]], ["Sub", ["x", 0]], ["Pow", [1, "c"]],
                        ["ReduceMean", [2]], ["Add", [3, "c"]], ["Sqrt", [4]], ["Div", [1, 5]],
                        ["Mul", [6, "c"]], ["Add", [7, "c"]]],
}
COMPOSITE_PATTERNS["QDQPair"] = [["QuantizeLinear", ["x", "c", "c"]], ["DequantizeLinear", [0, "c", "c"]]]
COMMUTATIVE: frozenset[str] = frozenset({"Add", "Mul", "Sum", "Max", "Min"})
# op types (and composites) whose presence makes a kernel an int8 kernel
QUANTIZED_TYPES: frozenset[str] = frozenset({
    "QDQPair", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})

# ops that stay in float between a QDQ graph's pairs (no integer kernel takes them as such)
FLOAT_IN_QUANTIZED_TYPES: tuple[str, ...] = (
    *ACTIVATION_TYPES, *BINARY_TYPES, "Softmax", "LayerNormalization", "LayerNormPieces",
    "BatchNormalization", "MatMul", "Concat", "Transpose", "Reshape", "Flatten", "Resize",
    "ReduceMean",
)

# int8 rules (see the module docstring): each ends on the QDQ pair that requantizes the output
QUANTIZED_RULES: list[dict[str, Any]] = [
    {"name": "qlinear_conv", "steps": [
        {"types": ["Conv"], "operand": "const"},
        {"types": ["Relu", "Clip"], "optional": True},
        {"types": ["QDQPair"], "operand": "const"}]},
    {"name": "qlinear_add", "steps": [
        {"types": ["Add", "Mul"], "operand": "tensor"},
        {"types": ["Relu"], "optional": True},
        {"types": ["QDQPair"], "operand": "const"}]},
    {"name": "qgemm", "steps": [
        {"types": ["Gemm", "MatMul"], "operand": "const"},
        {"types": ["QDQPair"], "operand": "const"}]},
    {"name": "qlinear_pool", "steps": [
        {"types": ["GlobalAveragePool", "AveragePool", "MaxPool"]},
        {"types": ["QDQPair"], "operand": "const"}]},
    {"name": "matmul_integer_to_float", "steps": [
        {"types": ["MatMulInteger"]},
        {"types": ["Cast"]},
        {"types": ["Mul"], "operand": "any"},
        {"types": ["Add"], "optional": True, "operand": "const"}]},
    # an op ONNX Runtime runs in float inside a quantized graph (DequantizeLinear -> op ->
    # QuantizeLinear) takes its output's pair, as a micro-benchmark of the op measures it
    {"name": "float_requantize", "steps": [
        {"types": [*FLOAT_IN_QUANTIZED_TYPES]},
        {"types": ["QDQPair"], "operand": "const"}]},
    {"name": "requantize", "kernel_type": "elementwise", "steps": [{"types": ["QDQPair"]}]},
]

_ORT_CONV_ACTS = ["Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Tanh"]
_ORT_GEMM_ACTS = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"]
_ALL_COMPOSITES = list(COMPOSITE_PATTERNS)
_XNNPACK_RULES: list[dict[str, Any]] = [
    {"name": "conv_clamp", "steps": [
        {"types": ["Conv"]}, {"types": ["BatchNormalization"], "optional": True},
        {"types": ["Relu", "Clip"], "optional": True}]},
    {"name": "fc_clamp", "steps": [
        {"types": ["Gemm", "MatMul"], "operand": "const"}, {"types": ["Relu", "Clip"], "optional": True}]},
    {"name": "binary_clamp", "kernel_type": "elementwise", "steps": [
        {"types": ["Add", "Mul"]}, {"types": ["Relu", "Clip"], "optional": True}]},
]

BUILTIN_RULES: dict[str, dict[str, Any]] = {
    "onnxruntime": {
        "composites": ["SiLU", "GELU", "LayerNormPieces", "QDQPair"],
        "blocks": ["se"],  # its per-channel Mul leaves NCHWc: see kernels.blocks
        "rules": [
            *QUANTIZED_RULES,
            {"name": "conv_bn_add_act", "steps": [
                {"types": ["Conv"]},
                {"types": ["BatchNormalization"], "optional": True},
                # a constant scale is folded into the weights (ConvMulFusion)
                {"types": ["Mul"], "optional": True, "operand": "const"},
                {"types": ["Add"], "optional": True},
                {"types": _ORT_CONV_ACTS, "optional": True}]},
            {"name": "gemm_act", "steps": [
                {"types": ["Gemm"]}, {"types": _ORT_GEMM_ACTS, "optional": True}]},
            {"name": "bias_gelu", "kernel_type": "activation", "steps": [
                {"types": ["Add"], "operand": "const"}, {"types": ["GELU", "Gelu"]}]},
        ],
    },
    "openvino": {
        "composites": _ALL_COMPOSITES,
        "rules": [
            {"name": "sdpa", "kernel_type": "attention", "steps": [
                {"types": ["MatMul"], "operand": "tensor"},
                {"types": ["Mul", "Div"], "optional": True, "operand": "const"},
                {"types": ["Add"], "optional": True},
                {"types": ["Softmax"]},
                {"types": ["MatMul"], "operand": "tensor"}]},
            {"name": "conv_eltwise", "steps": [
                {"types": ["Conv"]},
                {"types": ["BatchNormalization"], "optional": True},
                {"types": ["@elementwise"], "optional": True, "repeat": True}]},
            {"name": "fc_eltwise", "steps": [
                {"types": ["MatMul", "Gemm"], "operand": "const"},
                {"types": ["@elementwise"], "optional": True, "repeat": True}]},
            {"name": "eltwise_chain", "kernel_type": "elementwise", "steps": [
                {"types": ["@binary"]},
                {"types": ["@elementwise"], "optional": True, "repeat": True}]},
        ],
    },
    # XNNPACK (ExecuTorch's delegate, LiteRT's default CPU delegate): its convolution,
    # fully-connected, add and multiply operators take output_min/output_max, so a following
    # ReLU/ReLU6 (Clip) is their clamp; quantized graphs run as its QS8/QU8 operators with the
    # requantization inside, the same chains as ONNX Runtime's integer kernels
    "executorch": {"composites": ["SiLU", "GELU", "LayerNormPieces", "QDQPair"],
                   "rules": [*QUANTIZED_RULES, *_XNNPACK_RULES]},
    "litert": {"composites": ["SiLU", "GELU", "LayerNormPieces", "QDQPair"],
               "rules": [*QUANTIZED_RULES, *_XNNPACK_RULES]},
    "torch": {"composites": _ALL_COMPOSITES, "rules": []},
    "torch_compile": {
        "composites": _ALL_COMPOSITES,
        "rules": [
            {"name": "pointwise_chain", "kernel_type": "elementwise", "steps": [
                {"types": ["@elementwise"]},
                {"types": ["@elementwise"], "optional": True, "repeat": True}]},
        ],
    },
}


@dataclass(frozen=True)
class Step:
    """One position of a rule chain: allowed op types, optional/repeat, operand kind."""

    types: tuple[str, ...]
    optional: bool = False
    repeat: bool = False
    operand: str = "any"  # any | const | tensor: what the op's other inputs must be

    def __post_init__(self) -> None:
        if self.operand not in ("any", "const", "tensor"):
            raise ConfigError(
                f"fusion step operand {self.operand!r} is unknown; use any, const or tensor"
            )
        expanded: list[str] = []
        for name in self.types:
            if name.startswith("@"):
                if name not in TYPE_GROUPS:
                    raise ConfigError(
                        f"unknown op-type group {name!r} in a fusion rule; "
                        f"use one of {', '.join(TYPE_GROUPS)}"
                    )
                expanded.extend(TYPE_GROUPS[name])
            else:
                expanded.append(name)
        if not expanded:
            raise ConfigError("a fusion step lists no op types; give at least one")
        object.__setattr__(self, "types", tuple(dict.fromkeys(expanded)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (groups already expanded)."""
        return {"types": list(self.types), "optional": self.optional, "repeat": self.repeat,
                "operand": self.operand}


@dataclass(frozen=True)
class FusionRule:
    """A chain of steps fused into one kernel; ``kernel_type`` None means: from the anchor op."""

    name: str
    steps: tuple[Step, ...]
    kernel_type: str | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError(f"fusion rule {self.name!r} has no steps; give at least the anchor")
        if self.steps[0].optional or self.steps[0].repeat:
            raise ConfigError(f"fusion rule {self.name!r}: the first step (anchor) must be plain")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionRule:
        """Build from ``{"name", "steps": [{"types", "optional", "repeat", "operand"}], ...}``."""
        try:
            steps = tuple(
                Step(tuple(s["types"]), bool(s.get("optional", False)),
                     bool(s.get("repeat", False)), str(s.get("operand", "any")))
                for s in data["steps"]
            )
            return cls(str(data["name"]), steps, data.get("kernel_type"))
        except (KeyError, TypeError) as error:
            raise ConfigError(
                f"malformed fusion rule {data!r} ({error}); give name and steps with types"
            ) from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out: dict[str, Any] = {"name": self.name, "steps": [s.to_dict() for s in self.steps]}
        if self.kernel_type:
            out["kernel_type"] = self.kernel_type
        return out


@dataclass(frozen=True)
class RuleSet:
    """The fusion rules of one runtime on one device, with where they came from."""

    runtime: str
    rules: tuple[FusionRule, ...]
    composites: tuple[str, ...] = ()
    device: str = "any"
    source: str = "builtin"  # builtin | detected | file
    evidence: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    # kernel groups priced as one kernel (costmeter.predictors.kernels.blocks), e.g. ("se",)
    blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in self.composites if c not in COMPOSITE_PATTERNS]
        if unknown:
            raise ConfigError(
                f"unknown composite pattern(s) {unknown} in the {self.runtime} rule set; "
                f"use {', '.join(COMPOSITE_PATTERNS)}"
            )
        unknown = [b for b in self.blocks if b not in BLOCK_PATTERNS]
        if unknown:
            raise ConfigError(f"unknown block pattern(s) {unknown} in the {self.runtime} rule set; "
                              f"use {', '.join(BLOCK_PATTERNS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleSet:
        """Inverse of :meth:`to_dict`; ConfigError for another format version."""
        version = data.get("format_version", RULES_FORMAT_VERSION)
        if version != RULES_FORMAT_VERSION:
            raise ConfigError(
                f"fusion rule file has format version {version}, this costmeter reads "
                f"{RULES_FORMAT_VERSION}; run `bench kernels detect` again"
            )
        return cls(
            runtime=str(data["runtime"]),
            rules=tuple(FusionRule.from_dict(r) for r in data.get("rules", [])),
            composites=tuple(data.get("composites", ())),
            device=str(data.get("device", "any")),
            source=str(data.get("source", "file")),
            evidence=tuple(data.get("evidence", ())),
            blocks=tuple(data.get("blocks", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (format version included)."""
        out = {
            "format_version": RULES_FORMAT_VERSION, "runtime": self.runtime,
            "device": self.device, "source": self.source,
            "composites": list(self.composites), "rules": [r.to_dict() for r in self.rules],
            "evidence": list(self.evidence),
        }
        if self.blocks:  # left out when empty: rule sets written before blocks keep their digest
            out["blocks"] = list(self.blocks)
        return out


def builtin_rules(runtime: str) -> RuleSet:
    """The shipped rule set of ``runtime``; runtimes without one get no fusion (one op, one kernel)."""
    data = BUILTIN_RULES.get(runtime, {"composites": [], "rules": []})
    return RuleSet(runtime=runtime, rules=tuple(FusionRule.from_dict(r) for r in data["rules"]),
                   composites=tuple(data["composites"]), blocks=tuple(data.get("blocks", ())))


def rules_path(workdir: Path | str, device: str, runtime: str) -> Path:
    """Where a detected rule set of ``runtime`` on ``device`` is kept."""
    from costmeter.workdir import Workdir

    return Workdir.of(workdir).kernel_rules(device, runtime)


def save_rules(rule_set: RuleSet, workdir: Path | str) -> Path:
    """Write ``rule_set`` as JSON under the working folder (atomically); returns the path."""
    path = rules_path(workdir, rule_set.device, rule_set.runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rule_set.to_dict(), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def read_rules(path: Path | str) -> RuleSet:
    """Read a rule-set JSON file; ConfigError for a missing or malformed file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"fusion rule file not found: {path}; check the path") from error
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"cannot read fusion rule file {path} ({type(error).__name__}); "
            "delete it and run `bench kernels detect` again"
        ) from error
    if not isinstance(data, dict) or "runtime" not in data:
        raise ConfigError(f"{path} is not a fusion rule file; run `bench kernels detect` again")
    return RuleSet.from_dict(data)


def load_rules(runtime: str, device: str = "cpu", workdir: Path | str | None = None) -> RuleSet:
    """The rule set in use: the detected one in ``workdir`` if present, else the built-in one."""
    if workdir is not None:
        path = rules_path(workdir, device, runtime)
        if path.is_file():
            return read_rules(path)
    return builtin_rules(runtime)
