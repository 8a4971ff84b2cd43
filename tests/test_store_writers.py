"""Eight concurrent writers, each to SQLite and to PostgreSQL, lose and duplicate nothing: every
result is written once under its UUID, also when it is sent again (a spool replayed twice, a
resumed job) by its own writer or by another one."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from costmeter.results.integrity import check_store
from costmeter.results.store import ResultStore
from suite_helpers import ROOT

WRITERS = 8
PER_WRITER = 12

# Writer N writes its results, then sends again half of its own and half of writer N+1's
# (whose first sends may or may not have landed yet).
WRITER = """\
import sys, uuid
sys.path.insert(0, sys.argv[3])
from test_store import make_result
from costmeter.results.store import ResultStore
url, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
def rid(w, i):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"writer-{w}-{i}"))
with ResultStore(url, busy_timeout_s=120) as store:
    for i in range(per):
        store.write_once(make_result(f"writer-{n}", model_id=f"m{i}", samples=[[1000 + i, 1100, 1200]]), rid(n, i))
    other = (n + 1) % int(sys.argv[5])
    for i in range(0, per, 2):
        store.write_once(make_result(f"writer-{n}", model_id=f"m{i}", samples=[[1000 + i, 1100, 1200]]), rid(n, i))
        store.write_once(make_result(f"writer-{other}", model_id=f"m{i}", samples=[[1000 + i, 1100, 1200]]), rid(other, i))
"""


def _run_writers(url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tests = str(Path(__file__).parent)
    children = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(n), tests, str(PER_WRITER),
                                  str(WRITERS)], env=env, stderr=subprocess.PIPE, text=True)
                for n in range(WRITERS)]
    errors = [c.communicate(timeout=600)[1] for c in children]
    assert all(c.returncode == 0 for c in children), errors


def _assert_each_once(url: str) -> None:
    from costmeter.results.journal import result_ids_table

    with ResultStore(url) as store:
        results = store.results()
        report = check_store(store)
        with store.reading() as conn:
            stored = {row[0] for row in conn.execute(sa.select(result_ids_table.c.uuid))}
    assert report.ok, report.summary()
    assert len(results) == WRITERS * PER_WRITER
    assert stored == {str(uuid.uuid5(uuid.NAMESPACE_URL, f"writer-{w}-{i}"))
                      for w in range(WRITERS) for i in range(PER_WRITER)}
    assert sorted((r.run_id, r.key.model_id) for r in results) == \
        sorted((f"writer-{w}", f"m{i}") for w in range(WRITERS) for i in range(PER_WRITER))


def test_eight_sqlite_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ResultStore(url).close()  # created once, so the writers race on rows, not on the layout
    _run_writers(url)
    _assert_each_once(url)


@pytest.fixture
def pg_url():
    """A fresh schema in the test PostgreSQL database (dropped afterwards)."""
    base = os.environ.get("COSTMETER_TEST_PG_URL")
    if not base:
        pytest.skip("set COSTMETER_TEST_PG_URL=postgresql+psycopg://user:pass@host:5432/db to run")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.mark.postgres
def test_eight_postgres_writers_lose_and_duplicate_nothing(pg_url: str) -> None:
    _run_writers(pg_url)  # the first writers also race to create the layout (advisory lock)
    _assert_each_once(pg_url)
