"""Versioned layout of the results store and the explicit migrations between versions.

The layout version lives in the ``meta`` table under ``store_version``. A store whose version
is newer than :data:`STORE_VERSION` is refused (this build cannot know its layout); an older
one is upgraded step by step by :data:`MIGRATIONS` (``MIGRATIONS[v]`` turns version ``v`` into
``v + 1``), all steps in the caller's single transaction, so a failed step changes nothing.

Version 0 is a database without costmeter tables: a new store, or one whose ``meta`` table
records 0. Version 1 -> 2 keeps the tables and rewrites model ids to the stable ids of
:mod:`costmeter.results.legacy_ids` (``onnx:<file stem>`` of collected architectures becomes
``space:<arch>``; other ONNX files become ``onnx:<content hash>``), recomputing each row's key
digest. Version 2 -> 3 adds the ``result_ids``, ``suite_runs``, ``suite_jobs`` and ``imports``
tables of :mod:`costmeter.results.journal`. Version 3 -> 4 adds the ``results`` columns
``cuda_max_allocated_bytes`` and ``peak_memory_bytes`` (:data:`ADDED_IN_V4`), filled from each
row's memory JSON. (When a version changes the tables, freeze the older definitions inside the migration
that creates them: :func:`_migrate_0_to_1` must keep creating version 1.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from sqlalchemy import Connection, delete, insert, inspect, select, text, update

from costmeter.errors import StoreError
from costmeter.results.tables import (
    ADDED_IN_V4,
    meta_table,
    metadata,
    results_table,
    samples_table,
)

STORE_VERSION = 4
VERSION_KEY = "store_version"
# Serializes concurrent upgrades of one PostgreSQL database (any constant works; "costm").
_PG_UPGRADE_LOCK_ID = 0x636F73746D

Migration = Callable[[Connection], None]


def _migrate_0_to_1(conn: Connection) -> None:
    """Create the version-1 ``results`` and ``samples`` tables with their indexes (the current
    definitions without the columns later versions add)."""
    from sqlalchemy import MetaData, Table

    frozen = MetaData()
    Table(results_table.name, frozen,
          *(c._copy() for c in results_table.columns if c.name not in ADDED_IN_V4))
    Table(samples_table.name, frozen, *(c._copy() for c in samples_table.columns))
    frozen.create_all(conn)


def _manifest_paths(conn: Connection) -> list[Path]:
    """Where a version-1 ``bench collect`` manifest may lie: beside a SQLite store, and in the
    working folders ($COSTMETER_HOME, ./.costmeter)."""
    folders = []
    database = conn.engine.url.database if conn.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        folders.append(Path(database).resolve().parent)
    folders += [Path(os.environ["COSTMETER_HOME"])] if os.environ.get("COSTMETER_HOME") else []
    folders.append(Path(".costmeter"))
    return [folder / "collect" / "manifest.jsonl" for folder in folders]


def _migrate_1_to_2(conn: Connection) -> None:
    """Stable model ids: rewrite ``onnx:`` ids and the key digests that depend on them."""
    from costmeter.results.legacy_ids import legacy_id_map
    from costmeter.results.tables import row_to_key

    c = results_table.c
    wanted = (c.id, c.model_id, c.model_hash, c.device, c.runtime, c.batch, c.input_shape, c.dtype,
              c.threads, c.options)  # columns of version 1 only
    rows = conn.execute(select(*wanted).where(c.model_id.like("onnx:%")))
    rows = [dict(r._mapping) for r in rows]
    mapping, unresolved = legacy_id_map(((r["model_id"], r["model_hash"]) for r in rows),
                                        _manifest_paths(conn))
    for row in rows:
        new_id = mapping.get(row["model_id"])
        if new_id is None or new_id == row["model_id"]:
            continue
        digest = row_to_key({**row, "model_id": new_id}).digest()
        conn.execute(update(results_table).where(results_table.c.id == row["id"])
                     .values(model_id=new_id, key_digest=digest))
    if unresolved:
        conn.execute(delete(meta_table).where(meta_table.c.name == UNRESOLVED_KEY))
        conn.execute(insert(meta_table).values(name=UNRESOLVED_KEY, value=json.dumps(unresolved)))


def _migrate_2_to_3(conn: Connection) -> None:
    """Result UUIDs (written at most once), the suite journal and the import ledger (see
    :mod:`costmeter.results.journal`); results and samples are unchanged."""
    from costmeter.results.journal import V3_TABLES

    metadata.create_all(conn, tables=list(V3_TABLES))


def _migrate_3_to_4(conn: Connection) -> None:
    """Memory columns a predictor can learn from: ``cuda_max_allocated_bytes`` and
    ``peak_memory_bytes``, filled from each row's ``memory_json``."""
    from sqlalchemy import bindparam

    from costmeter.results.schema import MemoryInfo

    for name in ADDED_IN_V4:
        conn.execute(text(f"ALTER TABLE {results_table.name} ADD COLUMN {name} BIGINT"))
    c = results_table.c
    updates = []
    for row_id, memory_json in conn.execute(select(c.id, c.memory_json)):
        memory = MemoryInfo(**{k: v for k, v in json.loads(memory_json or "{}").items()
                               if k in MemoryInfo.__dataclass_fields__})
        if memory.peak_memory_bytes() is not None or memory.cuda_max_allocated_bytes is not None:
            updates.append({"row_id": row_id, "cuda": memory.cuda_max_allocated_bytes,
                            "peak": memory.peak_memory_bytes()})
    if updates:
        conn.execute(update(results_table).where(c.id == bindparam("row_id"))
                     .values(cuda_max_allocated_bytes=bindparam("cuda"),
                             peak_memory_bytes=bindparam("peak")), updates)


UNRESOLVED_KEY = "unresolved_v1_model_ids"
MIGRATIONS: dict[int, Migration] = {0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3,
                                    3: _migrate_3_to_4}


def read_version(conn: Connection) -> int:
    """The store layout version recorded in ``meta`` (0 for a database without costmeter tables).

    Raises StoreError for a database that has a ``results`` table but no ``meta`` table: it
    belongs to something else and is left alone.
    """
    inspector = inspect(conn)
    if not inspector.has_table(meta_table.name):
        if inspector.has_table(results_table.name) or inspector.has_table(samples_table.name):
            raise StoreError(
                "database has 'results'/'samples' tables but no costmeter 'meta' table; "
                "point --store at a new database or an existing costmeter store"
            )
        return 0
    value = conn.execute(
        select(meta_table.c.value).where(meta_table.c.name == VERSION_KEY)
    ).scalar_one_or_none()
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError as exc:
        raise StoreError(
            f"store version {value!r} in the meta table is not an integer; the store is damaged, "
            f"restore it from a backup or start a new one with --store"
        ) from exc


def check_not_newer(version: int, display_url: str) -> None:
    """Raise StoreError when ``version`` is newer than this build can read."""
    if version > STORE_VERSION:
        raise StoreError(
            f"store {display_url} has layout version {version}, newer than this costmeter reads "
            f"({STORE_VERSION}); upgrade costmeter (pip install -U costmeter) or use another "
            f"store with --store sqlite:///path.db"
        )


def _write_version(conn: Connection, version: int) -> None:
    conn.execute(delete(meta_table).where(meta_table.c.name == VERSION_KEY))
    conn.execute(insert(meta_table).values(name=VERSION_KEY, value=str(version)))


def upgrade(conn: Connection, display_url: str) -> list[int]:
    """Bring the store to :data:`STORE_VERSION` inside the caller's transaction.

    Returns the versions migrated from (empty when already current). The caller's transaction
    must hold the write lock (SQLite ``BEGIN IMMEDIATE``) so that two processes opening a new
    store do not both create it; on PostgreSQL an advisory lock does the same.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": _PG_UPGRADE_LOCK_ID})
    version = read_version(conn)
    check_not_newer(version, display_url)
    meta_table.create(conn, checkfirst=True)
    applied: list[int] = []
    while version < STORE_VERSION:
        migration = MIGRATIONS.get(version)
        if migration is None:
            raise StoreError(
                f"no migration from store layout version {version} to {version + 1}; "
                f"export the results with an older costmeter and import them into a new store"
            )
        migration(conn)
        applied.append(version)
        version += 1
        _write_version(conn, version)
    return applied
