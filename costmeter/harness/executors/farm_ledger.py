"""The device farm's bookkeeping: device resource names, the job ledger and ``farm_status``.

Ray schedules, retries and accounts resources; this module only *records* what the farm's
drivers submitted, so that ``bench farm status`` can list queued, running and finished costmeter
jobs without Ray's dashboard (its state API needs ``ray[default]``). The ledger is one small
named, detached actor (:data:`LEDGER_NAME` in namespace :data:`NAMESPACE`) on the head node:

- a driver registers each job as ``queued`` before submitting its task;
- the task, once Ray has placed it on a node, reports ``running`` with its node (every attempt,
  so a job retried after a node loss counts its attempts);
- the driver marks it ``finished`` (with the result's status) or ``failed`` when it collects it.

The ledger keeps every unfinished job and the last :data:`MAX_FINISHED` finished ones. Nodes and
their devices come from Ray itself (``ray.nodes()``, ``ray.available_resources()``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

RESOURCE_PREFIX = "costmeter-device:"
LEDGER_NAME = "costmeter-farm-ledger"
NAMESPACE = "costmeter"
HEAD_RESOURCE = "node:__internal_head__"
MAX_FINISHED = 2000
UNFINISHED = ("queued", "running")


def device_resource(device: str) -> str:
    """The Ray custom resource that stands for ``device``: ``costmeter-device:<device>``."""
    return RESOURCE_PREFIX + device


def resource_device(resource: str) -> str | None:
    """Inverse of :func:`device_resource`; None for resources that are not costmeter devices."""
    return resource[len(RESOURCE_PREFIX):] if resource.startswith(RESOURCE_PREFIX) else None


class Ledger:
    """The state of every farm job; runs as a Ray actor (see the module docstring).

    Each record: ``job_id, run_id, label, device, state`` (queued | running | finished | failed),
    ``status`` (the result's status once finished), ``node_id``, ``host``, ``pid`` (the Ray worker
    of the latest attempt), ``attempts``, ``error`` and the UNIX times ``submitted_s``,
    ``started_s``, ``finished_s``.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}

    def submitted(self, run_id: str, jobs: list[dict[str, str]]) -> int:
        """Record ``jobs`` (each ``{"job_id", "label", "device"}``) as queued; returns how many. A job
        whose try already reported (calls from different processes are not ordered) keeps its state."""
        now = time.time()
        for job in jobs:
            rec = self._jobs.setdefault(job["job_id"], _record(job["job_id"]))
            rec.update(job, run_id=run_id, submitted_s=now)
        return len(jobs)

    def started(self, job_id: str, node_id: str, host: str, pid: int) -> int:
        """A try of ``job_id`` started on ``node_id``; returns the try number (1-based), 0 when the
        job has finished already."""
        rec = self._jobs.setdefault(job_id, _record(job_id))
        if rec["state"] not in UNFINISHED:
            return 0
        rec.update(state="running", node_id=node_id, host=host, pid=pid, started_s=time.time(),
                   attempts=rec["attempts"] + 1)
        return int(rec["attempts"])

    def finished(self, job_id: str, status: str, error: str | None = None) -> dict[str, Any]:
        """``job_id`` ended: ``finished`` with the result's ``status`` (ok/failed/unsupported), or
        ``failed`` when no result came back (``status == "lost"``). Returns the record."""
        rec = self._jobs.setdefault(job_id, _record(job_id))
        tries = rec["attempts"] if status == "lost" else max(1, rec["attempts"])  # a result means a try ran
        rec.update(state="failed" if status == "lost" else "finished", status=status, error=error,
                   finished_s=time.time(), attempts=tries)
        self._prune()
        return dict(rec)

    def jobs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded job (of ``run_id`` when given), in submission order."""
        return [dict(r) for r in self._jobs.values() if run_id is None or r["run_id"] == run_id]

    def _prune(self) -> None:
        done = [k for k, r in self._jobs.items() if r["state"] not in UNFINISHED]
        for key in done[:max(0, len(done) - MAX_FINISHED)]:
            del self._jobs[key]


def _record(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "label": job_id, "device": None, "run_id": None, "state": "queued", "status": None,
            "node_id": None, "host": None, "pid": None, "attempts": 0, "error": None, "submitted_s": None,
            "started_s": None, "finished_s": None}


def ledger_actor(create: bool = True) -> Any:
    """The ledger's actor handle (created on the head node when ``create``); None when it does not
    exist and ``create`` is False. Needs a connected Ray driver."""
    import ray

    if not create:
        try:
            return ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
        except ValueError:
            return None
    on_head = {HEAD_RESOURCE: 0.001} if HEAD_RESOURCE in ray.cluster_resources() else {}
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(Ledger)
    return actor_cls.options(name=LEDGER_NAME, namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True, resources=on_head).remote()


@dataclass(frozen=True)
class FarmNode:
    """One Ray node: its id, IP, liveness, whether it is the head, and the devices it declares
    (device name -> label of the costmeter job running on it, or None when free)."""

    node_id: str
    address: str
    alive: bool
    is_head: bool
    devices: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class FarmStatus:
    """What ``bench farm status`` shows: nodes, devices (total and free over the live nodes) and
    the ledger's jobs."""

    address: str
    nodes: list[FarmNode]
    devices: dict[str, dict[str, float]]
    jobs: list[dict[str, Any]]

    def counts(self) -> dict[str, int]:
        """How many jobs are queued, running, finished and failed."""
        out = {"queued": 0, "running": 0, "finished": 0, "failed": 0}
        for job in self.jobs:
            out[job["state"]] = out.get(job["state"], 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``bench farm status --json``)."""
        return {"address": self.address, "nodes": [asdict(n) for n in self.nodes], "devices": self.devices,
                "jobs": self.jobs, "counts": self.counts()}


def held_devices() -> dict[str, list[str]]:
    """Device name -> ids of the live nodes that declare it (needs a connected Ray driver)."""
    import ray

    held: dict[str, list[str]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for resource in node.get("Resources", {}):
            device = resource_device(resource)
            if device is not None:
                held.setdefault(device, []).append(node["NodeID"])
    return held


def collect_status(address: str) -> FarmStatus:
    """The farm's status, read through the connected Ray driver (see :func:`farm_status`)."""
    import ray

    ledger = ledger_actor(create=False)
    jobs = ray.get(ledger.jobs.remote(), timeout=30) if ledger is not None else []
    busy = {(j["node_id"], j["device"]): j["label"] for j in jobs if j["state"] == "running"}
    nodes: list[FarmNode] = []
    totals: dict[str, float] = {}
    for node in ray.nodes():
        resources = node.get("Resources", {})
        devices = {d: busy.get((node["NodeID"], d)) for d in sorted(filter(None, map(resource_device, resources)))}
        alive = bool(node.get("Alive"))
        if alive:
            for device in devices:
                totals[device] = totals.get(device, 0.0) + float(resources[device_resource(device)])
        nodes.append(FarmNode(node["NodeID"], str(node.get("NodeManagerAddress", "")), alive,
                              HEAD_RESOURCE in resources, devices))
    free = ray.available_resources()
    devices = {d: {"total": t, "free": float(free.get(device_resource(d), 0.0))} for d, t in sorted(totals.items())}
    nodes.sort(key=lambda n: (not n.alive, not n.is_head, n.address, n.node_id))
    return FarmStatus(address, nodes, devices, jobs)
