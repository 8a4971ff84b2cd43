"""What a measurement is: identity (BenchKey), raw samples (Measurement) and results (RunResult).

Units are in field names (``_ns``, ``_bytes``, ``_j``, ``_s``). Every serialized result carries
``schema_version``; loaders reject versions they do not know (see :func:`check_schema_version`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from costmeter.errors import StoreError

SCHEMA_VERSION = 1


def check_schema_version(version: Any) -> int:
    """Return ``version`` if this build can read it, else raise StoreError with a fix."""
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"result schema version {version!r} is not supported (this costmeter reads version "
            f"{SCHEMA_VERSION}); upgrade costmeter or re-export the results with a matching version"
        )
    return int(version)


class Status(str, Enum):
    """How a benchmark ended."""

    OK = "ok"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"


class Validity(str, Enum):
    """Whether the numbers of a finished benchmark can be trusted (reasons recorded apart).
    ``UNJUDGED``: imported figures with too few samples to judge (one value per trace row), kept
    for fitting and comparison but never counted as VALID."""

    VALID = "VALID"
    INVALID = "INVALID"
    UNJUDGED = "UNJUDGED"


class EnergyProvenance(str, Enum):
    """Where an energy figure comes from. ``estimated`` is never produced silently."""

    COUNTER = "counter"
    INTEGRATED_POWER = "integrated-power"
    ESTIMATED = "estimated"
    IMPORTED = "imported"  # a trace measured elsewhere; its source is in the result's extra
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class BenchKey:
    """The identity of a benchmark: grouping, merging and comparing use this.

    ``input_shape`` is the full shape of the first input, batch included. ``options`` holds
    runtime options (precision, graph optimization level, inter-op threads, ...) as sorted
    ``(name, value)`` string pairs so that the key stays hashable.
    """

    model_id: str
    model_hash: str
    device: str
    runtime: str
    batch: int
    input_shape: tuple[int, ...]
    dtype: str
    threads: int | None
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(
            self, "options", tuple(sorted((str(k), str(v)) for k, v in dict(self.options).items()))
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (options as a mapping)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchKey:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model_id=d["model_id"],
            model_hash=d["model_hash"],
            device=d["device"],
            runtime=d["runtime"],
            batch=int(d["batch"]),
            input_shape=tuple(d["input_shape"]),
            dtype=d["dtype"],
            threads=None if d.get("threads") is None else int(d["threads"]),
            options=tuple(dict(d.get("options") or {}).items()),
        )

    def digest(self) -> str:
        """Stable 16-hex-digit hash of the key (same key, same digest, across processes)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def label(self) -> str:
        """Short human-readable label for tables and logs."""
        thr = "auto" if self.threads is None else str(self.threads)
        opts = "".join(f",{k}={v}" for k, v in self.options)
        return f"{self.model_id}/{self.runtime}@{self.device} b{self.batch} t{thr}{opts}"


@dataclass
class Measurement:
    """Raw latency samples in nanoseconds, one list per worker process.

    Each sample times ``iterations_per_sample`` consecutive runs (usually 1); per-run latency is
    ``sample / iterations_per_sample``. Statistics are computed from these on demand.
    """

    samples_ns: list[list[int]]
    iterations_per_sample: int = 1
    warmup_count: int = 0
    warmup_s: float = 0.0
    sampling_s: float = 0.0
    hit_max_time: bool = False

    def all_samples_ns(self) -> list[float]:
        """Per-run latencies (ns) of all processes, concatenated in process order."""
        k = self.iterations_per_sample
        return [s / k for proc in self.samples_ns for s in proc]

    @property
    def count(self) -> int:
        """Number of samples over all processes."""
        return sum(len(p) for p in self.samples_ns)

    def per_process_ns(self) -> list[list[float]]:
        """Per-run latencies (ns), one list per process, each in the order it was taken."""
        k = self.iterations_per_sample
        return [[s / k for s in proc] for proc in self.samples_ns]

    def summary(self, percentiles: tuple[float, ...] = (50, 90, 95, 99), confidence: float = 0.95):
        """Headline statistics (ns): percentiles with intervals widened for serial correlation and
        for the spread between processes, noise figures, per-process figures (see
        ``costmeter.results.stats_hier.summarize_processes``)."""
        from costmeter.results.stats_hier import summarize_processes

        # Memoized per (percentiles, confidence, counts): the table, the JSON and the store each ask,
        # and a tiny model leaves millions of samples (~1 s of statistics per million).
        key = (tuple(float(q) for q in percentiles), float(confidence), self.iterations_per_sample,
               tuple(len(p) for p in self.samples_ns))
        cache = self.__dict__.setdefault("_summaries", {})
        if key not in cache:
            cache[key] = summarize_processes(self.per_process_ns(), percentiles=percentiles, confidence=confidence)
        return cache[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        return cls(**d)


@dataclass
class MemoryInfo:
    """Memory figures, each named for what it is; ``None`` where not measured.

    ``imported_peak_memory_bytes`` is an imported trace's ``peak_memory_bytes`` (what its
    source measured, kind unknown); :meth:`peak_memory_bytes` is the headline figure.
    """

    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    peak_rss_above_baseline_bytes: int | None = None
    artifact_bytes: int | None = None
    param_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    cuda_max_reserved_bytes: int | None = None
    nvml_process_used_bytes: int | None = None
    nvml_device_used_bytes: int | None = None
    imported_peak_memory_bytes: int | None = None

    def peak_memory_bytes(self) -> int | None:
        """The memory the run needed above what its process held before (bytes): the CUDA
        allocator's peak where measured (a GPU run), else the peak RSS above baseline, else an
        imported trace's figure; None when none is known."""
        for value in (self.cuda_max_allocated_bytes, self.peak_rss_above_baseline_bytes,
                      self.imported_peak_memory_bytes):
            if value is not None:
                return int(value)
        return None


@dataclass
class EnergyInfo:
    """Energy over the measured window. ``energy_j`` is ``None`` when unavailable (with reason)."""

    provenance: EnergyProvenance = EnergyProvenance.UNAVAILABLE
    energy_j: float | None = None
    energy_per_inference_j: float | None = None
    window_s: float | None = None
    domains_j: dict[str, float] = field(default_factory=dict)
    idle_power_w: float | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["provenance"] = self.provenance.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnergyInfo:
        d = dict(d)
        d["provenance"] = EnergyProvenance(d.get("provenance", "unavailable"))
        return cls(**d)


@dataclass
class RunResult:
    """One benchmark's outcome: identity, samples, memory, energy, validity, environment.

    ``status`` says how it ended (ok/failed/unsupported; ``error`` holds the reason when not ok).
    ``validity`` judges the numbers of an ``ok`` run; ``reasons`` and ``warnings`` explain.
    ``model_info`` has ``params``, ``macs``, ``param_bytes``; ``extra`` holds named scalars such as
    ``max_abs_diff`` (output parity against torch), ``prepare_s`` and ``throughput_items_per_s``.
    """

    key: BenchKey
    status: Status
    run_id: str
    started_at: str
    finished_at: str
    measurement: Measurement | None = None
    memory: MemoryInfo = field(default_factory=MemoryInfo)
    energy: EnergyInfo = field(default_factory=EnergyInfo)
    validity: Validity = Validity.INVALID
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "schema_version": self.schema_version,
            "key": self.key.to_dict(),
            "status": self.status.value,
            "run_id": self.run_id,
            "tag": self.tag,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "measurement": None if self.measurement is None else self.measurement.to_dict(),
            "memory": asdict(self.memory),
            "energy": self.energy.to_dict(),
            "validity": self.validity.value,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "error": self.error,
            "environment": self.environment,
            "model_info": self.model_info,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """Build from :meth:`to_dict` output; raises StoreError on an unknown schema version."""
        check_schema_version(d.get("schema_version"))
        m = d.get("measurement")
        return cls(
            key=BenchKey.from_dict(d["key"]),
            status=Status(d["status"]),
            run_id=d["run_id"],
            tag=d.get("tag"),
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            measurement=None if m is None else Measurement.from_dict(m),
            memory=MemoryInfo(**(d.get("memory") or {})),
            energy=EnergyInfo.from_dict(d.get("energy") or {}),
            validity=Validity(d.get("validity", "INVALID")),
            reasons=list(d.get("reasons") or []),
            warnings=list(d.get("warnings") or []),
            error=d.get("error"),
            environment=dict(d.get("environment") or {}),
            model_info=dict(d.get("model_info") or {}),
            extra=dict(d.get("extra") or {}),
        )
