"""Analytic peak activation memory: the largest set of tensors alive at once.

The ops of an ONNX graph run in graph order (ONNX requires a topological order). A tensor is
alive from the op that produces it (graph inputs: from the start) to the last op that reads it
(graph outputs: to the end). While op ``i`` runs, its inputs and its outputs are alive
together with every tensor produced earlier and read later. The peak over all ops of the bytes
alive is a lower bound on the activation memory any executor needs for that order, and a
feature for predicting measured peak memory.

Weights (initializers, ``Constant`` outputs and what is computed from constants only) are not
activations and are left out; :attr:`OpGraph.param_bytes` counts them. View-like ops
(``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Identity``) allocate nothing in the
usual executors: their output shares its input's buffer, which then lives until the last use
of either (``alias_views=False`` counts them as copies). Tensors whose size shape inference
could not pin down count 0 bytes and are listed in :attr:`LiveSet.unknown_tensors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from costmeter.errors import ConfigError

VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class LiveSet:
    """The peak of the live activation bytes over a graph's execution order.

    ``peak_bytes``: the largest sum of live tensor sizes (bytes); ``peak_op``: index of the op
    during which it occurs (-1: before the first op, i.e. only graph inputs, or an empty
    graph); ``peak_tensors``: the names alive then; ``total_bytes``: the size of every
    activation tensor (bytes, each buffer once); ``unknown_tensors``: activations of unknown
    size (counted as 0).
    """

    peak_bytes: int
    peak_op: int
    peak_tensors: tuple[str, ...]
    total_bytes: int
    unknown_tensors: tuple[str, ...] = field(default=())


def _buffer_of(graph: Any, alias_views: bool) -> dict[str, str]:
    """Tensor name -> the name of the buffer holding it (itself unless it is a view)."""
    buffer: dict[str, str] = {}
    if not alias_views:
        return buffer
    for op in graph.ops:
        data = op.inputs[0] if op.inputs else None
        if op.op_type in VIEW_OPS and op.domain in ("", "ai.onnx") and data is not None \
                and data.name and not data.constant and len(op.outputs) == 1:
            buffer[op.outputs[0].name] = buffer.get(data.name, data.name)
    return buffer


def peak_live_set(graph: Any, alias_views: bool = True) -> LiveSet:
    """The largest live set of activation tensors of ``graph`` (an
    :class:`~costmeter.models.onnx.graph.OpGraph`, shapes bound to its batch) in graph order.

    Sizes are in bytes. See the module docstring for what counts as alive.
    """
    if not hasattr(graph, "ops") or not hasattr(graph, "inputs"):
        raise ConfigError(f"peak_live_set needs an OpGraph (from load_graph), got "
                          f"{type(graph).__name__}; load the ONNX file with load_graph first")
    buffer_of = _buffer_of(graph, alias_views)
    n_ops = len(graph.ops)
    size: dict[str, int] = {}
    birth: dict[str, int] = {}
    death: dict[str, int] = {}
    unknown: list[str] = []

    def touch(tensor: Any, index: int, produced: bool) -> None:
        if not tensor.name or tensor.constant:
            return
        name = buffer_of.get(tensor.name, tensor.name)
        if name not in size:  # a view's buffer is always seen first, as the view op's input
            nbytes = tensor.nbytes
            if nbytes is None:
                unknown.append(name)
            size[name] = int(nbytes or 0)
            birth[name] = index if produced else -1
        death[name] = max(death.get(name, index), index)

    for tensor in graph.inputs:
        touch(tensor, -1, produced=False)
    for op in graph.ops:
        for tensor in op.inputs:
            touch(tensor, op.index, produced=False)
        for tensor in op.outputs:
            touch(tensor, op.index, produced=True)
    for tensor in graph.outputs:
        if tensor.name and not tensor.constant:
            name = buffer_of.get(tensor.name, tensor.name)
            if name in death:
                death[name] = max(death[name], n_ops - 1)  # kept to the end
    delta = [0] * (n_ops + 2)  # step s = op index + 1; step 0 = graph inputs only
    for name, nbytes in size.items():
        delta[birth[name] + 1] += nbytes
        delta[death[name] + 2] -= nbytes
    peak, peak_step, running = 0, 0, 0
    for step in range(n_ops + 1):
        running += delta[step]
        if running > peak:
            peak, peak_step = running, step
    alive = tuple(sorted(name for name in size
                         if birth[name] + 1 <= peak_step <= death[name] + 1 and size[name]))
    return LiveSet(peak_bytes=int(peak), peak_op=peak_step - 1, peak_tensors=alive,
                   total_bytes=int(sum(size.values())), unknown_tensors=tuple(unknown))


def peak_activation_bytes(path_or_model: Any, batch: int = 1, alias_views: bool = True) -> int:
    """Peak live activation bytes of an ONNX file or ModelProto at ``batch`` (shape inference
    through :func:`~costmeter.models.onnx.graph.load_graph`)."""
    from costmeter.models.onnx.graph import load_graph

    return peak_live_set(load_graph(path_or_model, batch=batch), alias_views=alias_views).peak_bytes
