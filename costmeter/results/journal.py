"""Store layout version 3: result UUIDs, the suite journal and the import ledger.

- ``result_ids``: ``uuid -> result_id``. A result written with a UUID is written at most once:
  the UUID is the primary key, so a second write of the same result (a spool replayed twice, a
  resumed job whose first write did commit) fails inside its transaction and is reported as
  already stored, on SQLite and on PostgreSQL alike.
- ``suite_runs``: one row per run of a suite (suite id, tag, git SHA of the code under test,
  the suite file's SHA-256, ``state`` running|complete, the nightly ``gate`` passed|regressed).
- ``suite_jobs``: one row per job of a suite run, keyed by the job's key (a hash of its
  expanded configuration): ``pending`` when the run is planned, ``started`` (attempts, pid,
  host) before the job starts, ``done`` with its result's UUID in the same transaction that
  writes the result. ``--resume`` runs what is not ``done``; nothing done is repeated.
- ``imports``: one row per trace import (file SHA-256 + import settings): a re-import of the
  same file with the same settings is a no-op; ``--force`` imports again under a new run id.

The tables join the results layout's ``metadata`` (their foreign keys name ``results``);
:func:`costmeter.results.migrations` creates them in its 2 -> 3 step.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from costmeter.results.tables import metadata

result_ids_table = Table(
    "result_ids",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id", ondelete="CASCADE"), nullable=False,
           unique=True),
    Column("written_utc", DateTime, nullable=False),
)

suite_runs_table = Table(
    "suite_runs",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("suite_id", String(256), nullable=False, index=True),
    Column("tag", String(256)),
    Column("git_sha", String(64)),
    Column("suite_sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("gate", String(16)),
    Column("gate_json", Text),
    Column("n_jobs", Integer, nullable=False),
    Column("host", String(256)),
    Column("started_utc", DateTime, nullable=False),
    Column("finished_utc", DateTime),
)

suite_jobs_table = Table(
    "suite_jobs",
    metadata,
    Column("run_id", String(128), ForeignKey("suite_runs.run_id", ondelete="CASCADE"),
           primary_key=True),
    Column("job_key", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("label", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("result_uuid", String(36)),
    Column("pid", Integer),
    Column("host", String(256)),
    Column("started_utc", DateTime),
    Column("finished_utc", DateTime),
)

imports_table = Table(
    "imports",
    metadata,
    Column("import_key", String(200), primary_key=True),
    Column("source_sha256", String(64), nullable=False, index=True),
    Column("source", Text, nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("n_results", Integer, nullable=False),
    Column("params_json", Text, nullable=False),
    Column("imported_utc", DateTime, nullable=False),
)

V3_TABLES = (result_ids_table, suite_runs_table, suite_jobs_table, imports_table)
PENDING, STARTED, DONE = "pending", "started", "done"
RUNNING, COMPLETE = "running", "complete"
PASSED, REGRESSED = "passed", "regressed"


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (what the store's DateTime columns hold)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class JobRef:
    """A job of a suite run: the run and the job's key."""

    run_id: str
    job_key: str

    def to_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "job_key": self.job_key}


@dataclass(frozen=True)
class SuiteRun:
    """A row of ``suite_runs``."""

    run_id: str
    suite_id: str
    tag: str | None
    git_sha: str | None
    suite_sha256: str
    state: str
    gate: str | None
    n_jobs: int
    started_utc: datetime
    finished_utc: datetime | None


def _run(row: Any) -> SuiteRun:
    m = row._mapping
    return SuiteRun(m["run_id"], m["suite_id"], m["tag"], m["git_sha"], m["suite_sha256"],
                    m["state"], m["gate"], int(m["n_jobs"]), m["started_utc"], m["finished_utc"])


def plan_run(conn: Connection, run: SuiteRun, jobs: Sequence[tuple[str, str]]) -> None:
    """Record a new suite run and every job (key, label) as pending, in the caller's
    transaction: the plan is stored whole or not at all."""
    conn.execute(insert(suite_runs_table).values(
        run_id=run.run_id, suite_id=run.suite_id, tag=run.tag, git_sha=run.git_sha,
        suite_sha256=run.suite_sha256, state=RUNNING, gate=None, n_jobs=len(jobs),
        host=socket.gethostname(), started_utc=run.started_utc, finished_utc=None))
    if jobs:
        conn.execute(insert(suite_jobs_table), [
            {"run_id": run.run_id, "job_key": key, "position": i, "label": label,
             "state": PENDING, "attempts": 0, "result_uuid": None}
            for i, (key, label) in enumerate(jobs)])


def mark_started(conn: Connection, job: JobRef, pid: int) -> None:
    """A job is about to start (one more attempt) in process ``pid``."""
    c = suite_jobs_table.c
    conn.execute(update(suite_jobs_table)
                 .where(c.run_id == job.run_id, c.job_key == job.job_key, c.state != DONE)
                 .values(state=STARTED, attempts=c.attempts + 1, pid=pid,
                         host=socket.gethostname(), started_utc=utcnow()))


def mark_done(conn: Connection, job: JobRef, result_uuid: str) -> None:
    """A job's result is stored (called inside the transaction that writes it)."""
    c = suite_jobs_table.c
    conn.execute(update(suite_jobs_table).where(c.run_id == job.run_id, c.job_key == job.job_key)
                 .values(state=DONE, result_uuid=result_uuid, finished_utc=utcnow()))


def finish_run(conn: Connection, run_id: str) -> None:
    """Every job of the run is done."""
    conn.execute(update(suite_runs_table).where(suite_runs_table.c.run_id == run_id)
                 .values(state=COMPLETE, finished_utc=utcnow()))


def set_gate(conn: Connection, run_id: str, gate: str, details: dict[str, Any]) -> None:
    """Record the nightly gate's outcome (``passed``/``regressed``) with its details."""
    conn.execute(update(suite_runs_table).where(suite_runs_table.c.run_id == run_id)
                 .values(gate=gate, gate_json=json.dumps(details, default=str, sort_keys=True)))


def job_states(conn: Connection, run_id: str) -> dict[str, tuple[str, int]]:
    """``job_key -> (state, attempts)`` of a suite run."""
    c = suite_jobs_table.c
    rows = conn.execute(select(c.job_key, c.state, c.attempts).where(c.run_id == run_id))
    return {key: (state, int(attempts)) for key, state, attempts in rows}


def suite_runs(conn: Connection, suite_id: str | None = None) -> list[SuiteRun]:
    """Suite runs (of ``suite_id``, or all), oldest first."""
    c = suite_runs_table.c
    statement = select(suite_runs_table).order_by(c.started_utc, c.run_id)
    if suite_id is not None:
        statement = statement.where(c.suite_id == suite_id)
    return [_run(row) for row in conn.execute(statement)]


def get_run(conn: Connection, run_id: str) -> SuiteRun | None:
    """One suite run, or None."""
    row = conn.execute(select(suite_runs_table).where(suite_runs_table.c.run_id == run_id)).first()
    return None if row is None else _run(row)


def result_id_of(conn: Connection, result_uuid: str) -> int | None:
    """The result id stored under ``result_uuid``, or None."""
    c = result_ids_table.c
    return conn.execute(select(c.result_id).where(c.uuid == result_uuid)).scalar_one_or_none()


def record_result_uuid(conn: Connection, result_uuid: str, result_id: int) -> None:
    """Tie ``result_uuid`` to a result written in the same transaction (IntegrityError when the
    UUID is already stored: the caller rolls back)."""
    conn.execute(insert(result_ids_table).values(uuid=result_uuid, result_id=result_id,
                                                 written_utc=utcnow()))
