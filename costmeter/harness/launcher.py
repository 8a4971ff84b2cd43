"""The one child-process launcher: benchmark workers, batch workers, converters and model
inspection all start their children here.

Every child

- starts in a session of its own (its own process group), so a timeout, Ctrl-C or SIGTERM
  kills the child *and everything it started* with one ``killpg``; the group is killed again
  after a normal exit, so helpers a child left behind do not outlive it;
- gets a parent-death signal: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes between fork
  and exec, so when the runner dies, even by SIGKILL, the kernel kills the child at once;
- carries a marker in its environment (``COSTMETER_RUN_DIR`` = its run folder) that its own
  children inherit, so whatever is left of a dead run can be found;
- writes its files (job, outcome, stderr) into a scratch folder inside the run's folder.

Why a parent-death signal rather than a watchdog process or thread: the kernel delivers it at
the moment the parent dies, whatever killed it, with nothing to poll and nothing that can die
first. Its limits are handled apart: it exists on Linux only (elsewhere the sweep below does the
work), it is sent when the *thread* that started the child exits (launch from a thread that
outlives the child, as the runner does), and it reaches the direct child only; a grandchild (a
compiler's worker pool) of a child killed this way survives, and the sweep kills it.

Run folders (``Workdir.tmp/run-<id>/``) hold ``lock``, an ``flock`` held for the runner's whole
life: the kernel releases it when the runner dies, however it dies. :func:`sweep_stale`, called
when a run starts (and by ``--resume``), takes the lock of every run folder it finds; a lock it
can take belongs to a dead runner, so every process whose environment carries that folder's
marker gets SIGKILL and the folder is removed. Normal ends, Ctrl-C and SIGTERM (turned into
KeyboardInterrupt by :func:`stop_on_signals`) remove the folder on the way out.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MARKER_ENV = "COSTMETER_RUN_DIR"
RUN_PREFIX = "run-"
LOCK_NAME = "lock"
STDERR_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1

try:  # loaded once in the parent: nothing but the prctl call happens between fork and exec
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - a Linux without a C library
    _LIBC = None


@dataclass
class Exit:
    """How a child ended: ``returncode`` (negative: killed by that signal), whether it ran past
    its timeout, its wall time (s) and the last lines of its stderr."""

    returncode: int
    timed_out: bool = False
    wall_s: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self, what: str = "worker", timeout_s: float | None = None) -> str:
        """One line: the signal (named, with its usual cause) or exit code, and the last stderr
        lines, e.g. ``worker died with SIGSEGV (segmentation fault); last stderr: ...``."""
        if self.timed_out:
            text = f"{what} timed out after {timeout_s or self.wall_s:g} s"
        elif self.returncode < 0:
            name = _signal_name(-self.returncode)
            text = f"{what} died with {name} ({_SIGNAL_HINTS.get(name, 'terminated by a signal')})"
        else:
            text = f"{what} exited with code {self.returncode}"
        shown = _telling_lines(self.stderr_tail)
        if shown:
            text += "; last stderr: " + " | ".join(line.strip()[:200] for line in shown)
        return text


def _telling_lines(lines: list[str]) -> list[str]:
    """The stderr lines that say most: a fatal error with its innermost frame (Python's
    faulthandler), else the last three lines."""
    fatal = next((i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")), None)
    if fatal is None:
        return [ln for ln in lines if not ln.startswith("Extension modules:")][-3:]
    frame = next((ln for ln in lines[fatal:] if ln.strip().startswith('File "')), None)
    return [lines[fatal]] + ([frame] if frame else [])


_SIGNAL_HINTS = {
    "SIGSEGV": "segmentation fault",
    "SIGKILL": "killed, often by the kernel's out-of-memory killer",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "arithmetic fault",
    "SIGILL": "illegal instruction",
}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> list[str]:
    """The last non-blank lines of a text file (empty when it is missing)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]


# ----------------------------------------------------------------------------- run folders


class RunFolder:
    """A run's folder under ``root`` (usually ``Workdir.tmp``), locked for the owner's life.

    Use as a context manager; it becomes the active folder (children's scratch folders go
    inside it) and is removed on exit, whatever the exit. ``path`` exists while open.
    """

    def __init__(self, root: Path | str, name: str | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / f"{RUN_PREFIX}{name or uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._lock: IO[str] | None = None

    def open(self) -> RunFolder:
        """Create the folder and take its lock (held until :meth:`close` or this process dies)."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = (self.path / LOCK_NAME).open("a+")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "started": time.time()}))
        lock.flush()
        self._lock = lock
        _ACTIVE.append(self)
        return self

    def close(self) -> None:
        """Kill what is left of this run's children, remove the folder, release the lock."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        kill_marked(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def scratch(self, prefix: str) -> Path:
        """A fresh folder inside this run's folder for one child's files."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))

    def __enter__(self) -> RunFolder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


_ACTIVE: list[RunFolder] = []


def active_folder() -> RunFolder | None:
    """The innermost open run folder of this process, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def default_tmp_root() -> Path:
    """Where one-off run folders go when no run is active: ``$COSTMETER_HOME/tmp`` or
    ``./.costmeter/tmp`` (the working folder's ``tmp``)."""
    from costmeter.workdir import Workdir

    return Workdir.default().tmp


@contextmanager
def scratch_dir(prefix: str, tmp_root: Path | str | None = None) -> Iterator[Path]:
    """A scratch folder for one child: inside the active run folder, else inside a one-off run
    folder under ``tmp_root`` (default :func:`default_tmp_root`). Removed afterwards."""
    folder = active_folder()
    if folder is not None:
        path = folder.scratch(prefix)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    with RunFolder(tmp_root or default_tmp_root()) as own:
        yield own.scratch(prefix)


def _processes_marked(folder: Path) -> list[int]:
    """Pids of live processes (any user's we can read) whose environment names ``folder``."""
    needle = f"{MARKER_ENV}={folder}".encode()
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(folder: Path) -> int:
    """SIGKILL every process (and its group) that carries ``folder``'s marker; the count."""
    pids = _processes_marked(Path(folder))
    for pid in pids:
        for kill in (lambda p: os.killpg(os.getpgid(p), signal.SIGKILL),
                     lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return len(pids)


@dataclass
class Sweep:
    """What :func:`sweep_stale` cleaned: run folders removed and processes killed."""

    folders: list[str] = field(default_factory=list)
    killed: int = 0


def sweep_stale(root: Path | str) -> Sweep:
    """Clean what dead runs left under ``root``: for each run folder whose lock can be taken
    (its runner is gone), kill its marked processes and remove it. Live runs are untouched."""
    report = Sweep()
    base = Path(root)
    if not base.is_dir():
        return report
    mine = {f.path for f in _ACTIVE}
    for folder in sorted(base.glob(f"{RUN_PREFIX}*")):
        if folder in mine or not folder.is_dir():
            continue
        try:
            lock = (folder / LOCK_NAME).open("a+")
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a live run
            report.killed += kill_marked(folder)
            shutil.rmtree(folder, ignore_errors=True)
            report.folders.append(folder.name)
        finally:
            lock.close()
    return report


# ----------------------------------------------------------------------------- launching


def _child_setup(parent_pid: int) -> None:
    """Between fork and exec: die with the parent (SIGKILL), or at once if it is already gone."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(70)


def child_env(folder: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``env`` (default ours) plus the run marker, costmeter's own
    folder first on PYTHONPATH, and PYTHONSAFEPATH so that ``python -m`` does not put the
    current folder on ``sys.path`` (user modules are imported from PYTHONPATH only)."""
    import costmeter

    out = dict(os.environ if env is None else env)
    out[MARKER_ENV] = str(folder)
    root = str(Path(costmeter.__file__).resolve().parent.parent)
    parts = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    out["PYTHONSAFEPATH"] = "1"
    return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def launch(argv: Sequence[str], *, timeout_s: float, stderr_path: Path,
           stdout: IO[bytes] | int | None = subprocess.DEVNULL, env: dict[str, str] | None = None,
           cwd: Path | str | None = None) -> Exit:
    """Run ``argv`` as an isolated child (see the module docstring) and wait for it.

    ``stderr_path`` receives its stderr (the tail comes back in :class:`Exit`); ``stdout`` is
    discarded unless a file is given; ``timeout_s`` (s) kills its whole group. Ctrl-C or
    SIGTERM while waiting kill the group too, then propagate. Never raises for what the child
    does; OSError when it cannot be started.
    """
    folder = active_folder()
    marker = folder.path if folder is not None else Path(stderr_path).parent
    parent = os.getpid()
    start = time.perf_counter()
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=err,
                                env=child_env(marker, env), cwd=cwd, start_new_session=True,
                                preexec_fn=lambda: _child_setup(parent))
        try:
            try:
                rc = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                rc, timed_out = proc.wait(), True
        except BaseException:  # Ctrl-C, SIGTERM (see stop_on_signals): take the child down first
            _kill_group(proc.pid)
            proc.wait()
            raise
        _kill_group(proc.pid)  # helpers the child left in its group
    return Exit(rc, timed_out, time.perf_counter() - start, _tail(Path(stderr_path)))


def launched_run(argv: Sequence[str], *, stdout: IO[bytes] | int | None = None,
                 stderr: Any = None, timeout: float | None = None, env: dict[str, str] | None = None,
                 **_: Any) -> subprocess.CompletedProcess[bytes]:
    """:func:`launch` with :func:`subprocess.run`'s calling convention (the converters' process
    seam): stderr goes where ``stdout`` goes when ``stderr`` is ``subprocess.STDOUT``; raises
    :class:`subprocess.TimeoutExpired` past ``timeout`` (s)."""
    with scratch_dir("run-") as scratch:
        err_path = scratch / "stderr.txt"
        done = launch(argv, timeout_s=timeout or 1e9, stderr_path=err_path,
                      stdout=stdout if stdout is not None else subprocess.DEVNULL, env=env)
        if stderr == subprocess.STDOUT and hasattr(stdout, "write"):
            stdout.write(err_path.read_bytes())  # type: ignore[union-attr]
            stdout.flush()  # type: ignore[union-attr]
    if done.timed_out:
        raise subprocess.TimeoutExpired(list(argv), timeout or 0.0)
    return subprocess.CompletedProcess(list(argv), done.returncode)


_stop_signal: int | None = None  # the signal stop_on_signals caught last (see check_stop)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so a run stops the same
    clean way whatever stopped it: its children are killed and its temporary files removed.

    A signal is also remembered: Python drops an exception raised where it cannot propagate
    (a signal that lands while a fork runs its handlers, say), and :func:`check_stop`, called
    between a run's steps, raises it again there. Only the main thread can install handlers;
    elsewhere this does nothing."""
    global _stop_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        global _stop_signal
        _stop_signal = signum
        raise KeyboardInterrupt(f"stopped by {_signal_name(signum)}")

    _stop_signal = None
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        _stop_signal = None
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_stop() -> None:
    """Raise KeyboardInterrupt when a signal arrived inside :func:`stop_on_signals` and its
    exception was lost; a no-op otherwise."""
    global _stop_signal
    if _stop_signal is not None:
        signum, _stop_signal = _stop_signal, None
        raise KeyboardInterrupt(f"stopped by {_signal_name(signum)}")
