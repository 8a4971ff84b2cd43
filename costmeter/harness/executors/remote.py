"""Run worker jobs on another machine (SSH) or pinned to CPUs here (``--cpus``), and route each
job of a run to the executor of its device.

A remote run copies the job, the artifact and the inputs into a fresh folder on the board, runs
``python -m costmeter.harness.worker JOB OUT`` there (under ``timeout -s KILL`` so a hung worker
dies on the board too, and under ``taskset -c CPUS`` when pinned), copies the outcome (and the
outputs for the parity check) back, and removes the folder. The worker on the board measures
with the board's own clock, reads the board's RAPL counters and records the board's environment
(governor, frequencies, affinity), so samples, energy and environment come back as for a local
run. The results are stored here by the runner as usual.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from costmeter.devices.remote.transport import CommandTimeout, LocalTransport, Transport
from costmeter.errors import ConfigError, UnavailableError
from costmeter.harness.config import DeviceSpec
from costmeter.harness.worker import WorkerJob, WorkerOutcome, run_in_worker

NOT_FOUND_STATUS = 127
PREFLIGHT_TIMEOUT_S = 180.0
_PREFLIGHT = """\
import json, shutil, sys
out = {"python": sys.version.split()[0], "taskset": bool(shutil.which("taskset")),
       "timeout": bool(shutil.which("timeout"))}
try:
    import costmeter
    from costmeter.devices.base import get_runtime
except ImportError as error:
    out["error"] = str(error)
else:
    out["costmeter"] = costmeter.__version__
    out["runtimes"] = {}
    for name in json.loads(sys.argv[1]):
        try:
            out["runtimes"][name] = list(get_runtime("cpu", name).is_available())
        except Exception as error:
            out["runtimes"][name] = [False, str(error)]
print(json.dumps(out))
"""


def parse_cpus(text: str) -> list[int]:
    """``"4-7,9"`` -> ``[4, 5, 6, 7, 9]``; ConfigError naming the fix when malformed."""
    cpus: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ConfigError(f"malformed --cpus {text!r}; give CPU numbers and ranges, e.g. 4-7 or 0,2,4")
        cpus.update(range(int(low), int(high if dash else low) + 1))
    return sorted(cpus)


@dataclass(frozen=True)
class RemoteSettings:
    """How to run on remote devices: the remote Python, an optional PYTHONPATH where costmeter's
    source lies on the board, SSH client options, and the ``benchmark_model`` binary for adb."""

    python: str = "python3"
    pythonpath: str | None = None
    ssh: Any = None  # SshOptions; None = defaults
    benchmark_model: str | None = None
    remote_tmp: str = "/tmp"


class WorkerExecutor:
    """Runs worker jobs through a transport (SSH board, or this machine for ``--cpus``)."""

    def __init__(self, transport: Transport, python: str = "python3", pythonpath: str | None = None,
                 remote_tmp: str = "/tmp", make_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12]) -> None:
        self.transport = transport
        self.python = python
        self.pythonpath = pythonpath
        self.remote_tmp = remote_tmp.rstrip("/") or "/"
        self._make_id = make_id
        self._root: str | None = None
        self._uploaded: dict[str, str] = {}
        self.info: dict[str, Any] = {}

    # -- checks -------------------------------------------------------------------------------

    def _python_argv(self, args: list[str]) -> list[str]:
        env = ["env", f"PYTHONPATH={self.pythonpath}"] if self.pythonpath else []
        return [*env, self.python, *args]

    def probe(self, runtimes: list[str]) -> dict[str, Any]:
        """Ask the board's Python which of ``runtimes`` it can run: ``{"python", "costmeter",
        "runtimes": {name: [ok, reason]}, "taskset", "timeout"}``. UnavailableError when the board
        cannot be reached, has no such Python, or cannot import costmeter."""
        where = self.transport.description
        try:
            result = self.transport.run(self._python_argv(["-c", _PREFLIGHT, json.dumps(sorted(set(runtimes)))]),
                                        PREFLIGHT_TIMEOUT_S)
        except CommandTimeout:
            raise UnavailableError(f"{self.python!r} on {where} did not answer within {PREFLIGHT_TIMEOUT_S:g} s; "
                                   "check the board's load or pass a faster --remote-python") from None
        if result.returncode == NOT_FOUND_STATUS or (not result.ok and "no such file" in result.stderr.lower()):
            raise UnavailableError(f"remote Python {self.python!r} not found on {where}; install Python 3.10+ "
                                   "there or pass --remote-python /path/to/python")
        try:
            found = json.loads(result.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise UnavailableError(f"{self.python!r} on {where} failed to run the check ({tail}); "
                                   "pass --remote-python with a working Python 3.10+") from None
        if "error" in found:
            raise UnavailableError(f"costmeter is not importable by {self.python!r} on {where} ({found['error']}); "
                                   "pip install costmeter there, or pass --remote-pythonpath DIR with its source")
        return found

    def preflight(self, runtimes: list[str], need_taskset: bool = False) -> dict[str, Any]:
        """Check the board: reachable, Python there, costmeter importable, runtimes installed,
        ``timeout`` (and ``taskset`` when pinning) present.

        Raises UnavailableError (one line with the fix) on the first problem; returns what it found
        (Python and costmeter versions, runtimes, RAPL energy availability).
        """
        where = self.transport.description
        found = self.probe(runtimes)
        missing = {n: why for n, (ok, why) in found["runtimes"].items() if not ok}
        if missing:
            name, why = next(iter(sorted(missing.items())))
            raise UnavailableError(f"runtime {name!r} is not usable on {where}: {why}")
        if not found.get("timeout"):
            raise UnavailableError(f"`timeout` (coreutils) is missing on {where}; install coreutils there")
        if need_taskset and not found.get("taskset"):
            raise UnavailableError(f"--cpus needs `taskset` on {where}; install util-linux there")
        found["energy"] = remote_energy_status(self.transport)
        self.info = found
        return found

    # -- running ------------------------------------------------------------------------------

    def _ensure_root(self) -> str:
        if self._root is None:
            result = self.transport.run(["mktemp", "-d", f"{self.remote_tmp}/costmeter-XXXXXXXX"], 60.0)
            if not result.ok or not result.stdout.strip():
                raise UnavailableError(f"cannot create a temp folder in {self.remote_tmp} on "
                                       f"{self.transport.description}; check free space and permissions")
            self._root = result.stdout.strip().splitlines()[-1]
        return self._root

    def _upload(self, local: str | None, name: str) -> str | None:
        """Copy a file or folder once per run; the remote path."""
        if local is None:
            return None
        if local not in self._uploaded:
            remote = f"{self._ensure_root()}/{self._make_id()}-{name}"
            self.transport.put(Path(local), remote)
            self._uploaded[local] = remote
        return self._uploaded[local]

    def _upload_artifact(self, local: str | None) -> str | None:
        return upload_artifact(self._upload, local)

    def __call__(self, job: WorkerJob, timeout_s: float) -> WorkerOutcome:
        """Run ``job`` on the device; never raises for what happens there (a failed outcome)."""
        try:
            return self._run(job, timeout_s)
        except (UnavailableError, CommandTimeout, OSError) as exc:
            return WorkerOutcome("failed", f"{self.transport.description}: {exc}")

    def _run(self, job: WorkerJob, timeout_s: float) -> WorkerOutcome:
        root = self._ensure_root()
        run_id = self._make_id()
        config = dict(job.config)
        if DeviceSpec.parse(str(config.get("device", "cpu"))).kind == "ssh":
            config["device"] = "cpu"  # the board runs the cpu adapters on its own CPU
        options = dict(tuple(kv) for kv in config.get("options", []))
        cpus = parse_cpus(options["cpus"]) if options.get("cpus") else []
        artifact = self._upload_artifact(job.artifact_path)
        inputs = self._upload(job.inputs_path, "inputs.npz")
        outputs = f"{root}/{run_id}-outputs.npz" if job.outputs_path else None
        remote_job = replace(job, config=config, artifact_path=artifact, inputs_path=inputs, outputs_path=outputs)
        job_remote, out_remote = f"{root}/{run_id}-job.json", f"{root}/{run_id}-outcome.json"
        with tempfile.TemporaryDirectory(prefix="costmeter-remote-") as tmp:
            local_job = Path(tmp) / "job.json"
            local_job.write_text(json.dumps(asdict(remote_job)))
            self.transport.put(local_job, job_remote)
            pin = ["taskset", "-c", ",".join(str(c) for c in cpus)] if cpus else []
            argv = ["timeout", "-s", "KILL", str(math.ceil(timeout_s)), *pin,
                    *self._python_argv(["-m", "costmeter.harness.worker", job_remote, out_remote])]
            started = time.perf_counter()
            result = self.transport.run(argv, timeout_s + 60.0)
            elapsed = time.perf_counter() - started
            local_out = Path(tmp) / "outcome.json"
            try:
                self.transport.get(out_remote, local_out)
            except FileNotFoundError:
                return WorkerOutcome("failed", self._describe_failure(result.returncode, result.stderr, timeout_s,
                                                                      elapsed))
            data = json.loads(local_out.read_text())
            if outputs and job.outputs_path and data.get("status") == "ok":
                self.transport.get(outputs, Path(job.outputs_path))
        self.transport.run(["rm", "-f", "--", job_remote, out_remote, *([outputs] if outputs else [])], 60.0)
        status, error = data.pop("status"), data.pop("error", None)
        if status == "ok":
            data.setdefault("environment", {})["remote"] = {
                "device": self.transport.description, "python": self.python, "pinned_cpus": cpus or None,
                "pinned_governors": _governors(data["environment"], cpus)}
        return WorkerOutcome(status, error, data)

    def _describe_failure(self, returncode: int, stderr: str, timeout_s: float, elapsed_s: float) -> str:
        """One line for a worker that left no outcome. A signal shows as a negative status (the
        process here was killed) or as 128 + signal (reported by a shell or ``timeout``)."""
        where = self.transport.description
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        tail = f"; last stderr line: {lines[-1][:300]}" if lines else ""
        if returncode == NOT_FOUND_STATUS:
            return f"{self.python!r} or a tool it needs was not found on {where}; pass --remote-python"
        signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
        if signum == signal.SIGKILL and elapsed_s >= timeout_s:
            return f"timed out after {timeout_s:g} s on {where}; raise --timeout or lower --max-time"
        if signum:
            name = signal.Signals(signum).name if signum in signal.Signals.__members__.values() else str(signum)
            hint = {"SIGSEGV": "segmentation fault in the runtime", "SIGABRT": "aborted by the runtime",
                    "SIGKILL": "killed (likely out of memory)"}.get(name, "terminated by a signal")
            return f"worker on {where} died with {name}: {hint}{tail}"
        return f"worker on {where} exited with code {returncode} without a result{tail}"

    def close(self) -> None:
        """Remove the run's folder on the device."""
        if self._root is not None:
            try:
                self.transport.run(["rm", "-rf", "--", self._root], 60.0)
            except (UnavailableError, CommandTimeout):
                pass  # best effort: an unreachable board keeps a folder under its temp dir
            self._root = None
            self._uploaded.clear()


def _governors(environment: dict[str, Any], cpus: list[int]) -> dict[str, Any] | None:
    """Governor and current frequency (kHz) of each pinned CPU, from the worker's capture."""
    per_cpu = (environment.get("cpufreq") or {}).get("per_cpu") or {}
    if not cpus or not per_cpu:
        return None
    return {f"cpu{c}": {k: per_cpu.get(f"cpu{c}", {}).get(k) for k in ("governor", "cur_khz")} for c in cpus}


def remote_energy_status(transport: Transport) -> dict[str, Any]:
    """Whether the device has RAPL counters, read through the transport by the same RAPL reader
    the worker uses (the sysfs root is the device's)."""
    from costmeter.devices.energy.rapl import RaplMeter

    meter = RaplMeter(read_text=transport.read_text, list_dir=transport.list_dir)
    ok, reason = meter.is_available()
    return {"available": ok, "reason": reason}


def check_local_pinning(cpus: list[int], which: Callable[[str], str | None] = shutil.which) -> dict[str, Any]:
    """ConfigError when a CPU is not available to this process, UnavailableError without taskset."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise ConfigError(f"--cpus names CPU {outside[0]}, which this machine does not offer (CPUs available: "
                          f"{','.join(map(str, allowed))}); pick CPUs from that list")
    if which("taskset") is None:
        raise UnavailableError("--cpus needs taskset; install util-linux")
    return {"pinned_cpus": cpus}


LOCAL = "local"


@dataclass
class DeviceExecutors:
    """The runner's ``run_in``: sends each job to its device's executor.

    ``ssh://`` jobs go to a :class:`WorkerExecutor` over SSH; ``adb://`` jobs to the adb executor;
    local jobs with a ``cpus`` option to a WorkerExecutor over the local transport (``taskset``);
    the rest to the plain isolated worker. ``make_transport`` is the seam tests use.
    """

    settings: RemoteSettings = field(default_factory=RemoteSettings)
    local: Callable[[WorkerJob, float], WorkerOutcome] = run_in_worker
    make_transport: Callable[[str, RemoteSettings], Transport] | None = None
    _executors: dict[str, Any] = field(default_factory=dict)

    def executor(self, device: str) -> Any:
        """The executor for ``device`` (created once)."""
        if device not in self._executors:
            self._executors[device] = self._create(device)
        return self._executors[device]

    def _create(self, device: str) -> Any:
        s = self.settings
        kind = DeviceSpec.parse(device).kind if device != LOCAL else LOCAL
        if kind == "adb":
            from costmeter.harness.executors.adb import AdbExecutor

            return AdbExecutor(self._transport(device), s.benchmark_model)
        if kind == "ssh":
            return WorkerExecutor(self._transport(device), s.python, s.pythonpath, s.remote_tmp)
        import costmeter

        root = str(Path(costmeter.__file__).resolve().parent.parent)
        return WorkerExecutor(LocalTransport(), sys.executable, root, tempfile.gettempdir())

    def _transport(self, device: str) -> Transport:
        if self.make_transport is not None:
            return self.make_transport(device, self.settings)
        spec = DeviceSpec.parse(device)
        if spec.kind == "adb":
            from costmeter.devices.remote.adb import AdbTransport

            return AdbTransport(spec.target)
        from costmeter.devices.remote.ssh import SshOptions, SshTransport

        return SshTransport(spec.target, self.settings.ssh or SshOptions())

    def _upload_artifact(self, local: str | None) -> str | None:
        return upload_artifact(self._upload, local)

    def __call__(self, job: WorkerJob, timeout_s: float) -> WorkerOutcome:
        device = str(job.config.get("device", "cpu"))
        options = dict(tuple(kv) for kv in job.config.get("options", []))
        if DeviceSpec.parse(device).remote:
            return self.executor(device)(job, timeout_s)
        if options.get("cpus"):
            return self.executor(LOCAL)(job, timeout_s)
        return self.local(job, timeout_s)

    def preflight(self, configs: list[Any]) -> dict[str, dict[str, Any]]:
        """Check every remote device (and ``--cpus`` here) before anything runs; UnavailableError
        or ConfigError with the fix on the first problem. Returns what each check found."""
        by_device: dict[str, list[Any]] = {}
        for cfg in configs:
            by_device.setdefault(cfg.device, []).append(cfg)
        found: dict[str, dict[str, Any]] = {}
        for device, cfgs in by_device.items():
            pinned = sorted({cpu for c in cfgs if dict(c.options).get("cpus")
                             for cpu in parse_cpus(dict(c.options)["cpus"])})
            kind = DeviceSpec.parse(device).kind
            if kind == "adb":
                found[device] = self.executor(device).preflight()
            elif kind == "ssh":
                found[device] = self.executor(device).preflight(sorted({c.runtime for c in cfgs}), bool(pinned))
            elif pinned:  # local: runtimes were checked by validate(); check the CPUs and taskset
                found[device] = check_local_pinning(pinned)
        return found

    def close(self) -> None:
        """Clean up every executor's remote folder."""
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()


def upload_artifact(upload: Callable[[str, str], str], local: str | None) -> str | None:
    """Upload an artifact with the files it needs beside it (``upload(local path, name)`` returns
    the remote path): an OpenVINO IR (``.xml``) reads its weights from the ``.bin`` of the same
    name, so its folder travels whole."""
    if local is None:
        return None
    path = Path(local)
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        folder = upload(str(path.parent), path.parent.name)
        return f"{folder}/{path.name}"
    return upload(local, path.name)
