"""A probe's kernel as a protocol Session, and its judged, storable result.

A machine probe (a GEMM for peak FLOP/s, a copy for bandwidth, a pass over a working set for the
cache curve) is measured like any benchmark: :class:`ProbeSession` wraps the kernel so that
:func:`costmeter.harness.protocol.sample` (one kernel) or
:func:`costmeter.harness.protocol.sample_group` (several, round-robin) can warm it up and sample
it until the median is pinned or ``max_time_s``; :func:`probe_result` judges the samples with
:mod:`costmeter.harness.verdict` and returns a RunResult with the raw samples, the environment,
validity, reasons and warnings, ready for the store.

Stored identity (:meth:`ProbeSpec.key`): model id ``probe:<name>``, the backend as the runtime,
sizes and dtype as options, so that ``bench results list`` finds a probe and the history
compares it with its earlier runs. The work one run does (``work_per_run`` FLOP or bytes) and
the rates derived from the samples (fastest run, median and its interval) are in ``extra``.

Usage::

    spec = ProbeSpec("cache-read", "numpy", work_per_run=16e6, work_unit="B",
                     options=(("working_set_mb", "16"),))
    result = measure_probe(spec, ProbeSession(lambda: read(buffers)), probe_protocol())
    store.write(result)
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from costmeter.harness.config import ProtocolConfig
from costmeter.harness.protocol import Clock, ProtocolOutcome, sample
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity

PROBE_PREFIX = "probe:"
PROBE_TAG = "probe"
PROBE_VERSION = 1  # bump when a probe's kernel changes what it measures (a new model hash)
WORK_UNITS = {"FLOP": "FLOP/s", "B": "B/s"}


class ProbeSession:
    """``kernel()`` as a Session. ``synchronize`` (e.g. ``torch.cuda.synchronize``) makes the
    session asynchronous: the protocol then calls it inside the timed region; without it the
    kernel is synchronous. ``close`` releases buffers."""

    def __init__(self, kernel: Callable[[], Any], *, synchronize: Callable[[], Any] | None = None,
                 close: Callable[[], Any] | None = None) -> None:
        self._kernel = kernel
        self._sync = synchronize
        self._close = close
        self.synchronous = synchronize is None

    def run_once(self) -> None:
        """Run the kernel once."""
        self._kernel()

    def synchronize(self) -> None:
        """Wait for the device, when the kernel is asynchronous."""
        if self._sync is not None:
            self._sync()

    def outputs(self) -> list[Any]:
        """Probes have no outputs to compare."""
        return []

    def close(self) -> None:
        """Release what the kernel holds."""
        if self._close is not None:
            self._close()


@dataclass(frozen=True)
class ProbeSpec:
    """What a probe measures: ``name`` (gemm, copy, cache-read, ...), the ``backend`` doing it
    (stored as the runtime), the work of one run (``work_per_run`` in ``work_unit``: FLOP or B),
    device, dtype, threads (None: the backend's default), the operand ``shape`` and the
    sizes as ``options``. ``macs`` (multiply-accumulates per run) is stored as the model's MACs."""

    name: str
    backend: str
    work_per_run: float
    work_unit: str = "FLOP"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    shape: tuple[int, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    macs: int | None = None

    def __post_init__(self) -> None:
        from costmeter.errors import ConfigError

        if self.work_unit not in WORK_UNITS:
            raise ConfigError(f"probe work unit {self.work_unit!r} must be one of {', '.join(WORK_UNITS)}")
        if not self.work_per_run > 0:
            raise ConfigError(f"probe {self.name}: work per run must be > 0, got {self.work_per_run}")

    @property
    def model_id(self) -> str:
        return PROBE_PREFIX + self.name

    def key(self) -> BenchKey:
        """The stored identity; the hash covers what makes two probes comparable."""
        options = dict(self.options)
        options["dtype"] = self.dtype
        blob = json.dumps({"name": self.name, "unit": self.work_unit, "work": self.work_per_run,
                           "shape": list(self.shape), "options": options,
                           "version": PROBE_VERSION}, sort_keys=True)
        return BenchKey(model_id=self.model_id, model_hash=hashlib.sha256(blob.encode()).hexdigest()[:16],
                        device=self.device, runtime=self.backend, batch=1, input_shape=self.shape,
                        dtype=self.dtype, threads=self.threads, options=tuple(options.items()))


def probe_protocol(min_count: int = 10, min_time_s: float = 2.0, max_time_s: float = 30.0,
                   max_rel_ci: float = 0.01, warmup_count: int = 2,
                   warmup_s: float = 0.5) -> ProtocolConfig:
    """The protocol for machine probes: the median only (no tail percentiles, so no hundreds of
    samples of a kernel that runs for tenths of a second), sampled until it is within
    ``max_rel_ci`` or ``max_time_s`` (s) has passed."""
    return ProtocolConfig(warmup_count=warmup_count, warmup_s=warmup_s, min_count=min_count,
                          min_time_s=min_time_s, max_time_s=max_time_s, percentiles=(50.0,),
                          auto_min_count=False, max_rel_ci=max_rel_ci, max_cv=0.5)


def probe_rates(spec: ProbeSpec, samples_ns: Sequence[float], summary: Any) -> dict[str, Any]:
    """Rates (work per second) from the samples: the fastest run (``best``: other load only adds
    time, so this is the machine's demonstrated rate), the median and its interval."""
    positive = [s for s in samples_ns if s > 0]
    rates: dict[str, Any] = {"rate_unit": WORK_UNITS[spec.work_unit], "best_rate_per_s": None,
                             "median_rate_per_s": None, "median_rate_low_per_s": None,
                             "median_rate_high_per_s": None}
    if positive:
        rates["best_rate_per_s"] = spec.work_per_run / min(positive) * 1e9
    p50 = None if summary is None else summary.percentiles.get(50.0)
    if p50 is not None and p50.value > 0:
        rates["median_rate_per_s"] = spec.work_per_run / p50.value * 1e9
        if p50.has_ci and p50.low > 0:
            rates["median_rate_low_per_s"] = spec.work_per_run / p50.high * 1e9
            rates["median_rate_high_per_s"] = spec.work_per_run / p50.low * 1e9
    return rates


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def probe_result(spec: ProbeSpec, outcome: ProtocolOutcome, protocol: ProtocolConfig, *,
                 environment: dict[str, Any], run_id: str, tag: str | None = PROBE_TAG,
                 started_at: str | None = None, extra: dict[str, Any] | None = None) -> RunResult:
    """Judge one sampled probe (:func:`costmeter.harness.verdict.judge_processes`) and return
    its RunResult: raw samples, warm-up and max-time flags, validity with reasons and warnings,
    the environment, the work per run and the rates (``extra``)."""
    from costmeter.harness.verdict import ProcessRecord, judge_processes

    record = ProcessRecord(outcome.samples_ns, outcome.hit_max_time, outcome.blocks,
                           outcome.throttled_blocks, outcome.warmup_cut_short,
                           outcome.warmup_count, outcome.warmup_s)
    verdict = judge_processes([record], protocol)
    info = {"probe": spec.name, "work_per_run": spec.work_per_run, "work_unit": spec.work_unit,
            "warmup_cut_short": outcome.warmup_cut_short,
            "precision_checks": [outcome.precision_checks],
            "protocol": {k: v for k, v in asdict(protocol).items()
                         if k in ("min_count", "min_time_s", "max_time_s", "max_rel_ci",
                                  "warmup_count", "warmup_s", "confidence")},
            **probe_rates(spec, outcome.samples_ns, verdict.summary), **(extra or {})}
    measurement = Measurement(samples_ns=[[int(s) for s in outcome.samples_ns]],
                              warmup_count=outcome.warmup_count, warmup_s=outcome.warmup_s,
                              sampling_s=outcome.sampling_s, hit_max_time=outcome.hit_max_time)
    return RunResult(key=spec.key(), status=Status.OK, run_id=run_id, tag=tag,
                     started_at=started_at or _now(), finished_at=_now(), measurement=measurement,
                     validity=Validity.VALID if verdict.valid else Validity.INVALID,
                     reasons=list(verdict.reasons), warnings=list(verdict.warnings),
                     environment=environment, extra=info,
                     model_info={} if spec.macs is None else {"macs": int(spec.macs)})


def failed_probe(spec: ProbeSpec, error: str, *, run_id: str, tag: str | None = PROBE_TAG,
                 environment: dict[str, Any] | None = None) -> RunResult:
    """A probe that could not run (backend missing, crash, timeout), stored as failed."""
    now = _now()
    return RunResult(key=spec.key(), status=Status.FAILED, run_id=run_id, tag=tag, started_at=now,
                     finished_at=now, error=error, environment=environment or {},
                     extra={"probe": spec.name})


def measure_probe(spec: ProbeSpec, session: Any, protocol: ProtocolConfig, *,
                  clock: Clock = time.perf_counter_ns, environment: dict[str, Any] | None = None,
                  run_id: str | None = None, tag: str | None = PROBE_TAG,
                  extra: dict[str, Any] | None = None) -> RunResult:
    """Sample ``session`` with the protocol in this process and return the judged RunResult.
    ``environment`` defaults to :func:`costmeter.harness.environment.capture` after sampling."""
    from costmeter.harness.runner import new_run_id

    started = _now()
    outcome = sample(session, protocol, clock)
    if environment is None:
        from costmeter.harness.environment import capture

        environment = capture(threads=spec.threads)
    return probe_result(spec, outcome, protocol, environment=environment,
                        run_id=run_id or new_run_id(), tag=tag, started_at=started, extra=extra)
