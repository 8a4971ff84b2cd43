"""One benchmark in an isolated child process.

The parent writes a job (JSON) to a file and starts ``python -m costmeter.harness.worker JOB OUT``.
The child loads the artifact, samples it with the protocol and writes its outcome (JSON) to OUT.
The parent survives whatever the child does — segfault, SIGKILL, out-of-memory, timeout — and
reports a failure with the reason. Nothing is exchanged over stdout, so libraries that print
cannot corrupt the result.
"""
from __future__ import annotations

import json
import logging
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
    heldout_path: str | None = None  # inputs for the fidelity figures (reduced precision, accuracy)
    heldout_outputs_path: str | None = None


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
        _log_stderr(tmp / "stderr.txt", job)
        if done.timed_out:
            return WorkerOutcome("failed", f"timed out after {timeout_s:g} s; raise --timeout or lower "
                                           "--max-time", wall_s=done.wall_s)
        if out_path.exists() and done.returncode == 0:
            data = json.loads(out_path.read_text())
            return WorkerOutcome(data.pop("status"), data.pop("error", None), data, done.wall_s)
        return WorkerOutcome("failed", done.describe("worker"), wall_s=done.wall_s)


def _log_stderr(err_path: Path, job: WorkerJob) -> None:
    """What the worker's libraries printed, logged at INFO on this module's logger (a ``bench``
    command writes it to its log file; nothing reaches the terminal)."""
    try:
        text = err_path.read_text(errors="replace").strip()
    except OSError:
        return
    if text:
        logging.getLogger(__name__).info("worker for %s on %s printed:\n%s", job.config.get("model"),
                                         job.config.get("runtime"), text[-20_000:])


# ----------------------------------------------------------------------- model inspection


class InspectedSource:
    """A ``pkg.module:function`` model as a child process saw it: what the parent needs
    (id, inputs, content hash, params/MACs, cached inputs, torch reference outputs, the ONNX
    export in the cache) without importing or calling the user's code here.

    ``build_torch`` refuses: user code runs in worker processes only.
    """

    kind = "python"
    onnx_path = None
    fixed_batch = None
    display_name = None

    def __init__(self, reply: dict[str, Any]) -> None:
        from costmeter.models.source import InputSpec

        self.model_id = str(reply["model_id"])
        self.target = str(reply["target"])
        self.inputs = [InputSpec(d["name"], tuple(d["shape"]), d["dtype"], d.get("low"), d.get("high"))
                       for d in reply["inputs"]]
        self._hash = str(reply["content_hash"])
        self._info = dict(reply["info"])
        self.batches: dict[int, dict[str, Any]] = {int(b): e for b, e in reply["batches"].items()}
        self.export_error = reply.get("onnx_error")

    def has_torch(self) -> bool:
        return True

    def content_hash(self) -> str:
        return self._hash

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def batch_error(self, batch: int) -> str | None:
        """Why inputs could not be built at ``batch`` (None when they were)."""
        entry = self.batches.get(int(batch))
        return "inputs were not built at this batch" if entry is None else entry.get("error")

    def example_inputs(self, batch: int, seed: int = 0) -> dict[str, Any]:
        """The inputs the child built at ``batch`` (seed 0), loaded from the inputs cache; other
        seeds and batches (calibration and held-out sets) drawn here from the input specs, exactly
        as the child would (:func:`costmeter.models.source.random_inputs`)."""
        import numpy as np

        from costmeter.models.source import random_inputs

        entry = self.batches.get(int(batch)) or {}
        if seed != 0 or "inputs" not in entry:  # the child's recipe, from the specs it reported
            return random_inputs(self.inputs, batch, seed, self.model_id)
        with np.load(entry["inputs"]) as npz:
            return {name: npz[name] for name in npz.files}

    def reference_outputs(self, batch: int) -> list[Any] | None:
        """Torch eager outputs on the batch's inputs (computed in the child), or None."""
        import numpy as np

        path = (self.batches.get(int(batch)) or {}).get("reference")
        if not path or not Path(path).is_file():
            return None
        with np.load(path) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]

    def build_torch(self) -> Any:
        raise UnsupportedError(self.export_error or f"{self.model_id} is user code; it is built in "
                               "worker processes only")


@dataclass
class InspectFailure:
    """A python model whose inspection child crashed: every job of it becomes a failed result."""

    model_id: str
    error: str


def inspect_python_model(spec: str, batches: list[int], workdir: str, *, export_onnx: bool,
                         parity: bool, timeout_s: float) -> InspectedSource | InspectFailure:
    """Import and call ``spec`` (``pkg.module:function``) in a child started by the launcher:
    build the module, count params and MACs, hash it, build inputs (and torch's reference
    outputs) at each batch, export ONNX when asked. ConfigError when the child reports bad
    input (import error, wrong return type); an :class:`InspectFailure` (signal, exit code and
    last stderr lines) when it crashes, so the run goes on."""
    from costmeter.errors import ConfigError
    from costmeter.harness.launcher import launch, scratch_dir

    target = spec.removeprefix("py:")
    with scratch_dir("inspect-") as tmp:
        request, reply_path = tmp / "request.json", tmp / "reply.json"
        request.write_text(json.dumps({"spec": spec, "batches": sorted(set(batches)),
                                       "workdir": workdir, "onnx": export_onnx, "parity": parity}))
        done = launch([sys.executable, "-m", "costmeter.harness.worker", "--inspect", str(request),
                       str(reply_path)], timeout_s=timeout_s, stderr_path=tmp / "stderr.txt")
        reply = json.loads(reply_path.read_text()) if reply_path.exists() and done.ok else None
    if reply is None:
        return InspectFailure(f"py:{target}", f"building model {target}: "
                              + done.describe("its worker", timeout_s))
    if reply["status"] == "config":
        raise ConfigError(reply["error"])
    if reply["status"] != "ok":
        return InspectFailure(f"py:{target}", f"building model {target}: {reply['error']}")
    return InspectedSource({**reply, "target": target})


def _inspect_main(request_path: str, reply_path: str) -> int:
    """Child side of :func:`inspect_python_model`."""
    import faulthandler

    from costmeter.errors import ConfigError

    faulthandler.enable()  # a crash in user code leaves its Python stack on stderr

    request = json.loads(Path(request_path).read_text())
    try:
        reply = _inspect(request)
    except ConfigError as exc:
        reply = {"status": "config", "error": str(exc)}
    except Exception as exc:  # user code: report what it raised
        reply = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    tmp = Path(reply_path + ".tmp")
    tmp.write_text(json.dumps(reply, default=str))
    tmp.replace(reply_path)
    return 0


def _inspect(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from costmeter.errors import ConfigError
    from costmeter.models.export import export_onnx
    from costmeter.models.source import resolve_model
    from costmeter.workdir import Workdir

    source = resolve_model(request["spec"])
    digest = source.content_hash()
    cache = Workdir.of(request["workdir"]).inputs_cache
    cache.mkdir(parents=True, exist_ok=True)
    batches: dict[str, dict[str, Any]] = {}
    for batch in request["batches"]:
        path, reference = cache / f"{digest}-b{batch}.npz", cache / f"{digest}-b{batch}-torch.npz"
        try:
            if not path.exists():
                staged = path.with_suffix(".tmp.npz")
                np.savez(staged, **source.example_inputs(batch))
                staged.replace(path)
            entry: dict[str, Any] = {"inputs": str(path)}
            if request.get("parity"):
                from costmeter.harness.runner import torch_reference

                outputs = torch_reference(source, str(path))
                np.savez(reference, *[np.asarray(o) for o in outputs or []])
                entry["reference"] = str(reference)
        except MemoryError:
            entry = {"error": f"building inputs at batch {batch} ran out of memory; use a smaller batch"}
        except ConfigError as exc:
            entry = {"error": str(exc)}
        batches[str(batch)] = entry
    reply: dict[str, Any] = {"status": "ok", "model_id": source.model_id, "content_hash": digest,
                             "inputs": [spec.to_dict() for spec in source.inputs],
                             "info": source.info(), "batches": batches}
    if request.get("onnx"):
        try:
            reply["onnx"] = str(export_onnx(source, request["workdir"]))
        except UnsupportedError as exc:
            reply["onnx_error"] = str(exc)
    return reply


# ----------------------------------------------------------------------------- child side


def _child_main(job_path: str, out_path: str) -> int:
    import faulthandler

    import psutil

    faulthandler.enable()

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
    if job.heldout_path and job.heldout_outputs_path:
        from costmeter.harness.quantize.fidelity_run import run_heldout

        run_heldout(session, job.heldout_path, job.heldout_outputs_path, config.batch)
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
    if sys.argv[1] == "--inspect":
        raise SystemExit(_inspect_main(sys.argv[2], sys.argv[3]))
    raise SystemExit(_child_main(sys.argv[1], sys.argv[2]))
