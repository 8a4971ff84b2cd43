"""Atomic, idempotent trace imports (``bench traces import``).

Every row of a file commits in one transaction together with its row in the store's import
ledger (:data:`costmeter.results.journal.imports_table`), or nothing does. The ledger's primary
key (the file's SHA-256 and a digest of the import settings) makes a second import of the same
file a no-op, reported as such, and stops a concurrent import of it: on SQLite the write lock
serializes importers, on PostgreSQL the second insert of the key waits for the first
transaction and fails when it commits. ``force`` imports a file again under a new run id.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmeter.errors import StoreError
from costmeter.results.traces import Traces, read_traces, traces_to_results


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote: result count, devices, run id, source file and its hash;
    ``already`` when the same file was imported before with the same settings (nothing
    written; ``run_id`` and ``n_results`` are the earlier import's)."""

    n_results: int
    devices: tuple[str, ...]
    run_id: str
    source: str
    source_sha256: str
    already: bool = False


def import_key(traces: Traces, **settings: Any) -> str:
    """The ledger key of an import: the file's SHA-256 and a digest of the import settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return f"{traces.source_sha256}:{hashlib.sha256(blob).hexdigest()[:16]}"


def import_traces(path: str | Path, store: Any, *, space: str | None = None,
                  device: str | None = None, runtime: str = "unknown", batch: int = 1,
                  tag: str | None = "imported", force: bool = False,
                  retry_s: float = 300.0) -> ImportSummary:
    """Read, validate and write a trace file into ``store`` (a ResultStore): all rows in one
    transaction with the import's ledger row, or none (:func:`_write_import`). Every row is
    validated before the first write. A file imported before with the same settings is a
    no-op (``already``); ``force`` imports it again under a new run id. A store busy with
    another import is waited for up to ``retry_s`` seconds."""
    traces = read_traces(path, space=space, device=device)
    devices = tuple(sorted(set(traces.frame["device"].astype(str))))
    key = import_key(traces, space=space, device=device, runtime=runtime, batch=batch)
    run_id = f"import-{traces.source_sha256[:12]}-{key.rsplit(':', 1)[1][:8]}"
    if not force and hasattr(store, "transaction"):
        earlier = _earlier_import(store, key)
        if earlier is not None:
            return ImportSummary(earlier[1], devices, earlier[0], traces.source,
                                 traces.source_sha256, already=True)
    if force:
        run_id += f"-{uuid.uuid4().hex[:8]}"
    results = traces_to_results(traces, runtime=runtime, batch=batch, tag=tag, run_id=run_id)
    if not hasattr(store, "transaction"):  # a plain sink (tests, tools): no ledger
        for result in results:
            store.write(result)
        return ImportSummary(len(results), devices, run_id, traces.source, traces.source_sha256)
    from costmeter.results.spool import RetryPolicy
    from costmeter.results.store import StoreBusy

    rows = import_rows(results)
    ledger = {"import_key": f"{key}#{run_id}" if force else key, "source_sha256": traces.source_sha256,
              "source": traces.source, "run_id": run_id, "n_results": len(rows),
              "params_json": json.dumps({"space": space, "device": device, "runtime": runtime,
                                         "batch": batch, "tag": tag, "force": force}, sort_keys=True)}
    deadline = time.monotonic() + retry_s
    for delay in RetryPolicy().delays():
        try:
            earlier = _write_import(store, ledger, rows, key, force)
            break
        except StoreBusy:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
    if earlier is not None:
        return ImportSummary(earlier[1], devices, earlier[0], traces.source, traces.source_sha256,
                             already=True)
    return ImportSummary(len(rows), devices, run_id, traces.source, traces.source_sha256)


def _earlier_import(store: Any, key: str) -> tuple[str, int] | None:
    """(run id, count) of the import recorded under ``key``, if any (a read, no lock)."""
    from sqlalchemy import select

    from costmeter.results.journal import imports_table

    c = imports_table.c
    with store.reading() as conn:
        found = conn.execute(select(c.run_id, c.n_results).where(c.import_key == key)).first()
    return None if found is None else (str(found[0]), int(found[1]))


def import_rows(results: Sequence[Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(results row, samples rows) of each imported result. One-sample results take a fast
    path: every statistic of one sample is that sample (no interval, no spread), which the
    first result checks against the full statistics so the two can never drift apart."""
    from dataclasses import replace

    from costmeter.results.tables import (
        LATENCY_STATS,
        result_to_row,
        sample_rows,
        summary_columns,
    )

    def fast(result: Any) -> dict[str, Any]:
        m = result.measurement
        value = float(m.samples_ns[0][0]) / m.iterations_per_sample
        row = result_to_row(replace(result, measurement=None))
        row.update(iterations_per_sample=m.iterations_per_sample, warmup_count=m.warmup_count,
                   warmup_s=m.warmup_s, sampling_s=m.sampling_s, hit_max_time=m.hit_max_time,
                   n_samples=1, latency_cv=None, throughput_items_per_s=result.key.batch / (value / 1e9))
        row.update({f"latency_{stat}_ns": None if stat == "std" or stat.endswith(("_low", "_high"))
                    else value for stat in LATENCY_STATS})
        return row

    one = [r.measurement is not None and r.measurement.count == 1 for r in results]
    usable = bool(results) and one[0] and all(
        fast(results[0]).get(k) == v for k, v in summary_columns(results[0]).items())
    return [(fast(r) if usable and single else result_to_row(r), sample_rows(r))
            for r, single in zip(results, one)]


def _write_import(store: Any, ledger: dict[str, Any], rows: list[Any], key: str,
                  force: bool) -> tuple[str, int] | None:
    """One transaction: the ledger row first (its primary key stops a concurrent import of the
    same file), then every result. Returns (run id, count) of an earlier import instead when
    there is one (nothing written)."""
    from sqlalchemy import func, insert, select
    from sqlalchemy.exc import IntegrityError

    from costmeter.results.journal import imports_table, utcnow
    from costmeter.results.store import insert_results
    from costmeter.results.tables import results_table

    c = imports_table.c
    try:
        with store.transaction("import traces into") as conn:
            if not force:
                found = conn.execute(select(c.run_id, c.n_results).where(c.import_key == key)).first()
                if found is not None:
                    return str(found[0]), int(found[1])
                old_run = f"import-{ledger['source_sha256'][:12]}"  # before the ledger existed
                legacy = 0 if conn.execute(select(c.run_id).where(
                    c.source_sha256 == ledger["source_sha256"])).first() else \
                    conn.execute(select(func.count()).select_from(results_table)
                                 .where(results_table.c.run_id == old_run)).scalar_one()
                if legacy:  # imported by an older costmeter: record it, write nothing
                    conn.execute(insert(imports_table).values(
                        **{**ledger, "run_id": old_run, "n_results": int(legacy)}, imported_utc=utcnow()))
                    return old_run, int(legacy)
            conn.execute(insert(imports_table).values(**ledger, imported_utc=utcnow()))
            insert_results(conn, rows)
    except StoreError as exc:  # a concurrent import of the same file won the ledger's key
        if not isinstance(exc.__cause__, IntegrityError) or force:
            raise
        with store.reading() as conn:
            found = conn.execute(select(c.run_id, c.n_results).where(c.import_key == key)).first()
        if found is None:
            raise
        return str(found[0]), int(found[1])
    return None
