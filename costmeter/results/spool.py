"""Nothing finished is lost: results the store cannot take wait in a local spool.

:class:`SpoolingSink` stands between a run and its store. Each finished result gets a UUID and
is written with it (:meth:`ResultStore.write_once`: exactly once, however often it is sent).
A write that fails because the store is busy or unreachable is retried with exponential
backoff for up to ``RetryPolicy.window_s`` seconds; then the result is appended to the run's
spool file (``Workdir.spool/<run>-<pid>.jsonl``, one JSON line per result, flushed and fsynced)
and the run goes on. While the store stays down, later results get one try each before they
are spooled; the first write that succeeds again replays the spool.

Spool files are replayed into the store (:func:`replay`) when the next run starts, when this
run ends, and by ``bench results replay``, exactly once (the UUID). A file is deleted once every
line in it is stored. Each line names the store it was meant for (its URL, password hidden) and
the result schema version; a file from another schema version is refused whole, with the file
and line named, before anything is written. A live run holds an ``flock`` on its own spool file,
so a concurrent replay leaves that file alone. A last line torn by a SIGKILL mid-append is
skipped and reported: its job is not marked done, so ``--resume`` runs it again.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from costmeter.errors import StoreError
from costmeter.results.schema import SCHEMA_VERSION, RunResult

SPOOL_VERSION = 1
UUID_KEY = "result_uuid"


@dataclass(frozen=True)
class RetryPolicy:
    """How long a result is retried before it is spooled: waits start at ``first_delay_s``
    and double up to ``max_delay_s``; after ``window_s`` seconds in all the result is spooled.
    (SQLite writers also wait up to the store's busy timeout inside each try.)"""

    window_s: float = 120.0
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def delays(self) -> Iterator[float]:
        """Successive waits (s), unbounded; the caller stops at the window."""
        delay = self.first_delay_s
        while True:
            yield delay
            delay = min(self.max_delay_s, delay * 2)


@dataclass
class SpoolEntry:
    """One spooled result: its UUID, the store it was meant for, the journal job (or None)."""

    result_uuid: str
    store: str
    result: dict[str, Any]
    job: dict[str, str] | None = None


def result_uuid_of(result: RunResult) -> str:
    """The result's UUID (``extra["result_uuid"]``), assigned on first ask."""
    value = result.extra.get(UUID_KEY)
    if not value:
        value = str(uuid.uuid4())
        result.extra[UUID_KEY] = value
    return str(value)


def _line(entry: SpoolEntry) -> str:
    return json.dumps({"spool_version": SPOOL_VERSION, "schema_version": SCHEMA_VERSION,
                       "result_uuid": entry.result_uuid, "store": entry.store,
                       "job": entry.job, "result": entry.result}, default=str)


def _version_error(path: Path, number: int, what: str, found: Any, reads: int) -> StoreError:
    return StoreError(f"spool file {path} line {number} was written with {what} {found!r}; this "
                      f"costmeter reads {reads}: replay it with the costmeter that wrote it, or "
                      "move it out of the spool folder")


def read_spool(path: Path) -> tuple[list[SpoolEntry], int]:
    """The entries of one spool file and the number of torn (unreadable) last lines.

    Raises StoreError naming the file and line for an entry of another spool or result schema
    version, or an unreadable line that is not the last one."""
    entries: list[SpoolEntry] = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    torn = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines):
                torn += 1
                continue
            raise StoreError(f"spool file {path} line {number} is not a JSON object; the file is "
                             "damaged: move it out of the spool folder") from None
        if data.get("spool_version") != SPOOL_VERSION:
            raise _version_error(path, number, "spool version", data.get("spool_version"), SPOOL_VERSION)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise _version_error(path, number, "result schema version", data.get("schema_version"),
                                 SCHEMA_VERSION)
        entries.append(SpoolEntry(str(data["result_uuid"]), str(data.get("store", "")),
                                  dict(data["result"]), data.get("job")))
    return entries, torn


def spool_files(folder: Path) -> list[Path]:
    """Spool files in ``folder``, oldest name first."""
    return sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else []


def spooled_jobs(folder: Path, run_id: str) -> set[str]:
    """Job keys of ``run_id`` whose results wait in the spool (done, not yet stored)."""
    keys: set[str] = set()
    for path in spool_files(folder):
        for entry in read_spool(path)[0]:
            if entry.job and entry.job.get("run_id") == run_id:
                keys.add(entry.job["job_key"])
    return keys


@dataclass
class ReplayReport:
    """What a replay did: results written now, already stored, meant for another store, torn
    lines skipped, files removed, files left (locked by a live run or not fully stored)."""

    written: int = 0
    already: int = 0
    other_store: int = 0
    torn: int = 0
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        text = (f"replayed {self.written} result(s) from the spool ({self.already} already stored"
                f", {len(self.removed)} file(s) removed)")
        if self.other_store:
            text += f"; {self.other_store} belong to another store (replay with --store)"
        if self.torn:
            text += f"; {self.torn} torn line(s) skipped (their jobs run again on --resume)"
        if self.left:
            text += f"; left: {', '.join(self.left)}"
        return text


def _write_entry(store: Any, entry: SpoolEntry) -> bool:
    from costmeter.results.journal import JobRef

    job = JobRef(**entry.job) if entry.job else None
    result = RunResult.from_dict(entry.result)
    return bool(store.write_once(result, entry.result_uuid, job=job)[1])


def replay(folder: Path, store: Any, *, skip: set[Path] | None = None) -> ReplayReport:
    """Write every spooled result meant for ``store`` into it, exactly once, and remove the
    files whose every line is stored. Every file is read and checked before the first write
    (StoreError, nothing written, for a file of another version). Files locked by a live run,
    and those in ``skip``, are left alone."""
    report = ReplayReport()
    checked: list[tuple[Path, IO[str], list[SpoolEntry], int]] = []
    try:
        for path in spool_files(folder):
            if skip and path in skip:
                continue
            handle = path.open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                report.left.append(path.name)
                continue
            entries, torn = read_spool(path)
            checked.append((path, handle, entries, torn))
        for path, _handle, entries, torn in checked:
            report.torn += torn
            complete = True
            for entry in entries:
                if entry.store and entry.store != store.display_url:
                    report.other_store += 1
                    complete = False
                    continue
                if _write_entry(store, entry):
                    report.written += 1
                else:
                    report.already += 1
            if complete:
                path.unlink(missing_ok=True)
                report.removed.append(path.name)
            else:
                report.left.append(path.name)
    finally:
        for _path, handle, _entries, _torn in checked:
            handle.close()
    return report


class SpoolingSink:
    """The runner's sink: write with retries, spool past the retry window, go on.

    ``store`` is a :class:`~costmeter.results.store.ResultStore` (or anything with
    ``write_once`` and ``display_url``); ``spool_dir`` the working folder's ``spool``; ``name``
    names this run's spool file. ``sleep``/``clock`` are seams for tests. ``log`` receives one
    line when a result is spooled.
    """

    def __init__(self, store: Any, spool_dir: Path, name: str, policy: RetryPolicy | None = None,
                 *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.path = Path(spool_dir) / f"{name}-{os.getpid()}.jsonl"
        self.policy = policy or RetryPolicy()
        self._sleep, self._clock, self._log = sleep, clock, log
        self._handle: IO[str] | None = None
        self.degraded = False
        self.written = 0
        self.spooled = 0

    @property
    def display_url(self) -> str:
        return str(self.store.display_url)

    def write(self, result: RunResult, *, job: Any = None) -> int | None:
        """Store ``result`` (exactly once, by its UUID; ``job`` marked done with it); returns its
        id, or None when it went to the spool."""
        from costmeter.results.store import StoreBusy

        result_uuid = result_uuid_of(result)
        deadline = self._clock() + (0.0 if self.degraded else self.policy.window_s)
        delays = self.policy.delays()
        while True:
            try:
                result_id, _new = self.store.write_once(result, result_uuid, job=job)
            except StoreBusy as exc:
                wait = next(delays)
                if self._clock() + wait > deadline:
                    self._spool(result, result_uuid, job, str(exc))
                    return None
                self._sleep(wait)
                continue
            except StoreError as exc:  # refused for its content: keep it, do not retry
                self._spool(result, result_uuid, job, str(exc))
                return None
            self.written += 1
            if self.degraded:
                self.degraded = False
                self.flush()
            return int(result_id)

    def _spool(self, result: RunResult, result_uuid: str, job: Any, why: str) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
        entry = SpoolEntry(result_uuid, self.display_url, result.to_dict(),
                           job.to_dict() if job is not None else None)
        self._handle.write(_line(entry) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.spooled += 1
        self.degraded = True
        if self._log:
            self._log(f"store busy or unreachable ({why}); result {result.key.label()} kept in "
                      f"{self.path}")

    def flush(self) -> int:
        """Try to store this run's own spooled results; returns how many are still spooled."""
        if self._handle is None:
            return 0
        entries, _torn = read_spool(self.path)
        try:
            for entry in entries:
                _write_entry(self.store, entry)
        except StoreError:
            self.degraded = True
            return len(entries)
        self._handle.truncate(0)
        self._handle.close()
        self.path.unlink(missing_ok=True)
        self._handle = None
        return 0

    def close(self) -> int:
        """At the end of a run: one more try to store what was spooled (the file stays when it
        fails); returns how many results are still in the spool."""
        left = self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return left
