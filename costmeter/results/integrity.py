"""``bench results check``: is the store whole and is every result in it exactly once?

Checks, each reported as a problem with what to do:

- the database's own check (SQLite ``PRAGMA integrity_check`` and ``foreign_key_check``);
- the layout version is this build's;
- every ``samples`` row belongs to a result, has a known dtype and holds exactly ``n`` samples,
  and each result's ``n_samples`` equals the sum over its processes;
- every result's ``key_digest`` is the digest of its stored key;
- every result UUID points at a result, and no result carries two UUIDs (``result_ids``);
- the journal: a ``done`` job names a stored UUID whose result belongs to that run, no two jobs
  share one, every result of a suite run is some job's result (nothing written twice), and a
  ``complete`` run has every job done;
- every import in the ledger has exactly the number of results it recorded.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text

from costmeter.results import journal, migrations
from costmeter.results.tables import SAMPLE_DTYPES, results_table, row_to_key, samples_table

_MAX_LISTED = 20


@dataclass
class CheckReport:
    """Counts of what was checked and the problems found (empty: the store is whole)."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def summary(self) -> str:
        """What was checked, then one line per problem (the first 20)."""
        counted = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        if self.ok:
            return f"store OK: {counted}"
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        return "\n".join([f"store has {len(self.problems)} problem(s) ({counted}):", *shown]
                         + ([f"... and {more} more"] if more > 0 else []))


def _database(conn: Any, report: CheckReport) -> None:
    if conn.dialect.name != "sqlite":
        return
    rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
    if rows != ["ok"]:
        report.add(f"SQLite integrity_check: {'; '.join(map(str, rows[:3]))}; restore the store "
                   "from a backup")
    broken = list(conn.execute(text("PRAGMA foreign_key_check")))
    if broken:
        report.add(f"{len(broken)} row(s) point at missing rows (first: table {broken[0][0]}, "
                   f"rowid {broken[0][1]}); restore the store from a backup")


def _samples(conn: Any, report: CheckReport) -> None:
    s, r = samples_table.c, results_table.c
    ids = {row[0]: row[1] for row in conn.execute(select(r.id, r.n_samples))}
    report.counts["results"] = len(ids)
    totals: Counter[int] = Counter()
    n_rows = 0
    for result_id, n, dtype, data in conn.execute(select(s.result_id, s.n, s.dtype, s.data)):
        n_rows += 1
        if result_id not in ids:
            report.add(f"samples row of missing result {result_id}; delete it")
            continue
        if dtype not in SAMPLE_DTYPES:
            report.add(f"result {result_id}: samples of unknown dtype {dtype!r}")
            continue
        stored = len(bytes(data)) // 8
        if stored != n or len(bytes(data)) % 8:
            report.add(f"result {result_id}: a process's samples hold {stored} values, its row "
                       f"says {n}; re-run the benchmark")
        totals[result_id] += int(n)
    report.counts["sample rows"] = n_rows
    for result_id, expected in ids.items():
        if totals.get(result_id, 0) != int(expected or 0):
            report.add(f"result {result_id}: n_samples {expected} but {totals.get(result_id, 0)} "
                       "samples stored; re-run the benchmark")


def _digests(conn: Any, report: CheckReport) -> None:
    c = results_table.c
    columns = [c.id, c.model_id, c.model_hash, c.device, c.runtime, c.batch, c.input_shape, c.dtype,
               c.threads, c.options, c.key_digest]
    for row in conn.execute(select(*columns)):
        m = row._mapping
        if row_to_key(m).digest() != m["key_digest"]:
            report.add(f"result {m['id']}: key_digest {m['key_digest']} is not its key's digest")


def _uuids(conn: Any, report: CheckReport) -> dict[str, int]:
    u = journal.result_ids_table.c
    pairs = [(str(a), int(b)) for a, b in conn.execute(select(u.uuid, u.result_id))]
    report.counts["result UUIDs"] = len(pairs)
    existing = {row[0] for row in conn.execute(select(results_table.c.id))}
    for uuid, result_id in pairs:
        if result_id not in existing:
            report.add(f"UUID {uuid} points at missing result {result_id}")
    for result_id, n in Counter(r for _, r in pairs).items():
        if n > 1:
            report.add(f"result {result_id} carries {n} UUIDs")
    return dict(pairs)


def _journal(conn: Any, report: CheckReport, by_uuid: dict[str, int]) -> None:
    j, r = journal.suite_jobs_table.c, results_table.c
    runs = journal.suite_runs(conn)
    report.counts["suite runs"] = len(runs)
    run_of = {row[0]: str(row[1]) for row in conn.execute(select(r.id, r.run_id))}
    for run in runs:
        jobs = list(conn.execute(select(j.job_key, j.state, j.result_uuid).where(j.run_id == run.run_id)))
        claimed: Counter[int] = Counter()
        for key, state, uuid in jobs:
            if state != journal.DONE:
                continue
            result_id = by_uuid.get(str(uuid)) if uuid else None
            if result_id is None:
                report.add(f"suite run {run.run_id}: job {key} is done but its result {uuid} is "
                           "not stored; replay the spool (`bench results replay`)")
            elif run_of.get(result_id) != run.run_id:
                report.add(f"suite run {run.run_id}: job {key}'s result {result_id} belongs to run "
                           f"{run_of.get(result_id)}")
            else:
                claimed[result_id] += 1
        for result_id, n in claimed.items():
            if n > 1:
                report.add(f"suite run {run.run_id}: result {result_id} is the result of {n} jobs")
        stored = [rid for rid, rr in run_of.items() if rr == run.run_id]
        extra = [rid for rid in stored if rid not in claimed]
        if extra:
            report.add(f"suite run {run.run_id}: {len(extra)} result(s) belong to no job (first: "
                       f"{extra[0]}): written twice or outside the journal")
        if run.state == journal.COMPLETE and any(state != journal.DONE for _, state, _ in jobs):
            report.add(f"suite run {run.run_id} is complete but has jobs not done")
        if len(jobs) != run.n_jobs:
            report.add(f"suite run {run.run_id}: {len(jobs)} jobs journaled, {run.n_jobs} planned")


def _imports(conn: Any, report: CheckReport) -> None:
    i, r = journal.imports_table.c, results_table.c
    rows = list(conn.execute(select(i.run_id, i.n_results, i.source)))
    report.counts["imports"] = len(rows)
    for run_id, expected, source in rows:
        found = conn.execute(select(func.count()).select_from(results_table)
                             .where(r.run_id == run_id)).scalar_one()
        if found != expected:
            report.add(f"import {run_id} of {source}: {found} results stored, {expected} imported")


def check_store(store: Any) -> CheckReport:
    """Run every check on ``store`` (a ResultStore); read only."""
    report = CheckReport()
    with store.reading("check") as conn:
        version = migrations.read_version(conn)
        if version != migrations.STORE_VERSION:
            report.add(f"layout version {version}, this build writes {migrations.STORE_VERSION}; "
                       "open it once with this costmeter to migrate it")
            return report
        _database(conn, report)
        _samples(conn, report)
        _digests(conn, report)
        by_uuid = _uuids(conn, report)
        _journal(conn, report, by_uuid)
        _imports(conn, report)
    return report
