"""Op graph -> the kernels a runtime really runs (fusion rules applied), nothing dropped.

:func:`fuse` first groups composite spellings (SiLU, erf-GELU, LayerNorm pieces) into logical
units, then walks the units in graph order and lets the first matching rule of the
:class:`~costmeter.predictors.kernels.rules.RuleSet` claim a chain (anchor, then the optional
steps, each through a tensor with a single consumer). Every op ends in exactly one
:class:`Kernel`; ops no rule claims become one-op kernels. :meth:`KernelGraph.unknown_report`
lists the op types the cost model has no formula or kernel type for, with their share of FLOPs
and bytes, so an under-prediction never hides. A rule set's ``blocks`` then merge groups of
kernels that a runtime's layout makes one unit of cost (a squeeze-excite block, kernel type
``se``; see :mod:`costmeter.predictors.kernels.blocks`).

Kernel costs: FLOPs, MACs and weight bytes are sums over the member ops; ``bytes_read`` and
``bytes_written`` count only the tensors crossing the kernel boundary (a fused intermediate never
goes to memory); a one-op kernel keeps its op's own figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from costmeter.models.onnx.graph import Op, OpGraph, TensorInfo
from costmeter.predictors.kernels.rules import (
    ACTIVATION_TYPES,
    BINARY_TYPES,
    COMMUTATIVE,
    COMPOSITE_PATTERNS,
    FusionRule,
    RuleSet,
    load_rules,
)

KERNEL_TYPES: tuple[str, ...] = (
    "conv", "dwconv", "conv_transpose", "fc", "matmul", "attention", "pool", "global_pool",
    "elementwise", "activation", "concat", "softmax", "layernorm", "norm", "reduce", "resize",
    "data", "view", "shape", "constant", "other", "se",
)
_CATEGORY_TYPES = {"pool": "pool", "resize": "resize", "data": "data", "view": "view",
                   "shape": "shape", "normalize": "norm", "reduce": "reduce"}
_NO_TRAFFIC = ("view", "shape", "constant")
# kernel types that cost next to nothing at run time: ``constant`` (folded at load) and ``shape``
# (arithmetic on a few integers: Shape, and the Gather/Concat of its values that feed a Reshape).
# A kernel forest prices them at NEGLIGIBLE_LATENCY_MS when no micro-benchmark measured them. On
# 40 FBNet networks (ONNX Runtime, 1 thread), their 20 shape kernels each, priced by the
# FLOPs-linear fallback (~64 us each), put every network's kernel sum 40-240% above the measured
# latency; priced at ~0, 92.5% came within +-10% (median error +0.2%).
NEGLIGIBLE_TYPES: tuple[str, ...] = ("constant", "shape")
NEGLIGIBLE_LATENCY_MS = 1e-4
_INTEGER_DTYPES = ("int64", "int32")


@dataclass
class Unit:
    """One logical op: a single ONNX op, or the ops of a composite (``op_type`` = its name)."""

    op_type: str
    ops: list[Op]
    inputs: list[TensorInfo]  # tensors read from outside the unit, in first-use order
    outputs: list[TensorInfo]  # tensors written by the unit's last op


@dataclass
class Kernel:
    """A group of ops run as one kernel, with summed costs (FLOPs, bytes in bytes)."""

    index: int
    kernel_type: str
    rule: str  # the fusion rule that formed it, or "single"
    units: list[Unit]
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def ops(self) -> list[Op]:
        """Member ops in graph order."""
        return sorted((op for unit in self.units for op in unit.ops), key=lambda op: op.index)

    @property
    def anchor(self) -> Op:
        """The first op of the first unit (the Conv of a Conv+BN+ReLU kernel)."""
        return self.units[0].ops[0]

    @property
    def unit_types(self) -> list[str]:
        """Logical op types in chain order (composites by name), e.g. ``["Conv", "SiLU"]``."""
        return [unit.op_type for unit in self.units]

    @property
    def name(self) -> str:
        """Readable unique name: index and unit types, e.g. ``k0005_Conv+Relu``."""
        return f"k{self.index:04d}_{'+'.join(self.unit_types)}"

    @property
    def flops(self) -> int:
        """FLOPs of all member ops (whole batch)."""
        return sum(op.flops for op in self.ops)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of all member ops (whole batch)."""
        return sum(op.macs for op in self.ops)

    @property
    def weight_bytes(self) -> int:
        """Bytes of constant inputs read by the member ops."""
        return sum(op.weight_bytes for op in self.ops)

    @property
    def params(self) -> int:
        """Elements of the constant inputs (weights, biases, scales)."""
        return sum(t.numel or 0 for op in self.ops for t in op.inputs if t.constant and t.name)

    @property
    def intensity(self) -> float:
        """FLOPs per byte crossing the kernel boundary (0 when nothing moves)."""
        moved = self.bytes_read + self.bytes_written
        return self.flops / moved if moved else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"index": self.index, "name": self.name, "kernel_type": self.kernel_type,
                "rule": self.rule, "ops": [op.name for op in self.ops],
                "unit_types": self.unit_types, "flops": self.flops, "macs": self.macs,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "weight_bytes": self.weight_bytes, "params": self.params}


@dataclass
class KernelGraph:
    """The kernels of one model under one rule set, in graph order."""

    graph: OpGraph
    kernels: list[Kernel]
    rules: RuleSet

    def kernel_of(self) -> dict[int, int]:
        """Op index -> index of the kernel holding it."""
        return {op.index: kernel.index for kernel in self.kernels for op in kernel.ops}

    def by_type(self) -> dict[str, list[Kernel]]:
        """Kernels grouped by kernel type (types in :data:`KERNEL_TYPES` order)."""
        groups: dict[str, list[Kernel]] = {}
        for kernel in self.kernels:
            groups.setdefault(kernel.kernel_type, []).append(kernel)
        return {t: groups[t] for t in KERNEL_TYPES if t in groups}

    def unknown_report(self) -> list[dict[str, Any]]:
        """Op types the cost model cannot price fully, one row per (op type, reason).

        Reasons: ``no cost formula`` (op kept with 0 FLOPs), ``shapes not inferred`` (figures
        missing), ``no kernel type`` (priced, but no kernel family learns it). Each row has
        ``count``, ``flops``, ``bytes`` (read + written) and their shares of the model totals
        (``flops_share``, ``bytes_share``, 0..1). Empty when every op is covered.
        """
        total_flops = sum(op.flops for op in self.graph.ops) or 1
        total_bytes = sum(op.bytes_read + op.bytes_written for op in self.graph.ops) or 1
        kernel_type = {op.index: k.kernel_type for k in self.kernels for op in k.ops}
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for op in self.graph.ops:
            if not op.known:
                reason = "no cost formula"
            elif not op.shapes_complete:
                reason = "shapes not inferred"
            elif kernel_type[op.index] == "other":
                reason = "no kernel type"
            else:
                continue
            row = rows.setdefault((op.op_type, reason), {
                "op_type": op.op_type, "domain": op.domain, "reason": reason, "count": 0,
                "flops": 0, "bytes": 0})
            row["count"] += 1
            row["flops"] += op.flops
            row["bytes"] += op.bytes_read + op.bytes_written
        for row in rows.values():
            row["flops_share"] = row["flops"] / total_flops
            row["bytes_share"] = row["bytes"] / total_bytes
        return sorted(rows.values(), key=lambda r: (-r["bytes_share"], r["op_type"]))

    def summary(self) -> list[dict[str, Any]]:
        """Per kernel type: count, FLOPs, bytes (read + written)."""
        return [{"kernel_type": t, "count": len(ks), "flops": sum(k.flops for k in ks),
                 "bytes": sum(k.bytes_read + k.bytes_written for k in ks)}
                for t, ks in self.by_type().items()]


def fuse(graph: OpGraph, rules: RuleSet | str = "onnxruntime") -> KernelGraph:
    """Group ``graph``'s ops into kernels with ``rules`` (a RuleSet or a runtime name)."""
    rule_set = load_rules(rules) if isinstance(rules, str) else rules
    units = _group_composites(graph, rule_set.composites)
    consumers = _unit_consumers(units)
    graph_outputs = {t.name for t in graph.outputs}
    claimed: set[int] = set()
    kernels: list[Kernel] = []
    for position, unit in enumerate(units):
        if position in claimed:
            continue
        chain, rule = [position], None
        for candidate in rule_set.rules:
            matched = _match_rule(candidate, position, units, consumers, claimed, graph_outputs)
            if matched:
                chain, rule = matched, candidate
                break
        claimed.update(chain)
        members = [units[i] for i in chain]
        kernel_type = (rule.kernel_type if rule and rule.kernel_type else None) or classify(members[0])
        kernels.append(_make_kernel(len(kernels), kernel_type, rule.name if rule else "single",
                                    members))
    if rule_set.blocks:
        from costmeter.predictors.kernels.blocks import group_blocks

        kernels = group_blocks(kernels, rule_set.blocks, graph_outputs)
    return KernelGraph(graph, kernels, rule_set)


def classify(unit: Unit) -> str:
    """Kernel type of a kernel anchored at ``unit`` (see :data:`KERNEL_TYPES`)."""
    op = unit.ops[0]
    if all(t.constant for t in op.outputs if t.name) and unit.op_type not in ("Shape", "Size"):
        return "constant"  # folded by the runtime before it runs
    kind = unit.op_type
    if _shape_arithmetic(op):
        return "shape"
    if kind in ("Conv", "ConvInteger", "QLinearConv"):
        weight = op.inputs[3 if kind == "QLinearConv" else 1].shape
        groups = int(op.attributes.get("group", 1))
        return "dwconv" if groups > 1 and weight is not None and weight[1] == 1 else "conv"
    if kind == "ConvTranspose":
        return "conv_transpose"
    if kind == "Gemm":
        return "fc"
    if kind in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        return "fc" if any(t.constant for t in op.inputs[1:2]) else "matmul"
    if kind in ("Attention", "MultiHeadAttention", "GroupQueryAttention"):
        return "attention"
    if kind in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        return "global_pool"
    if kind in ("ReduceMean", "ReduceMax") and _spatial_reduce(op):
        return "global_pool"
    if kind == "Concat":
        return "concat"
    if kind in ("Softmax", "LogSoftmax"):
        return "softmax"
    if kind in ("LayerNormalization", "LayerNormPieces", "SkipLayerNormalization",
                "SimplifiedLayerNormalization", "RMSNormalization"):
        return "layernorm"
    if kind in ACTIVATION_TYPES:
        return "activation"
    if kind in BINARY_TYPES or op.category == "elementwise":
        return "elementwise"
    return _CATEGORY_TYPES.get(op.category, "other")


def _shape_arithmetic(op: Op) -> bool:
    """Whether ``op`` computes on shapes: every output an integer tensor of at most one
    dimension (a shape vector or one of its entries)."""
    outputs = [t for t in op.outputs if t.name]
    return bool(outputs) and all(t.dtype in _INTEGER_DTYPES and t.shape is not None
                                 and len(t.shape) <= 1 for t in outputs)


def _spatial_reduce(op: Op) -> bool:
    """True for a ReduceMean/Max over the trailing spatial axes of an NCHW tensor."""
    shape = op.inputs[0].shape
    axes = op.attributes.get("axes")
    if axes is None and len(op.inputs) > 1 and op.inputs[1].name:
        return shape is not None and len(shape) == 4  # axes given as a tensor (opset 18)
    if shape is None or axes is None or len(shape) != 4:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


def _single_unit(op: Op) -> Unit:
    inputs = [t for t in op.inputs if t.name]
    return Unit(op.op_type, [op], list(dict.fromkeys(inputs)), [t for t in op.outputs if t.name])


def _group_composites(graph: OpGraph, composites: Iterable[str]) -> list[Unit]:
    """Units in graph order: each composite match becomes one unit, other ops one each."""
    patterns = [(name, COMPOSITE_PATTERNS[name]) for name in composites]
    consumers: dict[str, list[Op]] = {}
    for op in graph.ops:
        for name in {t.name for t in op.inputs if t.name}:
            consumers.setdefault(name, []).append(op)
    graph_outputs = {t.name for t in graph.outputs}
    used: set[int] = set()
    units: list[Unit] = []
    for op in graph.ops:
        if op.index in used:
            continue
        unit = None
        for name, nodes in patterns:
            if nodes[0][0] == op.op_type:
                unit = _match_composite(name, nodes, op, consumers, used, graph_outputs)
                if unit:
                    break
        unit = unit or _single_unit(op)
        used.update(member.index for member in unit.ops)
        units.append(unit)
    units.sort(key=lambda u: u.ops[-1].index)  # a unit sits where its output is produced
    return units


def _match_composite(name: str, nodes: list[list[Any]], first: Op, consumers: dict[str, list[Op]],
                     used: set[int], graph_outputs: set[str]) -> Unit | None:
    """Match ``nodes`` starting at ``first``; None if the spelling differs anywhere."""
    candidates = [t for t in first.inputs if t.name and not t.constant]
    for x in candidates:
        matched: list[Op] = []
        if _refs_match(first, nodes[0][1], x, matched):
            matched.append(first)
            if _extend_composite(nodes, x, matched, consumers, used):
                inner = {t.name for op in matched[:-1] for t in op.outputs}
                member_ids = {op.index for op in matched}
                if any(t in graph_outputs or any(c.index not in member_ids for c in consumers.get(t, []))
                       for t in inner):
                    continue  # an intermediate is needed elsewhere: not fusable as one function
                outputs = [t for t in matched[-1].outputs if t.name]
                return Unit(name, matched, [x] + _constant_inputs(matched, inner), outputs)
    return None


def _extend_composite(nodes: list[list[Any]], x: TensorInfo, matched: list[Op],
                      consumers: dict[str, list[Op]], used: set[int]) -> bool:
    for op_type, refs in nodes[1:]:
        produced = {ref for ref in refs if isinstance(ref, int)}
        sources = [matched[i].outputs[0].name for i in produced] or [x.name]
        found = None
        for op in consumers.get(sources[0], []):
            if op.op_type == op_type and op.index not in used and op not in matched \
                    and _refs_match(op, refs, x, matched):
                found = op
                break
        if found is None:
            return False
        matched.append(found)
    return True


def _refs_match(op: Op, refs: list[Any], x: TensorInfo, matched: list[Op]) -> bool:
    present = [t for t in op.inputs if t.name]
    if len(present) != len(refs):
        return False
    orders = [present, present[::-1]] if op.op_type in COMMUTATIVE and len(present) == 2 else [present]
    for order in orders:
        if all(_ref_ok(ref, tensor, x, matched) for ref, tensor in zip(refs, order)):
            return True
    return False


def _ref_ok(ref: Any, tensor: TensorInfo, x: TensorInfo, matched: list[Op]) -> bool:
    if ref == "x":
        return tensor.name == x.name
    if ref == "c":
        return tensor.constant
    return isinstance(ref, int) and ref < len(matched) and matched[ref].outputs[0].name == tensor.name


def _constant_inputs(ops: list[Op], inner: set[str]) -> list[TensorInfo]:
    return list(dict.fromkeys(t for op in ops for t in op.inputs
                              if t.name and t.constant and t.name not in inner))


def _unit_consumers(units: list[Unit]) -> dict[str, list[int]]:
    consumers: dict[str, list[int]] = {}
    for position, unit in enumerate(units):
        for name in {t.name for t in unit.inputs}:
            consumers.setdefault(name, []).append(position)
    return consumers


def _operand_ok(unit: Unit, through: str | None, operand: str) -> bool:
    others = [t for t in unit.inputs if t.name != through]
    if operand == "const":
        return bool(others) and all(t.constant for t in others)
    if operand == "tensor":
        return any(not t.constant for t in others)
    return True


def _match_rule(rule: FusionRule, start: int, units: list[Unit], consumers: dict[str, list[int]],
                claimed: set[int], graph_outputs: set[str]) -> list[int] | None:
    """Positions of the units ``rule`` fuses starting at ``start``; None if it does not apply."""
    anchor, first = units[start], rule.steps[0]
    flow = next((t.name for t in anchor.inputs if not t.constant), None)
    if anchor.op_type not in first.types or not _operand_ok(anchor, flow, first.operand):
        return None
    chain = [start]
    for step in rule.steps[1:]:
        taken = 0
        while True:
            nxt = _next_unit(chain[-1], units, consumers, claimed, graph_outputs)
            if nxt is None or units[nxt].op_type not in step.types or not _operand_ok(
                    units[nxt], units[chain[-1]].outputs[0].name, step.operand):
                break
            chain.append(nxt)
            taken += 1
            if not step.repeat:
                break
        if taken == 0 and not step.optional:
            return None
    return chain


def _next_unit(position: int, units: list[Unit], consumers: dict[str, list[int]],
               claimed: set[int], graph_outputs: set[str]) -> int | None:
    """The single consumer of a unit's single output, if the output can stay in registers."""
    outputs = units[position].outputs
    if len(outputs) != 1 or outputs[0].name in graph_outputs:
        return None
    users = consumers.get(outputs[0].name, [])
    if len(users) != 1 or users[0] in claimed or users[0] <= position:
        return None
    return users[0]


def _make_kernel(index: int, kernel_type: str, rule: str, units: list[Unit]) -> Kernel:
    kernel = Kernel(index, kernel_type, rule, units)
    ops = kernel.ops
    if len(ops) == 1:
        kernel.inputs = [t for t in ops[0].inputs if t.name]
        kernel.outputs = [t for t in ops[0].outputs if t.name]
        if kernel_type != "constant":
            kernel.bytes_read, kernel.bytes_written = ops[0].bytes_read, ops[0].bytes_written
        return kernel
    produced = {t.name for op in ops for t in op.outputs if t.name}
    read = {t.name: t for op in ops for t in op.inputs if t.name and t.name not in produced}
    # fusion never crosses a graph output or a tensor with other readers, so only the last
    # unit's outputs leave the kernel
    written = {t.name: t for t in units[-1].outputs}
    kernel.inputs, kernel.outputs = list(read.values()), list(written.values())
    if kernel_type not in _NO_TRAFFIC:
        kernel.bytes_read = sum(t.nbytes or 0 for t in read.values())
        kernel.bytes_written = sum(t.nbytes or 0 for t in written.values())
    return kernel
