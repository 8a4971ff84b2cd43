"""The flat pandas view of results: one row per result, the columns reports rely on.

Built from ``results`` rows (tables.py) so that the store's :meth:`ResultStore.query` and the
CSV/Parquet export of in-memory results produce the same columns and dtypes.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from costmeter.results.schema import RunResult
from costmeter.results.tables import LATENCY_STATS, result_to_row

if TYPE_CHECKING:  # pandas is imported where a frame is built: writing results needs none
    import pandas as pd

_FLOAT_COLUMNS = (
    *[f"latency_{stat}_ms" for stat in LATENCY_STATS],
    "latency_cv",
    "throughput_items_per_s",
    "peak_rss_bytes",
    "peak_rss_above_baseline_bytes",
    "cuda_max_allocated_bytes",
    "peak_memory_bytes",
    "artifact_bytes",
    "param_bytes",
    "params",
    "macs",
    "energy_j",
    "energy_per_inference_j",
    "max_abs_diff",
    "prepare_s",
)
# Columns of query(); reports rely on these names. Statistics in ms, memory in bytes, energy in J.
FRAME_COLUMNS: tuple[str, ...] = (
    "result_id", "run_id", "tag", "status", "validity", "reasons", "error", "started_at",
    "finished_at", "model_id", "model_hash", "device", "runtime", "batch", "input_shape", "dtype",
    "threads", "options", "key_digest", "n_samples",
    "latency_mean_ms", "latency_std_ms", "latency_cv", "latency_min_ms", "latency_max_ms",
    *[f"latency_p{p}{s}_ms" for p in (50, 90, 95, 99) for s in ("", "_low", "_high")],
    "throughput_items_per_s", "peak_rss_bytes", "peak_rss_above_baseline_bytes",
    "cuda_max_allocated_bytes", "peak_memory_bytes",
    "artifact_bytes", "param_bytes", "params", "macs", "energy_j", "energy_per_inference_j",
    "energy_provenance", "git_sha", "costmeter_version", "host", "max_abs_diff", "prepare_s",
    "warnings",
)  # fmt: skip
_ROW_COPIED = (
    "run_id", "tag", "status", "validity", "error", "started_at", "finished_at", "model_id",
    "model_hash", "device", "runtime", "batch", "input_shape", "dtype", "threads", "options",
    "key_digest", "n_samples", "latency_cv", "throughput_items_per_s", "peak_rss_bytes",
    "peak_rss_above_baseline_bytes", "cuda_max_allocated_bytes", "peak_memory_bytes",
    "artifact_bytes", "param_bytes", "params", "macs", "energy_j", "energy_per_inference_j", "energy_provenance", "git_sha", "costmeter_version",
    "host", "max_abs_diff", "prepare_s",
)  # fmt: skip

def frame_from_rows(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The flat DataFrame of :data:`FRAME_COLUMNS` from ``results`` rows (ns -> ms)."""
    import pandas as pd

    records = []
    for row in rows:
        record: dict[str, Any] = {name: row[name] for name in _ROW_COPIED}
        record["result_id"] = row.get("id")
        record["reasons"] = "; ".join(json.loads(row["reasons"]))
        record["warnings"] = "; ".join(json.loads(row["warnings"]))
        for stat in LATENCY_STATS:
            value = row[f"latency_{stat}_ns"]
            record[f"latency_{stat}_ms"] = None if value is None else value / 1e6
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(FRAME_COLUMNS))
    for name in _FLOAT_COLUMNS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    ids = frame["result_id"]
    frame["result_id"] = ids.astype("int64") if ids.notna().all() else ids.astype("Int64")
    frame["batch"] = frame["batch"].astype("int64")
    frame["n_samples"] = frame["n_samples"].astype("int64")
    frame["threads"] = frame["threads"].astype("Int64")
    for name in ("started_at", "finished_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    return frame


def frame_from_results(results: Sequence[RunResult]) -> pd.DataFrame:
    """Same DataFrame as :meth:`ResultStore.query` for results not (yet) in a store."""
    return frame_from_rows([result_to_row(result) for result in results])
