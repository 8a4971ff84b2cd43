"""Runs a list of benchmarks: validates all of them first, then one worker process per
benchmark (and per ``--processes``), writing each result to the store as soon as it finishes."""
from __future__ import annotations

import hashlib
import itertools
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from costmeter.devices.base import get_runtime, require_available
from costmeter.errors import UnavailableError, UnsupportedError
from costmeter.harness.config import RunConfig
from costmeter.harness.launcher import (RunFolder, active_folder, check_stop, stop_on_signals,
                                       sweep_stale)
from costmeter.harness.quantize.fidelity_run import apply_fidelity, heldout_path
from costmeter.harness.quantize.precision import config_precision
from costmeter.harness.worker import (
    InspectedSource,
    InspectFailure,
    WorkerJob,
    WorkerOutcome,
    inspect_python_model,
    run_in_worker,
)
from costmeter.results.spool import SpoolingSink, replay
from costmeter.workdir import Workdir
from costmeter.results.schema import (
    BenchKey,
    EnergyInfo,
    EnergyProvenance,
    Measurement,
    MemoryInfo,
    RunResult,
    Status,
    Validity,
)


class ResultSink(Protocol):
    """Where finished results go (the store, or a list in tests)."""

    def write(self, result: RunResult) -> Any: ...


Progress = Callable[[int, int, RunConfig, "RunResult | None"], None]
_log = logging.getLogger("costmeter.runner")


@dataclass
class PreparedJob:
    """A validated benchmark: its config, model source (None for artifact-less runtimes and
    for a python model whose inspection crashed), runtime. ``failure`` (with ``model_id``) makes
    the job a failed result without running it: the model could not be built."""

    config: RunConfig
    source: Any
    artifact_kind: str
    model_hash: str
    input_shape: tuple[int, ...]
    failure: str | None = None
    model_id: str | None = None


def expand(base: RunConfig, models: list[str], runtimes: list[str], batches: list[int],
           threads: list[int | None], devices: list[str] | None = None) -> list[RunConfig]:
    """The cross product of models x devices x runtimes x batches x threads as RunConfigs."""
    devices = devices or [base.device]
    return [
        replace(base, model=m, device=d, runtime=r, batch=b, threads=t)
        for m, d, r, b, t in itertools.product(models, devices, runtimes, batches, threads)
    ]


def validate(configs: list[RunConfig], free_memory: Callable[[], int] | None = None) -> list[PreparedJob]:
    """Check every config before anything runs: runtime (known, installed, converter), runtime
    options and threads, every model (once), and every batch against its model's inputs and the
    memory free here (``free_memory``: bytes; default the machine's available memory).

    Built-in models and ONNX files are resolved here, and their batches checked, before any
    child starts; ``pkg.module:function`` models are then imported, called and measured (params,
    MACs, inputs) in a child process through the launcher, so user code never runs in this
    process: a child that crashes makes that model's jobs failed results, and the run goes on.
    Raises ConfigError/UnavailableError with a one-line fix; nothing is run or written to the
    store on failure, whichever config is the bad one.
    """
    from costmeter.harness.validation import available_memory_bytes, check_batch, check_model_spec, check_settings
    from costmeter.models.known import builds_torch_for, remember, remembered
    from costmeter.models.source import python_target, resolve_model

    kinds: dict[tuple[str, str], str] = {}
    for cfg in configs:
        if (cfg.device_kind, cfg.runtime) not in kinds:
            kinds[(cfg.device_kind, cfg.runtime)] = check_runtime(cfg)
        check_settings(cfg)
    models = list(dict.fromkeys(c.model for c in configs if kinds[(c.device_kind, c.runtime)] != "none"))
    for model in models:
        check_model_spec(model)
    sources: dict[str, Any] = {m: remembered(resolve_model(m), configs[0].workdir)
                               for m in models if python_target(m) is None}
    free = (free_memory or available_memory_bytes)()
    for cfg in configs:  # artifact-less runtimes, built-in and ONNX models: before any child
        if kinds[(cfg.device_kind, cfg.runtime)] == "none" or cfg.model in sources:
            check_batch(sources.get(cfg.model), cfg, free)
    for model in models:
        if model not in sources:
            sources[model] = _inspect(model, [c for c in configs if c.model == model])
    jobs: list[PreparedJob] = []
    for cfg in configs:
        artifact_kind = kinds[(cfg.device_kind, cfg.runtime)]
        if artifact_kind == "none":
            digest = hashlib.sha256(cfg.model.encode()).hexdigest()[:16]
            jobs.append(PreparedJob(cfg, None, "none", digest, (cfg.batch,)))
            continue
        src = sources[cfg.model]
        if isinstance(src, InspectedSource):
            check_batch(src, cfg, free)
        failure = src.error if isinstance(src, InspectFailure) else \
            src.batch_error(cfg.batch) if isinstance(src, InspectedSource) else None
        if failure is not None:
            digest = hashlib.sha256(cfg.model.encode()).hexdigest()[:16]
            jobs.append(PreparedJob(cfg, None, artifact_kind, digest, (cfg.batch,), failure, src.model_id))
            continue
        shape = (cfg.batch, *src.inputs[0].shape)
        with torch_on_one_thread(builds_torch_for(src, "hash")):
            digest = src.content_hash()
        jobs.append(PreparedJob(cfg, src, artifact_kind, digest, shape))
        remember(src, cfg.workdir)
    return jobs


def _inspect(spec: str, configs: list[RunConfig]) -> InspectedSource | InspectFailure:
    """Inspect a python model in a child at every batch its configs ask for."""
    kinds = {get_runtime(c.device_kind, c.runtime).artifact_kind for c in configs}
    return inspect_python_model(spec, [c.batch for c in configs], configs[0].workdir,
                                export_onnx=bool(kinds & {"onnx", "tvm"}),
                                parity=any(c.check_outputs for c in configs),
                                timeout_s=max(c.timeout_s for c in configs))


@contextmanager
def torch_on_one_thread(needed: bool = True) -> Iterator[None]:
    """Run this process's own torch work inside (building and hashing a model, counting its
    FLOPs, exporting it, the parity reference) on one thread, the caller's setting restored
    after; ``needed=False`` does nothing (and imports no torch). This work is bookkeeping, not a
    measurement, and on a loaded machine torch's thread pool spins against the other jobs:
    building mobilenet_v2 and three forward passes took 18 s on two threads and 0.8 s on one
    (load 15 on 2 CPUs)."""
    if not needed:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_runtime(cfg: RunConfig) -> str:
    """Raise ConfigError/UnavailableError unless ``cfg``'s runtime is known, installed (checked on
    the board itself for remote devices) and has its converter; returns its artifact kind."""
    runtime = get_runtime(cfg.device_kind, cfg.runtime)
    if not cfg.device_spec.remote:  # a remote's runtimes are checked there (preflight)
        require_available(runtime)
    _require_converter(runtime.artifact_kind)
    return runtime.artifact_kind


def _require_converter(artifact_kind: str) -> None:
    """UnavailableError naming the extra when the converter for ``artifact_kind`` is missing."""
    from costmeter.harness.convert.artifacts import CONVERTED_KINDS, converter_problem

    problem = converter_problem(artifact_kind) if artifact_kind in CONVERTED_KINDS else None
    if problem:
        raise UnavailableError(problem)


class Runner:
    """Executes prepared jobs in worker processes and hands each result to ``sink``."""

    def __init__(self, sink: ResultSink | None, workdir: Path, progress: Progress | None = None,
                 run_in: Callable[..., WorkerOutcome] = run_in_worker, accuracy_data: str | None = None) -> None:
        self.sink = sink
        self.accuracy_data = accuracy_data  # labelled .npz: accuracy of every run, fp32 included
        self.workdir = Path(workdir)
        self.progress = progress
        self._run_in = run_in
        self._references: dict[tuple[str, int], list[Any] | None] = {}

    def run(self, jobs: list[PreparedJob], run_id: str | None = None, tag: str | None = None) -> list[RunResult]:
        """Run every job; a failing job becomes a failed/unsupported result and the rest go on.

        The run owns a locked folder under ``Workdir.tmp`` (see :mod:`costmeter.harness.launcher`);
        what dead runs left there is cleaned first. Ctrl-C and SIGTERM stop it cleanly
        (KeyboardInterrupt propagates after the children are killed and the folder removed)."""
        run_id = run_id or new_run_id()
        results: list[RunResult] = []
        sink = self._resilient(run_id)
        try:
            with self.run_folder(run_id):
                for i, job in enumerate(jobs):
                    if self.progress:
                        self.progress(i, len(jobs), job.config, None)
                    result = self.run_one(job, run_id, tag)
                    check_stop()  # a signal whose exception was lost stops the run here
                    if sink is not None:
                        sink.write(result)
                    results.append(result)
                    if self.progress:
                        self.progress(i + 1, len(jobs), job.config, result)
        finally:
            if isinstance(sink, SpoolingSink) and sink.close():
                _log.warning("%d result(s) wait in the spool (%s): the store could not take them; "
                             "`bench results replay` stores them", sink.spooled, sink.path)
        return results

    def _resilient(self, run_id: str) -> Any:
        """The sink, behind retries and the spool when it is a store (``write_once``); the
        spool left by earlier runs is replayed into it first."""
        if self.sink is None or not hasattr(self.sink, "write_once"):
            return self.sink
        spool = Workdir.of(self.workdir).spool
        replay(spool, self.sink)
        return SpoolingSink(self.sink, spool, run_id, log=_log.warning)

    @contextmanager
    def run_folder(self, run_id: str) -> Iterator[RunFolder]:
        """Sweep what dead runs left, then hold this run's folder (and turn SIGTERM/SIGHUP into
        KeyboardInterrupt) until the block ends."""
        tmp = Workdir.of(self.workdir).tmp
        sweep_stale(tmp)
        with stop_on_signals(), RunFolder(tmp, run_id) as folder:
            yield folder

    def run_one(self, job: PreparedJob, run_id: str, tag: str | None = None) -> RunResult:
        """Prepare the artifact, run all processes, assemble and judge the result."""
        cfg = job.config
        started = _now()
        key = make_key(job)
        if job.source is not None:
            from costmeter.models.known import builds_torch_for, remember

            with torch_on_one_thread(builds_torch_for(job.source, "info")):
                info = job.source.info()
            remember(job.source, self.workdir)
        else:
            info = {}
        if job.source is not None and job.source.display_name:
            info["name"] = job.source.display_name
        base = dict(key=key, run_id=run_id, tag=tag or cfg.tag, started_at=started, model_info=info)
        extra: dict[str, Any] = {}
        if job.failure is not None:
            return RunResult(status=Status.FAILED, error=job.failure, finished_at=_now(), **base)
        try:
            t0 = time.perf_counter()
            artifact_path = self._artifact(job, extra)
            extra["export_s"] = time.perf_counter() - t0
            inputs_path = self._inputs(job)
            heldout = heldout_path(job, self.workdir, self.accuracy_data)
        except MemoryError:
            return RunResult(status=Status.FAILED, finished_at=_now(), **base,
                             error=f"building inputs at batch {cfg.batch} ran out of memory; use a smaller batch")
        except UnsupportedError as exc:
            return RunResult(status=Status.UNSUPPORTED, error=str(exc), finished_at=_now(), **base)
        parity = cfg.check_outputs and job.source is not None and job.source.has_torch()
        folder = active_folder()
        outs_dir = folder.path if folder is not None else Workdir.of(self.workdir).tmp
        outs_dir.mkdir(parents=True, exist_ok=True)
        outcomes: list[WorkerOutcome] = []
        heldout_outputs: str | None = None
        for p in range(cfg.processes):
            outputs_path = str(outs_dir / f"{uuid.uuid4().hex}.npz") if parity and p == 0 else None
            heldout_out = str(outs_dir / f"{uuid.uuid4().hex}.npz") if heldout and p == 0 else None
            wjob = WorkerJob(cfg.to_dict(), job.artifact_kind, artifact_path, inputs_path, outputs_path, p,
                             heldout if p == 0 else None, heldout_out)
            outcome = self._run_in(wjob, cfg.timeout_s)
            check_stop()
            outcomes.append(outcome)
            if outcome.status != "ok":
                failed = RunResult(status=Status(outcome.status), error=outcome.error, finished_at=_now(),
                                   extra=extra, **base)
                apply_fidelity(failed, job, None, None)
                return failed
            if outputs_path and Path(outputs_path).exists():
                extra.update(self._parity(job, inputs_path, outputs_path))
            elif outputs_path:
                extra["parity"] = "not compared: the device returned no outputs"
            if heldout_out:
                heldout_outputs = heldout_out
        result = assemble(cfg, outcomes, base, extra, artifact_path, info)
        apply_fidelity(result, job, heldout, heldout_outputs)
        return result

    def _artifact(self, job: PreparedJob, extra: dict[str, Any] | None = None) -> str | None:
        from costmeter.harness.convert.quantize import precision_artifact

        quantized = precision_artifact(job.config.runtime, job.source, self.workdir, job.config.batch,
                                       dict(job.config.options), job.config.device_kind)
        if quantized is not None:
            if extra is not None:
                extra.update(quantized.meta)
            return str(quantized.path)
        if job.artifact_kind == "onnx":
            from costmeter.models.export import export_onnx, onnx_cache_path

            building = job.source.has_torch() and not onnx_cache_path(job.source, self.workdir).exists()
            with torch_on_one_thread(building):
                return str(export_onnx(job.source, self.workdir))
        if job.artifact_kind in ("tflite", "pte", "tvm"):
            from costmeter.harness.convert.artifacts import convert

            converted = convert(job.artifact_kind, job.source, self.workdir, job.config.batch,
                                dict(job.config.options))
            if extra is not None:
                extra.update(converted.meta)
            return str(converted.path)
        return None

    def _inputs(self, job: PreparedJob) -> str | None:
        if job.source is None:
            import numpy as np

            path = Workdir.of(self.workdir).inputs_cache / f"none-b{job.config.batch}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, x=np.zeros((job.config.batch, 1), dtype=np.float32))
            return str(path)
        import numpy as np

        path = Workdir.of(self.workdir).inputs_cache / f"{job.model_hash}-b{job.config.batch}.npz"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **job.source.example_inputs(job.config.batch))
            tmp.replace(path)
        return str(path)

    def _parity(self, job: PreparedJob, inputs_path: str, outputs_path: str) -> dict[str, Any]:
        """Max abs difference of the runtime's outputs against torch eager on the same inputs."""
        import numpy as np

        ref_key = (job.model_hash, job.config.batch)
        if ref_key not in self._references:
            reference = getattr(job.source, "reference_outputs", None)  # computed in a child
            self._references[ref_key] = reference(job.config.batch) if reference is not None \
                else cached_reference(job, inputs_path, self.workdir)
        ref = self._references[ref_key]
        with np.load(outputs_path) as npz:
            got = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        Path(outputs_path).unlink(missing_ok=True)
        if ref is None or len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got)):
            return {"parity": "not compared: output structure differs from torch's"}
        diff = max(float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
                   for r, g in zip(ref, got))
        if config_precision(job.config.options) != "fp32":  # judged by the fidelity figures instead
            return {"max_abs_diff": diff, "parity": "not judged: reduced precision (see fidelity_*)"}
        return {"max_abs_diff": diff, "parity_tolerance": job.config.parity_tolerance,
                "parity_ok": diff <= job.config.parity_tolerance}


def cached_reference(job: PreparedJob, inputs_path: str, workdir: Path | str) -> list[Any] | None:
    """Torch eager outputs of ``job``'s model on its saved inputs, kept in the working folder by
    content hash, batch, torch version and machine: a model compared before needs no torch here."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    tag = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"{torch_version}-{platform.machine()}")
    path = Workdir.of(workdir).cache("reference") / f"{job.model_hash}-b{job.config.batch}-torch{tag}.npz"
    if path.exists():
        try:
            with np.load(path) as npz:
                return [npz[f"arr_{i}"] for i in range(len(npz.files))]
        except (OSError, ValueError):
            pass  # unreadable: computed again below
    with torch_on_one_thread():
        outputs = torch_reference(job.source, inputs_path)
    if outputs is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
        try:
            np.savez(tmp, *[np.asarray(o) for o in outputs])
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return outputs


def torch_reference(source: Any, inputs_path: str) -> list[Any] | None:
    """Torch eager outputs (numpy) of ``source`` on the saved inputs."""
    import numpy as np
    import torch

    from costmeter.devices.cpu.torch_eager import TorchSession

    module = source.build_torch().eval()
    with np.load(inputs_path) as npz:
        args = tuple(torch.from_numpy(npz[n]) for n in npz.files)
    session = TorchSession(module, args)
    try:
        return session.outputs()
    finally:
        session.close()


def assemble(cfg: RunConfig, outcomes: list[WorkerOutcome], base: dict[str, Any], extra: dict[str, Any],
             artifact_path: str | None, info: dict[str, Any]) -> RunResult:
    """Merge per-process outcomes into one judged RunResult: each process judged on its own,
    then the headline (intervals that include the spread between processes), then parity."""
    from costmeter.harness.verdict import ProcessRecord, judge_processes

    datas = [o.data for o in outcomes]
    m = Measurement(
        samples_ns=[d["samples_ns"] for d in datas],
        warmup_count=sum(d["warmup_count"] for d in datas),
        warmup_s=sum(d["warmup_s"] for d in datas),
        sampling_s=sum(d["sampling_s"] for d in datas),
        hit_max_time=any(d["hit_max_time"] for d in datas),
    )
    records = [ProcessRecord(samples, d["hit_max_time"], d.get("blocks", 0), d.get("throttled_blocks", 0),
                             bool(d.get("warmup_cut_short")), d["warmup_count"], d["warmup_s"])
               for samples, d in zip(m.per_process_ns(), datas)]
    verdict = judge_processes(records, cfg.protocol)
    reasons, warnings = verdict.reasons, verdict.warnings
    if extra.get("parity_ok") is False:
        reasons.append(f"outputs differ from torch by {extra['max_abs_diff']:.3g} (tolerance "
                       f"{cfg.parity_tolerance:g}); check the runtime's precision options or --no-parity")
    valid = verdict.valid and not reasons
    median_ns = verdict.summary.median if verdict.summary is not None else float("nan")
    extra["throughput_items_per_s"] = cfg.batch / (median_ns / 1e9) if median_ns > 0 else None
    extra["protocol"] = {"percentiles": list(cfg.protocol.percentiles), "confidence": cfg.protocol.confidence,
                         "max_rel_ci": cfg.protocol.max_rel_ci, "max_cv": cfg.protocol.max_cv,
                         "tail_rel_ci": cfg.protocol.tail_rel_ci, "processes": cfg.processes}
    extra["precision_checks"] = [d.get("precision_checks", 0) for d in datas]
    extra["prepare_session_s"] = max(d["prepare_session_s"] for d in datas)
    extra["prepare_s"] = extra.get("export_s", 0.0) + extra["prepare_session_s"]
    extra["per_process_samples"] = [len(d["samples_ns"]) for d in datas]
    for d in datas:  # facts the runtime reported (compile time, precision used, target, ...)
        extra.update(d.get("extra") or {})
    if any(d["health"] for d in datas):
        extra["health"] = [h for d in datas for h in d["health"]]
    memory = _merge_memory([d["memory"] for d in datas], artifact_path, info)
    energy = _merge_energy([d["energy"] for d in datas], m.count, warnings)
    return RunResult(status=Status.OK, finished_at=_now(), measurement=m, memory=memory, energy=energy,
                     validity=Validity.VALID if valid else Validity.INVALID, reasons=reasons,
                     warnings=warnings, environment=datas[0]["environment"], extra=extra, **base)


def _merge_memory(mems: list[dict[str, Any]], artifact_path: str | None, info: dict[str, Any]) -> MemoryInfo:
    merged: dict[str, Any] = {}
    for mem in mems:
        for k, v in mem.items():
            if v is not None:
                merged[k] = max(merged.get(k, v), v) if k != "baseline_rss_bytes" else min(merged.get(k, v), v)
    if artifact_path and Path(artifact_path).exists():
        merged["artifact_bytes"] = Path(artifact_path).stat().st_size
    merged["param_bytes"] = info.get("param_bytes")
    return MemoryInfo(**{k: v for k, v in merged.items() if k in MemoryInfo.__dataclass_fields__})


def _merge_energy(readings: list[dict[str, Any]], runs: int, warnings: list[str]) -> EnergyInfo:
    prov = {r["provenance"] for r in readings}
    if prov == {"unavailable"} or any(r.get("energy_j") is None for r in readings):
        return EnergyInfo(provenance=EnergyProvenance.UNAVAILABLE, reason=readings[0].get("reason", ""))
    if len(prov) > 1:
        return EnergyInfo(reason=f"processes used different energy sources {sorted(prov)}; not combined")
    total = sum(r["energy_j"] for r in readings)
    domains: dict[str, float] = {}
    for r in readings:
        for k, v in r.get("domains_j", {}).items():
            domains[k] = domains.get(k, 0.0) + v
    ws = [w for r in readings for w in r.get("warnings", [])]
    warnings.extend(ws)
    return EnergyInfo(provenance=EnergyProvenance(prov.pop()), energy_j=total,
                      energy_per_inference_j=total / runs if runs else None,
                      window_s=sum(r["window_s"] for r in readings), domains_j=domains,
                      idle_power_w=readings[0].get("idle_power_w"), warnings=ws)


def make_key(job: PreparedJob) -> BenchKey:
    """The BenchKey of a prepared job (dtype is the compute precision, float32 unless set)."""
    cfg = job.config
    model_id = job.source.model_id if job.source is not None else job.model_id or cfg.model
    return BenchKey(model_id=model_id,
                    model_hash=job.model_hash, device=cfg.device, runtime=cfg.runtime, batch=cfg.batch,
                    input_shape=job.input_shape, dtype=dict(cfg.options).get("precision", "float32"),
                    threads=cfg.threads, options=cfg.options)


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
