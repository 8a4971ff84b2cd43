"""Results store: round trips, filters, DataFrame columns, versions, failures, concurrency."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from costmeter.errors import ConfigError, StoreError
from costmeter.results.stats import summarize
from costmeter.results import migrations
from costmeter.results.schema import (
    SCHEMA_VERSION,
    BenchKey,
    EnergyInfo,
    EnergyProvenance,
    Measurement,
    MemoryInfo,
    RunResult,
    Status,
    Validity,
)
from costmeter.results.store import FRAME_COLUMNS, ResultStore, default_store_url

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def make_result(
    run_id: str = "run-a",
    model_id: str = "resnet18",
    device: str = "cpu",
    runtime: str = "onnxruntime",
    status: Status = Status.OK,
    started: datetime = T0,
    samples: list[list[int]] | None = None,
    tag: str | None = "nightly",
    git_sha: str = "0123abcd",
    iterations: int = 1,
    batch: int = 2,
) -> RunResult:
    """A fully populated result; ``status`` other than OK gives a failed one without samples."""
    key = BenchKey(
        model_id=model_id,
        model_hash="h" * 12,
        device=device,
        runtime=runtime,
        batch=batch,
        input_shape=(batch, 3, 32, 32),
        dtype="float32",
        threads=4,
        options=(("graph_opt", "all"), ("precision", "fp32")),
    )
    ok = status is Status.OK
    rng = np.random.default_rng(len(run_id) + len(model_id))
    if samples is None:
        samples = [rng.integers(900_000, 1_100_000, 300).tolist(), rng.integers(950_000, 1_200_000, 250).tolist()]
    return RunResult(
        key=key,
        status=status,
        run_id=run_id,
        tag=tag,
        started_at=started.isoformat(),
        finished_at=(started + timedelta(seconds=3)).isoformat(),
        measurement=Measurement(samples, iterations, 5, 0.25, 2.5, False) if ok else None,
        memory=MemoryInfo(peak_rss_bytes=500_000_000, baseline_rss_bytes=400_000_000,
                          peak_rss_above_baseline_bytes=100_000_000, artifact_bytes=45_000_000),
        energy=EnergyInfo(EnergyProvenance.COUNTER, 12.5, 0.02, 2.5, {"package-0": 12.5}, None, "", ["short"])
        if ok else EnergyInfo(reason="no counter"),
        validity=Validity.VALID if ok else Validity.INVALID,
        reasons=[] if ok else ["crashed", "no samples"],
        warnings=["governor is powersave"],
        error=None if ok else "worker exited with code -9",
        environment={"git_sha": git_sha, "costmeter_version": "0.1.0", "hostname": "bench-1",
                     "cpu": {"model": "Xeon", "count": 2}},
        model_info={"params": 11_689_512, "macs": 1_820_000_000, "param_bytes": 46_758_048},
        extra={"max_abs_diff": 3.2e-6, "prepare_s": 1.75, "per_process_samples": [300, 250]},
    )


@pytest.fixture()
def store(tmp_path: Path):
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as opened:
        yield opened


def test_round_trip_two_processes(store: ResultStore) -> None:
    original = make_result(iterations=2)
    result_id = store.write(original)
    assert store.get(result_id) == original
    assert store.results() == [original]
    per_run = np.array(original.measurement.samples_ns[0] + original.measurement.samples_ns[1]) / 2
    np.testing.assert_array_equal(store.samples(result_id), per_run)
    assert store.samples(result_id).dtype == np.float64


def test_failed_single_sample_and_fractional_results(store: ResultStore) -> None:
    failed = make_result(status=Status.FAILED)
    imported = make_result(samples=[[1_234_567]])
    imported.extra = {"provenance": "imported", "source": "trace.json"}
    fractional = make_result(samples=[[1000.5, 2000.25], []])
    ids = [store.write(r) for r in (failed, imported, fractional)]
    assert [store.get(i) for i in ids] == [failed, imported, fractional]
    assert store.samples(ids[0]).size == 0
    frame = store.query().set_index("result_id")
    assert frame.loc[ids[0], "n_samples"] == 0
    assert frame.loc[ids[0], "error"] == "worker exited with code -9"
    assert frame.loc[ids[0], "reasons"] == "crashed; no samples"
    stat_columns = [c for c in FRAME_COLUMNS if c.startswith("latency_")] + ["throughput_items_per_s"]
    assert frame.loc[ids[0], stat_columns].isna().all()
    assert frame.loc[ids[1], "latency_p50_ms"] == pytest.approx(1.234567)
    assert math.isnan(frame.loc[ids[1], "latency_p99_low_ms"])  # one sample: no interval
    assert math.isnan(frame.loc[ids[1], "max_abs_diff"])
    assert frame.loc[ids[2], "n_samples"] == 2


def test_query_columns_and_values(store: ResultStore) -> None:
    result = make_result(batch=8)
    result_id = store.write(result)
    frame = store.query()
    assert tuple(frame.columns) == FRAME_COLUMNS
    row = frame.iloc[0]
    stats = result.measurement.summary().to_dict()  # the headline: two processes, a hierarchy
    assert stats["p50_low"] < summarize(result.measurement.all_samples_ns()).percentiles[50.0].low
    assert row["result_id"] == result_id
    assert row["n_samples"] == 550
    for stat in ("mean", "std", "min", "max", "p50", "p50_low", "p50_high", "p99", "p99_high"):
        if stats[stat] is None:  # no interval (too few effective samples): stored as missing
            assert math.isnan(row[f"latency_{stat}_ms"])
        else:
            assert row[f"latency_{stat}_ms"] == pytest.approx(stats[stat] / 1e6)
    assert row["latency_cv"] == pytest.approx(stats["cv"])
    assert row["throughput_items_per_s"] == pytest.approx(8 / (stats["p50"] / 1e9))
    assert row["input_shape"] == "8x3x32x32"
    assert row["options"] == '{"graph_opt": "all", "precision": "fp32"}'
    assert row["key_digest"] == result.key.digest()
    assert row["started_at"] == pd.Timestamp(T0)
    assert (row["status"], row["validity"], row["reasons"]) == ("ok", "VALID", "")
    assert (row["git_sha"], row["costmeter_version"], row["host"]) == ("0123abcd", "0.1.0", "bench-1")
    assert row["peak_rss_bytes"] == 500_000_000 and row["param_bytes"] == 46_758_048
    assert (row["params"], row["macs"]) == (11_689_512, 1_820_000_000)
    assert (row["energy_j"], row["energy_per_inference_j"], row["energy_provenance"]) == (12.5, 0.02, "counter")
    assert (row["max_abs_diff"], row["prepare_s"], row["threads"]) == (3.2e-6, 1.75, 4)
    assert frame["started_at"].dt.tz is not None
    assert frame["latency_p50_ms"].dtype == np.float64


def test_filters(store: ResultStore) -> None:
    store.write(make_result("r1", "resnet18", "cpu", "onnxruntime", started=T0, git_sha="aaaa1111"))
    store.write(make_result("r1", "mobilenet", "cpu", "torch", started=T0 + timedelta(hours=1), git_sha="aaaa1111"))
    store.write(make_result("r2", "resnet18", "cuda:0", "torch", Status.FAILED, T0 + timedelta(days=1),
                            tag="pr-7", git_sha="bbbb2222"))

    def models(**filters) -> list[str]:
        via_results = [r.key.model_id for r in store.results(**filters)]
        via_query = store.query(**filters)["model_id"].tolist()
        assert via_results == via_query
        return via_query

    assert models(run_id="r1") == ["resnet18", "mobilenet"]
    assert models(run_id=["r1", "r2"]) == ["resnet18", "mobilenet", "resnet18"]
    assert models(tag="pr-7") == ["resnet18"]
    assert models(model_id="resnet18", device="cpu") == ["resnet18"]
    assert models(runtime="torch") == ["mobilenet", "resnet18"]
    assert models(status=Status.FAILED) == models(status="failed") == ["resnet18"]
    assert models(since=T0 + timedelta(minutes=30)) == ["mobilenet", "resnet18"]
    assert models(until="2026-03-01T13:00:00+00:00") == ["resnet18"]  # exclusive
    assert models(since="2026-03-01T12:00:00", until=T0 + timedelta(hours=2)) == ["resnet18", "mobilenet"]
    assert models(git_sha="bbbb") == ["resnet18"]
    assert models(git_sha="aaaa1111", runtime="onnxruntime") == ["resnet18"]
    assert models(device="tpu") == []
    with pytest.raises(ConfigError, match="not an ISO-8601 timestamp"):
        store.query(since="last tuesday")
    with pytest.raises(ConfigError, match="unknown status filter 'done'; use one of ok, failed"):
        store.results(status="done")


def test_runs_and_empty_store(store: ResultStore) -> None:
    empty = store.query()
    assert tuple(empty.columns) == FRAME_COLUMNS and empty.empty
    assert list(store.runs().columns) == ["run_id", "tag", "started_at", "n_results", "git_sha", "devices", "runtimes"]
    store.write(make_result("later", device="cuda:0", started=T0 + timedelta(days=2)))
    store.write(make_result("first", device="cpu", runtime="torch", started=T0))
    store.write(make_result("first", device="cuda:0", runtime="onnxruntime", started=T0 + timedelta(hours=1)))
    runs = store.runs()
    assert runs["run_id"].tolist() == ["first", "later"]
    first = runs.iloc[0]
    assert first["n_results"] == 2
    assert (first["devices"], first["runtimes"], first["tag"], first["git_sha"]) == (
        "cpu,cuda:0", "onnxruntime,torch", "nightly", "0123abcd")
    assert first["started_at"] == pd.Timestamp(T0)


def test_missing_result_id(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="no result with id 42"):
        store.get(42)
    with pytest.raises(StoreError, match="no result with id 42"):
        store.samples(42)


def test_unknown_result_schema_version_rejected(store: ResultStore) -> None:
    data = make_result().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="schema version"):
        RunResult.from_dict(data)
    future = make_result()
    future.schema_version = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="schema version"):
        store.write(future)
    assert store.query().empty


def _store_version(path: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        value = conn.execute(sa.text("SELECT value FROM meta WHERE name = 'store_version'")).scalar_one()
    engine.dispose()
    return int(value)


def test_newer_store_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    ResultStore(f"sqlite:///{path}").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '7' WHERE name = 'store_version'"))
    engine.dispose()
    with pytest.raises(StoreError, match="layout version 7, newer than this costmeter reads") as info:
        ResultStore(f"sqlite:///{path}")
    assert "upgrade costmeter" in str(info.value)


def test_fake_v0_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v0.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE meta (name VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)"))
        conn.execute(sa.text("INSERT INTO meta VALUES ('store_version', '0')"))
        conn.execute(sa.text("CREATE TABLE notes (body TEXT)"))
    engine.dispose()
    with ResultStore(f"sqlite:///{path}") as store:
        result_id = store.write(make_result())
        assert store.get(result_id) == make_result()
    assert _store_version(path) == migrations.STORE_VERSION == 4
    assert {"meta", "results", "samples", "notes"} <= set(sa.inspect(sa.create_engine(f"sqlite:///{path}")).get_table_names())


def test_migration_chain_and_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    with ResultStore(f"sqlite:///{path}") as store:
        store.write(make_result())

    def failing(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE results ADD COLUMN half_done INTEGER"))
        raise RuntimeError("migration bug")

    monkeypatch.setattr(migrations, "STORE_VERSION", 5)
    monkeypatch.setitem(migrations.MIGRATIONS, 4, failing)
    with pytest.raises(RuntimeError, match="migration bug"):
        ResultStore(f"sqlite:///{path}")
    assert _store_version(path) == 4  # nothing of the failed step stayed
    columns = {c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{path}")).get_columns("results")}
    assert "half_done" not in columns

    def add_label(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE results ADD COLUMN label TEXT"))
        conn.execute(sa.text("UPDATE results SET label = model_id || '@' || device"))

    monkeypatch.setitem(migrations.MIGRATIONS, 4, add_label)
    with ResultStore(f"sqlite:///{path}") as store:
        assert len(store.results()) == 1
    assert _store_version(path) == 5
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT label FROM results")).scalar_one() == "resnet18@cpu"
    engine.dispose()


def test_foreign_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE results (x INTEGER)"))
    engine.dispose()
    with pytest.raises(StoreError, match="no costmeter 'meta' table"):
        ResultStore(f"sqlite:///{path}")


def test_unopenable_urls(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"cannot open store sqlite:///.*--store sqlite:///path.db"):
        ResultStore(f"sqlite:///{blocker / 'sub' / 'results.db'}")
    with pytest.raises(StoreError, match="cannot open store"):
        ResultStore("nosuchdb://somewhere/x")
    with pytest.raises(StoreError, match="cannot open store") as info:
        ResultStore("postgresql+psycopg://user:secret@127.0.0.1:9/costmeter")  # port 9: closed
    assert "secret" not in str(info.value)


def test_write_is_atomic_when_samples_fail(store: ResultStore) -> None:
    def refuse_samples(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SAMPLES"):
            raise sa.exc.OperationalError(statement, parameters, Exception("disk full"))

    sa.event.listen(store._engine, "before_cursor_execute", refuse_samples)
    with pytest.raises(StoreError, match="cannot write result .*disk full"):
        store.write(make_result())
    sa.event.remove(store._engine, "before_cursor_execute", refuse_samples)
    assert store.query().empty
    with store._engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM samples")).scalar_one() == 0
    assert store.write(make_result()) == store.query()["result_id"].iloc[0]


_CHILD_SETUP = """
import os, sys
sys.path.insert(0, {tests!r})
from test_store import make_result
from costmeter.results.store import ResultStore
"""


def _run_child(body: str, *args: str) -> subprocess.Popen:
    code = _CHILD_SETUP.format(tests=str(REPO_ROOT / "tests")) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_crash_mid_write_leaves_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    child = _run_child(
        """
        import sqlalchemy as sa
        store = ResultStore(sys.argv[1])
        store.write(make_result("before-crash"))
        def die(conn, cursor, statement, *rest):
            if statement.lstrip().upper().startswith("INSERT INTO SAMPLES"):
                os._exit(3)  # the process dies between the results row and its samples
        sa.event.listen(store._engine, "before_cursor_execute", die)
        store.write(make_result("crashed"))
        """,
        url,
    )
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 3, stderr
    with ResultStore(url) as store:
        assert store.query()["run_id"].tolist() == ["before-crash"]
        with store._engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM samples")).scalar_one() == 2
        store.write(make_result("after-crash"))
        assert len(store.results()) == 2


def test_concurrent_writers_same_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # new file: both processes also race to create it
    body = """
        store = ResultStore(sys.argv[1])
        for i in range(15):
            store.write(make_result(sys.argv[2], model_id=f"m{i}"))
        store.close()
        """
    children = [_run_child(body, url, f"writer-{n}") for n in range(2)]
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
    with ResultStore(url) as store:
        frame = store.query()
        assert len(frame) == 30 and frame["result_id"].is_unique
        assert frame.groupby("run_id").size().to_dict() == {"writer-0": 15, "writer-1": 15}
        assert all(r == make_result(r.run_id, model_id=r.key.model_id) for r in store.results())
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_default_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTMETER_STORE", raising=False)
    monkeypatch.delenv("COSTMETER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_store_url() == f"sqlite:///{tmp_path / '.costmeter' / 'results.db'}"
    assert default_store_url(tmp_path / "w") == f"sqlite:///{tmp_path / 'w' / 'results.db'}"
    monkeypatch.setenv("COSTMETER_HOME", str(tmp_path / "home"))
    assert default_store_url() == f"sqlite:///{tmp_path / 'home' / 'results.db'}"
    monkeypatch.setenv("COSTMETER_STORE", "postgresql+psycopg://u@h/db")
    assert default_store_url(tmp_path) == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("COSTMETER_STORE")
    with ResultStore() as store:  # creates the missing work folder
        store.write(make_result())
    assert (tmp_path / "home" / "results.db").exists()


@pytest.mark.postgres
def test_postgres_round_trip() -> None:
    url = os.environ.get("COSTMETER_TEST_PG_URL")
    if not url:
        pytest.skip("set COSTMETER_TEST_PG_URL=postgresql+psycopg://user:pass@host:5432/db to run")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the test database is emptied first
        for table in ("result_ids", "suite_jobs", "suite_runs", "imports", "samples", "results", "meta"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()
    with ResultStore(url) as store:
        originals = [make_result("pg", iterations=2), make_result("pg", status=Status.FAILED),
                     make_result("pg2", samples=[[1000.5], [7]])]
        ids = [store.write(r) for r in originals]
        assert [store.get(i) for i in ids] == originals
        assert store.results(run_id="pg", status="ok") == originals[:1]
        frame = store.query(since=T0, git_sha="0123")
        assert tuple(frame.columns) == FRAME_COLUMNS and len(frame) == 3
        assert store.runs()["n_results"].tolist() == [2, 1]
        np.testing.assert_array_equal(store.samples(ids[2]), [1000.5, 7.0])
    with ResultStore(url) as reopened:  # second open: no migration, same data
        assert len(reopened.results()) == 3


def test_write_many_round_trips_in_chunks(tmp_path) -> None:
    import numpy as np

    from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
    from costmeter.results.store import ResultStore

    results = [
        RunResult(key=BenchKey(f"m{i}", "h", "dev", "rt", 1, (1, 3), "float32", None), status=Status.OK,
                  run_id="bulk", started_at="2026-11-27T00:00:00", finished_at="2026-11-27T00:00:01",
                  measurement=Measurement([[1000 + i]]), validity=Validity.VALID)
        for i in range(7)
    ]
    store = ResultStore(f"sqlite:///{tmp_path / 'bulk.db'}")
    try:
        ids = store.write_many(results, chunk=3)
        assert len(ids) == 7 and len(set(ids)) == 7
        frame = store.query(run_id="bulk")
        assert sorted(frame["model_id"]) == sorted(f"m{i}" for i in range(7))
        assert store.samples(np.int64(ids[4])).tolist() == [1004.0]
    finally:
        store.close()


# ----------------------------------------------------------------------------- v1 -> v2: model ids
V1_FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"


def _copy_v1_store(tmp_path: Path, with_manifest: bool) -> Path:
    import shutil

    folder = tmp_path / "workdir"
    folder.mkdir()
    shutil.copy(V1_FIXTURE / "results.db", folder / "results.db")
    if with_manifest:
        shutil.copytree(V1_FIXTURE / "collect", folder / "collect")
    return folder / "results.db"


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_store_written_by_v1_gets_stable_model_ids(tmp_path: Path, with_manifest: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture was written by the version-1 store code: collected architectures under
    ``onnx:<file stem>`` ids (with the manifest v1 kept beside the store), a `lut check` stem,
    an ONNX file, a zoo model and a `bench run` of an NB201 cell."""
    import json

    monkeypatch.chdir(tmp_path)  # no stray ./.costmeter manifest
    monkeypatch.delenv("COSTMETER_HOME", raising=False)
    path = _copy_v1_store(tmp_path, with_manifest)
    assert _store_version(path) == 1
    expected = json.loads((V1_FIXTURE / "expected_ids.json").read_text())
    with ResultStore(f"sqlite:///{path}") as store:
        results = store.results()
        ids = {r.key.model_id for r in results}
        for result in results:  # every stored digest is the digest of the stored key
            assert store.query(run_id=result.run_id)["key_digest"].isin([result.key.digest()]).any()
    assert _store_version(path) == 4
    ofa = {old for old, new in expected.items() if new.startswith("ofa_mbv3:")}
    for old, new in expected.items():
        if with_manifest or old not in ofa:
            assert new in ids and old not in ids
        else:  # OFA stems need the manifest: kept as they were, and reported
            assert old in ids
    assert "resnet18" in ids and "onnx:lin" not in ids
    assert any(i.startswith("onnx:") and len(i) == 5 + 16 for i in ids)  # the file: its hash
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        noted = conn.execute(sa.text(
            f"SELECT value FROM meta WHERE name = '{migrations.UNRESOLVED_KEY}'")).scalar()
    engine.dispose()
    assert (noted is None) == with_manifest
    if not with_manifest:
        assert set(json.loads(noted)) == ofa
