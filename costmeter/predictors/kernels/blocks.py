"""Blocks: groups of kernels a runtime's layout choices make one unit of cost.

A squeeze-excite block (global average pool, 1x1 conv, activation, 1x1 conv, gate, and the
input scaled by the gate) is five or six kernels once fused, but what ONNX Runtime's x86 CPU
provider runs depends on the block as a whole: the per-channel Mul has no blocked-layout
(NCHWc) kernel, so the runtime converts the block's input out of NCHWc for it, which moves the
pool onto the plain layout as well, and converts the product back. In a MobileNetV3 at 128 px
(1 thread) the pool's ten instances took about 46 us on the plain layout where the same pools
timed on their own, in the blocked layout, were priced at 8 us, and 34 small reorders around
the blocks took about 118 us (ONNX Runtime's profiler, node times, which include the profiler's
own cost per node; the other core was busy). Pricing the pieces one by one misses this;
nn-Meter makes the block one kernel type (``se``) for the same reason.

:func:`group_blocks` merges every exact match of a block into one kernel. ``se`` matches, in
graph order: ``GlobalAveragePool(x)``; a 1x1 ``Conv`` on its output; an optional activation
(fused into the conv or its own kernel); a 1x1 ``Conv``; a gate (``HardSigmoid`` or
``Sigmoid``, fused or not); ``Mul(x, gate)``. Every intermediate tensor has that one reader. A
quantized block (QDQ pairs between the pieces) does not match and stays in pieces.
"""
from __future__ import annotations

from typing import Any

BLOCK_PATTERNS: tuple[str, ...] = ("se",)
SE_ACTIVATIONS: tuple[str, ...] = ("Relu", "SiLU", "HardSwish", "Clip")
SE_GATES: tuple[str, ...] = ("HardSigmoid", "Sigmoid")


def group_blocks(kernels: list[Any], blocks: tuple[str, ...], graph_outputs: set[str]) -> list[Any]:
    """``kernels`` (graph order) with every match of ``blocks`` merged into one kernel of that
    type, renumbered in order."""
    from costmeter.predictors.kernels.fuse import _make_kernel

    if "se" not in blocks:
        return kernels
    producer = {t.name: k for k in kernels for t in k.outputs}
    readers: dict[str, int] = {}
    for kernel in kernels:
        for name in {t.name for t in kernel.inputs}:
            readers[name] = readers.get(name, 0) + 1
    merged: dict[int, list[Any]] = {}  # index of the block's Mul kernel -> its member kernels
    taken: set[int] = set()
    for kernel in kernels:
        members = _se_members(kernel, producer, readers, graph_outputs)
        if members and not taken & {k.index for k in members}:
            merged[kernel.index] = members
            taken.update(k.index for k in members)
    if not merged:
        return kernels
    out: list[Any] = []
    for kernel in kernels:
        if kernel.index in merged:
            units = [u for member in merged[kernel.index] for u in member.units]
            out.append(_make_kernel(len(out), "se", "se_block", units))
        elif kernel.index not in taken:
            kernel.index = len(out)
            out.append(kernel)
    return out


def _se_members(mul: Any, producer: dict[str, Any], readers: dict[str, int],
                graph_outputs: set[str]) -> list[Any] | None:
    """The kernels of the squeeze-excite block ending at ``mul`` (pool first), or None."""
    if mul.kernel_type != "elementwise" or mul.unit_types != ["Mul"]:
        return None
    tensors = [t for t in mul.inputs if not t.constant]
    if len(tensors) != 2 or any(t.shape is None or len(t.shape) != 4 for t in tensors):
        return None
    x, gate = sorted(tensors, key=lambda t: -(t.numel or 0))
    if gate.shape[2:] != (1, 1) or x.shape[2:] == (1, 1) or gate.shape[1] != x.shape[1]:
        return None
    chain: list[Any] = []
    current = gate
    while True:
        kernel = producer.get(current.name)
        if kernel is None or len(kernel.outputs) != 1 or readers.get(current.name) != 1 \
                or current.name in graph_outputs:
            return None
        chain.insert(0, kernel)
        if kernel.kernel_type == "global_pool":
            break
        current = next((t for t in kernel.inputs if not t.constant), None)
        if current is None or len(chain) > 5:
            return None
    pool = chain[0]
    pool_input = next((t for t in pool.inputs if not t.constant), None)
    if pool.unit_types != ["GlobalAveragePool"] or pool_input is None or pool_input.name != x.name:
        return None
    return chain + [mul] if se_parts([u for k in chain[1:] for u in k.units]) else None


def se_parts(units: list[Any]) -> tuple[int, str, str] | None:
    """(squeezed channels, activation, gate) of the units between an SE block's pool and its Mul
    -- ``Conv``, optional activation, ``Conv``, gate -- or None when they are anything else.
    The activation is ``""`` when there is none."""
    types = [u.op_type for u in units]
    if len(types) == 4:
        act = types.pop(1)
        if act not in SE_ACTIVATIONS:
            return None
    elif len(types) == 3:
        act = ""
    else:
        return None
    if types[0] != "Conv" or types[1] != "Conv" or types[2] not in SE_GATES:
        return None
    convs = [u.ops[0] for u in units if u.op_type == "Conv"]
    for conv in convs:
        weight = conv.inputs[1].shape if len(conv.inputs) > 1 else None
        if weight is None or tuple(weight[2:]) != (1, 1) or int(conv.attributes.get("group", 1)) != 1:
            return None
    squeezed = convs[0].outputs[0].shape
    if squeezed is None or len(squeezed) != 4:
        return None
    return int(squeezed[1]), act, types[2]
