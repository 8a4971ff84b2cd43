"""Quantizers, run inside the converter's child process (see :mod:`costmeter.harness.convert.quantize`).

Each builder reads the calibration arrays (``request["calibration"]``, an ``.npz`` with samples
along axis 0), writes its artifact into the folder ``request["out"]`` and returns the recipe as
JSON-ready facts. The libraries do the quantizing; nothing here computes a scale:

- ``onnx-int8``: ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8
  activations, MinMax calibration) after ``quant_pre_process``; ``quantize_dynamic`` (int8
  weights, activations quantized at run time) for models with integer inputs (transformers).
- ``openvino-int8``: NNCF post-training quantization of the OpenVINO model read from ONNX
  (``model_type=TRANSFORMER`` for transformers), saved as OpenVINO IR.
- ``pte-int8`` / ``tflite-int8``: PT2E (``prepare_pt2e`` -> calibration -> ``convert_pt2e``)
  with the XNNPACK quantizer (ExecuTorch's, or litert-torch's own PT2E quantizer in its
  environment), then the usual lowering.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

from costmeter.errors import UnsupportedError

MODEL_NAMES = {"onnx-int8": "model.onnx", "openvino-int8": "model.xml", "pte-int8": "model.pte",
               "tflite-int8": "model.tflite"}
META_NAME = "meta.json"
CALIBRATION_CHUNK = 16  # samples per calibration forward pass (PT2E observers cost per call)


def _calibration(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    with np.load(request["calibration"]) as npz:
        return {name: npz[name] for name in npz.files if name != "labels"}


def _samples(arrays: dict[str, Any], chunk: int = 1) -> list[dict[str, Any]]:
    """Calibration arrays as feeds of ``chunk`` samples each (in order)."""
    count = next(iter(arrays.values())).shape[0]
    return [{k: v[i:i + chunk] for k, v in arrays.items()} for i in range(0, count, chunk)]


def _finish(request: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    facts["quantize_s"] = time.perf_counter() - float(request["_started"])
    (Path(request["out"]) / META_NAME).write_text(json.dumps(facts))
    return facts


def build(request: dict[str, Any]) -> dict[str, Any]:
    """Dispatch on ``request["kind"]`` to a quantizer; writes ``out/<model>`` and ``out/meta.json``."""
    builders = {"onnx-int8": build_onnx_int8, "openvino-int8": build_openvino_int8,
                "pte-int8": build_pte_int8, "tflite-int8": build_tflite_int8}
    Path(request["out"]).mkdir(parents=True)
    request["_started"] = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return _finish(request, builders[request["kind"]](request))


def build_onnx_int8(request: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime quantization: static QDQ, or dynamic when ``request["dynamic"]``."""
    out = Path(request["out"]) / MODEL_NAMES["onnx-int8"]
    feeds = [] if request["dynamic"] else _samples(_calibration(request))
    return quantize_onnx(str(request["onnx"]), str(out), feeds, bool(request["dynamic"]))


def quantize_onnx(source: str, out: str, feeds: list[dict[str, Any]], dynamic: bool) -> dict[str, Any]:
    """The ONNX Runtime recipe: ``quant_pre_process`` (when it succeeds), then ``quantize_dynamic``
    (int8 weights) or ``quantize_static`` on ``feeds`` (QDQ, int8 per-channel weights, uint8
    activations, MinMax). Writes ``out``; returns the recipe. Also used for LUT blocks."""
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # calibration sessions warn about unused initializers
    prepared = str(Path(out).with_name(Path(out).stem + ".preprocessed.onnx"))
    try:  # shape inference + graph clean-up the quantizer expects; optional
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        source, pre = prepared, True
    except Exception:  # the pre-processor fails on some graphs; quantizing the export still works
        pre = False
    tool = f"onnxruntime.quantization {onnxruntime.__version__}"
    if dynamic:
        quantize_dynamic(source, out, weight_type=QuantType.QInt8, per_channel=False)
        facts = {"method": "dynamic", "format": "integer ops (MatMulInteger)", "weights": "int8 per-tensor",
                 "activations": "uint8 per-tensor, quantized at run time", "tool": tool}
    else:
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds = iter(feeds)

            def get_next(self) -> dict[str, Any] | None:
                return next(self._feeds, None)

        quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        facts = {"method": "static", "format": "QDQ", "weights": "int8 per-channel",
                 "activations": "uint8 per-tensor", "calibration_method": "MinMax", "tool": tool}
    Path(prepared).unlink(missing_ok=True)
    facts["preprocessed"] = pre
    return facts


def build_openvino_int8(request: dict[str, Any]) -> dict[str, Any]:
    """NNCF post-training quantization of the ONNX model for OpenVINO, saved as IR."""
    import nncf
    import openvino as ov

    nncf.set_log_level(40)
    model = ov.Core().read_model(str(request["onnx"]))
    feeds = _samples(_calibration(request))
    names = [port.get_any_name() for port in model.inputs]
    ordered = [[feed[name] if name in feed else list(feed.values())[i] for i, name in enumerate(names)]
               for feed in feeds]
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if request["transformer"] else {}
    quantized = nncf.quantize(model, nncf.Dataset(ordered), subset_size=len(ordered), **extra)
    ov.save_model(quantized, str(Path(request["out"]) / MODEL_NAMES["openvino-int8"]))
    return {"method": "static", "format": "OpenVINO IR (FakeQuantize)", "weights": "int8 per-channel",
            "activations": "8-bit per-tensor", "preset": "performance",
            "model_type": "transformer" if request["transformer"] else "default",
            "tool": f"nncf {nncf.__version__}"}


def _pt2e(module: Any, args: tuple[Any, ...], arrays: dict[str, Any], quantizer: Any,
          convert_kwargs: dict[str, Any]) -> tuple[Any, str]:
    """prepare_pt2e -> calibrate -> convert_pt2e. Calibrates in chunks through a dynamic-batch
    export; models whose export cannot take a dynamic batch are calibrated one sample at a time."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        graph = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args)).module()
        chunk = CALIBRATION_CHUNK
    except Exception:  # data-dependent shapes: fall back to a batch-1 export
        graph = torch.export.export(module, tuple(a[:1] for a in args)).module()
        chunk = 1
    prepared = prepare_pt2e(graph, quantizer)
    for feed in _samples(arrays, chunk):
        prepared(*[torch.from_numpy(v) for v in feed.values()])
    return convert_pt2e(prepared, **convert_kwargs), f"{chunk} samples per pass"


def _quantized_share(graph_module: Any) -> tuple[int, int]:
    """(conv/linear nodes whose weight comes through a dequantize, all conv/linear nodes)."""
    total = quantized = 0
    for node in graph_module.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and ("conv" in target or "linear" in target) and len(node.args) > 1:
            total += 1
            weight = node.args[1]
            if "dequantize" in str(getattr(weight, "target", "")):
                quantized += 1
    return quantized, total


def build_pte_int8(request: dict[str, Any]) -> dict[str, Any]:
    """PT2E with ExecuTorch's XNNPACKQuantizer, then the XNNPACK-delegated ``.pte``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower

    from costmeter.harness.convert.backends import _delegated_share, _torch_model

    module, args = _torch_model(request)
    dynamic = bool(request["dynamic"])
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    converted, passes = _pt2e(module, args, _calibration(request), quantizer, {})
    quantized, total = _quantized_share(converted)
    lowered = to_edge_transform_and_lower(torch.export.export(converted, args), partitioner=[XnnpackPartitioner()])
    (Path(request["out"]) / MODEL_NAMES["pte-int8"]).write_bytes(lowered.to_executorch().buffer)
    delegated, calls = _delegated_share(lowered)
    return {"method": "dynamic" if dynamic else "static", "format": "PT2E (XNNPACKQuantizer)",
            "weights": "int8 symmetric per-channel",
            "activations": "int8 per-tensor" + (", quantized at run time" if dynamic else ""),
            "calibration_passes": passes, "tool": "torchao pt2e + executorch XNNPACKQuantizer",
            "int8_compute_ops": quantized, "compute_ops": total,
            "pte_delegated_nodes": delegated, "pte_total_nodes": calls}


def build_tflite_int8(request: dict[str, Any]) -> dict[str, Any]:
    """PT2E with litert-torch's XNNPACK-style PT2E quantizer, then ``.tflite`` (int8 I/O possible)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    from costmeter.harness.convert.backends import _torch_model

    module, args = _torch_model(request)
    dynamic = bool(request["dynamic"])
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                             is_dynamic=dynamic))
    converted, passes = _pt2e(module, args, _calibration(request), quantizer, {"fold_quantize": False})
    quantized, total = _quantized_share(converted)
    edge = litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(Path(request["out"]) / MODEL_NAMES["tflite-int8"]))
    if total == 0:
        raise UnsupportedError("litert-torch's PT2E quantizer found no conv or linear layer to quantize; "
                               "this model stays fp32 on LiteRT")
    return {"method": "dynamic" if dynamic else "static", "format": "PT2E (litert-torch PT2EQuantizer)",
            "weights": "int8 symmetric per-channel",
            "activations": "int8 per-tensor" + (", quantized at run time" if dynamic else ""),
            "calibration_passes": passes, "tool": f"litert-torch {getattr(litert_torch, '__version__', '?')} pt2e",
            "int8_compute_ops": quantized, "compute_ops": total}
