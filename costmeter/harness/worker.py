"""One benchmark in an isolated child process.

The parent writes a job (JSON) to a file and starts ``python -m costmeter.harness.worker JOB OUT``.
The child loads the artifact, samples it with the protocol and writes its outcome (JSON) to OUT.
The parent survives whatever the child does — segfault, SIGKILL, out-of-memory, timeout — and
reports a failure with the reason. Nothing is exchanged over stdout, so libraries that print
cannot corrupt the result.
"""
from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from costmeter.errors import CostmeterError, UnsupportedError


@dataclass
class WorkerJob:
    """What the child needs: the run config (dict), the artifact and where its inputs are."""

    config: dict[str, Any]
    artifact_kind: str
    artifact_path: str | None
    inputs_path: str | None
    outputs_path: str | None = None
    process_index: int = 0


@dataclass
class WorkerOutcome:
    """What came back. ``status`` is ok, failed or unsupported; ``error`` says why when not ok."""

    status: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def run_in_worker(job: WorkerJob, timeout_s: float, python: str = sys.executable) -> WorkerOutcome:
    """Run ``job`` in a fresh process started by the launcher (its own process group, killed with
    the parent; files in the run's folder); never raises for anything the child does."""
    from costmeter.harness.launcher import launch, scratch_dir

    with scratch_dir("job-") as tmp:
        job_path = tmp / "job.json"
        out_path = tmp / "outcome.json"
        job_path.write_text(json.dumps(asdict(job)))
        done = launch([python, "-m", "costmeter.harness.worker", str(job_path), str(out_path)],
                      timeout_s=timeout_s, stderr_path=tmp / "stderr.txt")
        if done.timed_out:
            return WorkerOutcome("failed", f"timed out after {timeout_s:g} s; raise --timeout or lower "
                                           "--max-time", wall_s=done.wall_s)
        if out_path.exists() and done.returncode == 0:
            data = json.loads(out_path.read_text())
            return WorkerOutcome(data.pop("status"), data.pop("error", None), data, done.wall_s)
        return WorkerOutcome("failed", done.describe("worker"), wall_s=done.wall_s)


# ----------------------------------------------------------------------------- child side


def _child_main(job_path: str, out_path: str) -> int:
    import psutil

    baseline_rss = psutil.Process().memory_info().rss
    job = WorkerJob(**json.loads(Path(job_path).read_text()))
    try:
        data = _child_measure(job, baseline_rss)
        data["status"] = "ok"
    except UnsupportedError as exc:
        data = {"status": "unsupported", "error": str(exc)}
    except MemoryError:
        data = {"status": "failed", "error": "out of memory in the worker (memory limit reached); "
                                             "raise the limit or use a smaller batch"}
    except CostmeterError as exc:
        data = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # the child reports every failure to the parent instead of dying
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
        data = {"status": "failed", "error": f"{type(exc).__name__}: {exc}{where}"}
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(out_path)
    return 0


def _child_measure(job: WorkerJob, baseline_rss: int) -> dict[str, Any]:
    from costmeter.devices.base import (
        Artifact,
        EnvironmentProbe,
        IdlePowerMeter,
        InfoSession,
        MemoryProbe,
        Runtime,
        SessionOptions,
        get_runtime,
    )
    from costmeter.harness.config import RunConfig
    from costmeter.harness.environment import capture
    from costmeter.harness.protocol import sample

    config = RunConfig.from_dict(job.config)
    if config.memory_limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (config.memory_limit_bytes, config.memory_limit_bytes))
    inputs: dict[str, Any] = {}
    if job.inputs_path:
        import numpy as np

        with np.load(job.inputs_path) as npz:
            inputs = {name: npz[name] for name in npz.files}
    module = None
    if job.artifact_kind == "torch":
        from costmeter.models.source import resolve_model

        module = resolve_model(config.model).build_torch()
    runtime = get_runtime(config.device_kind, config.runtime)
    if not isinstance(runtime, Runtime):
        raise UnsupportedError(f"{config.runtime} on {config.device} runs through its device's "
                               "executor, not in a worker session")
    t0 = time.perf_counter()
    session = runtime.prepare(
        Artifact(kind=job.artifact_kind, inputs=inputs, path=job.artifact_path, module=module),
        SessionOptions(threads=config.threads, device_index=_device_index(config.device), options=config.options),
    )
    prepare_s = time.perf_counter() - t0
    meter, energy_reason = make_energy_meter(config.device)
    idle_power_w = None
    if isinstance(meter, IdlePowerMeter):
        idle_power_w = meter.idle_power_w(0.5)  # measured before the run, so energy above idle can be told
    outcome = sample(session, config.protocol, energy_meter=meter)
    peak_rss = peak_rss_bytes()
    memory: dict[str, Any] = {
        "peak_rss_bytes": peak_rss,
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_above_baseline_bytes": max(0, peak_rss - baseline_rss),
    }
    if isinstance(session, MemoryProbe):
        memory.update(session.memory())
    if job.outputs_path:
        import numpy as np

        outs = session.outputs()
        np.savez(job.outputs_path, *[np.asarray(o) for o in outs])
    environment = capture(threads=config.threads)
    if isinstance(session, EnvironmentProbe):
        environment["device"] = session.environment()
    runtime_info = session.info() if isinstance(session, InfoSession) else {}
    session.close()
    energy = asdict(outcome.energy) if outcome.energy is not None else {
        "provenance": "unavailable", "energy_j": None, "window_s": outcome.sampling_s,
        "domains_j": {}, "reason": energy_reason, "warnings": []}
    energy["idle_power_w"] = idle_power_w
    return {
        "samples_ns": outcome.samples_ns,
        "warmup_count": outcome.warmup_count,
        "warmup_s": outcome.warmup_s,
        "sampling_s": outcome.sampling_s,
        "hit_max_time": outcome.hit_max_time,
        "warmup_cut_short": outcome.warmup_cut_short,
        "precision_checks": outcome.precision_checks,
        "blocks": outcome.blocks,
        "throttled_blocks": outcome.throttled_blocks,
        "health": outcome.health,
        "energy": energy,
        "memory": memory,
        "prepare_session_s": prepare_s,
        "environment": environment,
        "extra": runtime_info,
    }


def peak_rss_bytes(status_path: str = "/proc/self/status") -> int:
    """Peak resident memory of this process image, in bytes.

    Reads ``VmHWM`` (the high-water mark of this address space, which starts afresh at exec).
    ``getrusage``'s ``ru_maxrss`` is only the fallback: Linux carries it across fork and exec, so a
    worker started from a parent holding torch would report the parent's size.
    """
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _device_index(device: str) -> int:
    from costmeter.harness.config import DeviceSpec

    return DeviceSpec.parse(device).index


def make_energy_meter(device: str) -> tuple[Any, str]:
    """The energy meter for a device, or (None, reason) when no counter can be read."""
    from costmeter.harness.config import DeviceSpec

    spec = DeviceSpec.parse(device)
    kind, index = spec.kind, spec.index
    if kind == "cpu":
        from costmeter.devices.energy.rapl import RaplMeter

        meter: Any = RaplMeter()
    elif kind == "cuda":
        from costmeter.devices.energy.nvml import NvmlEnergyMeter

        meter = NvmlEnergyMeter(device_index=index)
    else:
        return None, f"device kind {kind!r} has no energy counter"
    ok, reason = meter.is_available()
    return (meter, "") if ok else (None, reason)


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1], sys.argv[2]))
