"""ONNX graph -> list of ops with inferred shapes, MACs, FLOPs and bytes (cost-model input).

:func:`load_graph` binds the batch dimension, runs ONNX shape inference (with data propagation,
so shapes computed by Shape/Gather/Concat chains of exported models resolve) and turns every
node into an :class:`Op`. Nothing is dropped: op types without a cost formula keep 0 FLOPs and
are listed by :meth:`OpGraph.unknown_ops`; ops whose shapes could not be inferred are listed by
:meth:`OpGraph.incomplete_ops`. Counting conventions are in :mod:`costmeter.models.onnx.op_costs`.

Byte conventions: ``bytes_read`` is the size of every input tensor (activations and weights),
``bytes_written`` the size of every output. Exceptions: views (Reshape, Flatten, Squeeze,
Unsqueeze, Identity, Dropout) and shape-only ops (Shape, Size, Constant) move no data (0 both
ways), and Gather reads only the gathered rows (output size) plus the indices, not the whole
table. ``weight_bytes`` is the size of the op's constant inputs (initializers and Constant-node
outputs). Exported graphs of both torch exporters are handled (Constant nodes, GlobalAveragePool
+ Flatten or ReduceMean + Reshape, BatchNormalization folded or not, Clip for ReLU6, functions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.models.onnx.op_costs import op_cost
from costmeter.models.onnx.shape_infer import bind_batch, infer_static_shapes


@dataclass(frozen=True)
class TensorInfo:
    """A tensor edge: name, shape (ints; a str for a symbolic dim; None for unknown), dtype.

    ``constant`` is True for initializers and Constant-node outputs. An absent optional input
    has name "" and no shape.
    """

    name: str
    shape: tuple[Any, ...] | None
    dtype: str | None
    constant: bool = False

    @property
    def numel(self) -> int | None:
        """Element count, or None if a dim is unknown or symbolic."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Size in bytes, or None if shape or dtype is unknown (0 for an absent input)."""
        if not self.name:
            return 0
        count, itemsize = self.numel, _itemsize(self.dtype)
        return None if count is None or itemsize is None else count * itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": self.dtype, "constant": self.constant}


@dataclass
class Op:
    """One ONNX node with its cost figures (FLOPs/MACs per whole batch; bytes in bytes)."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    attributes: dict[str, Any]
    category: str
    macs: int = 0
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    weight_bytes: int = 0
    known: bool = True  # a cost formula exists for this op type
    shapes_complete: bool = True  # every shape the formula and byte counts need was inferred

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOPs per byte moved (0 when no bytes move)."""
        moved = self.bytes_read + self.bytes_written
        return self.flops / moved if moved else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tensors as dicts, intensity included)."""
        return {
            "index": self.index, "name": self.name, "op_type": self.op_type,
            "domain": self.domain, "category": self.category,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "attributes": {k: _jsonable(v) for k, v in self.attributes.items()},
            "macs": self.macs, "flops": self.flops, "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written, "weight_bytes": self.weight_bytes,
            "intensity": self.intensity, "known": self.known,
            "shapes_complete": self.shapes_complete,
        }


@dataclass
class OpGraph:
    """All ops of a model in graph order, plus its inputs, outputs and small constants."""

    ops: list[Op]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    batch: int
    opset: int
    producer: str
    param_count: int
    param_bytes: int
    constants: dict[str, Any] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)  # e.g. inconsistencies shape inference found

    def unknown_ops(self) -> list[Op]:
        """Ops without a cost formula (kept with 0 FLOPs)."""
        return [op for op in self.ops if not op.known]

    def incomplete_ops(self) -> list[Op]:
        """Known ops whose figures are missing because a shape could not be inferred."""
        return [op for op in self.ops if op.known and not op.shapes_complete]

    def totals(self) -> dict[str, Any]:
        """Model totals for the bound batch: MACs, FLOPs, bytes, params and op counts.

        ``weight_bytes`` counts constant inputs per use; ``param_bytes`` counts each
        initializer once.
        """
        fields = ("macs", "flops", "bytes_read", "bytes_written", "weight_bytes")
        totals: dict[str, Any] = {f: sum(getattr(op, f) for op in self.ops) for f in fields}
        moved = totals["bytes_read"] + totals["bytes_written"]
        totals.update(
            intensity=totals["flops"] / moved if moved else 0.0,
            ops=len(self.ops),
            unknown_ops=len(self.unknown_ops()),
            incomplete_ops=len(self.incomplete_ops()),
            param_count=self.param_count,
            param_bytes=self.param_bytes,
            batch=self.batch,
        )
        return totals

    def by_op_type(self) -> dict[str, dict[str, int]]:
        """Per op type: count, macs, flops, bytes_read, bytes_written."""
        table: dict[str, dict[str, int]] = {}
        for op in self.ops:
            row = table.setdefault(
                op.op_type,
                {"count": 0, "macs": 0, "flops": 0, "bytes_read": 0, "bytes_written": 0},
            )
            row["count"] += 1
            for key in ("macs", "flops", "bytes_read", "bytes_written"):
                row[key] += getattr(op, key)
        return table

    def producer_of(self, tensor: str) -> Op | None:
        """The op writing ``tensor`` (None for graph inputs and initializers)."""
        return self._producers().get(tensor)

    def consumers_of(self, tensor: str) -> list[Op]:
        """Ops reading ``tensor``, in graph order."""
        return [op for op in self.ops if any(t.name == tensor for t in op.inputs)]

    def constant_value(self, tensor: str) -> Any:
        """Value (numpy array) of a small constant (initializer, Constant output, or a shape
        computation folded at the bound batch), or None if it is not one."""
        return self.constants.get(tensor)

    def _producers(self) -> dict[str, Op]:
        return {t.name: op for op in self.ops for t in op.outputs}


def load_graph(path_or_model: Any, batch: int = 1) -> OpGraph:
    """Load an ONNX model (path or ``onnx.ModelProto``) and analyse it at batch ``batch``.

    Symbolic (or zero) leading dims of the graph inputs are bound to ``batch``; fixed dims are
    kept (``OpGraph.batch`` then reports the file's own batch). The caller's ModelProto is not
    modified. Raises ConfigError for a missing or unreadable file, UnsupportedError when shape
    inference cannot run at all; inconsistencies it finds are reported in ``OpGraph.warnings``
    (and the affected ops in ``incomplete_ops``).
    """
    import onnx

    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}; pass a positive batch size")
    model = onnx.ModelProto()
    if isinstance(path_or_model, onnx.ModelProto):
        model.CopyFrom(path_or_model)
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise ConfigError(f"ONNX file not found: {path}; check the path")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf DecodeError, OSError, ...
            raise ConfigError(
                f"cannot read ONNX file {path} ({type(error).__name__}); re-export the model"
            ) from error
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    batch = bind_batch(model, batch)
    try:
        inferred, known, warnings = infer_static_shapes(model)
    except Exception as error:  # InferenceError, ValidationError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsupportedError(
            f"ONNX shape inference failed ({first}); check the model with onnx.checker"
        ) from error
    graph = _build(inferred, batch, known)
    graph.warnings.extend(warnings)
    return graph


def _build(model: Any, batch: int, known: dict[str, Any]) -> OpGraph:
    graph = model.graph
    values: dict[str, tuple[tuple[Any, ...] | None, str | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        values[value.name] = _value_shape(value)
    param_count = param_bytes = 0
    constant_names: set[str] = set()
    for tensor in graph.initializer:
        dtype = _dtype_name(tensor.data_type)
        values[tensor.name] = (tuple(int(d) for d in tensor.dims), dtype)
        constant_names.add(tensor.name)
        count = math.prod(tensor.dims)
        param_count += count
        param_bytes += count * (_itemsize(dtype) or 0)
    for node in graph.node:
        present = [name for name in node.input if name]
        # Constant nodes, and nodes computing only from constants (e.g. Identity of a weight)
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx")) or (
            present and all(name in constant_names for name in present)
        ):
            constant_names.update(o for o in node.output if o)
    for name, value in known.items():
        values.setdefault(name, (tuple(value.shape), value.dtype.name))

    def tensor(name: str) -> TensorInfo:
        if not name:
            return TensorInfo("", None, None)
        shape, dtype = values.get(name, (None, None))
        return TensorInfo(name, shape, dtype, name in constant_names)

    ops = []
    for index, node in enumerate(graph.node):
        inputs = [tensor(n) for n in node.input]
        outputs = [tensor(n) for n in node.output]
        attributes = _normalized_attributes(node, inputs)
        ops.append(_make_op(index, node, inputs, outputs, attributes))
    initializers = {t.name for t in graph.initializer}
    return OpGraph(
        ops=ops,
        inputs=[tensor(v.name) for v in graph.input if v.name not in initializers],
        outputs=[tensor(v.name) for v in graph.output],
        batch=batch,
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        param_count=param_count,
        param_bytes=param_bytes,
        constants=dict(known),
    )


def _make_op(
    index: int, node: Any, inputs: list[TensorInfo], outputs: list[TensorInfo],
    attributes: dict[str, Any],
) -> Op:
    cost = op_cost(node.op_type, node.domain, inputs, outputs, attributes)
    read_tensors, write_tensors = inputs, outputs
    if cost.category in ("view", "shape"):
        read_tensors, write_tensors = [], []
    elif node.op_type == "Gather" and len(inputs) > 1:
        read_tensors = [inputs[1], *outputs]  # indices + the gathered rows only
    reads = [t.nbytes for t in read_tensors]
    writes = [t.nbytes for t in write_tensors]
    weights = [t.nbytes for t in inputs if t.constant]
    complete = cost.complete and None not in reads and None not in writes
    return Op(
        index=index,
        name=node.name or f"{node.op_type}_{index}",
        op_type=node.op_type,
        domain=node.domain,
        inputs=inputs,
        outputs=outputs,
        attributes=attributes,
        category=cost.category,
        macs=cost.macs,
        flops=cost.flops,
        bytes_read=sum(b for b in reads if b is not None),
        bytes_written=sum(b for b in writes if b is not None),
        weight_bytes=sum(b for b in weights if b is not None),
        known=cost.known,
        shapes_complete=complete,
    )


_WINDOW_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv",
               "MaxPool", "AveragePool", "LpPool")


def _normalized_attributes(node: Any, inputs: list[TensorInfo]) -> dict[str, Any]:
    """Node attributes as python values; conv/pool defaults (kernel, strides, pads, dilations,
    group) filled in so that features never need the ONNX defaults."""
    from onnx import helper

    attrs = {a.name: _attribute_value(helper.get_attribute_value(a)) for a in node.attribute}
    if node.op_type not in _WINDOW_OPS:
        return attrs
    weight_index = 3 if node.op_type == "QLinearConv" else 1
    if "kernel_shape" not in attrs and len(inputs) > weight_index:
        weight = inputs[weight_index].shape
        if weight is not None and all(isinstance(d, int) for d in weight[2:]):
            attrs["kernel_shape"] = list(weight[2:])
    spatial = len(attrs.get("kernel_shape", []))
    if spatial:
        attrs.setdefault("strides", [1] * spatial)
        attrs.setdefault("dilations", [1] * spatial)
        attrs.setdefault("pads", [0] * (2 * spatial))
    if "Conv" in node.op_type:
        attrs.setdefault("group", 1)
    return attrs


def _attribute_value(value: Any) -> Any:
    from onnx import GraphProto, TensorProto, numpy_helper

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, GraphProto):
        return f"<subgraph {value.name}>"
    if isinstance(value, list):
        return [_attribute_value(v) for v in value]
    return value


def _value_shape(value: Any) -> tuple[tuple[Any, ...] | None, str | None]:
    tensor_type = value.type.tensor_type
    dtype = _dtype_name(tensor_type.elem_type) if tensor_type.elem_type else None
    if not tensor_type.HasField("shape"):
        return None, dtype
    dims: list[Any] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return tuple(dims), dtype


def _dtype_name(elem_type: int) -> str | None:
    import numpy as np
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return None


def _itemsize(dtype: str | None) -> int | None:
    import numpy as np

    if dtype is None:
        return None
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return {"bfloat16": 2, "float8e4m3fn": 1, "float8e5m2": 1}.get(dtype)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
