"""Honest evaluation of a saved predictor on the store (``bench predictor eval F.costmodel``):
only rows the predictor was not fitted on are scored.

A predictor file names what it was fitted on: ``bench predictor fit`` records a digest of every
training architecture (:func:`training_digests`), and kernel-level builds record their
calibration networks. Rows among them are left out and counted; a file that does not say what
trained it is refused unless the caller asks for in-sample figures, which are then labelled so.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from costmeter.errors import ConfigError

DIGEST_CHARS = 10


def training_digests(ids: Iterable[str]) -> list[str]:
    """Sorted short SHA-256 digests of training model ids (what a manifest records)."""
    return sorted({hashlib.sha256(str(i).encode()).hexdigest()[:DIGEST_CHARS] for i in ids})


@dataclass
class Evaluation:
    """Model ids, families, measured and predicted latencies (ms) of the scored rows, how many
    training rows were left out, and whether the figures are in-sample."""

    ids: list[str]
    families: list[str]
    measured_ms: Any
    predicted_ms: Any
    left_out: int
    in_sample: bool


def _refuse_unknown_training(path: Path | str) -> ConfigError:
    return ConfigError(f"{path} does not record what it was trained on, so the store cannot be split "
                       "into rows it has and has not seen; refit it with this version (`bench "
                       "predictor fit` / `bench predictor build`), or pass --in-sample for figures "
                       "on its own training rows, labelled as such")


def evaluate_arch_predictor(path: Path | str, frame: Any, in_sample: bool = False) -> Evaluation:
    """Score an :class:`ArchPredictor` file on the stored architectures of its space, device and
    runtime that did not train it."""
    import numpy as np

    from costmeter.models.spaces import get_space
    from costmeter.predictors.artifacts import load_predictor, read_manifest
    from costmeter.results.traces import training_frame

    manifest = read_manifest(path)
    recorded = (manifest.get("extra") or {}).get("training_models")
    if recorded is None and not in_sample:
        raise _refuse_unknown_training(path)
    pred = load_predictor(path)
    test = training_frame(frame, pred.space, device=pred.device, runtime=pred.runtime)
    space = get_space(pred.space)
    archs = [space.canonical(a) for a in test["arch"]]
    seen = set(recorded or [])
    keep = np.array([in_sample or training_digests([a])[0] not in seen for a in archs], dtype=bool)
    if not keep.any():
        raise ConfigError(f"every stored {pred.space} architecture on {pred.device} trained {path}; "
                          f"measure new ones (`bench collect --space {pred.space} --seed N`) to "
                          "evaluate it, or pass --in-sample")
    kept = [a for a, k in zip(archs, keep) if k]
    ids = [f"{pred.space}:{a}" for a in kept]
    return Evaluation(ids, [pred.space] * len(ids), test["latency_ms"].to_numpy()[keep],
                      np.asarray(pred.predict(kept)), int((~keep).sum()), in_sample)


def evaluate_network_predictor(path: Path | str, store: Any, workdir: Path | str,
                               in_sample: bool = False) -> Evaluation:
    """Score a kernel-level predictor file on the stored networks measured at its device,
    runtime and thread count, leaving out its calibration networks (lowest median per model:
    other work on a machine only adds time)."""
    import numpy as np

    from costmeter.predictors.artifacts import read_manifest
    from costmeter.predictors.estimators.evaluate import family_of
    from costmeter.predictors.workflows.predict import predict_models

    manifest = read_manifest(path)
    extra = manifest.get("extra") or {}
    calibration = extra.get("calibration_networks")
    if calibration is None and extra.get("calibration") and not in_sample:
        raise _refuse_unknown_training(path)
    threads = extra.get("threads")
    measured: dict[str, float] = {}
    for result in store.results(device=manifest.get("device"), runtime=manifest.get("runtime"),
                                status="ok"):
        if result.measurement is None or (threads is not None and result.key.threads != threads):
            continue
        samples = result.measurement.all_samples_ns()
        if samples:
            median = float(np.median(samples)) / 1e6
            measured[result.key.model_id] = min(median, measured.get(result.key.model_id, math.inf))
    from costmeter.models.source import zoo_names
    from costmeter.predictors.workflows.collect import item_of

    seen = set(calibration or [])
    known = [m for m in measured if m in zoo_names() or item_of(m) is not None]  # rebuildable
    ids = sorted(m for m in known if in_sample or m not in seen)
    if not ids:
        raise ConfigError(f"the store holds no networks measured at {threads} thread(s) on "
                          f"{manifest.get('device')} that did not calibrate {path}; measure some "
                          f"(`bench run --model M --threads {threads}` or `bench collect`)")
    _, answers = predict_models(path, ids, workdir, threads=threads)
    return Evaluation(ids, [family_of(m) for m in ids], np.array([measured[m] for m in ids]),
                      np.array([a["latency_ms"] for a in answers]), len(known) - len(ids),
                      in_sample)
