"""Arithmetic cost of single ONNX operators from their inferred shapes (used by ``graph``).

Counting conventions (shared by every figure the cost model learns from):

- ``macs``: multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul/Einsum/Attention only
  (the figure papers quote and torch's ``FlopCounterMode`` reports as FLOPs / 2).
- ``flops``: 2 per MAC, plus 1 per output element for a bias or Gemm's C term. Element-wise
  ops count 1 per output element whatever the function (an ``Exp`` or an ``Add`` both count 1;
  variadic ``Sum``/``Max``/... count inputs - 1). Composite ops count the primitive steps of their
  definition per element: Softmax/LogSoftmax 5 (max, subtract, exp, sum, divide),
  LayerNormalization/InstanceNormalization/GroupNormalization 7 (mean, subtract, square,
  variance sum, multiply by 1/std, scale, shift; 6 without a bias), BatchNormalization 2
  (inference: statistics fold into one scale and one shift). Pools count one operation per
  window element per output (max/avg), global pools and reductions one per input element.
  Resize with nearest mode is a copy (0); linear/cubic modes count a multiply and an add per
  interpolation tap (2 or 4 taps per resized axis).
- Ops that only move data (Transpose, Concat, Gather, Pad, Cast, ...) have 0 FLOPs.

Every op gets a ``category`` ("conv", "matmul", "pool", "reduce", "normalize", "elementwise",
"resize", "data", "view", "shape") or "unknown" when no formula is registered; unknown ops are
kept by the caller with 0 FLOPs, never dropped.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Shape = tuple  # tuple[int | str | None, ...]; only fully-int shapes give costs


@dataclass(frozen=True)
class OpCost:
    """Arithmetic cost of one op; ``complete`` is False when a needed shape was unknown."""

    category: str
    macs: int = 0
    flops: int = 0
    complete: bool = True
    known: bool = True


def numel(shape: Shape | None) -> int | None:
    """Element count of a fully known shape, else None."""
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return math.prod(shape)


def _incomplete(category: str) -> OpCost:
    return OpCost(category, complete=False)


CostFn = Callable[[Sequence[Any], Sequence[Any], dict[str, Any]], OpCost]
# inputs/outputs are sequences of objects with ``.shape`` and ``.name`` (graph.TensorInfo)


def _has(inputs: Sequence[Any], index: int) -> bool:
    return 0 <= index < len(inputs) and bool(inputs[index].name)


def _conv(weight_index: int, bias_index: int) -> CostFn:
    def cost(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
        out = numel(outputs[0].shape)
        weight = inputs[weight_index].shape if _has(inputs, weight_index) else None
        per_output = numel(weight[1:]) if weight else None  # (C_in / groups) * prod(kernel)
        if out is None or per_output is None:
            return _incomplete("conv")
        macs = out * per_output
        return OpCost("conv", macs, 2 * macs + (out if _has(inputs, bias_index) else 0))

    return cost


def _conv_transpose(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    # every input element is multiplied by a (C_out / groups) x kernel slice of the weight
    x_count, out = numel(inputs[0].shape), numel(outputs[0].shape)
    weight = inputs[1].shape
    per_input = numel(weight[1:]) if weight else None
    if x_count is None or out is None or per_input is None:
        return _incomplete("conv")
    macs = x_count * per_input
    return OpCost("conv", macs, 2 * macs + (out if _has(inputs, 2) else 0))


def _gemm(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    out, a = numel(outputs[0].shape), inputs[0].shape
    if out is None or a is None or len(a) != 2 or not isinstance(a[0], int):
        return _incomplete("matmul")
    inner = a[0] if attrs.get("transA", 0) else a[1]
    if not isinstance(inner, int):
        return _incomplete("matmul")
    macs = out * inner
    return OpCost("matmul", macs, 2 * macs + (out if _has(inputs, 2) else 0))


def _matmul(a_index: int) -> CostFn:
    def cost(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
        # batched and broadcast MatMul: each output element is a dot product of length K
        out, a = numel(outputs[0].shape), inputs[a_index].shape
        if out is None or not a or not isinstance(a[-1], int):
            return _incomplete("matmul")
        macs = out * a[-1]
        return OpCost("matmul", macs, 2 * macs)

    return cost


def _einsum_sizes(equation: str, shapes: Sequence[Shape]) -> tuple[dict[str, int], str] | None:
    """Letter -> size for every labelled axis, and the output term, or None if unknown."""
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        head, _, tail = term.partition("...")
        for letter, dim in zip(head, shape):
            sizes[letter] = dim
        for letter, dim in zip(reversed(tail), reversed(shape)):
            sizes[letter] = dim
    if not rhs and "->" not in equation:
        letters = "".join(terms).replace(".", "")
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return sizes, rhs


def _einsum(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    out = numel(outputs[0].shape)
    parsed = _einsum_sizes(str(attrs.get("equation", "")), [i.shape for i in inputs])
    if out is None or parsed is None:
        return _incomplete("matmul")
    sizes, rhs = parsed
    contracted = math.prod(size for letter, size in sizes.items() if letter not in rhs)
    if len(inputs) < 2:  # a single-operand einsum is a transpose or a reduction
        return OpCost("reduce", 0, out * contracted if contracted > 1 else 0)
    macs = out * contracted * (len(inputs) - 1)
    return OpCost("matmul", macs, 2 * macs)


def _attention(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    """ONNX ``Attention`` (opset 23): softmax(Q K^T) V with 3-D or 4-D Q/K/V."""
    q, k, y = inputs[0].shape, inputs[1].shape, outputs[0].shape
    q_count, y_count = numel(q), numel(y)
    if q_count is None or y_count is None or k is None or len(k) not in (3, 4):
        return _incomplete("matmul")
    kv_len = k[2] if len(k) == 4 else k[1]
    heads = 1 if len(q) == 4 else int(attrs.get("q_num_heads", 1))
    head_dim = q[-1] // heads
    score_count = q_count // head_dim * kv_len
    macs = kv_len * (q_count + y_count)  # Q K^T and (scores) V
    return OpCost("matmul", macs, 2 * macs + 5 * score_count)


def _per_output(category: str, per_element: int = 1) -> CostFn:
    def cost(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
        out = numel(outputs[0].shape)
        return _incomplete(category) if out is None else OpCost(category, 0, per_element * out)

    return cost


def _per_input(category: str, per_element: int = 1) -> CostFn:
    def cost(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
        count = numel(inputs[0].shape)
        return _incomplete(category) if count is None else OpCost(category, 0, per_element * count)

    return cost


def _variadic(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    out = numel(outputs[0].shape)
    if out is None:
        return _incomplete("elementwise")
    return OpCost("elementwise", 0, out * max(1, sum(1 for i in inputs if i.name) - 1))


def _window_pool(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    out, kernel = numel(outputs[0].shape), attrs.get("kernel_shape")
    if out is None or not kernel:
        return _incomplete("pool")
    return OpCost("pool", 0, out * math.prod(kernel))


def _layer_norm(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    count = numel(inputs[0].shape)
    if count is None:
        return _incomplete("normalize")
    return OpCost("normalize", 0, count * (7 if _has(inputs, 2) else 6))


def _resize(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
    x, y = inputs[0].shape, outputs[0].shape
    out = numel(y)
    if out is None or numel(x) is None or len(x) != len(y):
        return _incomplete("resize")
    mode = str(attrs.get("mode", "nearest"))
    taps_per_axis = {"linear": 2, "bilinear": 2, "cubic": 4}.get(mode, 0)
    resized_axes = sum(1 for a, b in zip(x, y) if a != b)
    if taps_per_axis == 0:
        return OpCost("resize", 0, 0)
    return OpCost("resize", 0, out * 2 * taps_per_axis**resized_axes)


def _free(category: str) -> CostFn:
    def cost(inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]) -> OpCost:
        return OpCost(category)

    return cost


ELEMENTWISE = (
    "Add Sub Mul Div Pow Mod Neg Abs Reciprocal Sqrt Exp Log Erf Sin Cos Tan Asin Acos Atan "
    "Sinh Cosh Asinh Acosh Atanh Tanh Sigmoid HardSigmoid HardSwish Relu LeakyRelu PRelu Elu "
    "Selu Celu Gelu Softplus Softsign Mish ThresholdedRelu Shrink Clip Floor Ceil Round Sign "
    "Equal Less LessOrEqual Greater GreaterOrEqual Not And Or Xor Where IsNaN IsInf BitShift "
    "QuantizeLinear DequantizeLinear"
).split()
REDUCTIONS = (
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin GlobalAveragePool GlobalMaxPool GlobalLpPool "
    "CumSum TopK"
).split()
DATA_MOVEMENT = (
    "Transpose Concat Split Slice Gather GatherElements GatherND ScatterND ScatterElements Pad "
    "Expand Tile Cast CastLike DepthToSpace SpaceToDepth Trilu ConstantOfShape Range OneHot "
    "NonZero EyeLike"
).split()
VIEWS = "Reshape Flatten Squeeze Unsqueeze Identity Dropout".split()
SHAPE_ONLY = "Shape Size Constant".split()

COST_FUNCTIONS: dict[str, CostFn] = {
    "Conv": _conv(1, 2),
    "ConvInteger": _conv(1, -1),
    "QLinearConv": _conv(3, 8),
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul(0),
    "MatMulInteger": _matmul(0),
    "QLinearMatMul": _matmul(0),
    "Einsum": _einsum,
    "Attention": _attention,
    "MaxPool": _window_pool,
    "AveragePool": _window_pool,
    "LpPool": _window_pool,
    "Softmax": _per_input("normalize", 5),
    "LogSoftmax": _per_input("normalize", 5),
    "LayerNormalization": _layer_norm,
    "InstanceNormalization": _per_input("normalize", 7),
    "GroupNormalization": _per_input("normalize", 7),
    "BatchNormalization": _per_input("normalize", 2),
    "Resize": _resize,
    "Upsample": _resize,
    "Sum": _variadic,
    "Max": _variadic,
    "Min": _variadic,
    "Mean": _variadic,
}
COST_FUNCTIONS.update({name: _per_output("elementwise") for name in ELEMENTWISE})
COST_FUNCTIONS.update({name: _per_input("reduce") for name in REDUCTIONS})
COST_FUNCTIONS.update({name: _free("data") for name in DATA_MOVEMENT})
COST_FUNCTIONS.update({name: _free("view") for name in VIEWS})
COST_FUNCTIONS.update({name: _free("shape") for name in SHAPE_ONLY})


def op_cost(
    op_type: str, domain: str, inputs: Sequence[Any], outputs: Sequence[Any], attrs: dict[str, Any]
) -> OpCost:
    """Cost of one node of the default ONNX domain; ``known=False`` for anything unregistered."""
    fn = COST_FUNCTIONS.get(op_type) if domain in ("", "ai.onnx") else None
    if fn is None or not outputs:
        return OpCost("unknown", known=False)
    return fn(inputs, outputs, attrs)
