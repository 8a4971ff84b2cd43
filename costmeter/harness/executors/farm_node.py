"""The node side of the device farm: the Ray task that runs one benchmark where Ray placed it.

It reports the try to the farm's ledger, then runs the usual harness (``validate`` and ``Runner``:
an isolated worker process; ssh/adb devices through this node's executors) in the device's folder
of the node's working folder, with the node's own thread and accelerator variables (a Ray worker
overrides them), and returns the result as a dict.
"""
from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from costmeter.errors import CostmeterError
from costmeter.harness.config import RunConfig
from costmeter.harness.runner import validate
from costmeter.results.schema import RunResult, Status


def run_job_on_node(config: dict[str, Any], device: str, run_id: str, tag: str | None, job_id: str,
                    node_workdir: str | None, remote: Any, ledger: Any) -> dict[str, Any]:
    """The Ray task: on the node Ray chose, run one benchmark with the harness and return the
    result as a dict (or ``{"error": ...}`` when the node cannot run it)."""
    import os

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    where = {"node_id": node_id, "host": socket.gethostname(), "nice": os.nice(0)}
    ledger.started.remote(job_id, node_id, where["host"], os.getpid())
    try:
        folder = device_folder(node_workdir, device)
        with node_environment():
            result = _run_here(RunConfig.from_dict(config), folder, run_id, tag, remote)
    except CostmeterError as exc:
        return {"error": f"on node {where['host']}: {exc}", **where}
    if result.status is Status.FAILED and not raylet_alive():
        # The node is going down and took the benchmark with it (Ray kills a worker's children when
        # the worker shuts down): that is no result. Exit as a crashed worker, so that Ray retries
        # the job on another node holding the device, as for any node loss.
        os._exit(1)
    return {"result": result.to_dict(), **where}


# Variables a Ray worker sets for each task: OpenMP threads (to the task's CPUs, 1 here) and the
# visible accelerators (none, for a task without GPUs). A benchmark must see the node's own values,
# as `bench run` on that machine would: torch takes its thread count from OMP_NUM_THREADS.
RAY_TASK_VARS = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ONEAPI_DEVICE_SELECTOR", "NEURON_RT_VISIBLE_CORES", "TPU_VISIBLE_CHIPS",
                 "HABANA_VISIBLE_MODULES", "ASCEND_RT_VISIBLE_DEVICES")


def node_variables(raylet_environ: dict[str, str] | None) -> dict[str, str | None]:
    """The values of :data:`RAY_TASK_VARS` a benchmark gets: the node's (its raylet's environment,
    which ``ray start`` inherited), None (unset) where the node had none or is unreadable."""
    return {name: (raylet_environ or {}).get(name) for name in RAY_TASK_VARS}


def raylet_alive() -> bool:
    """Whether this node's raylet (``RAY_RAYLET_PID``) still runs; True when unknown."""
    import os

    import psutil

    try:
        return psutil.Process(int(os.environ["RAY_RAYLET_PID"])).status() != psutil.STATUS_ZOMBIE
    except (KeyError, ValueError):
        return True
    except psutil.NoSuchProcess:
        return False


def _raylet_environ() -> dict[str, str] | None:
    import os

    try:
        raw = Path(f"/proc/{int(os.environ['RAY_RAYLET_PID'])}/environ").read_bytes()
    except (KeyError, ValueError, OSError):
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


@contextlib.contextmanager
def node_environment() -> Iterator[None]:
    """Within the block, this process (and the benchmark processes it starts) sees the node's own
    values of :data:`RAY_TASK_VARS`; Ray's are put back after."""
    import os

    saved = {name: os.environ.get(name) for name in RAY_TASK_VARS}
    try:
        for name, value in node_variables(_raylet_environ()).items():
            _set_env(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    import os

    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def device_folder(node_workdir: str | None, device: str) -> Path:
    """The working folder of one device on this node: ``<workdir>/farm/<device>``. Benchmarks that
    run at once on one node are on different devices, so they never share a cache file (the
    harness rewrites some, such as generated inputs, in place)."""
    from costmeter.workdir import Workdir

    root = Path(node_workdir) if node_workdir else Workdir.default().root.resolve()
    return root / "farm" / "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in device)


def _run_here(cfg: RunConfig, root: Path, run_id: str, tag: str | None, remote: Any) -> RunResult:
    from costmeter.harness.executors.remote import DeviceExecutors, RemoteSettings
    from costmeter.harness.runner import Runner

    cfg = replace(cfg, workdir=str(root))
    executors = DeviceExecutors(remote or RemoteSettings())
    try:
        jobs = validate([cfg])
        executors.preflight([cfg])
        return Runner(None, root, run_in=executors).run(jobs, run_id=run_id, tag=tag)[0]
    finally:
        executors.close()
