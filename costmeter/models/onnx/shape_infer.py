"""Static shapes for every tensor of an ONNX graph at a given batch size.

ONNX shape inference alone leaves shapes unknown where an exported model computes a shape at
run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``Expand`` with -1 sizes,
slicing a position-id buffer by the input length...). Once the batch is bound those values are
constants, so :func:`infer_static_shapes` alternates inference with folding: every node whose
inputs are known small constants (or a ``Shape`` of a fully known tensor) is evaluated with the
ONNX reference implementation and replaced by its value, and inference runs again until all
shapes are known or nothing more folds. Only small tensors are folded, so this stays cheap.
"""
from __future__ import annotations

from typing import Any

MAX_FOLD_ELEMENTS = 4096  # largest tensor that is evaluated and kept by value
MAX_PASSES = 8
_NEVER_FOLD = {
    "If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Bernoulli",
}


def bind_batch(model: Any, batch: int) -> int:
    """In place: set symbolic/zero leading input dims (and dims sharing their names) to ``batch``.

    Returns the batch the graph now has: ``batch`` if any input was bound, else the fixed
    leading dim of the first input (a file exported at a fixed batch keeps it). Stale
    ``value_info`` annotations are removed (they are re-inferred).
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    names: set[str] = set()
    bound, fixed = False, []
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        if dims[0].HasField("dim_param"):
            names.add(dims[0].dim_param)
            dims[0].dim_value = batch
            bound = True
        elif not dims[0].HasField("dim_value") or dims[0].dim_value == 0:
            dims[0].dim_value = batch
            bound = True
        else:
            fixed.append(int(dims[0].dim_value))
    del graph.value_info[:]
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in names:
                dim.dim_value = batch
    return batch if bound or not fixed else fixed[0]


def infer_static_shapes(model: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """Return (copy of ``model`` with ``value_info`` for every inferable tensor, known values,
    warnings).

    ``model`` must already have its batch bound (:func:`bind_batch`); it is not modified. The
    second item maps tensor names to numpy values of small constants and folded shape
    computations. Inference runs in strict mode first; if that finds an inconsistency, the
    error goes to the warnings and lenient inference (which leaves such shapes unknown) is used.
    Raises whatever lenient ``onnx.shape_inference`` raises on a model it cannot read at all.
    """
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    known = _small_constants(model)
    warnings: list[str] = []
    strict = True
    try:
        inferred = _infer(model, strict=True)
    except onnx.shape_inference.InferenceError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        warnings.append(f"strict shape inference failed: {lines[0] if lines else error!r}")
        strict = False
        inferred = _infer(model, strict=False)
    failed: set[int] = set()
    for _ in range(MAX_PASSES):
        shapes = _static_shapes(inferred)
        if all(_is_static(shapes.get(o)) for n in model.graph.node for o in n.output if o):
            break
        if not _fold_pass(model, shapes, known, failed, opset):
            break
        inferred = _infer(_with_folded_constants(model, known), strict=strict)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    node_outputs = {o for n in model.graph.node for o in n.output}
    result.graph.value_info.extend(
        v for v in inferred.graph.value_info if v.name in node_outputs
    )
    del result.graph.output[:]
    result.graph.output.extend(inferred.graph.output)
    return result, known, warnings


def _infer(model: Any, strict: bool) -> Any:
    import onnx

    return onnx.shape_inference.infer_shapes(model, strict_mode=strict, data_prop=True)


def _small_constants(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    known: dict[str, Any] = {}
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        if count <= MAX_FOLD_ELEMENTS and not uses_external_data(tensor):
            known[tensor.name] = numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = constant_node_value(node)
            if value is not None and value.size <= MAX_FOLD_ELEMENTS:
                known[node.output[0]] = value
    return known


def constant_node_value(node: Any) -> Any:
    """Value of a Constant node as a numpy array (None for sparse or string constants)."""
    import numpy as np
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            return numpy_helper.to_array(value)
        if attribute.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(value, dtype=np.float32 if "float" in attribute.name else np.int64)
    return None


def _static_shapes(model: Any) -> dict[str, tuple[Any, ...] | None]:
    shapes: dict[str, tuple[Any, ...] | None] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def _is_static(shape: tuple[Any, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _fold_pass(
    model: Any, shapes: dict[str, Any], known: dict[str, Any], failed: set[int], opset: int
) -> int:
    """Evaluate newly foldable nodes in graph order; return how many were folded."""
    import numpy as np

    folded = 0
    for index, node in enumerate(model.graph.node):
        outputs = [o for o in node.output if o]
        if index in failed or not outputs or all(o in known for o in outputs):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
            continue
        values: list[Any] | None = None
        if node.op_type in ("Shape", "Size") and _is_static(shapes.get(node.input[0])):
            shape = shapes[node.input[0]]
            if node.op_type == "Size":
                values = [np.array(int(np.prod(shape)), dtype=np.int64)]
            else:
                attrs = {a.name: a.i for a in node.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", len(shape))
                values = [np.array(shape[start:end], dtype=np.int64)]
        elif all(name in known for name in node.input if name):
            values = _evaluate(node, known, opset)
            if values is None:
                failed.add(index)
                continue
        if values is None:
            continue
        for name, value in zip(node.output, values):
            value = np.asarray(value)
            if name and value.size <= MAX_FOLD_ELEMENTS:
                known[name] = value
                folded += 1
    return folded


def _evaluate(node: Any, known: dict[str, Any], opset: int) -> list[Any] | None:
    from onnx.reference import ReferenceEvaluator

    feeds = {name: known[name] for name in node.input if name}
    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds))
    except Exception:  # the reference runtime lacks or rejects the op: leave it unfolded
        return None


def _with_folded_constants(model: Any, known: dict[str, Any]) -> Any:
    """Copy of ``model`` where every node whose outputs are all known becomes Constant nodes."""
    import onnx
    from onnx import helper, numpy_helper

    work = onnx.ModelProto()
    work.CopyFrom(model)
    nodes = []
    for node in model.graph.node:
        outputs = [o for o in node.output if o]
        if node.op_type != "Constant" and outputs and all(o in known for o in outputs):
            for name in outputs:
                nodes.append(helper.make_node(
                    "Constant", [], [name], value=numpy_helper.from_array(known[name], name)
                ))
        else:
            nodes.append(node)
    del work.graph.node[:]
    work.graph.node.extend(nodes)
    return work
