"""Micro-benchmarks at int8: each float micro-benchmark quantized with the ONNX Runtime recipe of
``bench run --precision int8`` (static QDQ, per-channel int8 weights, uint8 activations, MinMax),
so that a sampled kernel is the kernel a quantized network runs.

Calibration inputs are random (:data:`CALIBRATION_SAMPLES` normal draws per input, seeded by the
model's content): a micro-benchmark sees activations, not images, and its latency does not depend
on the scales. In a quantized chain the graph inputs' Quantize -> Dequantize pairs are the
producer's work in a network (they end its kernel), so :func:`sampled_kernels` leaves them out
when checking that a micro-benchmark forms exactly one kernel.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

MICRO_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
CALIBRATION_SAMPLES = 8


def check_micro_precision(precision: str, runtime: str) -> None:
    """ConfigError unless kernels can be sampled at ``precision`` on ``runtime`` (int8: ONNX
    Runtime's static QDQ; the other runtimes quantize torch models, not micro-benchmark files)."""
    from costmeter.errors import ConfigError

    if precision not in MICRO_PRECISIONS:
        raise ConfigError(f"kernel-level predictors are built at {' or '.join(MICRO_PRECISIONS)}, "
                          f"not {precision!r}; pick one of those")
    if precision == "int8" and runtime != "onnxruntime":
        raise ConfigError(f"an int8 kernel-level predictor samples ONNX Runtime's QDQ kernels; "
                          f"{runtime} quantizes whole torch models -- use --runtime onnxruntime, "
                          "or a lookup table (`bench lut build --precision int8`)")


def _input_shapes(model: Any) -> dict[str, list[int]]:
    return {i.name: [max(1, d.dim_value) for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def quantize_model(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto`` of float inputs) quantized to static QDQ int8, as a
    new ``onnx.ModelProto``; calibrated on random inputs seeded by its content. UnsupportedError
    when the quantizer fails on it (ONNX Runtime's calibration session rejects, for instance, a
    16x16 convolution on a 1x1 input that the float session pads)."""
    import numpy as np
    import onnx

    from costmeter.errors import UnsupportedError
    from costmeter.harness.convert.quant_backends import quantize_onnx

    data = model.SerializeToString(deterministic=True)
    rng = np.random.default_rng(int(hashlib.sha256(data).hexdigest()[:8], 16))
    shapes = _input_shapes(model)
    feeds = [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
             for _ in range(CALIBRATION_SAMPLES)]
    with tempfile.TemporaryDirectory(prefix="costmeter-q-") as tmp:
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(data)
        try:
            quantize_onnx(str(source), str(out), feeds, dynamic=False)
        except Exception as error:  # the quantizer's own errors have no common base class
            raise UnsupportedError(f"onnxruntime.quantization failed on {model.graph.name}: "
                                   f"{str(error).splitlines()[0][:200]}") from error
        quantized = onnx.load(str(out))
    quantized.graph.name = model.graph.name
    return quantized


def sampled_kernels(kernel_graph: Any, graph_inputs: set[str], folded: tuple[str, ...]) -> list[Any]:
    """The kernels a micro-benchmark measures: all but those folded at load time and the
    requantization of the graph's inputs (a network's producer kernel ends with it)."""
    out = []
    for kernel in kernel_graph.kernels:
        if kernel.kernel_type in folded:
            continue
        if kernel.rule == "requantize" and kernel.ops[0].inputs and \
                kernel.ops[0].inputs[0].name in graph_inputs:
            continue
        out.append(kernel)
    return out
