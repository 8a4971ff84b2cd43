"""Batch result lines as stored results: every LUT entry and kernel micro-benchmark in the store.

:func:`costmeter.harness.batch.measure_entries` measures many small ONNX models per child and
returns one judged line per entry (:func:`costmeter.harness.batch.judged_line`: raw samples,
warm-up and max-time flags, validity, reasons and warnings). :func:`line_result` turns such a
line into a :class:`~costmeter.results.schema.RunResult` so that the entry is kept like any
benchmark: its raw samples, its verdict and the child's environment.

Stored identity: the entry's ``model_id`` when it carries one (``lut:<space>/<block>``), else
``batch:<file stem>``; the model hash is the SHA-256 of the ONNX file as measured (its content
identifies the kernel or block); device, runtime, threads and options come from the batch;
the input shape is the entry's pinned shape, when it has one.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity

BATCH_PREFIX = "batch:"


def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def entry_key(base: dict[str, Any], entry: dict[str, Any]) -> BenchKey:
    """The stored identity of one batch entry (see the module docstring)."""
    model_id = entry.get("model_id") or BATCH_PREFIX + Path(str(entry["onnx"])).stem
    options = tuple(sorted((str(k), str(v)) for k, v in base.get("options") or ()))
    shape = tuple(int(d) for d in entry.get("shape") or ())
    return BenchKey(model_id=str(model_id), model_hash=_file_hash(str(entry["onnx"])),
                    device=str(base["device"]), runtime=str(base["runtime"]), batch=1,
                    input_shape=shape, dtype="float32", threads=base.get("threads"), options=options)


def line_result(base: dict[str, Any], entry: dict[str, Any], line: dict[str, Any], *,
                environment: dict[str, Any], run_id: str, tag: str | None) -> RunResult:
    """The RunResult of one entry's line: ok with raw samples (ns) and the line's verdict, or
    failed with its error when the child died on it."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    key = entry_key(base, entry)
    info = {"batch_key": entry["key"], "group": entry.get("group"),
            "interleave": base.get("interleave", 1), "protocol": base.get("protocol")}
    if line.get("error") or not line.get("samples_ns"):
        return RunResult(key=key, status=Status.FAILED, run_id=run_id, tag=tag, started_at=now,
                         finished_at=now, error=str(line.get("error") or "no samples were taken"),
                         environment=environment, extra=info)
    info.update({k: line[k] for k in ("warmup_cut_short", "precision_checks", "median_ms",
                                      "p50_low_ms", "p50_high_ms") if k in line})
    measurement = Measurement(samples_ns=[[int(s) for s in line["samples_ns"]]],
                              warmup_count=int(line.get("warmup_count", 0)),
                              warmup_s=float(line.get("warmup_s", 0.0)),
                              sampling_s=float(line.get("sampling_s", 0.0)),
                              hit_max_time=bool(line.get("hit_max_time")))
    return RunResult(key=key, status=Status.OK, run_id=run_id, tag=tag, started_at=now,
                     finished_at=now, measurement=measurement,
                     validity=Validity.VALID if line.get("validity") == "VALID" else Validity.INVALID,
                     reasons=list(line.get("reasons") or ()), warnings=list(line.get("warnings") or ()),
                     environment=environment, extra=info)


def store_lines(sink: Any, base: dict[str, Any], entries: list[dict[str, Any]],
                lines: dict[str, dict[str, Any]], environment: dict[str, Any], *,
                tag: str | None, run_id: str | None = None) -> str:
    """Write every entry's result to ``sink`` (``sink.write(result)``: the store) under ``run_id`` (a new one
    when None), which is returned."""
    from costmeter.harness.runner import new_run_id

    run_id = run_id or new_run_id()
    for entry in entries:
        line = lines.get(entry["key"])
        if line is not None:
            sink.write(line_result(base, entry, line, environment=environment, run_id=run_id, tag=tag))
    return run_id
