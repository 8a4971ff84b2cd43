"""The flat pandas view of results: one row per result, the columns reports rely on.

Built from ``results`` rows (tables.py) so that the store's :meth:`ResultStore.query` and the
CSV/Parquet export of in-memory results produce the same columns and dtypes.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from costmeter.results.fidelity import precision_name
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
    "quantize_s",
    "fidelity_max_abs_diff",
    "fidelity_mean_abs_diff",
    "fidelity_cosine",
    "fidelity_top1_agreement",
    "accuracy_top1",
    "accuracy_top1_fp32",
    "accuracy_delta_pp",
)
# Read from a result's options and ``extra`` (see results/fidelity.py): the precision asked
# (fp32 when none was set), what ran ("" when not recorded), quantization time (s), fidelity
# against fp32 and, with --accuracy-data, measured top-1 (fraction 0..1) and its delta (pp).
PRECISION_COLUMNS: tuple[str, ...] = (
    "precision", "precision_effective", "quantize_s", "fidelity_max_abs_diff", "fidelity_mean_abs_diff",
    "fidelity_cosine", "fidelity_top1_agreement", "accuracy_top1", "accuracy_top1_fp32", "accuracy_delta_pp",
)
_EXTRA_NUMBERS = PRECISION_COLUMNS[2:]
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
    "warnings", *PRECISION_COLUMNS,
)  # fmt: skip
_ROW_COPIED = (
    "run_id", "tag", "status", "validity", "error", "started_at", "finished_at", "model_id",
    "model_hash", "device", "runtime", "batch", "input_shape", "dtype", "threads", "options",
    "key_digest", "n_samples", "latency_cv", "throughput_items_per_s", "peak_rss_bytes",
    "peak_rss_above_baseline_bytes", "cuda_max_allocated_bytes", "peak_memory_bytes",
    "artifact_bytes", "param_bytes", "params", "macs", "energy_j", "energy_per_inference_j", "energy_provenance", "git_sha", "costmeter_version",
    "host", "max_abs_diff", "prepare_s",
)  # fmt: skip

def _precision_record(options: Any, extra_json: Any) -> dict[str, Any]:
    """The :data:`PRECISION_COLUMNS` of one row from its options (JSON text) and extra (JSON)."""
    try:
        parsed = json.loads(options) if isinstance(options, str) and options else {}
    except json.JSONDecodeError:
        parsed = {}
    try:
        extra = json.loads(extra_json) if isinstance(extra_json, str) and extra_json else {}
    except json.JSONDecodeError:
        extra = {}
    extra = extra if isinstance(extra, dict) else {}
    record: dict[str, Any] = {
        "precision": precision_name(parsed.get("precision") if isinstance(parsed, dict) else None),
        "precision_effective": str(extra.get("precision_effective") or ""),
    }
    for name in _EXTRA_NUMBERS:
        value = extra.get(name)
        record[name] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return record


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
        record.update(_precision_record(row.get("options"), row.get("extra_json")))
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
