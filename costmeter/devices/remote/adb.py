"""Android devices over ``adb``: the transport, the ``benchmark_model`` command line, and the
registry entry for runtime ``litert`` on ``adb://SERIAL``.

On the device the model runs in LiteRT's own ``benchmark_model`` binary (the user supplies it,
built for the device's ABI), which times the runs itself; its output is parsed by
:mod:`costmeter.devices.remote.benchmark_model`. ``adb shell`` hands its arguments to the
device's shell as one string, so each argument is quoted with :func:`shlex.quote`.
"""
from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmeter.devices.remote.transport import CommandResult, CommandRunner, RemoteFiles, run_command
from costmeter.errors import ConfigError, UnavailableError

DEVICE_DIR = "/data/local/tmp/costmeter"
_SERIAL_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
DELEGATES = ("xnnpack", "gpu", "none")


def parse_adb_serial(device: str) -> str:
    """``adb://SERIAL`` -> ``SERIAL``; ConfigError when malformed."""
    serial = device[len("adb://"):].strip("/") if device.startswith("adb://") else ""
    if not serial or not _SERIAL_RE.match(serial) or serial.startswith("-"):
        raise ConfigError(f"bad Android device {device!r}; write adb://SERIAL with the serial `adb devices` lists")
    return serial


def cpu_mask(cpus: list[int]) -> str:
    """Hex affinity mask for ``taskset`` on Android: [4, 5, 6, 7] -> ``f0``."""
    mask = 0
    for cpu in cpus:
        mask |= 1 << cpu
    return format(mask, "x")


class AdbTransport:
    """Transport to one Android device through the ``adb`` client (``runner`` is the seam)."""

    def __init__(self, serial: str, runner: CommandRunner = run_command, adb: str = "adb") -> None:
        self.serial = serial
        self._runner = runner
        self._adb = adb
        self.description = f"adb://{serial}"
        files = RemoteFiles(self)
        self.read_text = files.read_text
        self.list_dir = files.list_dir

    def _call(self, args: list[str], timeout_s: float | None) -> CommandResult:
        try:
            return self._runner([self._adb, "-s", self.serial, *args], timeout_s)
        except FileNotFoundError:
            raise UnavailableError("adb is not installed here; install Android platform-tools "
                                   "(apt-get install adb) and connect the device") from None

    def check_device(self) -> None:
        """UnavailableError unless the device is attached and authorized (``adb get-state``)."""
        result = self._call(["get-state"], 30.0)
        state = result.stdout.strip()
        if not result.ok or state != "device":
            why = (result.stderr.strip().splitlines() or [state or "unknown state"])[-1]
            raise UnavailableError(f"Android device {self.serial} is not ready ({why}); connect it, accept the "
                                   "USB-debugging prompt and check `adb devices`")

    def run(self, argv: list[str], timeout_s: float | None = None) -> CommandResult:
        """Run ``argv`` through ``adb shell`` (each argument quoted for the device's shell)."""
        return self._call(["shell", shlex.join([str(a) for a in argv])], timeout_s)

    def put(self, local: Path, remote: str) -> None:
        """``adb push``."""
        result = self._call(["push", str(local), remote], None)
        if not result.ok:
            raise UnavailableError(f"adb push of {Path(local).name} to {self.serial} failed: "
                                   f"{(result.stderr.strip().splitlines() or ['no message'])[-1]}")

    def get(self, remote: str, local: Path) -> None:
        """``adb pull``."""
        result = self._call(["pull", remote, str(local)], None)
        if not result.ok:
            raise FileNotFoundError(2, "adb pull failed", remote)


@dataclass(frozen=True)
class BenchmarkModelArgs:
    """One ``benchmark_model`` invocation: where things are and how to run (seconds, counts)."""

    binary: str
    graph: str
    threads: int | None = None
    delegate: str = "xnnpack"
    warmup_runs: int = 1
    warmup_min_secs: float = 0.5
    num_runs: int = 50
    min_secs: float = 1.0
    max_secs: float = 150.0
    cpus: tuple[int, ...] = ()

    def argv(self) -> list[str]:
        """The device-side argument list (``taskset MASK`` first when CPUs are pinned)."""
        if self.delegate not in DELEGATES:
            raise ConfigError(f"unknown delegate {self.delegate!r} for adb litert; choose {', '.join(DELEGATES)}")
        argv = ["taskset", cpu_mask(list(self.cpus))] if self.cpus else []
        argv += [self.binary, f"--graph={self.graph}",
                 f"--warmup_runs={self.warmup_runs}", f"--warmup_min_secs={self.warmup_min_secs:g}",
                 f"--num_runs={self.num_runs}", f"--min_secs={self.min_secs:g}", f"--max_secs={self.max_secs:g}",
                 "--report_peak_memory_footprint=true"]
        if self.threads is not None:
            argv.append(f"--num_threads={self.threads}")
        if self.delegate == "gpu":
            argv.append("--use_gpu=true")
        else:
            argv.append(f"--use_xnnpack={'true' if self.delegate == 'xnnpack' else 'false'}")
        return argv


class AdbLiteRTRuntime:
    """Runtime ``litert`` on ``adb``: the ``.tflite`` runs in ``benchmark_model`` on the device.

    Nothing runs in this process: the harness's adb executor pushes the file and the binary and
    parses the tool's output. Option ``delegate`` (xnnpack | gpu | none; default xnnpack).
    """

    name = "litert"
    device_kind = "adb"
    artifact_kind = "tflite"
    option_names = ("delegate",)

    def __init__(self, which: Any = shutil.which) -> None:
        self._which = which

    def is_available(self) -> tuple[bool, str]:
        """Available when the ``adb`` client is on PATH (the device and the binary are checked by
        the executor's preflight)."""
        if self._which("adb") is None:
            return False, "the adb client is not installed; install Android platform-tools (apt-get install adb)"
        return True, ""
