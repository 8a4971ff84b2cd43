"""The one child-process launcher: children die with their parent, timeouts and signals take the
whole process group down, temp folders go, and what a SIGKILLed runner left is swept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from costmeter.harness.launcher import (
    Exit,
    RunFolder,
    active_folder,
    launch,
    scratch_dir,
    sweep_stale,
)
from suite_helpers import ROOT

# A child that starts a grandchild (in its own process group, as a daemon would), writes both
# pids, then sleeps.
FAMILY = """\
import json, subprocess, sys, time
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(json.dumps({"child": __import__("os").getpid(), "grand": grand.pid}))
time.sleep(120)
"""

# A runner: holds a run folder, launches FAMILY, and waits (SIGTERM -> KeyboardInterrupt).
RUNNER = """\
import sys
from pathlib import Path
from costmeter.harness.launcher import RunFolder, launch, stop_on_signals
root, pids, family = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    with stop_on_signals(), RunFolder(root, "t") as folder:
        print(folder.path, flush=True)
        launch([sys.executable, "-c", family, pids], timeout_s=120, stderr_path=folder.path / "err.txt")
except KeyboardInterrupt:
    sys.exit(130)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _pids(path: Path, within_s: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the child never wrote its pids")


def _runner(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pids = tmp_path / "pids.json"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "tmp"), str(pids), FAMILY],
                            env=env, stdout=subprocess.PIPE, text=True)
    return proc, pids


def test_sigkilled_runner_takes_its_child_and_the_sweep_takes_the_rest(tmp_path: Path) -> None:
    proc, pids_path = _runner(tmp_path)
    folder = Path(proc.stdout.readline().strip())
    pids = _pids(pids_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _gone(pids["child"]), "the parent-death signal did not reach the child"
    assert folder.is_dir()  # nobody removed it: the runner died
    report = sweep_stale(tmp_path / "tmp")
    assert report.folders == [folder.name]
    assert _gone(pids["grand"]), "the sweep left the grandchild running"
    assert not folder.exists()


def test_sigterm_stops_the_run_kills_the_group_and_removes_the_folder(tmp_path: Path) -> None:
    proc, pids_path = _runner(tmp_path)
    folder = Path(proc.stdout.readline().strip())
    pids = _pids(pids_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert _gone(pids["child"]) and _gone(pids["grand"])
    assert not folder.exists()


def test_a_live_run_is_not_swept(tmp_path: Path) -> None:
    with RunFolder(tmp_path / "tmp", "live") as folder:
        other = subprocess.run([sys.executable, "-c", "import sys; from costmeter.harness.launcher "
                                "import sweep_stale; print(sweep_stale(sys.argv[1]).folders)",
                                str(tmp_path / "tmp")], env={**os.environ, "PYTHONPATH": str(ROOT)},
                               capture_output=True, text=True, check=True)
        assert other.stdout.strip() == "[]" and folder.path.is_dir()
    assert not folder.path.exists()


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pids_path = tmp_path / "pids.json"
    with RunFolder(tmp_path / "tmp") as folder:
        done = launch([sys.executable, "-c", FAMILY, str(pids_path)], timeout_s=10,
                      stderr_path=folder.path / "err.txt")
    assert done.timed_out and not done.ok
    pids = _pids(pids_path)
    assert _gone(pids["child"]) and _gone(pids["grand"])
    assert "timed out after 10 s" in done.describe("worker", 10)


def test_scratch_folders_go_with_or_without_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTMETER_HOME", str(tmp_path / "home"))
    assert active_folder() is None
    with scratch_dir("x-") as scratch:
        assert scratch.is_dir() and scratch.parent.name.startswith("run-")
        one_off = scratch.parent
    assert not one_off.exists()
    with RunFolder(tmp_path / "tmp") as folder, scratch_dir("y-") as scratch:
        assert scratch.parent == folder.path
    assert not folder.path.exists()


def test_exit_descriptions_name_the_signal_and_the_telling_stderr() -> None:
    segv = Exit(-signal.SIGSEGV, stderr_tail=[
        "Fatal Python error: Segmentation fault", "", "Current thread 0x1 (most recent call first):",
        '  File "/m/user.py", line 3 in build', '  File "<frozen runpy>", line 88 in _run_code',
        "Extension modules: numpy"])
    text = segv.describe("its worker")
    assert text.startswith("its worker died with SIGSEGV (segmentation fault)")
    assert "Fatal Python error: Segmentation fault" in text and 'user.py", line 3' in text
    assert "Extension modules" not in text
    assert "SIGKILL (killed, often by the kernel's out-of-memory killer)" in Exit(-9).describe()
    assert Exit(3, stderr_tail=["a", "b", "c", "boom"]).describe() == \
        "worker exited with code 3; last stderr: b | c | boom"


def test_a_signal_whose_exception_was_lost_still_stops_the_run_at_the_next_check() -> None:
    """Python drops an exception raised where it cannot propagate (a Ctrl-C landing while a fork
    runs its handlers printed "Exception ignored ... KeyboardInterrupt" and the run went on to
    finish with exit code 0); the signal is remembered and check_stop raises it again."""
    import os
    import signal
    import time

    from costmeter.harness.launcher import check_stop, stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler raises here
        except KeyboardInterrupt:
            pass  # the exception is lost, as Python loses it in an at-fork handler
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            check_stop()
        check_stop()  # raised once: a second check passes
    assert signal.getsignal(signal.SIGINT) is before
    check_stop()  # outside a run: nothing to raise
