"""Fidelity of a run, end to end: held-out inputs written by the parent, run through the prepared
session in the worker (:func:`run_heldout`), compared with the fp32 reference in the parent
(:func:`apply_fidelity`), which also judges whether the runtime really ran the precision asked.

The fp32 reference is torch eager (ONNX Runtime on the ONNX file for models without a torch
module). A run asked for a reduced precision whose runtime reports that none of its compute ops
ran at it (an int8 request that ran fp32) is INVALID with that reason: it is never labelled int8.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from costmeter.errors import UnsupportedError
from costmeter.harness.quantize.precision import DEFAULT_PRECISION, config_precision

_REFERENCES: dict[tuple[str, str], list[Any]] = {}


def heldout_path(job: Any, workdir: Path | str, accuracy_data: str | None) -> str | None:
    """Write the held-out inputs of ``job`` (a PreparedJob) and return their path, or None when
    the run needs no fidelity figures (fp32 without ``accuracy_data``, or no model inputs)."""
    import numpy as np

    from costmeter.harness.quantize.data import LABELS, heldout_set
    from costmeter.workdir import Workdir

    if job.source is None or (config_precision(job.config.options) == DEFAULT_PRECISION and not accuracy_data):
        return None
    data = heldout_set(job.source, accuracy_data)
    path = Workdir.of(workdir).inputs_cache / f"heldout-{job.model_hash}-{data.sha}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        labels = {LABELS: data.labels} if data.labels is not None else {}
        np.savez(tmp, **data.arrays, **labels, __origin__=np.array(data.origin))
        tmp.replace(path)
    return str(path)


def _load(path: str) -> tuple[dict[str, Any], Any, str]:
    import numpy as np

    from costmeter.harness.quantize.data import LABELS

    with np.load(path, allow_pickle=False) as npz:
        arrays = {n: npz[n] for n in npz.files if n not in (LABELS, "__origin__")}
        labels = npz[LABELS] if LABELS in npz.files else None
        origin = str(npz["__origin__"]) if "__origin__" in npz.files else "held-out"
    return arrays, labels, origin


def _chunks(arrays: dict[str, Any], batch: int) -> list[tuple[dict[str, Any], int]]:
    """Feeds of exactly ``batch`` samples (the last padded by repeating samples) with the count
    of real samples in each."""
    import numpy as np

    count = next(iter(arrays.values())).shape[0]
    out = []
    for start in range(0, count, batch):
        real = min(batch, count - start)
        index = [start + (i % real) for i in range(batch)]
        out.append(({k: np.ascontiguousarray(v[index]) for k, v in arrays.items()}, real))
    return out


def run_heldout(session: Any, inputs_path: str, out_path: str, batch: int) -> None:
    """Worker side: the session's outputs on every held-out input, saved as ``arr_i`` (samples
    along axis 0). Writes nothing when the session cannot take new inputs (no ``outputs_for``)."""
    import numpy as np

    from costmeter.devices.base import ReinputSession

    if not isinstance(session, ReinputSession) or not Path(inputs_path).is_file():
        return  # a remote board has no copy of the held-out inputs: no fidelity figures there
    arrays, _, _ = _load(inputs_path)
    parts: list[list[Any]] = []
    for feed, real in _chunks(arrays, batch):
        outs = [np.asarray(o)[:real] for o in session.outputs_for(feed)]
        parts.append(outs)
    np.savez(out_path, *[np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))])


def reference_outputs(source: Any, arrays: dict[str, Any], batch: int, key: tuple[str, str],
                      inputs_path: str | None = None) -> list[Any]:
    """fp32 outputs of ``source`` on ``arrays`` (torch eager, or ONNX Runtime for ONNX files).
    A python model (user code, inspected in a child) is run in a child of its own on the saved
    ``inputs_path``: its code never runs in this process."""
    import numpy as np

    from costmeter.harness.worker import InspectedSource

    if key in _REFERENCES:
        return _REFERENCES[key]
    if isinstance(source, InspectedSource):
        if inputs_path is None:
            raise UnsupportedError(f"{source.model_id}: the fp32 reference of a python model needs its inputs file")
        _REFERENCES[key] = _reference_in_child(source.target, inputs_path, batch)
        return _REFERENCES[key]
    parts: list[list[Any]] = []
    if source.has_torch():
        import torch

        from costmeter.devices.base import flatten_outputs

        module = source.build_torch().eval()
        with torch.inference_mode():
            for feed, real in _chunks(arrays, batch):
                outs = flatten_outputs(module(*[torch.from_numpy(v) for v in feed.values()]))
                parts.append([o.float().numpy()[:real] for o in outs])
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(source.onnx_path), providers=["CPUExecutionProvider"])
        for feed, real in _chunks(arrays, batch):
            parts.append([np.asarray(o)[:real] for o in session.run(None, feed)])
    _REFERENCES[key] = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return _REFERENCES[key]


REFERENCE_TIMEOUT_S = 1800.0


def _reference_in_child(target: str, inputs_path: str, batch: int) -> list[Any]:
    """Torch eager fp32 outputs of the python model ``target`` on the held-out inputs saved at
    ``inputs_path``, computed by ``python -m costmeter.harness.quantize.fidelity_run`` through the
    launcher. UnsupportedError with the child's last words when it fails."""
    import numpy as np

    from costmeter.harness.launcher import launch, scratch_dir

    with scratch_dir("reference-") as tmp:
        out = tmp / "reference.npz"
        done = launch([sys.executable, "-m", "costmeter.harness.quantize.fidelity_run", target, inputs_path,
                       str(out), str(batch)], timeout_s=REFERENCE_TIMEOUT_S, stderr_path=tmp / "stderr.txt")
        if not done.ok or not out.is_file():
            raise UnsupportedError(f"fp32 reference of {target}: " + done.describe("its worker", REFERENCE_TIMEOUT_S))
        with np.load(out) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def _reference_main(target: str, inputs_path: str, out_path: str, batch: str) -> int:
    """Child side of :func:`_reference_in_child`."""
    import numpy as np

    from costmeter.models.source import resolve_model

    arrays, _, _ = _load(inputs_path)
    outputs = reference_outputs(resolve_model(target), arrays, int(batch), ("child", inputs_path))
    np.savez(out_path, *outputs)
    return 0


def apply_fidelity(result: Any, job: Any, inputs_path: str | None, outputs_path: str | None) -> None:
    """Parent side: fidelity and accuracy figures into ``result.extra`` (see
    :mod:`costmeter.results.fidelity`), the quantizer's warnings into ``result.warnings``, and the
    precision check (asked vs ran) into ``result.reasons`` / ``result.validity``."""
    import numpy as np

    from costmeter.results.fidelity import fidelity
    from costmeter.results.schema import Status, Validity

    precision = config_precision(job.config.options)
    extra = result.extra
    extra["precision"] = precision
    for warning in extra.pop("precision_warnings", []) or []:
        if warning not in result.warnings:
            result.warnings.append(warning)
    if result.status is not Status.OK:
        return
    if inputs_path and outputs_path and Path(outputs_path).is_file():
        arrays, labels, origin = _load(inputs_path)
        with np.load(outputs_path) as npz:
            got = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        Path(outputs_path).unlink(missing_ok=True)
        try:
            reference = reference_outputs(job.source, arrays, job.config.batch,
                                          (job.model_hash, Path(inputs_path).name), inputs_path)
            extra.update(fidelity(reference, got, labels))
            extra["fidelity_inputs"] = origin
        except (ValueError, UnsupportedError) as error:
            extra["fidelity"] = f"not measured: {error}"
    elif inputs_path:
        extra["fidelity"] = "not measured: this runtime's session cannot take new inputs"
    _judge_precision(result, precision, Validity)


def _judge_precision(result: Any, precision: str, validity: Any) -> None:
    """INVALID when a reduced precision was asked and the runtime reports running none of its
    compute at it; a warning when only part of it ran reduced."""
    extra = result.extra
    if precision == DEFAULT_PRECISION:
        return
    share = extra.get("precision_compute_share")
    if share is None and extra.get("compute_ops"):
        share = extra.get("int8_compute_ops", 0) / extra["compute_ops"]
        extra["precision_compute_share"] = share
        extra.setdefault("precision_evidence", f"converter: {extra.get('int8_compute_ops', 0)}/{extra['compute_ops']} "
                                            "conv/linear nodes quantized before lowering")
    if share is None:
        extra.setdefault("precision_effective", "unverified")
        return
    if share <= 0.0:
        extra["precision_effective"] = "fp32"
        result.reasons.append(f"asked for {precision} but the runtime ran its compute ops in fp32 "
                              f"({extra.get('precision_evidence', 'checked on the compiled model')}); "
                              f"this is not a {precision} measurement")
        result.validity = validity.INVALID
    elif share < 0.999:
        extra["precision_effective"] = f"mixed ({share:.0%} {precision})"
        result.warnings.append(f"only {share:.0%} of the compute ops ran in {precision} "
                               f"({extra.get('precision_evidence', '')}); the rest ran in a wider type")
    else:
        extra["precision_effective"] = precision


if __name__ == "__main__":
    raise SystemExit(_reference_main(*sys.argv[1:5]))
