"""Running a suite exactly once, across kills and resumes.

A run of a suite is planned in the store's journal before anything runs: the run (suite id,
tag, git SHA of the code under test, the suite file's hash) and every job as ``pending``, in
one transaction, after every job was validated. Each job is marked ``started`` before its
worker starts, and ``done`` in the very transaction that writes its result (or, when the
store cannot take it, its result waits in the spool with its job key). ``--resume`` takes the
suite's last unfinished run and runs exactly the jobs that are neither done nor spooled: a
job killed mid-way runs again, a finished one never does, and a result written twice (a
replayed spool) is stored once, by its UUID.

Every result carries the suite id (``extra.suite_id``), the job key, the tag and, as its
``git_sha``, the SHA of the code under test (costmeter's own SHA moves to
``environment.costmeter_git_sha``).
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, StoreError
from costmeter.harness.config import SuiteConfig, SuiteJob
from costmeter.harness.launcher import Sweep, sweep_stale
from costmeter.harness.runner import Runner, new_run_id, validate
from costmeter.results import journal
from costmeter.results.schema import RunResult, Status
from costmeter.results.spool import ReplayReport, RetryPolicy, SpoolingSink, replay, spooled_jobs
from costmeter.workdir import Workdir

Progress = Callable[[int, int, Any, "RunResult | None"], None]
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


@dataclass
class SuiteOutcome:
    """What a suite run did. ``skipped``: jobs done before this invocation (resume);
    ``spooled``: results still waiting in the spool; ``complete``: every job is done."""

    run_id: str
    suite_id: str
    git_sha: str
    tag: str | None
    resumed: bool
    n_jobs: int
    skipped: int = 0
    results: list[RunResult] = field(default_factory=list)
    spooled: int = 0
    complete: bool = False
    cleaned: Sweep = field(default_factory=Sweep)
    replayed: ReplayReport = field(default_factory=ReplayReport)

    def summary(self) -> str:
        """A few lines for the terminal."""
        failed = sum(r.status is not Status.OK for r in self.results)
        verb = "resumed" if self.resumed else "ran"
        lines = [f"suite {self.suite_id} run {self.run_id} (sha {self.git_sha[:12]}, tag "
                 f"{self.tag or '-'}): {verb} {len(self.results)} of {self.n_jobs} jobs"
                 + (f", {self.skipped} done before" if self.skipped else "")
                 + (f", {failed} failed" if failed else "")]
        if self.cleaned.folders:
            lines.append(f"cleaned {len(self.cleaned.folders)} folder(s) left by a killed run "
                         f"({self.cleaned.killed} process(es) stopped)")
        if self.replayed.written or self.replayed.torn or self.replayed.other_store:
            lines.append(self.replayed.summary())
        if self.spooled:
            lines.append(f"{self.spooled} result(s) wait in the spool: the store could not take "
                         "them; `bench results replay` (or the next run) stores them")
        lines.append("complete" if self.complete else
                     "not complete: `bench suite run --resume` runs what is left")
        return "\n".join(lines)


def code_sha(suite: SuiteConfig, sha: str | None) -> tuple[str, bool | None]:
    """(SHA of the code under test, dirty?): ``sha`` when given, else the HEAD of the suite's
    ``repository``. ConfigError when neither names one."""
    if sha:
        if not _SHA.match(sha.strip()):
            raise ConfigError(f"--sha {sha!r} is not a git SHA (7 to 64 hex digits); pass the "
                              "commit under test, e.g. --sha $(git rev-parse HEAD)")
        return sha.strip().lower(), None
    if not suite.repository:
        raise ConfigError(f"no git SHA for the code under test: pass --sha SHA or set repository "
                          f"= \"PATH\" under [suite] in {Path(suite.path).name or 'the suite file'}")
    try:
        head = subprocess.run(["git", "-C", suite.repository, "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", suite.repository, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot read the git SHA of repository {suite.repository} named in "
                          f"{Path(suite.path).name} ({type(exc).__name__}); point repository at a "
                          "git checkout or pass --sha") from None
    return head, bool(dirty)


def annotate(result: RunResult, suite: SuiteConfig, job: SuiteJob, sha: str, dirty: bool | None,
             tag: str | None) -> RunResult:
    """Stamp a result with its suite, job, tag and the code under test's SHA."""
    env = result.environment
    if env.get("git_sha") and env["git_sha"] != sha:
        env["costmeter_git_sha"] = env["git_sha"]
    env["git_sha"] = sha
    if dirty is not None:
        env["git_dirty"] = dirty
    result.tag = tag
    result.extra.update(suite_id=suite.suite_id, job_key=job.key, suite_sha256=suite.sha256)
    return result


def _add_python_path(folders: tuple[str, ...]) -> None:
    """Let worker processes import the suite's ``python_path`` folders (and nothing else new)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([*parts, *[f for f in folders if f not in parts]])


def _interrupted(store: Any, suite: SuiteConfig, jobs: list[SuiteJob], sha: str | None) -> journal.SuiteRun:
    """The suite's last unfinished run, checked against the suite file as it is now."""
    with store.reading() as conn:
        runs = journal.suite_runs(conn, suite.suite_id)
        open_runs = [r for r in runs if r.state == journal.RUNNING]
        if not open_runs:
            last = f" (its last run {runs[-1].run_id} is complete)" if runs else ""
            raise ConfigError(f"suite {suite.suite_id} has no interrupted run to resume{last}; "
                              "run it without --resume")
        run = open_runs[-1]
        planned = set(journal.job_states(conn, run.run_id))
    wanted = {j.key for j in jobs}
    if planned != wanted:
        raise ConfigError(f"the suite file changed since run {run.run_id} started "
                          f"({len(wanted - planned)} job(s) added, {len(planned - wanted)} removed); "
                          "run it without --resume to start a new run")
    if sha and run.git_sha and not run.git_sha.startswith(sha.lower()[:len(run.git_sha)]):
        raise ConfigError(f"run {run.run_id} measures sha {run.git_sha[:12]}, not {sha}; resume "
                          "without --sha, or start a new run")
    return run


class SuiteRunner:
    """Runs a :class:`SuiteConfig` into a store (see the module docstring).

    ``run_in`` is the runner's worker seam (default: local isolated workers); ``progress`` is
    called as ``(done, total, config, result)``; ``log`` receives one-line notes (spooling).
    ``farm(configs, sink)``, when given, runs the jobs elsewhere (the Ray farm) and hands each
    result to ``sink.write``; the sink journals it against its job.
    """

    def __init__(self, suite: SuiteConfig, store: Any, workdir: Path | str, *,
                 run_in: Callable[..., Any] | None = None, progress: Progress | None = None,
                 log: Callable[[str], None] | None = None, policy: RetryPolicy | None = None,
                 farm: Callable[[list[Any], Any], Any] | None = None) -> None:
        self.farm = farm
        self.suite, self.store, self.workdir = suite, store, Path(workdir)
        self.run_in, self.progress, self.log = run_in, progress, log
        self.policy = policy or RetryPolicy(window_s=suite.retry_window_s)

    def run(self, *, resume: bool = False, sha: str | None = None, tag: str | None = None) -> SuiteOutcome:
        """Plan (or resume) and run the suite; bad input raises before anything is written."""
        suite, store = self.suite, self.store
        jobs = suite.expand(self.workdir)
        wd = Workdir.of(self.workdir)
        _add_python_path(suite.python_path)
        if resume:
            run = _interrupted(store, suite, jobs, sha)
            run_id, git_sha, dirty, tag = run.run_id, run.git_sha or "", None, run.tag
        else:
            run_id, (git_sha, dirty), tag = new_run_id(), code_sha(suite, sha), tag or suite.tag
        outcome = SuiteOutcome(run_id, suite.suite_id, git_sha, tag, resume, len(jobs))
        outcome.cleaned = sweep_stale(wd.tmp)
        outcome.replayed = replay(wd.spool, store)
        done: set[str] = spooled_jobs(wd.spool, run_id)
        if resume:
            with store.reading() as conn:
                done |= {k for k, (state, _) in journal.job_states(conn, run_id).items()
                         if state == journal.DONE}
        todo = [j for j in jobs if j.key not in done]
        outcome.skipped = len(jobs) - len(todo)
        kwargs = {"run_in": self.run_in} if self.run_in is not None else {}
        runner = Runner(None, self.workdir, **kwargs)
        sink = SpoolingSink(store, wd.spool, run_id, self.policy, log=self.log)
        try:
            with runner.run_folder(run_id):
                prepared = validate([j.config for j in todo])
                if not resume:
                    planned = journal.SuiteRun(run_id, suite.suite_id, tag, git_sha, suite.sha256,
                                               journal.RUNNING, None, len(jobs), journal.utcnow(), None)
                    with store.transaction("plan the suite run in") as conn:
                        journal.plan_run(conn, planned, [(j.key, j.label) for j in jobs])
                if self.farm is not None:
                    self.farm([j.config for j in todo],
                              _FarmSink(self, todo, sink, outcome, git_sha, dirty, tag))
                    todo, prepared = [], []
                for i, (job, prep) in enumerate(zip(todo, prepared)):
                    if self.progress:
                        self.progress(i, len(todo), job.config, None)
                    ref = journal.JobRef(run_id, job.key)
                    self._mark_started(ref)
                    result = annotate(runner.run_one(prep, run_id, tag), suite, job, git_sha, dirty, tag)
                    sink.write(result, job=ref)
                    outcome.results.append(result)
                    if self.progress:
                        self.progress(i + 1, len(todo), job.config, result)
        finally:
            outcome.spooled = sink.close()
        outcome.complete = self._finish(run_id, len(jobs)) if outcome.spooled == 0 else False
        return outcome

    def _mark_started(self, ref: journal.JobRef) -> None:
        """Best effort: a store too busy to note the start must not hold the job up."""
        try:
            with self.store.transaction("journal a job start in") as conn:
                journal.mark_started(conn, ref, os.getpid())
        except StoreError:
            pass

    def _finish(self, run_id: str, n_jobs: int) -> bool:
        """Mark the run complete when every job is done; whether it is."""
        try:
            with self.store.transaction("finish the suite run in") as conn:
                states = journal.job_states(conn, run_id)
                if len(states) == n_jobs and all(s == journal.DONE for s, _ in states.values()):
                    journal.finish_run(conn, run_id)
                    return True
        except StoreError:
            pass
        return False


class _FarmSink:
    """Journals the results a farm hands back: each is matched to its job by what it measured
    (model, device, runtime, batch, threads, options), stamped, and written exactly once."""

    def __init__(self, owner: SuiteRunner, jobs: list[SuiteJob], sink: SpoolingSink,
                 outcome: SuiteOutcome, sha: str, dirty: bool | None, tag: str | None) -> None:
        self.owner, self.pending, self.sink, self.outcome = owner, list(jobs), sink, outcome
        self.sha, self.dirty, self.tag = sha, dirty, tag

    def _match(self, result: RunResult) -> SuiteJob | None:
        key = result.key
        for job in self.pending:
            cfg = job.config
            same_model = cfg.model in (key.model_id, result.model_info.get("name")) or \
                Path(cfg.model).stem == result.model_info.get("name")
            if same_model and (cfg.device, cfg.runtime, cfg.batch, cfg.threads, cfg.options) == \
                    (key.device, key.runtime, key.batch, key.threads, key.options):
                return job
        return None

    def write(self, result: RunResult) -> Any:
        job = self._match(result)
        if job is None:
            raise ConfigError(f"the farm returned a result no job of the suite asked for "
                              f"({result.key.label()}); check the farm's executor")
        self.pending.remove(job)
        result.run_id = self.outcome.run_id
        annotate(result, self.owner.suite, job, self.sha, self.dirty, self.tag)
        self.outcome.results.append(result)
        return self.sink.write(result, job=journal.JobRef(self.outcome.run_id, job.key))
