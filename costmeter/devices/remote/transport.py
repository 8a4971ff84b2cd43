"""How commands and files reach a device: the Transport protocol, the command-runner seam, and
the local transport (this machine, used for ``--cpus`` pinning here and in tests).

Commands are argument lists end to end. A transport never joins user input into a shell string
on this side; where the far side is a shell (ssh, ``adb shell``), each argument is quoted there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit status, and its output decoded as UTF-8 (replaced)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0


CommandRunner = Callable[[list[str], "float | None"], CommandResult]


class CommandTimeout(Exception):
    """A command ran past its time limit (raised by the command runner, after killing it)."""


def run_command(argv: list[str], timeout_s: float | None = None) -> CommandResult:
    """Run ``argv`` (no shell) and capture its output; CommandTimeout past ``timeout_s`` seconds,
    FileNotFoundError when the program does not exist."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"{Path(argv[0]).name} ran past {timeout_s:g} s") from None
    return CommandResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


@runtime_checkable
class Transport(Protocol):
    """Runs commands on, and copies files to and from, one device."""

    description: str

    def run(self, argv: list[str], timeout_s: float | None = None) -> CommandResult:
        """Run ``argv`` on the device; the result whatever the exit status."""

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file or folder to ``remote`` (a path on the device)."""

    def get(self, remote: str, local: Path) -> None:
        """Copy the device's ``remote`` file to ``local``."""

    def read_text(self, path: Path) -> str:
        """Read a text file on the device; FileNotFoundError / PermissionError like local access."""

    def list_dir(self, path: Path) -> list[str]:
        """Names in a folder on the device; FileNotFoundError / PermissionError like local access."""


def os_error_for(path: Path | str, stderr: str) -> OSError:
    """The OSError a local access would raise, judged from a remote ``cat``/``ls`` message."""
    text = stderr.lower()
    if "permission denied" in text:
        return PermissionError(13, "Permission denied", str(path))
    if "not a directory" in text:
        return NotADirectoryError(20, "Not a directory", str(path))
    if "no such file" in text or "not found" in text:
        return FileNotFoundError(2, "No such file or directory", str(path))
    return OSError(5, stderr.strip().splitlines()[0] if stderr.strip() else "remote read failed", str(path))


class RemoteFiles:
    """``read_text``/``list_dir`` over a transport's ``run`` (``cat`` and ``ls``), for readers such
    as the RAPL meter whose file access is a seam."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def read_text(self, path: Path) -> str:
        """Contents of a text file on the device."""
        result = self._transport.run(["cat", "--", str(path)], 30.0)
        if not result.ok:
            raise os_error_for(path, result.stderr)
        return result.stdout

    def list_dir(self, path: Path) -> list[str]:
        """Entries of a folder on the device (``ls -1A``)."""
        result = self._transport.run(["ls", "-1A", "--", str(path)], 30.0)
        if not result.ok:
            raise os_error_for(path, result.stderr)
        return [line for line in result.stdout.splitlines() if line]


class LocalTransport:
    """This machine as a device: commands run as child processes, files are copied."""

    description = "local"

    def __init__(self, runner: CommandRunner = run_command) -> None:
        self._runner = runner

    def run(self, argv: list[str], timeout_s: float | None = None) -> CommandResult:
        """Run ``argv`` here."""
        return self._runner(list(argv), timeout_s)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or folder to ``remote``."""
        _copy(Path(local), Path(remote))

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to ``local``."""
        _copy(Path(remote), Path(local))

    def read_text(self, path: Path) -> str:
        """Read a local text file."""
        return Path(path).read_text()

    def list_dir(self, path: Path) -> list[str]:
        """Entries of a local folder."""
        return sorted(os.listdir(path))


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(src, dst)
