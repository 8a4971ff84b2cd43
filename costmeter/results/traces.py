"""Import latency traces measured elsewhere (CSV or Parquet) as RunResults with provenance.

Accepted layouts (column names are case-sensitive):

- *long*: one row per measurement: an architecture column (``arch``, ``architecture`` or
  ``encoding``; needs ``space``) or an ONNX column (``onnx_path``, ``onnx`` or ``model_path``;
  relative paths are resolved against the trace file's folder), ``latency_ms``, and optionally
  ``device`` (else pass ``device``);
- *wide*: an architecture/ONNX column and one ``<device>_ms`` column per device, like the
  NB201 table of the HELP data release (``1080ti_1_ms``, ``pixel3_ms``, ...). ``device``
  selects columns (a name or a comma-separated list); by default all are imported.

A long trace may also carry ``peak_memory_bytes`` (the memory one inference needed, bytes) and
``energy_j`` (energy of one inference, joules); empty cells mean "not measured". They become
the result's ``memory.imported_peak_memory_bytes`` and ``energy.energy_per_inference_j``
(provenance ``imported``), so that predictors can learn them.

Each measurement becomes a RunResult whose Measurement holds one sample (the source's value,
no raw samples), ``extra["provenance"] = "imported"`` plus the source file, its SHA-256, the
row and the column. One value cannot be judged, so its validity is UNJUDGED, never VALID. Validation happens before anything is returned or written: missing
columns, missing, non-numeric, infinite, non-positive, sub-nanosecond or beyond-int64-ns
latencies (rows named), unknown space, malformed architectures (row and reason named) raise
ConfigError and nothing is written.

An import is atomic and idempotent (:func:`import_traces`): every row commits in one
transaction together with its row in the store's import ledger, or nothing does; concurrent
imports never interleave partial commits; a file already imported with the same settings
(same SHA-256) is a no-op reported as such, and ``force`` imports it again under a new run id.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

ARCH_COLUMNS: tuple[str, ...] = ("arch", "architecture", "encoding")
ONNX_COLUMNS: tuple[str, ...] = ("onnx_path", "onnx", "model_path")
LATENCY_COLUMN = "latency_ms"
DEVICE_COLUMN = "device"
# optional per-row figures of a long trace: column -> what it is, for messages
OPTIONAL_COLUMNS: dict[str, str] = {"peak_memory_bytes": "peak memory (bytes)",
                                    "energy_j": "energy per inference (J)"}
PROVENANCE = "imported"
_MAX_ROWS_NAMED = 5
MIN_LATENCY_MS = 1e-6  # one nanosecond
MAX_LATENCY_MS = float(np.iinfo(np.int64).max) / 1e6 * (1 - 1e-9)  # int64 ns, with rounding margin


@dataclass(frozen=True)
class Traces:
    """Validated traces in long form.

    ``frame`` columns: ``source_row`` (1 = first data row), ``source_column``, ``device``,
    ``latency_ms``, ``model_id``, ``model_hash``, ``arch`` (canonical; None for ONNX rows),
    ``onnx_path`` (None for architectures), ``peak_memory_bytes`` and ``energy_j`` (NaN where
    the trace has no value).
    """

    frame: Any
    source: str
    source_sha256: str
    space: str | None


def _rows_named(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_ROWS_NAMED])
    more = f" and {len(rows) - _MAX_ROWS_NAMED} more" if len(rows) > _MAX_ROWS_NAMED else ""
    return f"data row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _read_table(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"trace file {path} not found; check the path")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if ".csv" in suffixes or ".tsv" in suffixes:
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot read trace file {path} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                          "check it is CSV or Parquet") from exc
    raise ConfigError(f"trace file {path} must be .csv, .csv.gz, .tsv or .parquet")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _latency_columns(table: Any, path: Path, device: str | None) -> tuple[list[str], bool]:
    """(latency columns, long layout?)."""
    columns = [str(c) for c in table.columns]
    if LATENCY_COLUMN in columns:
        return [LATENCY_COLUMN], True
    wide = [c for c in columns if c.endswith("_ms")]
    if not wide:
        raise ConfigError(f"trace file {path.name} has no '{LATENCY_COLUMN}' column and no "
                          f"'<device>_ms' columns; columns found: {', '.join(columns[:10])}")
    if device is None:
        return wide, False
    wanted = [d.strip() for d in device.split(",") if d.strip()]
    missing = [d for d in wanted if f"{d}_ms" not in wide]
    if missing:
        known = ", ".join(c[:-3] for c in wide)
        raise ConfigError(f"trace file {path.name} has no column for device(s) "
                          f"{', '.join(missing)}; devices in the file: {known}")
    return [f"{d}_ms" for d in wanted], False


def _check_latencies(values: np.ndarray, column: str, path: Path, raw: Any = None) -> None:
    """Refuse what the store cannot hold or what makes no physical sense, naming the rows:
    missing or non-numeric, infinite, <= 0, under one nanosecond (a sample is whole ns), or
    beyond what int64 nanoseconds hold (about 106 days)."""
    if raw is not None:
        text = raw.astype(str).str.strip().str.lower()
        infinite = np.flatnonzero(text.isin(["inf", "+inf", "-inf", "infinity", "-infinity"]).to_numpy()
                                  | np.isinf(values)) + 1
        if infinite.size:
            raise ConfigError(f"trace file {path.name}: infinite latency in column {column}, "
                              f"{_rows_named(infinite)}; latencies must be finite")
    bad_missing = np.flatnonzero(~np.isfinite(values)) + 1
    if bad_missing.size:
        raise ConfigError(f"trace file {path.name}: missing or non-numeric latency in column "
                          f"{column}, {_rows_named(bad_missing)}; fix or drop those rows")
    bad = np.flatnonzero(values <= 0) + 1
    if bad.size:
        raise ConfigError(f"trace file {path.name}: non-positive latency in column {column}, "
                          f"{_rows_named(bad)}; latencies must be > 0 ms")
    tiny = np.flatnonzero(values < MIN_LATENCY_MS) + 1
    if tiny.size:
        raise ConfigError(f"trace file {path.name}: latency under one nanosecond in column {column}, "
                          f"{_rows_named(tiny)}; latencies are stored in whole ns (check the unit: ms)")
    huge = np.flatnonzero(values > MAX_LATENCY_MS) + 1
    if huge.size:
        raise ConfigError(f"trace file {path.name}: latency beyond {MAX_LATENCY_MS:.3g} ms (int64 "
                          f"nanoseconds) in column {column}, {_rows_named(huge)}; check the unit: ms")


def _optional_values(table: Any, path: Path, long_layout: bool) -> dict[str, np.ndarray]:
    """The optional columns (:data:`OPTIONAL_COLUMNS`) as floats, NaN where empty; ConfigError
    naming the rows of a non-numeric, infinite or negative value, or when the file is wide."""
    import pandas as pd

    out: dict[str, np.ndarray] = {}
    for column, what in OPTIONAL_COLUMNS.items():
        if column not in table.columns:
            out[column] = np.full(len(table), np.nan)
            continue
        if not long_layout:
            raise ConfigError(f"trace file {path.name}: column {column} needs the long layout (one "
                              f"row per measurement with '{LATENCY_COLUMN}' and '{DEVICE_COLUMN}')")
        raw = table[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        blank = (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy(dtype=bool)
        bad = np.flatnonzero((~blank & ~np.isfinite(values)) | (np.isfinite(values) & (values < 0))) + 1
        if bad.size:
            raise ConfigError(f"trace file {path.name}: {what} in column {column} must be a finite "
                              f"number >= 0 or empty, {_rows_named(bad)}; fix or empty those cells")
        out[column] = np.where(blank, np.nan, values)
    return out


def _canonical_archs(raw: Sequence[Any], space: str, path: Path) -> list[str]:
    """Canonical strings per row; ConfigError naming the first malformed row."""
    from costmeter.models.spaces import get_space

    sp = get_space(space)
    cache: dict[str, str] = {}
    out = []
    for i, value in enumerate(raw):
        text = str(value).strip() if value is not None else ""
        if text not in cache:
            try:
                cache[text] = sp.canonical(text)
            except ConfigError as exc:
                raise ConfigError(f"trace file {path.name}, data row {i + 1}: {exc}") from exc
        out.append(cache[text])
    return out


def _onnx_rows(raw: Sequence[Any], path: Path) -> tuple[list[str], list[str], list[str]]:
    """(resolved paths, model ids, model hashes) of an ONNX column."""
    hashes: dict[str, str] = {}
    resolved, ids, digests = [], [], []
    for i, value in enumerate(raw):
        p = Path(str(value))
        p = p if p.is_absolute() else path.parent / p
        key = str(p)
        if key not in hashes:
            if not p.is_file():
                raise ConfigError(f"trace file {path.name}, data row {i + 1}: ONNX file {p} "
                                  "not found; paths are relative to the trace file")
            hashes[key] = _file_sha256(p)[:16]
        resolved.append(key)
        ids.append(p.stem)
        digests.append(hashes[key])
    return resolved, ids, digests


def read_traces(path: str | Path, *, space: str | None = None,
                device: str | None = None) -> Traces:
    """Read and validate a trace file into long form (see the module docstring)."""
    import pandas as pd

    from costmeter.models.spaces import arch_hash, get_space, space_names

    p = Path(path)
    if space is not None:
        get_space(space)  # unknown space -> ConfigError before reading anything
    table = _read_table(p)
    columns = [str(c) for c in table.columns]
    table.columns = columns
    arch_col = next((c for c in ARCH_COLUMNS if c in columns), None)
    onnx_col = next((c for c in ONNX_COLUMNS if c in columns), None)
    if arch_col is None and onnx_col is None:
        raise ConfigError(f"trace file {p.name} needs an architecture column "
                          f"({' or '.join(ARCH_COLUMNS)}) or an ONNX column "
                          f"({' or '.join(ONNX_COLUMNS)}); columns found: {', '.join(columns[:10])}")
    if arch_col is not None and space is None:
        raise ConfigError(f"trace file {p.name} holds architectures ({arch_col!r}); pass the "
                          f"search space (--space with one of {', '.join(space_names())})")
    lat_cols, long_layout = _latency_columns(table, p, device)
    rows = np.arange(1, len(table) + 1)
    if long_layout and DEVICE_COLUMN not in columns and device is None:
        raise ConfigError(f"trace file {p.name} has no '{DEVICE_COLUMN}' column; "
                          "pass the device name (--device NAME)")
    if long_layout and DEVICE_COLUMN in columns:
        names = table[DEVICE_COLUMN]
        blank = (names.isna() | (names.astype(str).str.strip() == "")).to_numpy(dtype=bool)
        if blank.any():
            raise ConfigError(f"trace file {p.name}: missing device name in column '{DEVICE_COLUMN}', "
                              f"{_rows_named(rows[blank])}; fill it in or drop those rows")
    for col in lat_cols:
        _check_latencies(pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64),
                         col, p, table[col])
    optional = _optional_values(table, p, long_layout)
    if arch_col is not None:
        archs = _canonical_archs(table[arch_col].tolist(), space or "", p)
        ids = [f"{space}:{a}" for a in archs]
        digests = [arch_hash(space or "", a) for a in archs]
        onnx_paths: list[str | None] = [None] * len(archs)
        arch_values: list[str | None] = list(archs)
    else:
        resolved, ids, digests = _onnx_rows(table[onnx_col].tolist(), p)
        onnx_paths, arch_values = list(resolved), [None] * len(resolved)
    parts = []
    for col in lat_cols:
        if long_layout:
            devices = (table[DEVICE_COLUMN].astype(str).to_numpy() if DEVICE_COLUMN in columns
                       else np.full(len(table), device, dtype=object))
        else:
            devices = np.full(len(table), col[:-3], dtype=object)
        parts.append(pd.DataFrame({
            "source_row": rows, "source_column": col, "device": devices,
            "latency_ms": pd.to_numeric(table[col]).to_numpy(dtype=np.float64),
            "model_id": ids, "model_hash": digests, "arch": arch_values, "onnx_path": onnx_paths,
            **optional,
        }))
    frame = pd.concat(parts, ignore_index=True)
    if long_layout and device is not None and DEVICE_COLUMN in columns:
        frame = frame[frame["device"] == device].reset_index(drop=True)
        if frame.empty:
            raise ConfigError(f"trace file {p.name} has no rows for device {device!r}")
    return Traces(frame=frame, source=p.name, source_sha256=_file_sha256(p), space=space)


def _onnx_input_shape(path: str, batch: int) -> tuple[int, ...]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else batch for d in dims]
    if shape:
        shape[0] = batch
    return tuple(shape)


def traces_to_results(traces: Traces, *, runtime: str = "unknown", batch: int = 1,
                      tag: str | None = "imported", run_id: str | None = None) -> list[Any]:
    """One RunResult per trace row: status ok, one-sample Measurement, provenance; validity
    UNJUDGED (one value cannot be judged: imported, never VALID)."""
    from costmeter.models.spaces import get_space
    from costmeter.results.schema import (
        BenchKey,
        EnergyInfo,
        EnergyProvenance,
        Measurement,
        MemoryInfo,
        RunResult,
        Status,
        Validity,
    )

    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run = run_id or f"import-{traces.source_sha256[:12]}"
    frame = traces.frame
    info: dict[str, dict[str, int]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if traces.space is not None and frame["arch"].notna().any():
        sp = get_space(traces.space)
        unique = sorted(set(frame["arch"].dropna()))
        matrix = sp.feature_matrix(unique)
        names = list(sp.feature_names())
        for a, row in zip(unique, matrix):
            info[a] = {"params": int(row[names.index("params_total")]),
                       "macs": int(row[names.index("macs_total")]) * batch}
            shapes[a] = tuple(sp.input_shape(a, batch))
    warning = (f"imported trace: one value per architecture from {traces.source}; "
               "no raw samples")
    results = []
    for rec in frame.itertuples(index=False):
        if rec.arch is not None:
            shape = shapes[rec.arch]
        else:
            shape = shapes.setdefault(rec.onnx_path, _onnx_input_shape(rec.onnx_path, batch))
        key = BenchKey(model_id=rec.model_id, model_hash=rec.model_hash, device=str(rec.device),
                       runtime=runtime, batch=batch, input_shape=shape, dtype="float32",
                       threads=None)
        peak, energy_j = float(rec.peak_memory_bytes), float(rec.energy_j)
        memory = MemoryInfo(imported_peak_memory_bytes=None if np.isnan(peak) else int(round(peak)))
        energy = (EnergyInfo() if np.isnan(energy_j) else
                  EnergyInfo(provenance=EnergyProvenance.IMPORTED, energy_j=energy_j,
                             energy_per_inference_j=energy_j,
                             reason=f"energy per inference imported from {traces.source}"))
        results.append(RunResult(
            key=key, status=Status.OK, run_id=run, started_at=now, finished_at=now, tag=tag,
            measurement=Measurement(samples_ns=[[round(rec.latency_ms * 1e6)]]),
            memory=memory, energy=energy,
            validity=Validity.UNJUDGED, warnings=[warning],
            model_info=dict(info.get(rec.arch, {})) if rec.arch is not None else {},
            extra={"provenance": PROVENANCE, "source_file": traces.source,
                   "source_sha256": traces.source_sha256, "source_row": int(rec.source_row),
                   "source_column": rec.source_column, "latency_ms": float(rec.latency_ms),
                   "space": traces.space, "arch": rec.arch, "onnx_path": rec.onnx_path},
        ))
    return results


def import_traces(path: str | Path, store: Any, **settings: Any) -> Any:
    """Import a trace file into ``store``, atomically and once: see
    :func:`costmeter.results.trace_import.import_traces` (an ImportSummary comes back)."""
    from costmeter.results.trace_import import import_traces as run_import

    return run_import(path, store, **settings)


def training_frame(frame: Any, space: str, device: str | None = None,
                   runtime: str | None = None, statistic: str = "latency_p50_ms",
                   value_name: str = "latency_ms") -> Any:
    """(arch, ``value_name``) per architecture of ``space`` from a ``ResultStore.query()`` frame
    (``statistic``: the frame column taken, e.g. ``peak_memory_bytes``).

    Keeps ok results of that space (model ids ``space:arch``, whether imported, collected or
    run), filtered by device/runtime; repeated measurements of one architecture are reduced to
    their median.
    """
    import pandas as pd

    from costmeter.models.spaces import get_space

    ids = frame["model_id"].astype(str)
    prefix = f"{space}:"
    arch = ids.str.slice(len(prefix)).where(ids.str.startswith(prefix))
    keep = arch.notna()
    if "status" in frame.columns:
        keep &= frame["status"].astype(str) == "ok"
    if device is not None:
        keep &= frame["device"] == device
    if runtime is not None:
        keep &= frame["runtime"] == runtime
    df = frame.loc[keep, [statistic]].assign(arch=arch[keep])
    if df.empty:
        raise ConfigError(f"no {space} results for device {device!r} runtime {runtime!r} in the "
                          "store; import traces or run `bench collect` first")
    sp = get_space(space)
    df["arch"] = [sp.canonical(a) for a in df["arch"]]
    out = df.groupby("arch", sort=True)[statistic].median().rename(value_name).reset_index()
    return pd.DataFrame(out)
