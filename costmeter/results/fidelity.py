"""How far a reduced-precision model's outputs are from fp32: pure functions on numpy arrays.

Stored in a result's ``extra`` under these names (the reports read them):

- ``fidelity_max_abs_diff``, ``fidelity_mean_abs_diff``: over every output element of every
  held-out sample (output units);
- ``fidelity_cosine``: mean over samples of the cosine similarity of the flattened outputs;
- ``fidelity_top1_agreement``: share of samples whose arg-max class matches fp32's (classifiers
  only: a first output of shape (N, classes); None otherwise);
- ``fidelity_samples`` and ``fidelity_inputs`` (``held-out random`` or the accuracy file's name);
- with labels: ``accuracy_top1`` (this run), ``accuracy_top1_fp32`` (the fp32 reference on the
  same inputs) and ``accuracy_delta_pp`` (percentage points, this minus fp32).

Beside them (:data:`PRECISION_FIELDS`): ``precision`` (asked: fp32 | fp16 | bf16 | int8; also
``key.options["precision"]``, absent for fp32), ``precision_effective`` (what ran: the precision,
``fp32`` for a fallback, ``mixed (N% int8)``, or ``unverified``), ``precision_compute_share``
(share of conv/matmul-like ops that ran at the precision asked, 0..1), ``precision_evidence``
(where that was read), ``quant_recipe`` (a dict: method, format, weights, activations, tool,
calibration, calibration_sha), ``quantize_s`` (seconds, apart from latency and ``prepare_s``),
``calibration``, ``calibration_sha``, ``calibration_samples``.
"""
from __future__ import annotations

from typing import Any

# Spellings of each precision (runtimes' own included: OpenVINO's f32/bf16/f16) -> its name.
PRECISION_ALIASES: dict[str, str] = {
    "fp32": "fp32", "float32": "fp32", "f32": "fp32",
    "fp16": "fp16", "float16": "fp16", "f16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "int8": "int8", "i8": "int8", "qint8": "int8",
}
DEFAULT_PRECISION = "fp32"


def precision_name(value: Any) -> str:
    """The precision a run's ``precision`` option asks for: ``fp32``, ``fp16``, ``bf16`` or
    ``int8``; fp32 for no value and for values that name none (OpenVINO's ``default``)."""
    if value is None:
        return DEFAULT_PRECISION
    return PRECISION_ALIASES.get(str(value).strip().lower(), DEFAULT_PRECISION)


PRECISION_FIELDS: tuple[str, ...] = (
    "precision", "precision_effective", "precision_compute_share", "precision_evidence", "quant_recipe",
    "quantize_s", "calibration", "calibration_sha", "calibration_samples",
)
FIDELITY_FIELDS: tuple[str, ...] = (
    "fidelity_max_abs_diff", "fidelity_mean_abs_diff", "fidelity_cosine", "fidelity_top1_agreement",
    "fidelity_samples", "fidelity_inputs", "accuracy_top1", "accuracy_top1_fp32", "accuracy_delta_pp",
)


def is_classifier_output(output: Any) -> bool:
    """A (samples, classes) array with at least two classes."""
    return getattr(output, "ndim", 0) == 2 and output.shape[1] >= 2


def fidelity(reference: list[Any], outputs: list[Any], labels: Any = None) -> dict[str, Any]:
    """Fidelity figures of ``outputs`` against ``reference`` (lists of arrays, samples along axis 0,
    same structure); accuracy figures too when ``labels`` (one int per sample) are given.

    Raises ValueError when the structures differ (a different number of outputs or shapes).
    """
    import numpy as np

    if len(reference) != len(outputs) or any(r.shape != o.shape for r, o in zip(reference, outputs)):
        raise ValueError(f"output structure differs: {[r.shape for r in reference]} vs {[o.shape for o in outputs]}")
    if not reference:
        raise ValueError("no outputs to compare")
    ref = [np.asarray(r, dtype=np.float64) for r in reference]
    got = [np.asarray(o, dtype=np.float64) for o in outputs]
    samples = int(ref[0].shape[0])
    diffs = np.concatenate([np.abs(r - o).ravel() for r, o in zip(ref, got)])
    flat_ref = np.concatenate([r.reshape(samples, -1) for r in ref], axis=1)
    flat_got = np.concatenate([o.reshape(samples, -1) for o in got], axis=1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_got, axis=1)
    dots = np.sum(flat_ref * flat_got, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)
    out: dict[str, Any] = {
        "fidelity_max_abs_diff": float(diffs.max()) if diffs.size else 0.0,
        "fidelity_mean_abs_diff": float(diffs.mean()) if diffs.size else 0.0,
        "fidelity_cosine": float(np.mean(cosine)),
        "fidelity_top1_agreement": None,
        "fidelity_samples": samples,
    }
    if is_classifier_output(ref[0]):
        out["fidelity_top1_agreement"] = float(np.mean(ref[0].argmax(1) == got[0].argmax(1)))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            accuracy = float(np.mean(got[0].argmax(1) == labels))
            accuracy_fp32 = float(np.mean(ref[0].argmax(1) == labels))
            out.update(accuracy_top1=accuracy, accuracy_top1_fp32=accuracy_fp32,
                       accuracy_delta_pp=100.0 * (accuracy - accuracy_fp32))
    return out
