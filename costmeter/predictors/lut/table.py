"""Latency lookup tables (LUTs) for NAS: per-block latencies summed into a network latency.

:func:`build_lut` measures (through :mod:`costmeter.predictors.lut.measure`: the harness
protocol and runtime adapters, many blocks per isolated worker) or, given a kernel-level
predictor, predicts the latency of every block a search space can produce at the requested
resolutions, keyed as Once-for-All's tables are (see :mod:`costmeter.predictors.lut.blocks`).
A :class:`LatencyTable` is saved as JSON (manifest + entries) with a CSV of the entries beside
it; :func:`load_table` reads it back and refuses a table built for another device, runtime or
resolution set than the caller asks for.

Estimates (ms): ``estimate(arch) = sum of the arch's block entries + overhead_ms``. A measured
entry is its block's median minus the per-run overhead of the runtime (the median of an almost
empty model measured alongside), so a network of ~25 blocks pays that overhead once, not 25
times; ``corrected=False`` sums the raw medians instead (the additivity check reports both).
:meth:`LatencyTable.estimate_batch` gathers from dense numpy tables: no per-architecture
Python loop for array encodings.

Calibration (format version 2): ``bench lut calibrate`` fits, on whole networks measured on
the device, what the sums miss (per-run and traffic terms) and split-conformal residuals
(:mod:`costmeter.predictors.lut.calibrate`); ``predict`` then returns calibrated latencies,
``predict(coverage=...)`` intervals and ``satisfies(confidence=...)`` a budget test that holds
with that probability. A table without one (older files included) says "uncalibrated".
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError, StoreError
from costmeter.models.spaces import get_space, lut_blocks
from costmeter.predictors.lut import blocks
from costmeter.predictors.lut.blocks import BlockSpec

FORMAT = "costmeter-lut"
FORMAT_VERSION = 2  # 2: a calibration on measured networks may be stored (manifest "calibration")
READABLE_VERSIONS = (1, 2)
MIN_ENTRY_MS = 1e-4  # floor of an overhead-corrected entry (0.1 us)
SOURCES = ("measured", "predicted")
ENTRY_COLUMNS = ("key", "kind", "input", "output", "expand", "kernel", "stride", "idskip", "se",
                 "hs", "groups", "latency_ms", "raw_ms", "spread_ms", "samples", "source")


@dataclass(frozen=True)
class LutEntry:
    """One table row: a block key and its latency (ms, overhead-corrected), raw median,
    robust spread of single runs (1.4826 x MAD, ms), sample count and source."""

    key: str
    kind: str
    latency_ms: float
    raw_ms: float
    spread_ms: float
    samples: int
    source: str
    fields: tuple[tuple[str, Any], ...] = ()

    def to_row(self) -> dict[str, Any]:
        """A flat dict with :data:`ENTRY_COLUMNS`."""
        row = {"key": self.key, "kind": self.kind, **dict(self.fields),
               "latency_ms": self.latency_ms, "raw_ms": self.raw_ms, "spread_ms": self.spread_ms,
               "samples": self.samples, "source": self.source}
        return {c: row.get(c, "") for c in ENTRY_COLUMNS}


def _entry_fields(spec: BlockSpec) -> tuple[tuple[str, Any], ...]:
    return (("input", "x".join(map(str, spec.input_hwc))),
            ("output", "x".join(map(str, spec.output_hwc))), ("expand", spec.expand),
            ("kernel", spec.kernel), ("stride", spec.stride), ("idskip", int(spec.idskip)),
            ("se", int(spec.se)), ("hs", int(spec.hs)), ("groups", spec.groups))


class LatencyTable:
    """A latency lookup table of one search space on one device and runtime.

    ``manifest`` holds space, device, runtime, threads, resolutions, source
    (measured/predicted), overhead_ms, environment, protocol, creation date and versions.
    ``predict``/``satisfies`` follow the batch prediction API of :mod:`costmeter.predictors.api`.
    """

    def __init__(self, manifest: dict[str, Any], entries: Sequence[LutEntry]) -> None:
        self.manifest = dict(manifest)
        self.entries: dict[str, LutEntry] = {e.key: e for e in entries}
        self._dense: dict[bool, tuple[Any, ...]] = {}
        self._calibration: Any = None
        self.format_version = FORMAT_VERSION

    # -- identity
    @property
    def space(self) -> str:
        return str(self.manifest["space"])

    @property
    def device(self) -> str:
        return str(self.manifest["device"])

    @property
    def runtime(self) -> str:
        return str(self.manifest["runtime"])

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.manifest["resolutions"])

    @property
    def overhead_ms(self) -> float:
        return float(self.manifest.get("overhead_ms") or 0.0)

    def __repr__(self) -> str:
        return (f"LatencyTable({self.space}, {self.device}/{self.runtime}, "
                f"resolutions={list(self.resolutions)}, {len(self.entries)} entries, "
                f"{'calibrated' if self.calibrated else 'uncalibrated'})")

    # -- calibration
    @property
    def calibration(self) -> Any:
        """The :class:`~costmeter.predictors.lut.calibrate.LutCalibration` stored in the
        manifest, None when the table is uncalibrated."""
        if self._calibration is None and self.manifest.get("calibration"):
            from costmeter.predictors.lut.calibrate import LutCalibration

            self._calibration = LutCalibration.from_state(self.manifest["calibration"])
        return self._calibration

    @property
    def calibrated(self) -> bool:
        return bool(self.manifest.get("calibration"))

    def set_calibration(self, calibration: Any) -> None:
        """Store a fitted calibration in the manifest (written by :meth:`save`)."""
        self.manifest["calibration"] = calibration.state()
        self._calibration = calibration

    def calibration_note(self) -> str:
        """One line: what the table's predictions are, calibrated or plainly uncalibrated."""
        if self.calibrated:
            return self.calibration.describe()
        why = (f"a format version {self.format_version} file, written before calibrations"
               if self.format_version < 2 else "never calibrated")
        return (f"uncalibrated ({why}): predictions are sums of blocks timed alone, with no "
                "interval; run `bench lut calibrate TABLE` to measure whole networks and fit one")

    def _require_calibration(self, asked: str) -> Any:
        if not self.calibrated:
            raise ConfigError(f"{asked} needs a calibrated lookup table and this one is "
                              f"uncalibrated; run `bench lut calibrate TABLE` first")
        return self.calibration

    def check_compatible(self, device: str | None = None, runtime: str | None = None,
                         resolutions: Sequence[int] | None = None, space: str | None = None,
                         where: str = "this table") -> None:
        """ConfigError naming the mismatch when the table was built for something else."""
        for field, wanted in (("space", space), ("device", device), ("runtime", runtime)):
            have = self.manifest.get(field)
            if wanted is not None and str(wanted) != str(have):
                raise ConfigError(f"{where} was built for {field} {have!r}, not {wanted!r}; "
                                  f"build one with `bench lut build --{field} {wanted}`")
        missing = sorted({int(r) for r in resolutions or ()} - set(self.resolutions))
        if missing:
            raise ConfigError(f"{where} was built for resolutions "
                              f"{', '.join(map(str, self.resolutions))}, not "
                              f"{', '.join(map(str, missing))}; rebuild it with `bench lut build "
                              f"--resolution {','.join(map(str, sorted(set(self.resolutions) | set(missing))))}`")

    # -- per architecture
    def keys_of(self, arch: Any) -> list[str]:
        """Block keys of one architecture in network order (repeats included)."""
        return [spec.key for spec in blocks.arch_blocks(self.space, arch)]

    def missing_keys(self, archs: Sequence[Any]) -> list[str]:
        """Keys needed by ``archs`` that the table lacks (empty when it covers them all)."""
        needed = {k for a in archs for k in self.keys_of(a)}
        return sorted(needed - set(self.entries))

    def breakdown(self, arch: Any, corrected: bool = True) -> list[tuple[str, float]]:
        """(key, latency ms) of every block of ``arch``; ConfigError for a resolution or block
        the table lacks."""
        self._check_resolution(blocks.arch_resolution(self.space, arch))
        out = []
        for key in self.keys_of(arch):
            entry = self.entries.get(key)
            if entry is None:
                raise ConfigError(f"table has no entry {key}; rebuild it with `bench lut build`")
            out.append((key, entry.latency_ms if corrected else entry.raw_ms))
        return out

    def estimate(self, arch: Any, corrected: bool = True) -> float:
        """Latency (ms) of one architecture: its blocks' entries plus, corrected, the overhead."""
        total = math.fsum(ms for _, ms in self.breakdown(arch, corrected))
        return total + (self.overhead_ms if corrected else 0.0)

    def _check_resolution(self, resolution: int) -> None:
        if int(resolution) not in self.resolutions:
            raise ConfigError(f"architecture resolution {resolution} is not in this table (built "
                              f"for resolutions {', '.join(map(str, self.resolutions))}); rebuild "
                              "it with `bench lut build --resolution ...` including it")

    # -- vectorised
    def estimate_batch(self, archs: Any, corrected: bool = True) -> np.ndarray:
        """Sum (ms) of every architecture's blocks, vectorised: :meth:`estimate` without a
        calibration (see :meth:`predict` for the calibrated latency)."""
        return self.predict(archs, corrected=corrected, calibrated=False)[0]

    def predict(self, archs: Any, corrected: bool = True, coverage: float | None = None,
                calibrated: bool = True) -> tuple[np.ndarray, ...]:
        """(latency ms, uncertainty ms) per architecture (strings, dicts, or encoding arrays);
        with ``coverage`` (0 < c < 1) instead (latency ms, lower ms, upper ms) of a conformal
        interval holding the measured median with that probability (calibrated tables only).

        Calibrated (and ``calibrated``), the latency is the calibration's correction of the
        sum, and the uncertainty adds its out-of-group relative RMSE times the latency in
        quadrature; otherwise the latency is the sum, and the uncertainty the root-sum-square of
        the blocks' single-run spreads, plus (when the table carries an additivity check,
        ``manifest["check"]``) its RMS relative error times the latency in quadrature.
        """
        if coverage is not None:
            from costmeter.predictors.estimators.conformal import check_coverage

            check_coverage(coverage)
            self._require_calibration("an interval (coverage)")
            if not (calibrated and corrected):
                raise ConfigError("an interval (coverage) is around the calibrated prediction; "
                                  "leave corrected and calibrated at True")
        space = get_space(self.space)
        encoded = space.to_array(archs)
        mean, var = lut_blocks(self.space).dense_predict(self._dense_tables(corrected), encoded)
        if not np.isfinite(mean).all():
            row = int(np.flatnonzero(~np.isfinite(mean))[0])
            self.breakdown(space.format_arch(encoded[row]), corrected)  # raises naming the gap
        calibration = self.calibration if calibrated and corrected else None
        if calibration is None:
            rel = float((self.manifest.get("check") or {}).get("rms_rel_error") or 0.0)
            return mean, np.sqrt(var + (rel * mean) ** 2)
        mean = calibration.adjust(mean, *calibration.network_terms(self.space, self.resolutions, encoded))
        if coverage is not None:
            lower, upper = calibration.conformal.interval(mean, np.zeros_like(mean), coverage)
            return mean, lower, upper
        return mean, np.sqrt(var + (calibration.traffic.cv_rel_rmse_ * mean) ** 2)

    def upper(self, archs: Any, confidence: float = 0.9) -> np.ndarray:
        """One-sided upper bound (ms) per architecture: its measured median stays below it with
        probability >= ``confidence`` (calibrated tables only)."""
        from costmeter.predictors.estimators.conformal import check_coverage

        check_coverage(confidence, "confidence")
        calibration = self._require_calibration("a confidence bound")
        mean = self.predict(archs)[0]
        return calibration.conformal.upper(mean, np.zeros_like(mean), confidence)

    def satisfies(self, archs: Any, budget_ms: float, sigmas: float = 0.0,
                  confidence: float | None = None) -> np.ndarray:
        """Boolean mask. With ``confidence`` (0 < c < 1): the measured latency stays within
        ``budget_ms`` with at least that probability (:meth:`upper` <= budget; calibrated
        tables only); otherwise the prediction (+ ``sigmas`` x uncertainty) is within it."""
        budget = check_budget(budget_ms)
        if confidence is not None:
            return self.upper(archs, confidence) <= budget
        mean, unc = self.predict(archs)
        return mean + sigmas * unc <= budget

    def _dense_tables(self, corrected: bool) -> tuple[Any, ...]:
        if corrected not in self._dense:
            self._dense[corrected] = lut_blocks(self.space).dense_tables(
                lambda key: self._value(key, corrected), self.resolutions,
                self.overhead_ms if corrected else 0.0)
        return self._dense[corrected]

    def _value(self, key: str, corrected: bool) -> tuple[float, float]:
        entry = self.entries.get(key)
        if entry is None:
            return float("nan"), float("nan")
        return (entry.latency_ms if corrected else entry.raw_ms), entry.spread_ms ** 2

    # -- files
    def to_frame(self) -> Any:
        """Entries as a pandas DataFrame with :data:`ENTRY_COLUMNS`."""
        import pandas as pd

        return pd.DataFrame([e.to_row() for e in self.entries.values()], columns=list(ENTRY_COLUMNS))

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.json`` (manifest + entries) and ``<stem>.csv``; returns both paths."""
        json_path = Path(path).with_suffix(".json")
        csv_path = json_path.with_suffix(".csv")
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, "manifest": self.manifest,
                "entries": [e.to_row() for e in self.entries.values()]}
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(json_path, json.dumps(body, indent=1, sort_keys=True, default=str))
            _atomic_write(csv_path, self.to_frame().to_csv(index=False))
        except OSError as exc:
            raise StoreError(f"cannot write lookup table {json_path}: {exc.strerror or exc}; "
                             "check the folder exists and is writable") from exc
        return json_path, csv_path


def check_budget(budget_ms: Any) -> float:
    """The budget as a float; ConfigError unless it is a positive finite number of ms."""
    try:
        value = float(budget_ms)
    except (TypeError, ValueError):
        raise ConfigError(f"latency budget must be a positive number of ms, got {budget_ms!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"latency budget must be positive, got {budget_ms} ms")
    return value


# ----------------------------------------------------------------------------- build
def build_lut(space: str, device: str = "cpu", runtime: str = "onnxruntime",
              resolutions: Sequence[int] | None = None, predictor: Any = None,
              workdir: Path | str = ".costmeter", threads: int | None = 1,
              min_time_s: float = 0.05, chunk_size: int | None = None,
              interleave: int | None = None, output: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None, precision: str = "fp32",
              sink: Any = None) -> LatencyTable:
    """Measure (or, with ``predictor``, predict) every block of ``space`` at ``resolutions``.

    ``interleave``: blocks sampled round-robin in groups of this size (default: the space's
    ``lut.INTERLEAVE``; 1 = each block alone); see :mod:`~costmeter.predictors.lut.measure`.
    ``predictor``: a kernel-level predictor (``KernelForest``) or the path of a
    ``.costmodel`` file holding one; blocks are then priced from their ONNX graphs' kernels
    with the runtime's fusion rules and nothing is timed. ``output`` (optional) saves the
    table as ``.json`` + ``.csv``. Everything is validated before anything runs. ``sink`` (the
    store: anything with ``write(result)``) receives every measured block's judged result; the
    manifest lists the entries whose median was not pinned (``invalid_entries``).
    """
    from costmeter import __version__
    from costmeter.predictors.lut import measure as lut_measure

    res = blocks.check_resolutions(space, resolutions)
    if min_time_s <= 0:
        raise ConfigError(f"--min-time must be > 0 s, got {min_time_s}")
    specs = blocks.space_blocks(space, res)
    predictor_info: dict[str, Any] | None = None
    if precision != "fp32" and (predictor is not None or runtime != "onnxruntime"):
        raise ConfigError(f"{precision} lookup tables are measured with onnxruntime (blocks quantized "
                          "as `bench run --precision int8` does); drop --predicted or use --runtime onnxruntime")
    if predictor is not None:
        timings, facts, predictor_info = lut_measure.predict_blocks(
            specs, predictor, device, runtime, workdir)
    else:
        timings, facts = lut_measure.measure_blocks(
            specs, device, runtime, workdir, threads, lut_measure.lut_protocol(min_time_s),
            chunk_size=chunk_size or lut_measure.DEFAULT_CHUNK,
            interleave=interleave or lut_blocks(space).INTERLEAVE, progress=progress, precision=precision,
            sink=sink)
    failed = [k for k, t in timings.items() if t.error or not t.median_ms > 0]
    if failed:
        first = timings[failed[0]]
        raise ConfigError(f"{len(failed)} of {len(specs)} blocks could not be measured (first: "
                          f"{failed[0]}: {first.error or 'no latency'}); check the runtime with "
                          "`bench run` and build again")
    overhead = float(facts.get("overhead_ms", 0.0))
    source = "predicted" if predictor is not None else "measured"
    entries = [LutEntry(spec.key, spec.kind,
                        max(timings[spec.key].median_ms - overhead, MIN_ENTRY_MS),
                        timings[spec.key].median_ms, timings[spec.key].spread_ms,
                        timings[spec.key].samples, source, _entry_fields(spec)) for spec in specs]
    manifest = {
        "space": space, "device": device, "runtime": runtime, "threads": threads, "precision": precision,
        "resolutions": list(res), "source": source, "overhead_ms": overhead,
        "entries": len(entries), "predictor": predictor_info,
        "invalid_entries": sorted(k for k, t in timings.items() if t.validity == "INVALID"),
        "protocol": facts.get("protocol"), "chunk_size": facts.get("chunk_size"),
        "interleave": facts.get("interleave"),
        "environment": facts.get("environment") or {},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "costmeter_version": __version__, "check": None, "calibration": None,
    }
    table = LatencyTable(manifest, entries)
    if output is not None:
        table.save(output)
    return table


from costmeter.predictors.lut.files import (  # noqa: E402  (re-exported; files imports this module lazily)
    atomic_write as _atomic_write, default_lut_path, load_table)
