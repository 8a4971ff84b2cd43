"""Nothing finished is lost: a store locked longer than the retry window sends results to the
spool, the run goes on, and a replay stores each of them exactly once."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from costmeter.errors import StoreError
from costmeter.harness.config import SuiteConfig
from costmeter.harness.suite_run import SuiteRunner
from costmeter.results import journal
from costmeter.results.integrity import check_store
from costmeter.results.schema import SCHEMA_VERSION
from costmeter.results.spool import RetryPolicy, SpoolingSink, read_spool, replay
from costmeter.results.store import ResultStore, StoreBusy
from suite_helpers import SHA, bench, write_suite
from test_store import make_result


class FlakyStore:
    """A store that is busy ``busy`` times, then takes writes (by UUID, once)."""

    display_url = "sqlite:///flaky.db"

    def __init__(self, busy: int) -> None:
        self.busy, self.stored = busy, {}

    def write_once(self, result, result_uuid, job=None):
        if self.busy:
            self.busy -= 1
            raise StoreBusy("database is locked")
        new = result_uuid not in self.stored
        self.stored.setdefault(result_uuid, result)
        return len(self.stored), new


class Clock:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_busy_store_is_retried_with_backoff_then_written_once(tmp_path: Path) -> None:
    store, clock = FlakyStore(busy=4), Clock()
    sink = SpoolingSink(store, tmp_path / "spool", "run", RetryPolicy(60, 0.5, 4), sleep=clock.sleep, clock=clock)
    assert sink.write(make_result()) == 1
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]  # doubling, capped
    assert sink.spooled == 0 and not (tmp_path / "spool").exists()


def test_a_store_busy_past_the_window_spools_and_the_next_success_replays(tmp_path: Path) -> None:
    store, clock = FlakyStore(busy=10**6), Clock()
    sink = SpoolingSink(store, tmp_path / "spool", "run", RetryPolicy(10, 1, 4), sleep=clock.sleep, clock=clock)
    first, second = make_result("r1"), make_result("r2")
    assert sink.write(first) is None and sum(clock.slept) <= 10
    slept = len(clock.slept)
    assert sink.write(second) is None and len(clock.slept) == slept  # degraded: one try, no waiting
    assert [e.result_uuid for e in read_spool(sink.path)[0]] == [first.extra["result_uuid"],
                                                                 second.extra["result_uuid"]]
    store.busy = 0
    third = make_result("r3")
    assert sink.write(third) is not None  # back: the spool is replayed too
    assert len(store.stored) == 3 and not sink.path.exists()
    sink.write(third)  # the same result again: still stored once
    assert len(store.stored) == 3


def _locking_progress(db: Path, held: list):
    def progress(done, total, cfg, result) -> None:
        if not held:  # the lock is taken once the run is planned, before the first job
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            held.append(conn)
    return progress


def test_store_locked_longer_than_the_retry_window_loses_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    db = workdir / "results.db"
    suite = SuiteConfig.from_toml(write_suite(tmp_path))
    held: list = []
    with ResultStore(f"sqlite:///{db}", busy_timeout_s=0.2) as store:
        runner = SuiteRunner(suite, store, workdir, progress=_locking_progress(db, held),
                             policy=RetryPolicy(window_s=0.6, first_delay_s=0.1, max_delay_s=0.2))
        outcome = runner.run(sha=SHA)
    assert held and len(outcome.results) == 4
    assert outcome.spooled == 4 and not outcome.complete  # the run went on; all four kept
    spooled = list((workdir / "spool").glob("*.jsonl"))
    assert len(spooled) == 1 and len(read_spool(spooled[0])[0]) == 4
    held[0].rollback()
    held[0].close()
    first = bench(["results", "replay"], workdir, tmp_path)
    assert first.returncode == 0 and "replayed 4 result(s)" in first.stdout, first.stderr
    again = bench(["results", "replay"], workdir, tmp_path)
    assert again.returncode == 0 and "replayed 0 result(s)" in again.stdout
    resumed = bench(["suite", "run", str(Path(suite.path)), "--resume"], workdir, tmp_path)
    assert resumed.returncode == 0 and "4 done before" in resumed.stdout and "complete" in resumed.stdout
    with ResultStore(f"sqlite:///{db}") as store:
        results = store.results()
        assert check_store(store).ok
        with store.reading() as conn:
            (run,) = journal.suite_runs(conn, "tiny")
    assert sorted(r.extra["result_uuid"] for r in results) == \
        sorted(r.extra["result_uuid"] for r in outcome.results)
    assert run.state == journal.COMPLETE


def _spool_line(version: int) -> str:
    result = make_result().to_dict()
    result["schema_version"] = version
    return json.dumps({"spool_version": 1, "schema_version": version, "result_uuid": "u-1",
                       "store": "x", "job": None, "result": result})


def test_a_spool_file_of_another_schema_version_is_refused_whole(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    (workdir / "spool").mkdir(parents=True)
    good = (workdir / "spool" / "a.jsonl")
    good.write_text(_spool_line(SCHEMA_VERSION).replace('"store": "x"', '"store": ""') + "\n")
    (workdir / "spool" / "b.jsonl").write_text(_spool_line(SCHEMA_VERSION) + "\n" + _spool_line(99) + "\n")
    done = bench(["results", "replay"], workdir, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert "b.jsonl line 2" in done.stderr and "schema version 99" in done.stderr
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        assert store.query().empty  # not even the good file was written
    suite = write_suite(tmp_path)
    refused = bench(["suite", "run", str(suite), "--sha", SHA], workdir, tmp_path)
    assert refused.returncode == 2 and "b.jsonl line 2" in refused.stderr
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        assert store.query().empty
        with store.reading() as conn:
            assert journal.suite_runs(conn) == []


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / "a.jsonl").write_text(_spool_line(SCHEMA_VERSION).replace('"store": "x"', '"store": ""')
                                    + "\n" + '{"spool_version": 1, "resu')
    with ResultStore(f"sqlite:///{tmp_path / 's.db'}") as store:
        report = replay(folder, store)
        assert (report.written, report.torn) == (1, 1) and report.removed == ["a.jsonl"]
        assert len(store.query()) == 1
    (folder / "b.jsonl").write_text('{"torn\n' + _spool_line(SCHEMA_VERSION) + "\n")
    with ResultStore(f"sqlite:///{tmp_path / 's.db'}") as store, \
            pytest.raises(StoreError, match="b.jsonl line 1 is not a JSON object"):
        replay(folder, store)
