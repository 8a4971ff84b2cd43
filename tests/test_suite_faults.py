"""Faults as tests: random SIGKILLs of the suite runner and of its workers, each followed by
``--resume``, end with every expected result exactly once, a store that passes its integrity
check, no orphan process and no folder left behind."""
from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from costmeter.results import journal
from costmeter.results.integrity import check_store
from costmeter.results.store import ResultStore
from suite_helpers import SHA, bench, bench_popen, marked_processes, write_suite

JOBS_PER_RUN = 4  # 2 models x 2 batches


def _workers(runner: psutil.Process) -> list[psutil.Process]:
    try:
        return runner.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait(proc, seconds: float) -> bool:
    """Sleep up to ``seconds``; False when the run ended meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return proc.poll() is None


def _kill_somewhere(proc, rng: random.Random, counts: Counter) -> str | None:
    """SIGKILL a worker mid-job, or the runner at a random moment (while it starts, while a
    worker runs, between jobs or while it writes); None when the run ended first."""
    runner = psutil.Process(proc.pid)
    target = "worker" if rng.random() < 0.4 else "runner"
    if target == "runner" and rng.random() < 0.2:  # early: while it starts or plans
        if not _wait(proc, rng.uniform(0.2, 4.0)):
            return None
    else:
        deadline = time.monotonic() + 120
        while not _workers(runner):  # a job is running
            if proc.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        if not _wait(proc, rng.uniform(0.0, 0.8 if target == "worker" else 3.0)):
            return None
    workers = _workers(runner)
    if target == "worker" and not workers:
        target = "runner"
    victim = rng.choice(workers) if target == "worker" else runner
    try:
        victim.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return None
    counts[target] += 1
    return target


def _no_orphans(workdir: Path, grace_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + grace_s
    left = marked_processes(workdir)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(workdir)
    return left


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> dict:
    """Run the tiny suite under ``kills`` random SIGKILLs, resuming after each runner kill,
    until no kill is left and the last run completed; returns the figures."""
    rng = random.Random(seed)
    workdir = tmp_path / "wd"
    suite = write_suite(tmp_path)
    counts: Counter = Counter()
    resume, proc = False, None
    orphans_after_runner_kills: list[int] = []
    while True:
        if proc is None:
            proc = bench_popen(["suite", "run", str(suite), "--sha", SHA, "-q"]
                               + (["--resume"] if resume else []), workdir, tmp_path)
        if sum(counts.values()) >= kills:
            out, err = proc.communicate(timeout=600)
            if proc.returncode == 0:
                break
            assert "no interrupted run" in err, err  # killed before its plan was stored
            resume, proc = False, None
            continue
        what = _kill_somewhere(proc, rng, counts)
        if what == "worker":
            continue  # the runner records the job as failed and goes on
        out, err = proc.communicate(timeout=600)
        if what == "runner":
            orphans_after_runner_kills += _no_orphans(workdir)
            resume = True
        elif proc.returncode == 2 and "no interrupted run" in err:
            resume = False  # the killed run died before its plan was stored: start anew
        else:
            assert proc.returncode == 0, err
            resume = False  # the run completed before a kill came: start a new one
        proc = None
    return {"workdir": workdir, "kills": counts, "orphans": orphans_after_runner_kills}


def _check(figures: dict) -> dict:
    workdir = figures["workdir"]
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        report = check_store(store)
        assert report.ok, report.summary()
        with store.reading() as conn:
            runs = journal.suite_runs(conn, "tiny")
        results = store.results()
    by_run = Counter(r.run_id for r in results)
    keys = Counter((r.run_id, r.extra["job_key"]) for r in results)
    assert runs and all(r.state == journal.COMPLETE for r in runs)
    for run in runs:  # every expected result exactly once
        assert by_run[run.run_id] == JOBS_PER_RUN
    assert set(keys.values()) == {1}
    assert not figures["orphans"], f"orphans after a runner kill: {figures['orphans']}"
    assert not _no_orphans(workdir, grace_s=0)
    assert not [p for p in (workdir / "tmp").glob("run-*")], "a run folder was left behind"
    assert not list((workdir / "spool").glob("*.jsonl"))
    failed = sum(r.status.value != "ok" for r in results)
    return {"kills": dict(figures["kills"]), "runs": len(runs), "results": len(results),
            "failed_by_worker_kills": failed}


def test_ten_random_kills_then_resume_lose_and_repeat_nothing(tmp_path: Path) -> None:
    figures = _check(kill_and_resume(tmp_path, kills=10, seed=14))
    assert sum(figures["kills"].values()) == 10
    print(figures)


@pytest.mark.slow
def test_a_hundred_random_kills_then_resume_lose_and_repeat_nothing(tmp_path: Path) -> None:
    figures = _check(kill_and_resume(tmp_path, kills=100, seed=1514))
    assert sum(figures["kills"].values()) == 100
    print(figures)


def test_resume_runs_only_what_is_not_done(tmp_path: Path) -> None:
    """A runner killed after its first result: --resume runs the other jobs, not that one."""
    workdir = tmp_path / "wd"
    suite = write_suite(tmp_path)
    proc = bench_popen(["suite", "run", str(suite), "--sha", SHA, "-q"], workdir, tmp_path)
    db = workdir / "results.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if db.exists():
            with ResultStore(f"sqlite:///{db}") as store:
                if len(store.query()) >= 1:
                    break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    with ResultStore(f"sqlite:///{db}") as store:
        first = {r.extra["job_key"] for r in store.results()}
    done = bench(["suite", "run", str(suite), "--resume"], workdir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "done before" in done.stdout and "complete" in done.stdout
    with ResultStore(f"sqlite:///{db}") as store:
        results = store.results()
        assert check_store(store).ok
    assert len(results) == JOBS_PER_RUN
    assert len({r.extra["job_key"] for r in results}) == JOBS_PER_RUN
    resumed = [r for r in results if r.extra["job_key"] not in first]
    assert len(resumed) == JOBS_PER_RUN - len(first)
    assert {r.environment["git_sha"] for r in results} == {SHA}
    assert {r.tag for r in results} == {"nightly"} and {r.extra["suite_id"] for r in results} == {"tiny"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume_finishes(tmp_path: Path, signum: int) -> None:
    workdir = tmp_path / "wd"
    suite = write_suite(tmp_path, models=("m1",))
    proc = bench_popen(["suite", "run", str(suite), "--sha", SHA, "-q"], workdir, tmp_path)
    runner = psutil.Process(proc.pid)
    deadline = time.monotonic() + 300
    while not _workers(runner) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _workers(runner)
    assert workers, "no worker started"
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err, err
    assert all(_gone_soon(w) for w in workers) and not marked_processes(workdir)
    assert not list((workdir / "tmp").glob("run-*"))  # its temporary files went with it
    done = bench(["suite", "run", str(suite), "--resume", "-q"], workdir, tmp_path)
    assert done.returncode == 0 and "complete" in done.stdout, done.stderr
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        assert len(store.results()) == 2 and check_store(store).ok


def _gone_soon(process: psutil.Process) -> bool:
    try:
        process.wait(timeout=10)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        pass
    return True
