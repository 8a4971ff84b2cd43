"""Tiny ONNX models of single ops, op pairs and kernels (micro-benchmark graphs).

:class:`GraphBuilder` appends ONNX nodes op by op (:meth:`GraphBuilder.apply` knows the output
shape of every op it can emit), so fusion detection and kernel sampling write the same spellings
that torch's exporters write (BatchNormalization folded or not, ReLU6 as Clip, SiLU as
Sigmoid*Mul, GELU as the erf chain). Models are written into the working folder under a
content-derived name and measured with the harness runner like any model (see
:mod:`costmeter.predictors.sampling.micro_measure`).

In context (:func:`context_chain`): a kernel timed alone is not the kernel inside a network.
ONNX Runtime on x86 runs convolutions, pools and many element-wise ops in a blocked layout
(NCHWc) and converts a lone kernel's input and output around it (ReorderInput/ReorderOutput),
which a network pays only at a few boundaries: a 96-channel 3x3 depthwise conv at 28x28 took
43 us alone and 20 us per conv inside a chain of eight (one thread, AVX-512 x86). So a kernel is
also built between context ops (:func:`context_ops`: a 1x1 depthwise conv on each image input
and on the output, the neighbours a CNN kernel has, run in the layout convs run in; a 1x1 max
pool after the input's conv when the kernel's first op would fuse into it), and each boundary
tensor gets a baseline model of the context ops alone (:func:`context_baseline`); the
difference is the kernel's cost in context (see :mod:`costmeter.predictors.sampling.measure`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from costmeter.errors import ConfigError

OPSET = 17
WEIGHT_SEED = 0

# ops GraphBuilder.apply can emit, by the shape of tensor they act on
IMAGE_OPS = ("Conv", "DWConv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Concat", "Resize", "SE")
ANY_OPS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "SiLU",
           "GELU", "Add", "AddConst", "Mul", "MulConst")
TOKEN_OPS = ("MatMul", "Gemm", "LayerNormalization", "Softmax", "Transpose", "Flatten")
APPLY_OPS = IMAGE_OPS + ANY_OPS + TOKEN_OPS
# a kernel measured in context sits between these: a cheap conv, as a CNN kernel's neighbours are
EDGE_OP: tuple[str, dict[str, Any]] = ("DWConv", {"kernel": 1})
# put after the input edge when the kernel's first op would fuse into it: nothing fuses into a pool
BARRIER_OP: tuple[str, dict[str, Any]] = ("MaxPool", {"kernel": 1, "stride": 1})


@dataclass
class GraphBuilder:
    """Accumulates nodes, initializers and graph inputs of one small float32 model."""

    name: str = "micro"
    seed: int = WEIGHT_SEED
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)
    context: tuple[list[Any], list[Any]] | None = None  # ops on every 4-D input, on the output
    boundary: list[tuple[int, ...]] = field(default_factory=list)  # 4-D inputs/outputs in context
    _count: int = 0

    def fresh(self, prefix: str) -> str:
        """A new unique tensor name."""
        self._count += 1
        return f"{prefix}_{self._count}"

    def input(self, shape: Sequence[int], name: str | None = None) -> str:
        """Declare a float32 graph input of ``shape`` (batch dim symbolic); returns its name, or
        in context the output of the context op applied to it."""
        from onnx import TensorProto, helper

        name = name if name is not None else f"input_{len(self.inputs)}"
        dims = ["batch", *shape[1:]]  # symbolic batch, as exported models have
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        return self._in_context(name, tuple(shape))

    def _in_context(self, x: str, shape: tuple[int, ...], side: int = 0) -> str:
        if self.context is None or len(shape) != 4:
            return x
        self.boundary.append(shape)
        for op, params in self.context[side]:
            x = self.apply(op, x, shape, **params)[0]
        return x

    def weight(self, shape: Sequence[int], scale: float | None = None) -> str:
        """A seeded random float32 initializer (He-like scale); returns its name."""
        import numpy as np
        from onnx import numpy_helper

        rng = np.random.default_rng(self.seed + self._count)
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        std = scale if scale is not None else math.sqrt(2.0 / max(fan_in, 1))
        array = (rng.standard_normal(tuple(shape)) * std).astype(np.float32)
        name = self.fresh("w")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def const(self, values: Sequence[float] | float, shape: Sequence[int] = ()) -> str:
        """A float32 constant initializer."""
        import numpy as np
        from onnx import numpy_helper

        array = np.asarray(values, dtype=np.float32).reshape(tuple(shape))
        name = self.fresh("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """Append one node; returns its output name."""
        from onnx import helper

        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def apply(self, op: str, x: str, shape: tuple[int, ...], **p: Any) -> tuple[str, tuple[int, ...]]:
        """Append ``op`` applied to tensor ``x`` of ``shape``; returns (output, output shape).

        Parameters ``p``: Conv/DWConv ``c_out``, ``kernel``, ``stride``, ``bias``; pools
        ``kernel``, ``stride``; MatMul/Gemm ``n``; Add/Mul ``broadcast`` (second operand
        ``[N, C, 1, 1]``); Concat ``others`` (channel counts of extra inputs); Resize ``scale``;
        SE ``c_mid``, ``act``, ``gate`` (a squeeze-excite block, :meth:`_op_se`).
        """
        handler = getattr(self, f"_op_{op.lower()}", None)
        if handler is not None:
            return handler(x, shape, **p)
        if op in ("Relu", "HardSwish", "Sigmoid", "Tanh"):
            return self.node(op, [x]), shape
        if op == "LeakyRelu":
            return self.node(op, [x], alpha=0.01), shape
        if op == "HardSigmoid":
            return self.node(op, [x], alpha=1.0 / 6, beta=0.5), shape
        if op == "Clip":  # ReLU6 as torch exports it
            return self.node("Clip", [x, self.const(0.0), self.const(6.0)]), shape
        raise ConfigError(f"micro-benchmarks cannot build op {op!r}; use one of {', '.join(APPLY_OPS)}")

    def _op_conv(self, x: str, shape: tuple[int, ...], c_out: int | None = None, kernel: int = 3,
                 stride: int = 1, groups: int = 1, bias: bool = True) -> tuple[str, tuple[int, ...]]:
        n, c_in, h, w = shape
        c_out = c_out or c_in
        pad = (kernel - 1) // 2
        inputs = [x, self.weight((c_out, c_in // groups, kernel, kernel))]
        if bias:
            inputs.append(self.const([0.01] * c_out, (c_out,)))
        out = self.node("Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                        pads=[pad] * 4, group=groups)
        size = lambda d: (d + 2 * pad - kernel) // stride + 1  # noqa: E731
        return out, (n, c_out, size(h), size(w))

    def _op_dwconv(self, x: str, shape: tuple[int, ...], kernel: int = 3, stride: int = 1,
                   bias: bool = True, **_: Any) -> tuple[str, tuple[int, ...]]:
        return self._op_conv(x, shape, shape[1], kernel, stride, shape[1], bias)

    def _op_batchnormalization(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        c = shape[1]
        params = [self.const([1.0] * c, (c,)), self.const([0.0] * c, (c,)),
                  self.const([0.0] * c, (c,)), self.const([1.0] * c, (c,))]
        return self.node("BatchNormalization", [x, *params], epsilon=1e-5), shape

    def _pool(self, op: str, x: str, shape: tuple[int, ...], kernel: int, stride: int) -> tuple[str, tuple[int, ...]]:
        n, c, h, w = shape
        pad = (kernel - 1) // 2
        out = self.node(op, [x], kernel_shape=[kernel, kernel], strides=[stride, stride],
                        pads=[pad] * 4)
        size = lambda d: (d + 2 * pad - kernel) // stride + 1  # noqa: E731
        return out, (n, c, size(h), size(w))

    def _op_maxpool(self, x: str, shape: tuple[int, ...], kernel: int = 3, stride: int = 2) -> tuple[str, tuple[int, ...]]:
        return self._pool("MaxPool", x, shape, kernel, stride)

    def _op_averagepool(self, x: str, shape: tuple[int, ...], kernel: int = 3, stride: int = 1) -> tuple[str, tuple[int, ...]]:
        return self._pool("AveragePool", x, shape, kernel, stride)

    def _op_globalaveragepool(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("GlobalAveragePool", [x]), (shape[0], shape[1], 1, 1)

    def _op_se(self, x: str, shape: tuple[int, ...], c_mid: int = 8, act: str = "Relu",
               gate: str = "HardSigmoid") -> tuple[str, tuple[int, ...]]:
        """Squeeze-excite as torch exports it: global average pool, 1x1 conv to ``c_mid``,
        ``act`` (none when empty), 1x1 conv back, ``gate``, the input times the gate."""
        pooled, squeezed = self._op_globalaveragepool(x, shape)
        y, squeezed = self._op_conv(pooled, squeezed, c_out=c_mid, kernel=1)
        if act:
            y, squeezed = self.apply(act, y, squeezed)
        y, squeezed = self._op_conv(y, squeezed, c_out=shape[1], kernel=1)
        y, squeezed = self.apply(gate, y, squeezed)
        return self.node("Mul", [x, y]), shape

    def _op_silu(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("Mul", [x, self.node("Sigmoid", [x])]), shape

    def _op_gelu(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        erf = self.node("Erf", [self.node("Div", [x, self.const(math.sqrt(2.0))])])
        half = self.node("Mul", [x, self.node("Add", [erf, self.const(1.0)])])
        return self.node("Mul", [half, self.const(0.5)]), shape

    def _binary(self, op: str, x: str, shape: tuple[int, ...], broadcast: bool) -> tuple[str, tuple[int, ...]]:
        other_shape = (shape[0], shape[1], *[1] * (len(shape) - 2)) if broadcast else shape
        return self.node(op, [x, self.input(other_shape)]), shape

    def _op_add(self, x: str, shape: tuple[int, ...], broadcast: bool = False) -> tuple[str, tuple[int, ...]]:
        return self._binary("Add", x, shape, broadcast)

    def _op_mul(self, x: str, shape: tuple[int, ...], broadcast: bool = False) -> tuple[str, tuple[int, ...]]:
        return self._binary("Mul", x, shape, broadcast)

    def _op_addconst(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("Add", [x, self.const([0.01] * shape[-1], (shape[-1],))]), shape

    def _op_mulconst(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("Mul", [x, self.const(0.5)]), shape

    def _op_concat(self, x: str, shape: tuple[int, ...], others: Sequence[int] = (0,)) -> tuple[str, tuple[int, ...]]:
        extra = [self.input((shape[0], c or shape[1], *shape[2:])) for c in others]
        total = shape[1] + sum(c or shape[1] for c in others)
        return self.node("Concat", [x, *extra], axis=1), (shape[0], total, *shape[2:])

    def _op_resize(self, x: str, shape: tuple[int, ...], scale: int = 2) -> tuple[str, tuple[int, ...]]:
        scales = self.const([1.0, 1.0, float(scale), float(scale)], (4,))
        out = self.node("Resize", [x, "", scales], mode="nearest")
        return out, (shape[0], shape[1], shape[2] * scale, shape[3] * scale)

    def _op_matmul(self, x: str, shape: tuple[int, ...], n: int | None = None,
                   weight: bool = True) -> tuple[str, tuple[int, ...]]:
        n = n or shape[-1]
        if weight:
            other = self.weight((shape[-1], n))
        else:  # activation x activation, e.g. attention scores
            other = self.input((*shape[:-2], shape[-1], n))
        return self.node("MatMul", [x, other]), (*shape[:-1], n)

    def _op_gemm(self, x: str, shape: tuple[int, ...], n: int | None = None) -> tuple[str, tuple[int, ...]]:
        if len(shape) != 2:
            raise ConfigError(f"Gemm needs a 2-D input, got shape {shape}; use MatMul for 3-D")
        n = n or shape[-1]
        out = self.node("Gemm", [x, self.weight((n, shape[1])), self.const([0.01] * n, (n,))],
                        transB=1)
        return out, (shape[0], n)

    def _op_layernormalization(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        hidden = shape[-1]
        scale, shift = self.const([1.0] * hidden, (hidden,)), self.const([0.0] * hidden, (hidden,))
        return self.node("LayerNormalization", [x, scale, shift], axis=-1, epsilon=1e-5), shape

    def _op_softmax(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("Softmax", [x], axis=-1), shape

    def _op_transpose(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]  # swap the last two
        return self.node("Transpose", [x], perm=perm), tuple(shape[i] for i in perm)

    def _op_flatten(self, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.node("Flatten", [x], axis=1), (shape[0], math.prod(shape[1:]))

    def model(self, outputs: list[tuple[str, tuple[int, ...]]]) -> Any:
        """The finished ``onnx.ModelProto`` (opset 17), checked."""
        import onnx
        from onnx import TensorProto, helper

        outputs = [(self._in_context(name, tuple(shape), 1), shape) for name, shape in outputs]
        outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape[1:]])
                for name, shape in outputs]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, outs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="costmeter-microbench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def chain_model(ops: Sequence[tuple[str, dict[str, Any]]], input_shape: tuple[int, ...],
                name: str = "micro", seed: int = WEIGHT_SEED) -> Any:
    """A model applying ``ops`` (``(op, params)`` pairs) one after the other to one input,
    weights drawn from ``seed``."""
    return _chain(GraphBuilder(name, seed=seed), ops, input_shape)


def _chain(builder: GraphBuilder, ops: Sequence[tuple[str, dict[str, Any]]],
           input_shape: tuple[int, ...]) -> Any:
    x, shape = builder.input(input_shape, "input"), tuple(input_shape)
    for op, params in ops:
        x, shape = builder.apply(op, x, shape, **params)
    return builder.model([(x, shape)])


def context_ops(barrier: bool) -> tuple[list[Any], list[Any]]:
    """The ops before a kernel (on each image input) and after it, in context."""
    return ([EDGE_OP, BARRIER_OP] if barrier else [EDGE_OP]), [EDGE_OP]


def context_chain(ops: Sequence[tuple[str, dict[str, Any]]], input_shape: tuple[int, ...],
                  name: str = "micro", barrier: bool = False,
                  seed: int = WEIGHT_SEED) -> tuple[Any, list[tuple[int, ...]]]:
    """:func:`chain_model` in context (:func:`context_ops` on every 4-D input and the output),
    weights drawn from ``seed``. Returns the model and the shapes of those boundary tensors
    (one baseline each)."""
    builder = GraphBuilder(name, seed=seed, context=context_ops(barrier))
    return _chain(builder, ops, input_shape), list(builder.boundary)


def context_baseline(shape: tuple[int, ...], barrier: bool = False) -> Any:
    """The context ops alone on a 4-D tensor of ``shape`` (what comes before a kernel, then what
    comes after it): the price of one boundary of a kernel measured in context, twice."""
    before, after = context_ops(barrier)
    return chain_model([*before, *after], shape, "context")


def write_model(model: Any, folder: Path | str, stem: str) -> Path:
    """Write ``model`` as ``<folder>/<stem>-<hash>.onnx`` (content-named, written once)."""
    data = model.SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = Path(folder) / f"{stem}-{digest}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".onnx.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path
