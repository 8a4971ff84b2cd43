"""Table layout of the results store and the conversion between RunResult and rows.

Three tables (store layout version 1):

- ``meta``: ``name -> value`` pairs; ``store_version`` is the layout version (see migrations.py).
- ``results``: one row per RunResult. Key fields, status, timestamps, summary statistics (in ns,
  computed at write time), memory, energy and a few promoted scalars are plain columns so that
  SQL can filter and sort on them; memory, energy, environment, model info and extra are also
  kept whole as JSON text so that a result round-trips exactly.
- ``samples``: raw latency samples, one row per worker process. ``data`` is the process's
  samples as a little-endian array (``numpy.ndarray.tobytes``) of dtype ``dtype`` (``<i8``
  for integer nanoseconds, ``<f8`` when a source gave fractional values); ``n`` is its length.

This module knows SQLAlchemy and numpy but not pandas; the DataFrame view lives in frames.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from costmeter.errors import StoreError
from costmeter.results.schema import SCHEMA_VERSION, BenchKey, RunResult, check_schema_version

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
# Summary statistics kept per result, in ns (``cv`` is unitless). Names match Summary.to_dict().
LATENCY_STATS: tuple[str, ...] = ("mean", "std", "min", "max") + tuple(
    f"p{p}{suffix}" for p in PERCENTILES for suffix in ("", "_low", "_high")
)
SAMPLE_DTYPES = ("<i8", "<f8")
# ``results`` columns added by layout version 4 (see migrations.py)
ADDED_IN_V4: tuple[str, ...] = ("cuda_max_allocated_bytes", "peak_memory_bytes")

metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

results_table = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("schema_version", Integer, nullable=False),
    Column("run_id", String(128), nullable=False, index=True),
    Column("tag", String(256), index=True),
    Column("status", String(16), nullable=False),
    Column("validity", String(16), nullable=False),
    Column("reasons", Text, nullable=False),  # JSON list of str
    Column("warnings", Text, nullable=False),  # JSON list of str
    Column("error", Text),
    Column("started_at", String(64), nullable=False),  # as given (ISO-8601)
    Column("finished_at", String(64), nullable=False),
    Column("started_utc", DateTime, nullable=False, index=True),  # naive UTC, for filters
    Column("model_id", String(512), nullable=False, index=True),
    Column("model_hash", String(128), nullable=False),
    Column("device", String(128), nullable=False),
    Column("runtime", String(128), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("input_shape", String(256), nullable=False),  # "1x3x224x224"
    Column("dtype", String(32), nullable=False),
    Column("threads", Integer),
    Column("options", Text, nullable=False),  # JSON object, sorted keys
    Column("key_digest", String(16), nullable=False, index=True),
    Column("iterations_per_sample", Integer),  # NULL: no measurement
    Column("warmup_count", Integer),
    Column("warmup_s", Double),
    Column("sampling_s", Double),
    Column("hit_max_time", Boolean),
    Column("n_samples", Integer, nullable=False),
    *[Column(f"latency_{stat}_ns", Double) for stat in LATENCY_STATS],
    Column("latency_cv", Double),
    Column("throughput_items_per_s", Double),
    Column("peak_rss_bytes", BigInteger),
    Column("peak_rss_above_baseline_bytes", BigInteger),
    Column("cuda_max_allocated_bytes", BigInteger),  # layout version 4
    Column("peak_memory_bytes", BigInteger),  # layout version 4: MemoryInfo.peak_memory_bytes()
    Column("artifact_bytes", BigInteger),
    Column("param_bytes", BigInteger),
    Column("params", BigInteger),
    Column("macs", BigInteger),
    Column("energy_j", Double),
    Column("energy_per_inference_j", Double),
    Column("energy_provenance", String(32)),
    Column("git_sha", String(64), index=True),
    Column("costmeter_version", String(64)),
    Column("host", String(256)),
    Column("max_abs_diff", Double),
    Column("prepare_s", Double),
    Column("memory_json", Text, nullable=False),
    Column("energy_json", Text, nullable=False),
    Column("environment_json", Text, nullable=False),
    Column("model_info_json", Text, nullable=False),
    Column("extra_json", Text, nullable=False),
)

samples_table = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "result_id",
        Integer,
        ForeignKey("results.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("process_index", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    Column("dtype", String(8), nullable=False),
    Column("data", LargeBinary, nullable=False),
)


def parse_timestamp(value: str | datetime, what: str) -> datetime:
    """Parse an ISO-8601 string (or datetime) into a naive UTC datetime; naive input is UTC."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise StoreError(
                f"{what} {value!r} is not an ISO-8601 timestamp; use e.g. "
                f"datetime.now(timezone.utc).isoformat()"
            ) from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def encode_samples(process_samples: Sequence[float]) -> tuple[str, bytes, int]:
    """Encode one process's samples as ``(dtype, little-endian bytes, count)``."""
    array = np.asarray(process_samples)
    if array.size == 0:
        return "<i8", b"", 0
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise StoreError(
            f"latency samples must be a flat list of numbers per process, got dtype "
            f"{array.dtype} with shape {array.shape}; fix the Measurement.samples_ns producer"
        )
    dtype = "<i8" if array.dtype.kind in "iu" else "<f8"
    return dtype, array.astype(dtype).tobytes(), int(array.size)


def decode_samples(dtype: str, data: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`encode_samples`: a 1-D array of the stored dtype."""
    if dtype not in SAMPLE_DTYPES:
        raise StoreError(f"unknown sample dtype {dtype!r} in store; upgrade costmeter")
    return np.frombuffer(bytes(data), dtype=dtype)


def _finite_or_none(value: Any) -> float | None:
    """``float(value)`` for finite numbers, else None (NaN, inf, non-numbers, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int_or_none(value: Any) -> int | None:
    number = _finite_or_none(value)
    return None if number is None else int(number)


def _json(value: Any) -> str:
    """JSON text with sorted keys; values JSON cannot hold are written as their str()."""
    return json.dumps(value, sort_keys=True, default=str)


def summary_columns(result: RunResult) -> dict[str, Any]:
    """Summary statistics columns (ns) of ``result``; None everywhere without samples."""
    columns: dict[str, Any] = {f"latency_{stat}_ns": None for stat in LATENCY_STATS}
    columns["latency_cv"] = None
    columns["throughput_items_per_s"] = None
    measurement = result.measurement
    if measurement is None or measurement.count == 0:
        return columns
    stats = measurement.summary(percentiles=tuple(float(p) for p in PERCENTILES)).to_dict()
    for stat in LATENCY_STATS:
        columns[f"latency_{stat}_ns"] = _finite_or_none(stats.get(stat))
    columns["latency_cv"] = _finite_or_none(stats.get("cv"))
    median_ns = _finite_or_none(stats.get("p50", stats.get("median")))
    if median_ns is not None and median_ns > 0:
        columns["throughput_items_per_s"] = result.key.batch / (median_ns / 1e9)
    return columns


def result_to_row(result: RunResult) -> dict[str, Any]:
    """The ``results`` row of ``result`` (without ``id``); statistics computed here."""
    check_schema_version(result.schema_version)
    key = result.key
    measurement = result.measurement
    memory = result.memory
    env = result.environment
    param_bytes = memory.param_bytes
    if param_bytes is None:
        param_bytes = _int_or_none(result.model_info.get("param_bytes"))
    parse_timestamp(result.finished_at, "finished_at")
    row: dict[str, Any] = {
        "schema_version": result.schema_version,
        "run_id": result.run_id,
        "tag": result.tag,
        "status": result.status.value,
        "validity": result.validity.value,
        "reasons": _json(list(result.reasons)),
        "warnings": _json(list(result.warnings)),
        "error": result.error,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "started_utc": parse_timestamp(result.started_at, "started_at"),
        "model_id": key.model_id,
        "model_hash": key.model_hash,
        "device": key.device,
        "runtime": key.runtime,
        "batch": key.batch,
        "input_shape": "x".join(str(d) for d in key.input_shape),
        "dtype": key.dtype,
        "threads": key.threads,
        "options": _json(dict(key.options)),
        "key_digest": key.digest(),
        "iterations_per_sample": None if measurement is None else measurement.iterations_per_sample,
        "warmup_count": None if measurement is None else measurement.warmup_count,
        "warmup_s": None if measurement is None else measurement.warmup_s,
        "sampling_s": None if measurement is None else measurement.sampling_s,
        "hit_max_time": None if measurement is None else measurement.hit_max_time,
        "n_samples": 0 if measurement is None else measurement.count,
        "peak_rss_bytes": memory.peak_rss_bytes,
        "peak_rss_above_baseline_bytes": memory.peak_rss_above_baseline_bytes,
        "cuda_max_allocated_bytes": memory.cuda_max_allocated_bytes,
        "peak_memory_bytes": memory.peak_memory_bytes(),
        "artifact_bytes": memory.artifact_bytes,
        "param_bytes": param_bytes,
        "params": _int_or_none(result.model_info.get("params")),
        "macs": _int_or_none(result.model_info.get("macs")),
        "energy_j": _finite_or_none(result.energy.energy_j),
        "energy_per_inference_j": _finite_or_none(result.energy.energy_per_inference_j),
        "energy_provenance": result.energy.provenance.value,
        "git_sha": None if env.get("git_sha") is None else str(env["git_sha"]),
        "costmeter_version": (
            None if env.get("costmeter_version") is None else str(env["costmeter_version"])
        ),
        "host": None if env.get("hostname") is None else str(env["hostname"]),
        "max_abs_diff": _finite_or_none(result.extra.get("max_abs_diff")),
        "prepare_s": _finite_or_none(result.extra.get("prepare_s")),
        "memory_json": _json(asdict(memory)),
        "energy_json": _json(result.energy.to_dict()),
        "environment_json": _json(env),
        "model_info_json": _json(result.model_info),
        "extra_json": _json(result.extra),
    }
    row.update(summary_columns(result))
    return row


def sample_rows(result: RunResult) -> list[dict[str, Any]]:
    """``samples`` rows of ``result`` (without ``result_id``), one per worker process."""
    if result.measurement is None:
        return []
    rows = []
    for index, process_samples in enumerate(result.measurement.samples_ns):
        dtype, data, count = encode_samples(process_samples)
        rows.append({"process_index": index, "n": count, "dtype": dtype, "data": data})
    return rows


def row_to_key(row: Mapping[str, Any]) -> BenchKey:
    """The BenchKey of a ``results`` row."""
    shape = str(row["input_shape"])
    return BenchKey(
        model_id=row["model_id"], model_hash=row["model_hash"], device=row["device"],
        runtime=row["runtime"], batch=int(row["batch"]),
        input_shape=tuple(int(d) for d in shape.split("x")) if shape else (),
        dtype=row["dtype"], threads=None if row["threads"] is None else int(row["threads"]),
        options=tuple(json.loads(row["options"]).items()),
    )


def row_to_result(row: Mapping[str, Any], processes: Sequence[np.ndarray]) -> RunResult:
    """Rebuild a RunResult from its ``results`` row and its per-process sample arrays."""
    shape = str(row["input_shape"])
    measurement = None
    if row["iterations_per_sample"] is not None:
        measurement = {
            "samples_ns": [array.tolist() for array in processes],
            "iterations_per_sample": int(row["iterations_per_sample"]),
            "warmup_count": int(row["warmup_count"]),
            "warmup_s": float(row["warmup_s"]),
            "sampling_s": float(row["sampling_s"]),
            "hit_max_time": bool(row["hit_max_time"]),
        }
    return RunResult.from_dict(
        {
            "schema_version": SCHEMA_VERSION,
            "key": {
                "model_id": row["model_id"],
                "model_hash": row["model_hash"],
                "device": row["device"],
                "runtime": row["runtime"],
                "batch": row["batch"],
                "input_shape": [int(d) for d in shape.split("x")] if shape else [],
                "dtype": row["dtype"],
                "threads": row["threads"],
                "options": json.loads(row["options"]),
            },
            "status": row["status"],
            "run_id": row["run_id"],
            "tag": row["tag"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "measurement": measurement,
            "memory": json.loads(row["memory_json"]),
            "energy": json.loads(row["energy_json"]),
            "validity": row["validity"],
            "reasons": json.loads(row["reasons"]),
            "warnings": json.loads(row["warnings"]),
            "error": row["error"],
            "environment": json.loads(row["environment_json"]),
            "model_info": json.loads(row["model_info_json"]),
            "extra": json.loads(row["extra_json"]),
        }
    )
