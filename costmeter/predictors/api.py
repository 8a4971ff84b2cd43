"""Batch latency prediction for NAS loops: ``load_predictor`` and ``load_lut``.

Both return an object with the same two methods, working on lists (or arrays) of
architecture encodings through analytic features or table lookups -- no torch module, no ONNX
export::

    from costmeter import load_predictor
    model = load_predictor("ofa_cpu.costmodel", device="cpu", runtime="onnxruntime")
    latency_ms, uncertainty_ms = model.predict(archs)     # numpy arrays, one value per arch
    latency_ms, lower_ms, upper_ms = model.predict(archs, coverage=0.9)   # conformal interval
    ok = model.satisfies(archs, budget_ms=25.0, confidence=0.9)  # P(latency <= 25 ms) >= 0.9

- :class:`ForestPredictor` wraps a fitted ``ArchPredictor`` (a ridge base and a forest on the
  space's analytic features) loaded safely from a ``.costmodel`` file; the uncertainty is the
  spread across trees, and intervals come from its conformal calibration (cross-conformal,
  computed when it was fitted; see :mod:`costmeter.predictors.estimators.conformal`).
- ``load_lut`` returns a :class:`~costmeter.predictors.lut.table.LatencyTable`; uncalibrated,
  its prediction is the sum of its blocks and its uncertainty their run-to-run spread (plus the
  additivity error once checked); calibrated on measured whole networks (``bench lut
  calibrate``), it predicts what the sums miss and gives conformal intervals and bounds.

Both also give ``upper(archs, confidence)``: the one-sided bound (ms) behind ``satisfies``.

Throughput: architectures are turned into the space's canonical integer array by its
vectorised ``to_array`` (canonical strings never go through a per-string parser), checked,
featurised and predicted in chunks (:func:`chunk_rows`: at most :data:`CHUNK_ROWS`, fewer for
wide feature rows) so that the working set stays in cache; spaces with a dense index (NB201:
15,625 cells) are tabulated once and looked up. Bad input raises a ``ConfigError`` (a
ValueError) that names the field and its allowed values (and, for arrays, the batch's row).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

CHUNK_ROWS = 8192
CHUNK_BYTES = 2 << 20
"""A chunk's float64 feature matrix stays within this many bytes (about a core's L2 cache):
FBNet's 311 features give 1024-row chunks, OFA's 73 give 2048."""


def chunk_rows(n_features: int) -> int:
    """Rows predicted together: the largest power of two, from 1024 to :data:`CHUNK_ROWS`, whose
    float64 feature matrix of ``n_features`` columns fits :data:`CHUNK_BYTES`."""
    rows = 1024
    while rows * 2 * n_features * 8 <= CHUNK_BYTES and rows * 2 <= CHUNK_ROWS:
        rows *= 2
    return min(rows, CHUNK_ROWS)


class ForestPredictor:
    """Architecture-level predictor (an ``ArchPredictor``) with the batch API."""

    def __init__(self, estimator: Any, manifest: dict[str, Any] | None = None,
                 path: str | None = None) -> None:
        self.estimator = estimator
        self.manifest = dict(manifest or {})
        self.path = path

    @property
    def space(self) -> str:
        return str(self.estimator.space)

    @property
    def device(self) -> str | None:
        return self.manifest.get("device") or getattr(self.estimator, "device", None)

    @property
    def runtime(self) -> str | None:
        return self.manifest.get("runtime") or getattr(self.estimator, "runtime", None)

    def __repr__(self) -> str:
        return f"ForestPredictor({self.space}, {self.device}/{self.runtime}, {self.path or 'in memory'})"

    @property
    def target(self) -> str:
        """What the predictor predicts (``latency``, ``peak_memory`` or ``energy``)."""
        return str(getattr(self.estimator, "target", "latency"))

    def predict(self, archs: Any, coverage: float | None = None) -> tuple[np.ndarray, ...]:
        """(latency ms, one-sigma uncertainty ms) per architecture; with ``coverage`` (0 < c < 1)
        instead (latency ms, lower ms, upper ms) of a conformal interval holding the measured
        value with probability >= ``coverage``."""
        from costmeter.models.spaces import get_space

        calibration = None
        if coverage is not None:
            from costmeter.predictors.estimators.conformal import check_coverage

            check_coverage(coverage)
            calibration = self.estimator.calibration()
        space = get_space(self.space)
        items = _as_items(archs)
        tabulated = getattr(self.estimator, "tabulated", False)  # looked up, no features built
        if tabulated or not (isinstance(items, list) or getattr(items, "ndim", 0) == 2):
            items = space.to_array(items)  # the whole batch at once (or one 1-D row)
        mean, std = np.empty(len(items)), np.empty(len(items))
        rows = CHUNK_ROWS if tabulated else chunk_rows(len(space.feature_names()))
        for start in range(0, len(items), rows):
            part = slice(start, start + rows)
            mean[part], std[part] = self.estimator.predict_with_uncertainty(
                _checked_chunk(space, items, part), validated=True)
        if calibration is None:
            return mean, std
        lower, upper = calibration.interval(mean, std, coverage)
        return mean, lower, upper

    def satisfies(self, archs: Any, budget_ms: float, sigmas: float = 0.0,
                  confidence: float | None = None) -> np.ndarray:
        """Boolean mask. With ``confidence`` (0 < c < 1): the latency is within ``budget_ms``
        with at least that probability (conformal one-sided bound); otherwise the predicted
        latency (+ ``sigmas`` x uncertainty) is within it."""
        from costmeter.predictors.lut.table import check_budget

        budget = check_budget(budget_ms)
        if confidence is not None:
            return self.upper(archs, confidence) <= budget
        mean, std = self.predict(archs)
        return mean + sigmas * std <= budget

    def upper(self, archs: Any, confidence: float = 0.9) -> np.ndarray:
        """One-sided upper bound (ms) per architecture: the measured latency stays below it
        with probability >= ``confidence`` (0 < c < 1; conformal)."""
        from costmeter.predictors.estimators.conformal import check_coverage

        check_coverage(confidence, "confidence")
        calibration = self.estimator.calibration()
        mean, std = self.predict(archs)
        return calibration.upper(mean, std, confidence)


def _checked_chunk(space: Any, items: Any, part: slice) -> np.ndarray:
    """The canonical array of ``items[part]`` (converted and checked a chunk at a time, while
    it is in cache); a bad architecture raises the error a check of the whole batch gives, with
    its row counted from the batch's start."""
    try:
        return space.to_array(items[part])
    except ConfigError:
        space.to_array(items)
        raise


def _as_items(archs: Any) -> Any:
    if isinstance(archs, (str, dict)):
        return [archs]
    return archs if isinstance(archs, (list, np.ndarray)) else list(archs)


def load_predictor(path: str | Path, device: str | None = None, runtime: str | None = None,
                   space: str | None = None) -> Any:
    """A batch predictor from a ``.costmodel`` file (forest) or a lookup table (``.json``).

    ``device``/``runtime``/``space``, when given, must match what the file was built for
    (ConfigError saying which otherwise). Loading never executes code from the file.
    """
    p = Path(path)
    if p.suffix.lower() in (".json", ".csv"):
        return load_lut(p, device=device, runtime=runtime, space=space)
    from costmeter.predictors.estimators.arch import ArchPredictor
    from costmeter.predictors.artifacts import load_predictor as load_artifact
    from costmeter.predictors.artifacts import read_manifest

    estimator = load_artifact(p, device=device, runtime=runtime)
    if not isinstance(estimator, ArchPredictor):
        raise ConfigError(f"{p} holds a {type(estimator).__name__}; the batch API needs an "
                          "architecture-level predictor (ArchPredictor) or a lookup table")
    if space is not None and estimator.space != space:
        raise ConfigError(f"{p} predicts space {estimator.space!r}, not {space!r}; fit one "
                          f"for {space!r}")
    return ForestPredictor(estimator, read_manifest(p), str(p))


def load_lut(path: str | Path, device: str | None = None, runtime: str | None = None,
             resolutions: Sequence[int] | None = None, space: str | None = None) -> Any:
    """A :class:`~costmeter.predictors.lut.table.LatencyTable` (``.json``, or the ``.csv`` beside
    it); refused when built for another device/runtime/resolution/space than asked."""
    from costmeter.predictors.lut.table import load_table

    return load_table(path, device=device, runtime=runtime, resolutions=resolutions, space=space)
