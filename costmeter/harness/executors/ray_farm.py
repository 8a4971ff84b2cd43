"""The device farm: run benchmarks on the Ray nodes that hold their devices.

Ray is the engine; nothing here schedules. Every device a node can benchmark is a Ray custom
resource of capacity 1 named ``costmeter-device:<device>`` (``cpu``, ``cpu@lab-xeon``, ``cuda:0``,
``ssh://pi@board1``, ``adb://R58M``), declared when the node starts (``bench farm node --device ...``
runs ``ray start --resources ...``; see :func:`node_start_argv`). Each benchmark is one Ray task
asking for ``{costmeter-device:<device>: 1}`` and no CPU, so Ray places it on a node that holds the
device and never runs two benchmarks on one device at once. On that node the task runs the usual
harness (``validate`` + ``Runner``: an isolated worker process; ssh/adb devices through the node's
executors) and returns the result; the driver collects results with ``ray.wait`` as they finish and
writes each one to the one sink (the store) at once.

A farm device name may carry a label after ``@`` (``cpu@lab-xeon``, ``cuda:0@gpu2``) naming *which*
machine's CPU or GPU. In a RunConfig the label is the ``machine`` option (``device="cpu"``,
``options=(("machine", "lab-xeon"),)``; :func:`on_farm_device` builds it from the name), so it is
part of the result's key: results of different machines never share a key. The runtimes ignore it.
``ssh://`` and ``adb://`` devices name one board already and take no label.

Failures: a node lost mid-job makes Ray retry the task (``max_retries``) on a live node holding the
same device; after the last try the job is stored as ``failed`` with the reason and the number of
tries. A job whose device no live node holds any more waits ``node_wait_s`` for a node to come
back, then is cancelled and stored as ``failed``. Every job yields exactly one stored result.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from costmeter.errors import ConfigError, UnavailableError
from costmeter.harness.config import DeviceSpec, RunConfig
from costmeter.harness.executors.farm_ledger import (NAMESPACE, FarmStatus, collect_status, device_resource,
                                                     held_devices, ledger_actor)
from costmeter.harness.executors.farm_node import run_job_on_node
from costmeter.harness.runner import PreparedJob, ResultSink, make_key, new_run_id, validate
from costmeter.results.schema import RunResult, Status

Progress = Callable[[int, int, "RunConfig | None", "RunResult | None"], None]
CLIENT_PORT = 10001
GCS_PORT = 6379
CONNECT_TIMEOUT_S = 5.0
LOCAL_KINDS = ("cpu", "cuda", "fake")
MACHINE_OPTION = "machine"


@dataclass(frozen=True)
class FarmAddress:
    """Where the farm is: ``local`` (start a Ray cluster here), ``auto`` (the one running here),
    ``client`` (``ray://HOST:PORT``, Ray Client) or ``cluster`` (``HOST:PORT``, the head's GCS)."""

    kind: str
    host: str | None = None
    port: int | None = None

    @property
    def ray_address(self) -> str | None:
        """What ``ray.init(address=...)`` is given (``local`` always starts a new cluster, even where
        ``ray start`` left one running)."""
        if self.kind in ("local", "auto"):
            return self.kind
        prefix = "ray://" if self.kind == "client" else ""
        return f"{prefix}{self.host}:{self.port}"


def parse_farm_address(text: str) -> FarmAddress:
    """``local`` | ``auto`` | ``ray://HOST[:PORT]`` | ``HOST[:PORT]``; ConfigError when malformed."""
    spec = str(text).strip()
    if spec in ("local", "auto"):
        return FarmAddress(spec)
    kind, rest = ("client", spec[6:]) if spec.startswith("ray://") else ("cluster", spec)
    host, sep, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if "://" in rest or "/" in rest or not host or (sep and not port.isdigit()):
        raise ConfigError(f"malformed farm address {text!r}; use local, ray://HEAD:{CLIENT_PORT} (Ray Client) "
                          f"or HEAD:{GCS_PORT} (the head's address)")
    return FarmAddress(kind, host, int(port) if sep else (CLIENT_PORT if kind == "client" else GCS_PORT))


def split_device(device: str) -> tuple[str, str | None]:
    """``cpu@lab1`` -> (``cpu``, ``lab1``); ``ssh://pi@b1`` -> (``ssh://pi@b1``, None). ConfigError when
    the device (without its label) is unknown or the label is malformed."""
    if "://" in device:
        DeviceSpec.parse(device)
        return device, None
    base, sep, label = device.partition("@")
    if sep:
        _check_label(label, device)
    DeviceSpec.parse(base)
    return base, label or None


def _check_label(label: str, device: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", label):
        raise ConfigError(f"malformed machine label in {device!r}; use up to 64 letters, digits, '-', '_' or '.', "
                          "e.g. cpu@lab-xeon")


def farm_device(cfg: RunConfig) -> str:
    """The farm device a config needs: its device, with its ``machine`` option as the label."""
    label = dict(cfg.options).get(MACHINE_OPTION)
    if not label:
        return cfg.device
    if cfg.device_spec.remote:
        raise ConfigError(f"-o {MACHINE_OPTION}= applies to cpu and cuda devices; {cfg.device} names its "
                          "board already")
    _check_label(label, f"{cfg.device}@{label}")
    return f"{cfg.device}@{label}"


def on_farm_device(cfg: RunConfig, device: str) -> RunConfig:
    """``cfg`` on the farm device ``device`` (``cpu@lab1`` -> device ``cpu``, option machine=lab1)."""
    base, label = split_device(device)
    options = {k: v for k, v in cfg.options if k != MACHINE_OPTION}
    if label:
        options[MACHINE_OPTION] = label
    return replace(cfg, device=base, options=tuple(options.items()))


def node_resources(devices: list[str] | tuple[str, ...]) -> dict[str, float]:
    """The Ray resources a node declares for ``devices``: ``{costmeter-device:<d>: 1}`` each."""
    for device in devices:
        split_device(device)
    return {device_resource(d): 1 for d in dict.fromkeys(devices)}


def node_start_argv(devices: list[str] | tuple[str, ...], address: str | None = None, head: bool = False,
                    port: int = GCS_PORT, num_cpus: int | None = None) -> list[str]:
    """The ``ray start`` command that starts a farm node holding ``devices`` (a head with ``head``,
    else a node joining ``address``)."""
    import json

    if head == bool(address):
        raise ConfigError("give either --head (start the farm's head) or --address HEAD:PORT (join it)")
    argv = ["ray", "start", "--head", f"--port={port}"] if head else ["ray", "start", f"--address={address}"]
    argv.append("--resources=" + json.dumps(node_resources(devices), sort_keys=True))
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    return argv


CLIENT_TRIES = 3  # Ray Client's per-driver server on the head can fail to start; it is started anew per try


def _init_with_retries(ray: Any, where: FarmAddress, kwargs: dict[str, Any]) -> None:
    """``ray.init`` at ``where``; a Ray Client connection whose server-side start failed
    ("Initialization failure from server") is tried again, up to CLIENT_TRIES times, 2 s apart."""
    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=where.ray_address, **kwargs)
            return
        except (ConnectionError, RuntimeError) as exc:
            client = str(where.ray_address).startswith("ray://")
            if not client or "Initialization failure from server" not in str(exc) or attempt == CLIENT_TRIES:
                raise
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(2.0)


@contextlib.contextmanager
def farm_session(address: str, devices: list[str] | tuple[str, ...] = ()) -> Iterator[FarmAddress]:
    """Connect this process to the farm for the ``with`` block (a driver already connected is
    reused and left connected). ``local`` starts a one-node cluster holding ``devices``.
    UnavailableError (one line, with the fix) when the head cannot be reached."""
    ray = import_ray()
    where = parse_farm_address(address)
    if ray.is_initialized():
        yield where
        return
    kwargs: dict[str, Any] = dict(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    if where.kind == "local":
        kwargs.update(resources=_local_resources(devices), include_dashboard=False)
    elif where.kind != "auto":
        _require_reachable(where)
    try:
        _init_with_retries(ray, where, kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        first = " ".join(lines[:2])[:200]
        raise UnavailableError(f"cannot connect to the Ray farm at {address!r} ({first}); start it with "
                               "`bench farm node --head --device ...` or fix the farm address") from None
    try:
        yield where
    finally:
        ray.shutdown()


def import_ray() -> Any:
    """The ``ray`` module, or UnavailableError naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise UnavailableError(f"the device farm needs Ray ({exc}); pip install 'costmeter[farm]'") from None
    return ray


def _local_resources(devices: list[str] | tuple[str, ...]) -> dict[str, float]:
    """A local farm holds the run's devices; two names for one local device would let two
    benchmarks share it, so they are refused."""
    seen: dict[str, str] = {}
    for device in dict.fromkeys(devices):
        base = split_device(device)[0]
        if DeviceSpec.parse(base).kind in LOCAL_KINDS and seen.setdefault(base, device) != device:
            raise ConfigError(f"a local farm has one {base}: {seen[base]!r} and {device!r} would share it; "
                              "use one name, or a farm of several machines")
    return node_resources(list(devices))


def _require_reachable(where: FarmAddress) -> None:
    try:
        socket.create_connection((where.host, where.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UnavailableError(f"cannot reach the Ray head at {where.host}:{where.port} ({reason}); start it "
                               f"(`bench farm node --head --device ...`) or fix the farm address") from None


def farm_status(address: str = "auto") -> FarmStatus:
    """Nodes, their devices (busy or free) and the farm's queued, running and finished jobs."""
    with farm_session(address):
        return collect_status(address)


def devices_available(address: str, wanted: list[str]) -> set[str]:
    """The farm devices a run at ``address`` can use: for ``local`` the ``wanted`` ones (a local farm
    starts holding them; ConfigError when two of them name one local device), else every device a
    live node holds. UnavailableError (one line) when Ray is missing or the head cannot be reached."""
    if parse_farm_address(address).kind == "local":
        import_ray()
        _local_resources(wanted)
        return set(wanted)
    return set(farm_status(address).devices)


def require_devices(devices: list[str], address: str = "auto") -> dict[str, list[str]]:
    """ConfigError (one line) naming the first of ``devices`` (farm device names) that no live node
    of the connected farm holds; else device -> node ids."""
    held = held_devices()
    for device in devices:
        if device not in held:
            have = ", ".join(sorted(held)) or "none"
            raise ConfigError(f"no node of the farm at {address} holds device {device!r} (devices held: "
                              f"{have}); start a node with `bench farm node --device {device}` or drop it")
    return held


def task_options(device: str, max_retries: int) -> dict[str, Any]:
    """Ray options of a benchmark's task: one unit of its device and no CPU (the device is what is
    exclusive), Ray's retries on node loss only (an error in a benchmark is a result, not retried),
    and a worker at the normal priority: Ray starts its workers at niceness 15, which a benchmark's
    process would inherit and run slower than `bench run` on a busy node."""
    return {"resources": {device_resource(device): 1}, "num_cpus": 0, "max_retries": max_retries,
            "retry_exceptions": False, "runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}}}


@dataclass
class FarmJob:
    """One benchmark on the farm: its config, the farm device it needs, the driver's prepared job
    (for its key) and its ledger id."""

    config: RunConfig
    device: str
    prepared: PreparedJob
    job_id: str


def run_on_farm(configs: list[RunConfig], address: str, sink: ResultSink | None, workdir: Path | str, *,
                max_retries: int = 2, progress: Progress | None = None, run_id: str | None = None,
                tag: str | None = None, remote: Any = None, node_workdir: str | None = None,
                node_wait_s: float = 60.0, poll_s: float = 0.5) -> list[RunResult]:
    """Run ``configs`` on the farm at ``address``; write each result to ``sink`` as it finishes.

    Everything is checked before anything runs (configs, the head, every device held by a live
    node): ConfigError/UnavailableError with a one-line fix, nothing written. A node lost mid-job
    is retried by Ray up to ``max_retries`` times on nodes holding the same device; then the job
    is stored as failed. ``remote`` (RemoteSettings) configures ssh/adb devices on the nodes;
    ``node_workdir`` is the nodes' working folder (default: theirs; ``workdir`` for ``local``).
    Returns the results in the order of ``configs``.
    """
    if max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0 (got {max_retries})")
    where = parse_farm_address(address)
    devices = [farm_device(c) for c in configs]
    jobs = [FarmJob(c, d, p, uuid.uuid4().hex[:16]) for c, d, p in zip(configs, devices, validate(configs))]
    if where.kind == "local" and node_workdir is None:
        node_workdir = str(Path(workdir).resolve())
    with farm_session(address, devices):
        require_devices(devices, address)
        driver = _Driver(jobs, run_id or new_run_id(), tag, sink, progress, max_retries, remote,
                         node_workdir, node_wait_s, poll_s)
        return driver.run()


class _Driver:
    """Submits one Ray task per job, then collects, judges and writes results as they finish."""

    def __init__(self, jobs: list[FarmJob], run_id: str, tag: str | None, sink: ResultSink | None,
                 progress: Progress | None, max_retries: int, remote: Any, node_workdir: str | None,
                 node_wait_s: float, poll_s: float) -> None:
        self.jobs, self.run_id, self.tag, self.sink, self.progress = jobs, run_id, tag, sink, progress
        self.max_retries, self.remote, self.node_workdir = max_retries, remote, node_workdir
        self.node_wait_s, self.poll_s = node_wait_s, poll_s
        self.results: dict[str, RunResult] = {}

    def run(self) -> list[RunResult]:
        import ray

        ledger = ledger_actor()
        # fire and forget: the ledger records, it never holds a job back
        ledger.submitted.remote(self.run_id, [{"job_id": j.job_id, "label": make_key(j.prepared).label(),
                                               "device": j.device} for j in self.jobs])
        task = ray.remote(run_job_on_node)
        pending = {task.options(**task_options(j.device, self.max_retries), name=f"costmeter {j.config.model}")
                   .remote(j.config.to_dict(), j.device, self.run_id, self.tag, j.job_id, self.node_workdir,
                           self.remote, ledger): j for j in self.jobs}
        if self.progress:
            self.progress(0, len(self.jobs), None, None)
        missing_since: dict[str, float] = {}
        checked = time.monotonic()
        try:
            while pending:
                ready, rest = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    self._finish(pending.pop(ref), self._collect(ref), ledger)
                if time.monotonic() - checked >= min(5.0, max(0.5, self.node_wait_s / 4)):
                    checked = time.monotonic()
                    self._fail_stranded(pending, missing_since, ledger)
        finally:
            for ref, job in pending.items():  # interrupted (Ctrl-C, a sink that raised): stop the rest
                ray.cancel(ref, force=True)
                ledger.finished.remote(job.job_id, "lost", "cancelled: the driver stopped")
        return [self.results[j.job_id] for j in self.jobs]

    def _collect(self, ref: Any) -> dict[str, Any]:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            kind = type(exc).__name__
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), kind)
            first = first.split(". ")[0][:300]  # Ray's first sentence; the rest is its own advice
            system = isinstance(exc, (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError))
            return {"lost": f"{kind}: {first}", "system": system}

    def _finish(self, job: FarmJob, out: dict[str, Any], ledger: Any) -> None:
        farm = {k: out[k] for k in ("node_id", "host", "nice") if k in out}
        result = RunResult.from_dict(out["result"]) if "result" in out else None
        if result is not None:
            status, error = result.status.value, result.error
        else:
            status, error = ("lost", out["lost"]) if "lost" in out else ("failed", out.get("error", "no result"))
        farm["attempts"] = int(_ledger_finished(ledger, job.job_id, status, error).get("attempts") or 0)
        if status == "lost":
            if out.get("system"):  # Ray raised it after its last retry: it made them all
                farm["attempts"] = max(farm["attempts"], self.max_retries + 1)
            error = (f"no result after {farm['attempts']} tries on nodes holding {job.device} "
                     f"(max_retries={self.max_retries}); last: {error}; check the nodes with "
                     "`bench farm status` and rerun the job")
        if result is None:
            result = self._failed(job, str(error))
        self._write(job, result, farm)

    def _fail_stranded(self, pending: dict[Any, FarmJob], missing_since: dict[str, float], ledger: Any) -> None:
        """Jobs whose device no live node has held for ``node_wait_s`` are cancelled and failed."""
        import ray

        held = held_devices()
        now = time.monotonic()
        for ref, job in list(pending.items()):
            if job.device in held:
                missing_since.pop(job.device, None)
                continue
            since = missing_since.setdefault(job.device, now)
            if now - since < self.node_wait_s:
                continue
            ray.cancel(ref, force=True)
            del pending[ref]
            reason = (f"no live node has held device {job.device} for {self.node_wait_s:g} s (its node "
                      "was lost); restart that node (`bench farm node`) and rerun the job")
            record = _ledger_finished(ledger, job.job_id, "lost", reason)
            self._write(job, self._failed(job, reason), {"attempts": int(record.get("attempts") or 0)})

    def _failed(self, job: FarmJob, reason: str) -> RunResult:
        now = _now()
        return RunResult(key=make_key(job.prepared), status=Status.FAILED, run_id=self.run_id, started_at=now,
                         finished_at=now, error=reason, tag=self.tag or job.config.tag)

    def _write(self, job: FarmJob, result: RunResult, farm: dict[str, Any]) -> None:
        if job.job_id in self.results:
            raise RuntimeError(f"farm job {job.job_id} finished twice")  # a bug, never a user error
        result.extra["farm"] = {**farm, "job_id": job.job_id, "max_retries": self.max_retries}
        if self.sink is not None:
            self.sink.write(result)
        self.results[job.job_id] = result
        if self.progress:
            self.progress(len(self.results), len(self.jobs), job.config, result)


def _ledger_finished(ledger: Any, job_id: str, status: str, error: str | None) -> dict[str, Any]:
    """Tell the ledger a job ended; its record ({} when the ledger cannot answer: it only records)."""
    import ray

    try:
        return ray.get(ledger.finished.remote(job_id, status, error), timeout=30) or {}
    except (ray.exceptions.RayError, TimeoutError):
        return {}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
