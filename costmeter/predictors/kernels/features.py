"""Named, versioned feature vectors per kernel type, and model-level aggregates.

Every kernel type has a fixed tuple of feature names (:data:`KERNEL_FEATURES`): the shared cost
columns (:data:`COMMON_FEATURES`) followed by shape columns of that type. Tables are pandas
DataFrames with exactly those columns, in that order, one row per kernel; their ``attrs`` carry
``feature_schema_version`` and ``kernel_type``. Columns are never positional lists: a reader
selects by name, and :data:`FEATURE_SCHEMA_VERSION` changes whenever a name or a meaning does.

Units: FLOPs and MACs per whole batch; bytes in bytes; spatial sizes in elements; ``intensity``
in FLOPs per byte crossing the kernel boundary. Activation kinds are coded by
:data:`ACTIVATION_CODES` (0 = none); trees split on codes like on any number.

Precision (schema 2): every kernel ends with ``precision_bits``, the width of the type its compute
runs in: 8 for a kernel holding quantized ops (a QDQ pair, MatMulInteger, ...; see
``rules.QUANTIZED_TYPES``) or a conv/fc/matmul kernel of a run at ``int8`` whose runtime
quantizes a float graph itself (OpenVINO, LiteRT, ExecuTorch), 16 for fp16/bf16 runs, else 32.
Models add ``precision_bits`` (the run's) and ``int8_macs_share`` (share of MACs in 8-bit kernels).
Every extractor takes ``precision`` (fp32 | fp16 | bf16 | int8; default fp32).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from costmeter.models.onnx.graph import Op, TensorInfo
from costmeter.predictors.kernels.fuse import KERNEL_TYPES, Kernel, KernelGraph

FEATURE_SCHEMA_VERSION = 3  # 2: precision_bits (kernels, models) and int8_macs_share (models); 3: the se block type
PRECISION_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}
_COMPUTE_TYPES = ("conv", "dwconv", "conv_transpose", "fc", "matmul", "attention")

ACTIVATION_CODES: dict[str, int] = {
    "Relu": 1, "Clip": 2, "HardSwish": 3, "HardSwishMul": 3, "HardSigmoid": 4, "Sigmoid": 5,
    "SiLU": 6, "GELU": 7, "Gelu": 7, "Tanh": 8, "LeakyRelu": 9, "Elu": 10, "Selu": 10,
    "Softplus": 11, "Mish": 12, "PRelu": 13, "Erf": 14, "Exp": 15, "Sqrt": 16,
}
OTHER_ACTIVATION = 99
DATA_OP_CODES: dict[str, int] = {
    "Transpose": 1, "Gather": 2, "Slice": 3, "Split": 4, "Pad": 5, "Cast": 6, "Expand": 7,
    "Tile": 8, "Where": 9, "GatherElements": 10, "ScatterND": 11, "DepthToSpace": 12,
    "SpaceToDepth": 13,
}

COMMON_FEATURES: tuple[str, ...] = (
    "batch", "n_ops", "flops", "macs", "bytes_read", "bytes_written", "weight_bytes", "params",
    "intensity", "out_numel",
)
_CONV = ("h_in", "w_in", "c_in", "c_out", "kernel_h", "kernel_w", "stride", "groups", "dilation",
         "h_out", "w_out", "fused_bn", "fused_add", "fused_act", "act_code")
_TYPE_FEATURES: dict[str, tuple[str, ...]] = {
    "conv": _CONV, "dwconv": _CONV, "conv_transpose": _CONV,
    "fc": ("m", "k", "n", "fused_add", "fused_act", "act_code"),
    "matmul": ("batch_count", "m", "k", "n"),
    "attention": ("heads", "seq_q", "seq_kv", "head_dim", "hidden"),
    "pool": ("h_in", "w_in", "c", "kernel_h", "kernel_w", "stride", "h_out", "w_out", "pool_max"),
    "global_pool": ("h_in", "w_in", "c"),
    "elementwise": ("numel", "n_inputs", "broadcast", "n_units", "act_code"),
    "activation": ("numel", "act_code", "n_units"),
    "concat": ("numel", "n_inputs", "axis_size"),
    "softmax": ("rows", "row_len"),
    "layernorm": ("rows", "hidden"),
    "norm": ("numel", "channels"),
    "reduce": ("in_numel", "out_numel_reduced"),
    "resize": ("in_numel", "scale"),
    "data": ("in_numel", "op_code"),
    "view": (), "shape": (), "constant": (), "other": ("in_numel",),
    "se": ("h_in", "w_in", "c", "c_mid", "act_code", "gate_code"),
}
KERNEL_FEATURES: dict[str, tuple[str, ...]] = {
    t: COMMON_FEATURES + _TYPE_FEATURES[t] + ("precision_bits",) for t in KERNEL_TYPES
}
MODEL_FEATURES: tuple[str, ...] = (
    "batch", "input_numel", "flops", "macs", "bytes_read", "bytes_written", "weight_bytes",
    "params", "intensity", "n_ops", "n_kernels", "unknown_flops_share", "unknown_bytes_share",
) + tuple(f"{t}_{m}" for t in KERNEL_TYPES for m in ("count", "flops", "bytes")) + (
    "precision_bits", "int8_macs_share")


def _precision_bits(precision: str) -> int:
    from costmeter.errors import ConfigError

    if precision not in PRECISION_BITS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_BITS)}")
    return PRECISION_BITS[precision]


def kernel_precision_bits(kernel: Kernel, precision: str = "fp32") -> int:
    """Bits of the type ``kernel`` computes in (see the module docstring)."""
    from costmeter.predictors.kernels.rules import QUANTIZED_TYPES

    if any(unit.op_type in QUANTIZED_TYPES for unit in kernel.units):
        return 8
    bits = _precision_bits(precision)
    if bits == 8 and kernel.kernel_type not in _COMPUTE_TYPES:
        return 32  # a runtime quantizing a float graph keeps the rest in float
    return bits


def _dims(tensor: TensorInfo | None) -> list[int]:
    """Shape as ints (unknown dims as 0)."""
    if tensor is None or tensor.shape is None:
        return []
    return [d if isinstance(d, int) else 0 for d in tensor.shape]


def _numel(tensor: TensorInfo | None) -> int:
    """Element count (1 for a scalar, 0 when the shape is unknown)."""
    if tensor is None or tensor.shape is None:
        return 0
    return math.prod(_dims(tensor))


def _spatial(dims: list[int]) -> tuple[int, int]:
    """(H, W) of an N,C,spatial... shape; 1-D spatial gives (L, 1)."""
    if len(dims) >= 4:
        return dims[2], dims[3]
    if len(dims) == 3:
        return dims[2], 1
    return 1, 1


def _act_code(kernel: Kernel) -> int:
    acts = [u.op_type for u in kernel.units[1:] if u.op_type in ACTIVATION_CODES]
    if not acts:
        return 0
    return ACTIVATION_CODES.get(acts[-1], OTHER_ACTIVATION)


def _pair(values: Any, default: int) -> tuple[int, int]:
    values = list(values or [])
    if not values:
        return default, default
    return int(values[0]), int(values[1] if len(values) > 1 else values[0])


def _common(kernel: Kernel) -> dict[str, float]:
    first_input = next((t for t in kernel.anchor.inputs if t.name and not t.constant), None)
    dims = _dims(first_input) or _dims(kernel.outputs[0] if kernel.outputs else None)
    return {
        "batch": dims[0] if dims else 1, "n_ops": len(kernel.ops), "flops": kernel.flops,
        "macs": kernel.macs, "bytes_read": kernel.bytes_read,
        "bytes_written": kernel.bytes_written, "weight_bytes": kernel.weight_bytes,
        "params": kernel.params, "intensity": kernel.intensity,
        "out_numel": sum(_numel(t) for t in kernel.outputs),
    }


def _conv(kernel: Kernel, op: Op) -> dict[str, float]:
    x, y = _dims(op.inputs[0]), _dims(op.outputs[0])
    weight = _dims(op.inputs[1])
    h_in, w_in = _spatial(x)
    h_out, w_out = _spatial(y)
    kernel_h, kernel_w = _pair(op.attributes.get("kernel_shape"), 1)
    stride, _ = _pair(op.attributes.get("strides"), 1)
    dilation, _ = _pair(op.attributes.get("dilations"), 1)
    types = kernel.unit_types[1:]
    return {
        "h_in": h_in, "w_in": w_in, "c_in": x[1] if len(x) > 1 else 0,
        "c_out": y[1] if len(y) > 1 else (weight[0] if weight else 0),
        "kernel_h": kernel_h, "kernel_w": kernel_w, "stride": stride,
        "groups": int(op.attributes.get("group", 1)), "dilation": dilation,
        "h_out": h_out, "w_out": w_out, "fused_bn": int("BatchNormalization" in types),
        "fused_add": int("Add" in types), "fused_act": int(_act_code(kernel) > 0),
        "act_code": _act_code(kernel),
    }


def _fc(kernel: Kernel, op: Op) -> dict[str, float]:
    a, y = _dims(op.inputs[0]), _dims(op.outputs[0])
    trans_a = op.op_type == "Gemm" and op.attributes.get("transA", 0)
    k = (a[0] if trans_a else a[-1]) if a else 0
    n = y[-1] if y else 0
    m = math.prod(y[:-1]) if len(y) > 1 else 1
    types = kernel.unit_types[1:]
    return {"m": m, "k": k, "n": n, "fused_add": int("Add" in types),
            "fused_act": int(_act_code(kernel) > 0), "act_code": _act_code(kernel)}


def _matmul(kernel: Kernel, op: Op) -> dict[str, float]:
    a, y = _dims(op.inputs[0]), _dims(op.outputs[0])
    return {"batch_count": math.prod(y[:-2]) if len(y) > 2 else 1,
            "m": y[-2] if len(y) > 1 else 1, "k": a[-1] if a else 0, "n": y[-1] if y else 0}


def _attention(kernel: Kernel, op: Op) -> dict[str, float]:
    if op.op_type == "MatMul":  # fused chain: scores = Q @ K^T with Q [B, heads, S_q, D]
        q, k = _dims(op.inputs[0]), _dims(op.inputs[1])
        heads = q[1] if len(q) == 4 else 1
        seq_q, head_dim = (q[-2], q[-1]) if len(q) >= 2 else (0, 0)
        seq_kv = k[-1] if k else 0
    else:  # a runtime's attention op: query [B, S, hidden]
        q = _dims(op.inputs[0])
        heads = int(op.attributes.get("num_heads", op.attributes.get("q_num_heads", 1)))
        seq_q = seq_kv = q[1] if len(q) > 1 else 0
        head_dim = (q[-1] // max(heads, 1)) if q else 0
    return {"heads": heads, "seq_q": seq_q, "seq_kv": seq_kv, "head_dim": head_dim,
            "hidden": heads * head_dim}


def _pool(kernel: Kernel, op: Op) -> dict[str, float]:
    x, y = _dims(op.inputs[0]), _dims(op.outputs[0])
    h_in, w_in = _spatial(x)
    h_out, w_out = _spatial(y)
    kernel_h, kernel_w = _pair(op.attributes.get("kernel_shape"), 1)
    stride, _ = _pair(op.attributes.get("strides"), 1)
    return {"h_in": h_in, "w_in": w_in, "c": x[1] if len(x) > 1 else 0, "kernel_h": kernel_h,
            "kernel_w": kernel_w, "stride": stride, "h_out": h_out, "w_out": w_out,
            "pool_max": int(op.op_type in ("MaxPool", "GlobalMaxPool"))}


def _global_pool(kernel: Kernel, op: Op) -> dict[str, float]:
    x = _dims(op.inputs[0])
    h_in, w_in = _spatial(x)
    return {"h_in": h_in, "w_in": w_in, "c": x[1] if len(x) > 1 else 0}


def _se(kernel: Kernel, op: Op) -> dict[str, float]:
    from costmeter.predictors.kernels.blocks import se_parts

    values = _global_pool(kernel, op)
    parts = se_parts(kernel.units[1:-1])
    squeezed, act, gate = parts if parts else (0, "", "")
    values.update(c_mid=squeezed, act_code=ACTIVATION_CODES.get(act, 0),
                  gate_code=ACTIVATION_CODES.get(gate, 0))
    return values


def _elementwise(kernel: Kernel, op: Op) -> dict[str, float]:
    out = sum(_numel(t) for t in kernel.outputs)
    tensors = [t for t in kernel.inputs if not t.constant]
    return {"numel": out, "n_inputs": len(tensors),
            "broadcast": int(any(0 < _numel(t) < out for t in tensors)),
            "n_units": len(kernel.units), "act_code": _act_code(kernel)}


def _activation(kernel: Kernel, op: Op) -> dict[str, float]:
    code = ACTIVATION_CODES.get(kernel.units[-1].op_type, OTHER_ACTIVATION)
    return {"numel": sum(_numel(t) for t in kernel.outputs), "act_code": code,
            "n_units": len(kernel.units)}


def _concat(kernel: Kernel, op: Op) -> dict[str, float]:
    y = _dims(op.outputs[0])
    axis = int(op.attributes.get("axis", 0))
    return {"numel": _numel(op.outputs[0]), "n_inputs": len([t for t in op.inputs if t.name]),
            "axis_size": y[axis] if y and -len(y) <= axis < len(y) else 0}


def _rows(kernel: Kernel, op: Op, names: tuple[str, str]) -> dict[str, float]:
    x = _dims(op.inputs[0])
    axis = int(op.attributes.get("axis", -1))
    if not x:
        return {names[0]: 0, names[1]: 0}
    axis = axis % len(x)
    return {names[0]: math.prod(x[:axis]), names[1]: math.prod(x[axis:])}


def _norm(kernel: Kernel, op: Op) -> dict[str, float]:
    x = _dims(op.inputs[0])
    return {"numel": _numel(op.inputs[0]), "channels": x[1] if len(x) > 1 else 0}


def _in_out(name_out: str) -> Any:
    def extract(kernel: Kernel, op: Op) -> dict[str, float]:
        first = next((t for t in op.inputs if t.name), None)
        in_numel, out_numel = _numel(first), _numel(op.outputs[0] if op.outputs else None)
        if name_out == "scale":
            return {"in_numel": in_numel, "scale": out_numel / in_numel if in_numel else 0.0}
        if name_out == "op_code":
            return {"in_numel": in_numel, "op_code": DATA_OP_CODES.get(op.op_type, 0)}
        return {"in_numel": in_numel, name_out: out_numel} if name_out else {"in_numel": in_numel}

    return extract


_EXTRACTORS: dict[str, Any] = {
    "conv": _conv, "dwconv": _conv, "conv_transpose": _conv, "fc": _fc, "matmul": _matmul,
    "attention": _attention, "pool": _pool, "global_pool": _global_pool,
    "elementwise": _elementwise, "activation": _activation, "concat": _concat,
    "softmax": lambda k, op: _rows(k, op, ("rows", "row_len")),
    "layernorm": lambda k, op: _rows(k, op, ("rows", "hidden")),
    "norm": _norm, "reduce": _in_out("out_numel_reduced"), "resize": _in_out("scale"),
    "data": _in_out("op_code"), "other": _in_out(""), "se": _se,
}


def kernel_features(kernel: Kernel, precision: str = "fp32") -> dict[str, float]:
    """The named features of one kernel: :data:`KERNEL_FEATURES` of its type, in order."""
    values = _common(kernel)
    values["precision_bits"] = kernel_precision_bits(kernel, precision)
    extractor = _EXTRACTORS.get(kernel.kernel_type)
    if extractor is not None:
        values.update(extractor(kernel, kernel.anchor))
    return {name: float(values.get(name, 0.0)) for name in KERNEL_FEATURES[kernel.kernel_type]}


def _frame(kernel_type: str, rows: list[dict[str, float]], index: Any) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(KERNEL_FEATURES[kernel_type]), index=index,
                         dtype="float64")
    frame.attrs.update(feature_schema_version=FEATURE_SCHEMA_VERSION, kernel_type=kernel_type)
    return frame


def feature_tables(kernel_graph: KernelGraph, precision: str = "fp32") -> dict[str, Any]:
    """kernel_type -> DataFrame (one row per kernel, index = kernel name, named columns)."""
    tables: dict[str, Any] = {}
    for kernel_type, kernels in kernel_graph.by_type().items():
        index = [k.name for k in kernels]
        tables[kernel_type] = _frame(kernel_type, [kernel_features(k, precision) for k in kernels], index)
    return tables


def stack_tables(kernel_graphs: Mapping[str, KernelGraph], precision: str = "fp32") -> dict[str, Any]:
    """Feature tables of many models: index levels ``model`` and ``kernel``."""
    import pandas as pd

    rows: dict[str, list[dict[str, float]]] = {}
    keys: dict[str, list[tuple[str, str]]] = {}
    for model, kernel_graph in kernel_graphs.items():
        for kernel in kernel_graph.kernels:
            rows.setdefault(kernel.kernel_type, []).append(kernel_features(kernel, precision))
            keys.setdefault(kernel.kernel_type, []).append((model, kernel.name))
    return {
        t: _frame(t, rows[t], pd.MultiIndex.from_tuples(keys[t], names=["model", "kernel"]))
        for t in KERNEL_TYPES if t in rows
    }


def model_features(kernel_graph: KernelGraph, precision: str = "fp32") -> Any:
    """Model-level aggregates (:data:`MODEL_FEATURES`) as a named float Series."""
    import pandas as pd

    graph = kernel_graph.graph
    totals = graph.totals()
    values: dict[str, float] = {name: 0.0 for name in MODEL_FEATURES}
    values.update({
        "batch": graph.batch, "input_numel": sum(t.numel or 0 for t in graph.inputs),
        "flops": totals["flops"], "macs": totals["macs"],
        "bytes_read": sum(k.bytes_read for k in kernel_graph.kernels),
        "bytes_written": sum(k.bytes_written for k in kernel_graph.kernels),
        "weight_bytes": totals["weight_bytes"], "params": graph.param_count,
        "n_ops": len(graph.ops), "n_kernels": len(kernel_graph.kernels),
    })
    moved = values["bytes_read"] + values["bytes_written"]
    values["intensity"] = values["flops"] / moved if moved else 0.0
    report = kernel_graph.unknown_report()
    values["unknown_flops_share"] = sum(r["flops_share"] for r in report)
    values["unknown_bytes_share"] = sum(r["bytes_share"] for r in report)
    for kernel_type, kernels in kernel_graph.by_type().items():
        values[f"{kernel_type}_count"] = len(kernels)
        values[f"{kernel_type}_flops"] = sum(k.flops for k in kernels)
        values[f"{kernel_type}_bytes"] = sum(k.bytes_read + k.bytes_written for k in kernels)
    values["precision_bits"] = _precision_bits(precision)
    int8_macs = sum(k.macs for k in kernel_graph.kernels if kernel_precision_bits(k, precision) == 8)
    values["int8_macs_share"] = int8_macs / values["macs"] if values["macs"] else 0.0
    series = pd.Series(values, dtype="float64")[list(MODEL_FEATURES)]
    series.attrs["feature_schema_version"] = FEATURE_SCHEMA_VERSION
    return series


def model_feature_table(kernel_graphs: Mapping[str, KernelGraph], precision: str = "fp32") -> Any:
    """One row of :data:`MODEL_FEATURES` per model (index ``model``)."""
    import pandas as pd

    frame = pd.DataFrame([model_features(kg, precision) for kg in kernel_graphs.values()],
                         index=pd.Index(list(kernel_graphs), name="model"))
    frame.attrs["feature_schema_version"] = FEATURE_SCHEMA_VERSION
    return frame
