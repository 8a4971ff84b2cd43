"""The results store: RunResults in SQLite (default) or any SQLAlchemy database, read back whole
or as a flat pandas DataFrame.

Each result is written in its own transaction as soon as its benchmark finishes; the row and its
raw samples commit together or not at all. SQLite stores use WAL mode, a busy timeout and
``BEGIN IMMEDIATE`` for writes, so several processes can write one file. PostgreSQL works
through psycopg 3 (``postgresql+psycopg://user:pass@host/db``). Table layout: tables.py;
layout versions and migrations: migrations.py.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from costmeter.errors import StoreError
from costmeter.results import migrations
from costmeter.results.frames import FRAME_COLUMNS, frame_from_results, frame_from_rows
from costmeter.results.schema import RunResult, Status
from costmeter.results.store_filters import FilterValue, _conditions
from costmeter.results.tables import (
    decode_samples,
    result_to_row,
    results_table,
    row_to_result,
    sample_rows,
    samples_table,
)

if TYPE_CHECKING:  # imported where a frame is built: writing results needs no pandas
    import pandas as pd

SQLITE_BUSY_TIMEOUT_S = 60.0
POSTGRES_CONNECT_TIMEOUT_S = 10
_WRITE_OPTION = "costmeter_write"
_OPEN_FIX = "check the URL or use --store sqlite:///path.db"
_ID_CHUNK = 500  # result ids per IN (...) when loading samples

__all__ = ["FRAME_COLUMNS", "ResultStore", "StoreBusy", "default_store_url", "frame_from_results"]


class StoreBusy(StoreError):
    """The store could not take a write just now (locked, unreachable, connection lost): worth
    retrying later, unlike a write the database refuses for its content."""

_JSON_COLUMNS = ("memory_json", "energy_json", "environment_json", "model_info_json", "extra_json")



def default_store_url(workdir: Path | None = None) -> str:
    """Store URL: env ``COSTMETER_STORE`` if set, else ``sqlite:///<workdir>/results.db``.

    ``workdir`` defaults to env ``COSTMETER_HOME``, else ``./.costmeter``; the path is made
    absolute so that worker processes in other directories find the same file.
    """
    from_env = os.environ.get("COSTMETER_STORE", "").strip()
    if from_env:
        return from_env
    from costmeter.workdir import Workdir

    return Workdir.of(workdir).store_url


def _reason(exc: BaseException) -> str:
    """First line of the driver's message (without SQLAlchemy's statement dump)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0]


def _display_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _create_engine(url: str, display: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Engine:
    """Engine for ``url``; SQLite gets WAL, a busy timeout (s) and IMMEDIATE write transactions."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed)
            _configure_sqlite(engine, busy_timeout_s)
            return engine
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        raise StoreError(f"cannot open store {display}: {_reason(exc)}; {_OPEN_FIX}") from exc


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def insert_result(conn: Connection, row: dict[str, Any], processes: list[dict[str, Any]]) -> int:
    """Insert one ``results`` row and its ``samples`` rows in the caller's transaction."""
    inserted = conn.execute(insert(results_table).values(row))
    result_id = int(inserted.inserted_primary_key[0])
    if processes:
        conn.execute(insert(samples_table), [{**p, "result_id": result_id} for p in processes])
    return result_id


def insert_results(conn: Connection, rows: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]
                   ) -> list[int]:
    """Insert many (results row, samples rows) pairs in the caller's transaction, the results in
    one multi-row statement; returns their ids in order."""
    if not rows:
        return []
    statement = insert(results_table).returning(results_table.c.id, sort_by_parameter_order=True)
    ids = [int(i) for i in conn.execute(statement, [row for row, _ in rows]).scalars()]
    samples = [{**p, "result_id": rid} for rid, (_, procs) in zip(ids, rows) for p in procs]
    if samples:
        conn.execute(insert(samples_table), samples)
    return ids


class ResultStore:
    """RunResults in a SQL database (see module docstring). Usable as a context manager."""

    def __init__(self, url: str | None = None, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        """Open (creating or migrating as needed) the store at ``url`` (default_store_url()).

        ``busy_timeout_s``: how long a SQLite writer waits for another's lock (s) before failing.
        """
        self.url = url or default_store_url()
        self.display_url = _display_url(self.url)
        self._engine = _create_engine(self.url, self.display_url, busy_timeout_s)
        try:
            with self._engine.connect() as conn:
                version = migrations.read_version(conn)
            migrations.check_not_newer(version, self.display_url)
            if version < migrations.STORE_VERSION:
                with self._write_transaction() as conn:
                    migrations.upgrade(conn, self.display_url)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(
                f"cannot open store {self.display_url}: {_reason(exc)}; {_OPEN_FIX}"
            ) from exc
        except Exception:
            self._engine.dispose()
            raise

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release all database connections."""
        self._engine.dispose()

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot {action} store {self.display_url}: {_reason(exc)}; "
                f"check that the store is reachable"
            ) from exc

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ..."""
        return self._engine.dialect.name

    @contextmanager
    def transaction(self, action: str = "write to") -> Iterator[Connection]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``), committed when the block ends
        and rolled back whole on any error. Database errors become :class:`StoreBusy` (locked,
        unreachable) or StoreError, naming ``action``."""
        try:
            with self._write_transaction() as conn:
                yield conn
        except (OperationalError, InterfaceError) as exc:
            raise StoreBusy(f"cannot {action} store {self.display_url}: {_reason(exc)}; "
                            "check that the store is reachable and not locked") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot {action} store {self.display_url}: {_reason(exc)}; "
                             "check that the store is reachable and writable") from exc

    @contextmanager
    def reading(self, action: str = "read") -> Iterator[Connection]:
        """A connection for reads (StoreError naming ``action`` on database errors)."""
        with self._read(action) as conn:
            yield conn

    def write(self, result: RunResult, *, result_uuid: str | None = None, job: Any = None) -> int:
        """Write one result (row and raw samples in one transaction); returns its result id.

        With ``result_uuid`` the write is idempotent (see :meth:`write_once`); ``job`` (a
        :class:`~costmeter.results.journal.JobRef`) is marked done in the same transaction.
        """
        if result_uuid is not None:
            return self.write_once(result, result_uuid, job=job)[0]
        row, processes = result_to_row(result), sample_rows(result)
        with self.transaction(f"write result {result.key.label()} to") as conn:
            return insert_result(conn, row, processes)

    def write_once(self, result: RunResult, result_uuid: str, *, job: Any = None) -> tuple[int, bool]:
        """Write ``result`` under ``result_uuid`` unless that UUID is stored already: returns
        (result id, whether it was written now). Row, samples, UUID and the journal's ``done``
        mark of ``job`` commit together; a concurrent writer of the same UUID loses on the UUID's
        primary key and gets the stored id back. Exactly once, on SQLite and PostgreSQL."""
        from costmeter.results import journal

        row, processes = result_to_row(result), sample_rows(result)
        action = f"write result {result.key.label()} to"
        try:
            with self.transaction(action) as conn:
                existing = journal.result_id_of(conn, result_uuid)
                if existing is not None:
                    if job is not None:
                        journal.mark_done(conn, job, result_uuid)
                    return int(existing), False
                result_id = insert_result(conn, row, processes)
                journal.record_result_uuid(conn, result_uuid, result_id)
                if job is not None:
                    journal.mark_done(conn, job, result_uuid)
                return result_id, True
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            with self._read("read") as conn:  # lost a race on the UUID: the other write stands
                existing = journal.result_id_of(conn, result_uuid)
            if existing is None:
                raise
            return int(existing), False

    def write_many(self, results: Sequence[RunResult], chunk: int = 5000) -> list[int]:
        """Write many results, ``chunk`` per transaction (bulk imports); returns their ids.

        A failing chunk is rolled back whole; chunks written before it stay.
        """
        ids: list[int] = []
        for start in range(0, len(results), chunk):
            part = results[start : start + chunk]
            rows = [(result_to_row(r), sample_rows(r)) for r in part]
            with self.transaction() as conn:
                ids += insert_results(conn, rows)
        return ids

    def _samples_by_result(self, conn: Connection, ids: Sequence[int]) -> dict[int, list[np.ndarray]]:
        by_result: dict[int, list[np.ndarray]] = {result_id: [] for result_id in ids}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = list(ids[start : start + _ID_CHUNK])
            statement = (
                select(samples_table.c.result_id, samples_table.c.dtype, samples_table.c.data)
                .where(samples_table.c.result_id.in_(chunk))
                .order_by(samples_table.c.result_id, samples_table.c.process_index)
            )
            for result_id, dtype, data in conn.execute(statement):
                by_result[result_id].append(decode_samples(dtype, data))
        return by_result

    def _missing(self, result_id: int) -> StoreError:
        return StoreError(
            f"no result with id {result_id} in store {self.display_url}; "
            f"list the ids with ResultStore.query()"
        )

    def get(self, result_id: int) -> RunResult:
        """The stored result ``result_id``, raw samples included."""
        with self._read("read") as conn:
            row = conn.execute(
                select(results_table).where(results_table.c.id == result_id)
            ).mappings().one_or_none()
            if row is None:
                raise self._missing(result_id)
            processes = self._samples_by_result(conn, [result_id])[result_id]
        return row_to_result(row, processes)

    def results(
        self,
        *,
        run_id: FilterValue = None,
        tag: FilterValue = None,
        model_id: FilterValue = None,
        device: FilterValue = None,
        runtime: FilterValue = None,
        status: Status | str | Sequence[Status | str] | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        git_sha: FilterValue = None,
    ) -> list[RunResult]:
        """Stored results matching the filters, oldest id first, raw samples included.

        Filters (all optional, combined with AND; a list matches any item): ``run_id``, ``tag``,
        ``model_id``, ``device``, ``runtime``, ``status``; ``git_sha`` (prefix); ``since``
        (inclusive) and ``until`` (exclusive) on ``started_at``, as datetimes or ISO-8601
        strings (naive means UTC).
        """
        conditions = _conditions(
            run_id=run_id, tag=tag, model_id=model_id, device=device, runtime=runtime,
            status=status, since=since, until=until, git_sha=git_sha,
        )
        statement = select(results_table).where(*conditions).order_by(results_table.c.id)
        with self._read("read") as conn:
            rows = conn.execute(statement).mappings().all()
            samples = self._samples_by_result(conn, [row["id"] for row in rows])
        return [row_to_result(row, samples[row["id"]]) for row in rows]

    def query(
        self,
        *,
        run_id: FilterValue = None,
        tag: FilterValue = None,
        model_id: FilterValue = None,
        device: FilterValue = None,
        runtime: FilterValue = None,
        status: Status | str | Sequence[Status | str] | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        git_sha: FilterValue = None,
    ) -> pd.DataFrame:
        """One row per matching result with :data:`FRAME_COLUMNS` (filters as :meth:`results`).

        Latencies in ms, throughput in items/s, memory in bytes, energy in J; ``started_at`` and
        ``finished_at`` are UTC timestamps. Results without samples have NaN statistics.
        """
        # extra_json is read for the precision and fidelity columns (frames.PRECISION_COLUMNS)
        columns = [c for c in results_table.c if c.name not in _JSON_COLUMNS or c.name == "extra_json"]
        conditions = _conditions(
            run_id=run_id, tag=tag, model_id=model_id, device=device, runtime=runtime,
            status=status, since=since, until=until, git_sha=git_sha,
        )
        statement = select(*columns).where(*conditions).order_by(results_table.c.id)
        with self._read("query") as conn:
            rows = conn.execute(statement).mappings().all()
        return frame_from_rows(rows)

    def samples(self, result_id: int) -> np.ndarray:
        """Per-run latencies in ns (float64) of result ``result_id``, all processes in order.

        Each raw sample is divided by ``iterations_per_sample``; empty for failed results.
        """
        result_id = int(result_id)  # numpy integers from DataFrames would match nothing
        with self._read("read") as conn:
            iterations = conn.execute(
                select(results_table.c.id, results_table.c.iterations_per_sample).where(
                    results_table.c.id == result_id
                )
            ).one_or_none()
            if iterations is None:
                raise self._missing(result_id)
            processes = self._samples_by_result(conn, [result_id])[result_id]
        if not processes:
            return np.empty(0, dtype=np.float64)
        return np.concatenate(processes).astype(np.float64) / float(iterations[1] or 1)

    def runs(self) -> pd.DataFrame:
        """One row per run: run_id, tag, started_at (UTC, earliest), n_results, git_sha,
        devices, runtimes (multiple values joined by ","), earliest run first."""
        import pandas as pd

        c = results_table.c
        statement = select(c.run_id, c.tag, c.started_utc, c.git_sha, c.device, c.runtime)
        with self._read("read") as conn:
            rows = conn.execute(statement).all()
        columns = ["run_id", "tag", "started_at", "n_results", "git_sha", "devices", "runtimes"]
        if not rows:
            return pd.DataFrame(columns=columns)
        flat = pd.DataFrame(rows, columns=["run_id", "tag", "started", "git_sha", "device", "runtime"])

        def joined(values: pd.Series) -> str | None:
            unique = sorted({str(v) for v in values.dropna()})
            return ",".join(unique) if unique else None

        grouped = flat.groupby("run_id", sort=False)
        frame = pd.DataFrame(
            {
                "tag": grouped["tag"].agg(joined),
                "started_at": pd.to_datetime(grouped["started"].min(), utc=True),
                "n_results": grouped.size().astype("int64"),
                "git_sha": grouped["git_sha"].agg(joined),
                "devices": grouped["device"].agg(joined),
                "runtimes": grouped["runtime"].agg(joined),
            }
        ).reset_index()
        return frame[columns].sort_values("started_at", kind="stable").reset_index(drop=True)
