"""Synthetic result frames shaped like ``ResultStore.query()``, for tests, demos and docs.

:class:`SyntheticStore` builds rows with the store's columns (:data:`RESULT_COLUMNS`) from raw
latency samples, computing the summary columns the reports read, and serves
``samples_for(result_id)`` like ``ResultStore.samples``. No hardware, no database.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

RESULT_COLUMNS = (
    "result_id", "run_id", "tag", "status", "validity", "reasons", "error", "started_at",
    "finished_at", "model_id", "model_hash", "device", "runtime", "batch", "input_shape", "dtype",
    "threads", "options", "key_digest", "n_samples", "latency_mean_ms", "latency_std_ms",
    "latency_cv", "latency_min_ms", "latency_max_ms",
    "latency_p50_ms", "latency_p50_low_ms", "latency_p50_high_ms",
    "latency_p90_ms", "latency_p90_low_ms", "latency_p90_high_ms",
    "latency_p95_ms", "latency_p95_low_ms", "latency_p95_high_ms",
    "latency_p99_ms", "latency_p99_low_ms", "latency_p99_high_ms",
    "throughput_items_per_s", "peak_rss_bytes", "peak_rss_above_baseline_bytes", "artifact_bytes",
    "param_bytes", "params", "macs", "energy_j", "energy_per_inference_j", "energy_provenance",
    "git_sha", "costmeter_version", "host", "max_abs_diff", "prepare_s",
)


def percentile_with_ci(values_ms: np.ndarray, pct: float, confidence: float = 0.95):
    """(estimate, low, high) of the ``pct`` percentile in ms; the interval uses order statistics
    (binomial quantiles of the rank), NaN bounds when the sample is too small."""
    from scipy import stats

    ordered = np.sort(np.asarray(values_ms, dtype=float))
    n = len(ordered)
    estimate = float(np.percentile(ordered, pct))
    q = pct / 100
    tail = (1 - confidence) / 2
    low_rank = int(stats.binom.ppf(tail, n, q))
    high_rank = int(stats.binom.ppf(1 - tail, n, q)) + 1
    if low_rank < 1 or high_rank > n:
        return estimate, float("nan"), float("nan")
    return estimate, float(ordered[low_rank - 1]), float(ordered[high_rank - 1])


def key_digest_of(model_id: str, device: str, runtime: str, batch: int, threads: int | None,
                  options: dict[str, Any] | None = None) -> str:
    """A stable 16-hex digest of a benchmark key's fields (same fields, same digest)."""
    blob = json.dumps([model_id, device, runtime, batch, threads, options or {}], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SyntheticStore:
    """An in-memory stand-in for the results store: add results, get a frame and samples."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._samples: dict[str, np.ndarray] = {}

    def add(
        self,
        *,
        run_id: str,
        model_id: str,
        samples_ns: Any = None,
        device: str = "cpu",
        runtime: str = "onnxruntime",
        batch: int = 1,
        threads: int | None = 4,
        options: dict[str, Any] | None = None,
        started_at: str = "2024-05-01T00:00:00+00:00",
        tag: str | None = None,
        git_sha: str = "",
        status: str = "ok",
        validity: str = "VALID",
        reasons: str = "",
        error: str | None = None,
        **columns: Any,
    ) -> str:
        """Add one result; ``columns`` sets any other column (params, macs, energy_...).
        Returns the new result id."""
        result_id = f"r{len(self._rows) + 1:05d}"
        samples = np.asarray(samples_ns if samples_ns is not None else [], dtype=float)
        row: dict[str, Any] = {c: None for c in RESULT_COLUMNS}
        row.update(
            result_id=result_id, run_id=run_id, tag=tag, status=status, validity=validity,
            reasons=reasons, error=error, started_at=started_at, finished_at=started_at,
            model_id=model_id, model_hash=hashlib.sha256(model_id.encode()).hexdigest()[:16],
            device=device, runtime=runtime, batch=batch,
            input_shape=json.dumps([batch, 3, 224, 224]),
            dtype="float32", threads=threads, options=json.dumps(options or {}, sort_keys=True),
            key_digest=key_digest_of(model_id, device, runtime, batch, threads, options),
            n_samples=len(samples), git_sha=git_sha, costmeter_version="0.1.0", host="synthetic",
            energy_provenance="unavailable",
        )
        if len(samples) and status == "ok":
            row.update(_latency_columns(samples / 1e6, batch))
            self._samples[result_id] = samples
        row.update(columns)
        self._rows.append(row)
        return result_id

    def frame(self) -> pd.DataFrame:
        """All results, one row each, with :data:`RESULT_COLUMNS` in order."""
        return pd.DataFrame(self._rows, columns=list(RESULT_COLUMNS))

    def samples_for(self, result_id: str) -> np.ndarray:
        """Per-run latencies of a result (ns), like ``ResultStore.samples``."""
        return self._samples[result_id]


def _latency_columns(values_ms: np.ndarray, batch: int) -> dict[str, float]:
    mean = float(np.mean(values_ms))
    std = float(np.std(values_ms, ddof=1)) if len(values_ms) > 1 else 0.0
    out = {
        "latency_mean_ms": mean, "latency_std_ms": std, "latency_cv": std / mean if mean else 0.0,
        "latency_min_ms": float(np.min(values_ms)), "latency_max_ms": float(np.max(values_ms)),
        "throughput_items_per_s": batch * 1000.0 / mean if mean else float("nan"),
    }
    for pct in (50, 90, 95, 99):
        estimate, low, high = percentile_with_ci(values_ms, pct)
        out[f"latency_p{pct}_ms"] = estimate
        out[f"latency_p{pct}_low_ms"] = low
        out[f"latency_p{pct}_high_ms"] = high
    return out
