"""Batch latency prediction for NAS loops: ``load_predictor`` and ``load_lut``.

Both return an object with the same two methods, working on lists (or arrays) of
architecture encodings through analytic features or table lookups -- no torch module, no ONNX
export::

    from costmeter import load_predictor
    model = load_predictor("ofa_cpu.costmodel", device="cpu", runtime="onnxruntime")
    latency_ms, uncertainty_ms = model.predict(archs)     # numpy arrays, one value per arch
    ok = model.satisfies(archs, budget_ms=25.0)            # boolean mask

- :class:`ForestPredictor` wraps a fitted ``ArchPredictor`` (a forest on the space's analytic
  features) loaded safely from a ``.costmodel`` file; the uncertainty is the spread across trees.
- ``load_lut`` returns a :class:`~costmeter.predictors.lut.table.LatencyTable`; its uncertainty is
  the run-to-run spread of the summed blocks (plus the additivity error once checked).

Throughput: NB201 predictions are looked up (the space has 15,625 cells); OFA-MobileNetV3
rows are featurised and predicted in chunks of :data:`CHUNK_ROWS` so that the working set stays
in cache. Canonical OFA strings are decoded by a vectorised parser (:func:`ofa_array`); other
forms go through the space's own parser. Bad input raises a ``ConfigError`` (a ValueError)
that names the field and its allowed values.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

CHUNK_ROWS = 8192
_OFA_MAX_CHARS = 4 + 5 * 20  # 'r224' + five stages of up to four 'k?e?' tokens with separators


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

    def predict(self, archs: Any) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, one-sigma uncertainty ms) per architecture."""
        if self.space != "ofa_mbv3":
            mean, std = self.estimator.predict_with_uncertainty(_as_items(archs))
            return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        a = ofa_array(archs)
        mean, std = np.empty(len(a)), np.empty(len(a))
        for start in range(0, len(a), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            mean[part], std[part] = self.estimator.predict_with_uncertainty(a[part])
        return mean, std

    def satisfies(self, archs: Any, budget_ms: float, sigmas: float = 0.0) -> np.ndarray:
        """Boolean mask: predicted latency (+ ``sigmas`` x uncertainty) <= ``budget_ms``."""
        from costmeter.predictors.lut.table import check_budget

        budget = check_budget(budget_ms)
        mean, std = self.predict(archs)
        return mean + sigmas * std <= budget


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


# ----------------------------------------------------------------------------- OFA strings
def ofa_array(archs: Any) -> np.ndarray:
    """Canonical ``(n, 46)`` int array of ofa_mbv3 architectures (strings, dicts or arrays).

    Lists of canonical strings (``r176|k3e4,k5e6|...``) are decoded with vectorised numpy;
    anything else, and any string the fast path cannot vouch for, goes through
    ``ofa_mbv3.to_array`` (which raises a ConfigError naming the bad field).
    """
    from costmeter.models.spaces import ofa_mbv3 as s

    if isinstance(archs, np.ndarray) and archs.dtype.kind in "iu":
        return s.to_array(archs)
    items = _as_items(archs)
    if isinstance(items, list) and items and all(type(x) is str for x in items):
        parts = [_decode_ofa_strings(items[i:i + CHUNK_ROWS])
                 for i in range(0, len(items), CHUNK_ROWS)]  # chunks stay in cache
        if all(p is not None for p in parts):
            try:
                return s.to_array(np.concatenate(parts))
            except ConfigError:
                pass  # out of the space: let the parser name the field in its own words
    return s.to_array(items)


def _decode_ofa_strings(items: Sequence[str]) -> np.ndarray | None:
    """Vectorised decoder of canonical strings; None when any string is not canonical."""
    from costmeter.models.spaces import ofa_mbv3 as s

    n = len(items)
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
    if lengths.max() > _OFA_MAX_CHARS:
        return None
    width = _OFA_MAX_CHARS + 1  # at least one space after every string
    try:
        text = "".join(x.ljust(width) for x in items).encode("ascii")
    except UnicodeEncodeError:
        return None
    c = np.frombuffer(text, dtype=np.uint8).reshape(n, width)
    digit = (c >= ord("0")) & (c <= ord("9"))
    is_k, is_pipe, is_comma = c == ord("k"), c == ord("|"), c == ord(",")
    n_k = is_k.sum(axis=1)
    ok = ((c[:, 0] == ord("r")) & digit[:, 1:4].all(axis=1) & (c[:, 4] == ord("|"))
          & (is_pipe.sum(axis=1) == s.N_STAGES) & (is_comma.sum(axis=1) == n_k - s.N_STAGES)
          & (lengths == 4 + 5 * n_k))
    # every separator (columns 4..) is followed by a token and follows a digit
    sep = (is_pipe | is_comma)[:, 4:-1]
    ok &= ~(sep & ((c[:, 5:] != ord("k")) | ~digit[:, 3:-2])).any(axis=1)
    rows, cols = np.nonzero(is_k)
    if not ok.all() or cols.max(initial=0) + 4 >= c.shape[1]:
        return None
    end = c[rows, cols + 4]
    tok_ok = ((c[rows, cols + 2] == ord("e")) & digit[rows, cols + 1] & digit[rows, cols + 3]
              & ((end == ord(",")) | (end == ord("|")) | (end == ord(" "))))
    if not tok_ok.all():
        return None
    pipes = np.flatnonzero(is_pipe)  # flat positions, sorted; five per row
    stage = np.searchsorted(pipes, rows * width + cols) - rows * s.N_STAGES - 1
    depth = np.bincount(rows * s.N_STAGES + stage, minlength=n * s.N_STAGES).reshape(n, s.N_STAGES)
    if depth.max() > s.MAX_DEPTH:
        return None
    row_start = np.concatenate([[0], np.cumsum(n_k)[:-1]])
    order = np.arange(len(rows)) - row_start[rows]  # token number within the row
    stage_start = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(depth, axis=1)[:, :-1]], 1)
    slot = stage * s.MAX_DEPTH + order - stage_start[rows, stage]
    out = np.zeros((n, s.ARRAY_WIDTH), dtype=np.int64)
    digits = c[:, 1:4].astype(np.int64) - ord("0")
    out[:, 0] = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    out[:, 1:1 + s.N_STAGES] = depth
    out[rows, 1 + s.N_STAGES + slot] = c[rows, cols + 1].astype(np.int64) - ord("0")
    out[rows, 1 + s.N_STAGES + s.N_SLOTS + slot] = c[rows, cols + 3].astype(np.int64) - ord("0")
    return out

