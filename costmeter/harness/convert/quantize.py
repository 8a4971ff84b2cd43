"""Quantized artifacts: the parent side. Picks the recipe, resolves the calibration set, and runs
the quantizer in a converter child process (:mod:`costmeter.harness.convert.quant_backends`),
through the content-addressed cache.

Which runtime quantizes how (int8):

| runtime | artifact | quantizer |
|---|---|---|
| onnxruntime | ``onnx-int8/<key>.q/model.onnx`` | onnxruntime.quantization: static QDQ; dynamic for integer-input (transformer) models |
| openvino | ``openvino-int8/<key>.q/model.xml`` | NNCF post-training quantization |
| executorch | ``pte-int8/<key>.q/model.pte`` | PT2E + XNNPACKQuantizer, XNNPACK delegate |
| litert | ``tflite-int8/<key>.q/model.tflite`` | PT2E + litert-torch's PT2E quantizer (its own environment) |
| torch | none | ``torch.ao.quantization.quantize_dynamic`` of ``nn.Linear`` in the adapter |

The option ``quant=static|dynamic`` overrides the automatic choice (dynamic exactly when a model
input is an integer tensor, i.e. token ids). Each artifact folder keeps the quantizer's facts
(``meta.json``: recipe and ``quantize_s``), so a cached artifact reports the same recipe and the
time its quantization took.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.harness.convert.artifacts import CommandRunner, Converted, _model_spec, _run_child, litert_python
from costmeter.harness.quantize.precision import config_precision

RECIPE_VERSION = 1  # bump when a recipe changes: quantized artifacts are cached under it
QUANT_KINDS: dict[str, str] = {"onnxruntime": "onnx-int8", "openvino": "openvino-int8",
                               "executorch": "pte-int8", "litert": "tflite-int8"}
_TORCH_KINDS = ("pte-int8", "tflite-int8")


def is_dynamic(source: Any, options: dict[str, str]) -> bool:
    """Dynamic quantization for models with integer inputs (token ids) unless ``quant`` says."""
    import numpy as np

    mode = (options.get("quant") or "auto").lower()
    if mode not in ("auto", "static", "dynamic"):
        raise ConfigError(f"unknown quant={mode!r}; use static, dynamic or leave it out (auto)")
    if mode != "auto":
        return mode == "dynamic"
    return any(np.dtype(spec.dtype).kind in "iub" for spec in source.inputs)


def precision_artifact(runtime: str, source: Any, workdir: Path | str, batch: int, options: dict[str, str],
                       device_kind: str = "cpu", *, run: CommandRunner | None = None) -> Converted | None:
    """The quantized artifact of ``source`` for ``runtime``, or None when the run's precision needs
    none (fp32, fp16/bf16 set at compile time, torch eager quantizing in its adapter).

    Raises UnsupportedError when the runtime explains that it cannot run the precision (TVM and
    int8) or the quantizer rejects the model: both become an ``unsupported`` result. ``run`` is
    the process seam (default: the launcher, like every converter).
    """
    from costmeter.harness.launcher import launched_run

    from costmeter.devices.base import get_runtime
    from costmeter.harness.quantize.data import RANDOM_WARNING, calibration_set
    from costmeter.harness.quantize.precision import unsupported_reason
    from costmeter.models.export import cached_artifact, export_onnx

    precision = config_precision(options)
    if precision == "fp32":
        return None
    reason = unsupported_reason(get_runtime(device_kind, runtime), precision)
    if reason:
        raise UnsupportedError(reason)
    if precision != "int8" or runtime not in QUANT_KINDS:
        return None
    kind = QUANT_KINDS[runtime]
    dynamic = is_dynamic(source, options)
    calibration, calibration_path = calibration_set(options.get("calibration") or "random:32", source, workdir)
    request: dict[str, Any] = {"kind": kind, "calibration": str(calibration_path), "dynamic": dynamic,
                               "transformer": dynamic, "batch": batch}
    key = f"{source.content_hash()}-{calibration.sha}-{'dyn' if dynamic else 'static'}-r{RECIPE_VERSION}"
    python = sys.executable
    if kind in _TORCH_KINDS:
        if not source.has_torch():
            raise UnsupportedError(f"{source.model_id} is an ONNX file; {runtime} quantizes torch models "
                                   "(give a zoo or pkg.module:function model)")
        request["model"] = _model_spec(source)
        key += f"-b{batch}"  # fixed shapes: one file per batch
        python = str(litert_python()) if kind == "tflite-int8" else sys.executable
    else:
        request["onnx"] = str(export_onnx(source, workdir))
    folder = cached_artifact(workdir, kind, key, ".q", lambda out: _run_child(request, out, python, run or launched_run))
    from costmeter.harness.convert.quant_backends import META_NAME, MODEL_NAMES

    saved = folder / META_NAME
    facts = json.loads(saved.read_text()) if saved.is_file() else {}
    census = {k: facts.pop(k) for k in ("int8_compute_ops", "compute_ops") if k in facts}
    meta: dict[str, Any] = {
        **census,
        "quant_recipe": {k: v for k, v in facts.items() if k not in ("quantize_s", "convert_s")},
        "quantize_s": facts.get("quantize_s"),
        "calibration": options.get("calibration") or "random:32",
        "calibration_sha": calibration.sha,
        "calibration_samples": calibration.count,
        "quant_recipe_version": RECIPE_VERSION,
    }
    meta["quant_recipe"].update(calibration=meta["calibration"], calibration_sha=calibration.sha)
    if str(meta["calibration"]).startswith("random:") and not dynamic:
        meta["precision_warnings"] = [RANDOM_WARNING]
    return Converted(folder / MODEL_NAMES[kind], meta)


BLOCK_CALIBRATION_SAMPLES = 8


def quantize_block_onnx(onnx_path: Path | str, input_shape: tuple[int, ...], workdir: Path | str) -> Path:
    """A LUT block's ONNX file quantized with the ONNX Runtime recipe of ``bench run --precision
    int8`` (static QDQ, per-channel weights), calibrated on random inputs of ``input_shape`` (a
    block sees activations, not images, so random data is what the table can offer); cached."""
    import numpy as np

    from costmeter.harness.convert.quant_backends import quantize_onnx
    from costmeter.models.export import cached_artifact

    source = Path(onnx_path)
    shape_tag = "x".join(str(d) for d in input_shape)
    rng = np.random.default_rng(0)

    def build(out: Path) -> None:
        import onnx

        names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
        feeds = [{n: rng.standard_normal(input_shape).astype(np.float32) for n in names}
                 for _ in range(BLOCK_CALIBRATION_SAMPLES)]
        quantize_onnx(str(source), str(out), feeds, dynamic=False)

    return cached_artifact(workdir, "lut-int8", f"{source.stem}-{shape_tag}-r{RECIPE_VERSION}", ".onnx", build)
