"""Frozen, validated run configurations. No side effects until a runner uses them."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


def default_workdir() -> Path:
    """The working folder for stores, caches and reports: $COSTMETER_HOME or ./.costmeter
    (see :class:`costmeter.workdir.Workdir`)."""
    from costmeter.workdir import Workdir

    return Workdir.default().root


@dataclass(frozen=True)
class ProtocolConfig:
    """How a benchmark is sampled and judged.

    Warm-up runs until both ``warmup_count`` runs and ``warmup_s`` seconds have passed. Sampling
    runs until both ``min_count`` samples and ``min_time_s`` seconds are reached, and stops at
    ``max_time_s`` whatever happened. ``min_count`` is raised automatically to what the reported
    percentiles need for a confidence interval (``auto_min_count``). Past both minimums,
    sampling goes on (up to ``max_time_s``) until the median's interval is within
    ``max_rel_ci`` (relative half-width, a fraction: 0.01 is +-1%), checked every
    ``precision_check_s`` seconds at most.

    Judging: INVALID when a reported figure is not pinned down (a percentile without interval,
    a median interval wider than ``max_rel_ci``), the clock fails, or the device throttled in
    more than ``max_throttled_share`` of blocks. A CV above ``max_cv`` and a non-median
    percentile whose relative half-width is above ``tail_rel_ci`` are warnings.
    """

    warmup_count: int = 10
    warmup_s: float = 0.5
    min_count: int = 100
    min_time_s: float = 2.0
    max_time_s: float = 60.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    confidence: float = 0.95
    max_cv: float = 0.15
    auto_min_count: bool = True
    max_throttled_share: float = 0.1
    block_size: int = 10
    max_rel_ci: float = 0.01
    tail_rel_ci: float = 0.05
    precision_check_s: float = 0.25

    def __post_init__(self) -> None:
        _check(self.warmup_count >= 0, "--warmup must be >= 0 runs")
        _check(self.warmup_s >= 0, "warm-up time must be >= 0 s")
        _check(self.min_count >= 1, "--min-count must be >= 1")
        _check(self.min_time_s >= 0, "--min-time must be >= 0 s")
        _check(self.max_time_s > 0, "--max-time must be > 0 s")
        _check(
            self.max_time_s >= self.min_time_s,
            f"--max-time ({self.max_time_s} s) must be >= --min-time ({self.min_time_s} s)",
        )
        _check(0 < self.confidence < 1, "confidence must be between 0 and 1, e.g. 0.95")
        _check(self.max_cv > 0, "--max-cv must be > 0, e.g. 0.15")
        _check(self.block_size >= 1, "block size must be >= 1")
        _check(0 <= self.max_throttled_share <= 1, "throttled share must be in [0, 1]")
        _check(0 < self.max_rel_ci < 1,
               f"--max-rel-ci {self.max_rel_ci!r} must be a fraction in (0, 1), e.g. 0.01 for +-1%")
        _check(self.tail_rel_ci > 0, "tail_rel_ci must be > 0, e.g. 0.05 for +-5%")
        _check(self.precision_check_s > 0, "precision_check_s must be > 0 s")
        pct = tuple(float(p) for p in self.percentiles)
        _check(bool(pct), "--percentiles is empty; give at least one, e.g. 50,90,99")
        _check(all(0 < p < 100 for p in pct),
               f"--percentiles {','.join(f'{p:g}' for p in pct)} must lie strictly between 0 and 100, "
               "e.g. 50,90,99")
        object.__setattr__(self, "percentiles", tuple(sorted(set(pct))))

    def target_count(self) -> int:
        """Samples to aim for: ``min_count``, raised to what the percentiles' CIs need."""
        if not self.auto_min_count:
            return self.min_count
        from costmeter.results.stats import min_samples_for_percentile

        need = max(min_samples_for_percentile(p, self.confidence) for p in self.percentiles)
        return max(self.min_count, need)


@dataclass(frozen=True)
class RunConfig:
    """One benchmark: a model on a device with a runtime, batch, threads and runtime options."""

    model: str
    device: str = "cpu"
    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    processes: int = 1
    timeout_s: float = 600.0
    workdir: str = ".costmeter"
    check_outputs: bool = True
    parity_tolerance: float = 1e-3
    tag: str | None = None
    memory_limit_bytes: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.model), "a model is required: --model NAME|FILE.onnx|pkg.mod:func")
        object.__setattr__(self, "_device_spec", DeviceSpec.parse(self.device))
        _check(self.batch >= 1, f"batch must be >= 1 (got {self.batch})")
        _check(self.threads is None or self.threads >= 1, f"threads must be >= 1 (got {self.threads})")
        _check(self.processes >= 1, f"--processes must be >= 1 (got {self.processes})")
        _check(self.timeout_s > 0, "--timeout must be > 0 s")
        _check(self.parity_tolerance > 0, "parity tolerance must be > 0")
        object.__setattr__(
            self, "options", tuple(sorted((str(k), str(v)) for k, v in dict(self.options).items()))
        )

    @property
    def device_spec(self) -> DeviceSpec:
        """The device, parsed once (at construction)."""
        return self._device_spec  # type: ignore[attr-defined,no-any-return]

    @property
    def device_kind(self) -> str:
        """``cpu`` for ``cpu``, ``cuda`` for ``cuda:1``, the scheme for ``ssh://...``."""
        return self.device_spec.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (sent to the worker process)."""
        d = asdict(self)
        d["options"] = [list(kv) for kv in self.options]
        d["protocol"]["percentiles"] = list(self.protocol.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        proto = dict(d.pop("protocol", {}))
        proto["percentiles"] = tuple(proto.get("percentiles", DEFAULT_PERCENTILES))
        d["options"] = tuple(tuple(kv) for kv in d.get("options", ()))
        return cls(protocol=ProtocolConfig(**proto), **d)


@dataclass(frozen=True)
class ModelGroup:
    """One ``[[models]]`` entry of a suite: its model specs (sampled architectures already
    drawn) and the matrix axes it overrides (None: the suite's). ``line`` is its line in the
    suite file (for messages)."""

    specs: tuple[str, ...]
    devices: tuple[str, ...] | None = None
    runtimes: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None
    threads: tuple[int | None, ...] | None = None
    line: int = 0


@dataclass(frozen=True)
class SuiteJob:
    """One expanded job of a suite: its key (stable hash of what it measures), label, config."""

    key: str
    label: str
    config: RunConfig


@dataclass(frozen=True)
class SuiteConfig:
    """A benchmark suite (TOML, see :mod:`costmeter.harness.suite_file`): models x devices x
    runtimes x batches x threads under one protocol, run by ``bench suite run`` and
    ``bench nightly``. Validated on construction; :meth:`expand` gives the jobs.

    ``suite_id`` names the suite in the store; ``tag`` labels its results (``--tag`` wins);
    ``repository`` is the git checkout whose HEAD is the code under test (``--sha`` wins);
    ``python_path`` lists folders from which workers may import ``pkg.module:function`` models;
    ``options`` maps a runtime to its runtime options; ``timeout_s`` (s) bounds each worker;
    ``retry_window_s`` (s) is how long a result is retried before it is spooled and
    ``busy_timeout_s`` (s) how long a SQLite writer waits for a lock within each try.
    """

    suite_id: str
    models: tuple[ModelGroup, ...]
    devices: tuple[str, ...] = ("cpu",)
    runtimes: tuple[str, ...] = ("onnxruntime",)
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)
    options: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    tag: str | None = None
    repository: str | None = None
    python_path: tuple[str, ...] = ()
    processes: int = 1
    timeout_s: float = 600.0
    parity: bool = True
    retry_window_s: float = 120.0
    busy_timeout_s: float = 30.0
    path: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.suite_id)),
               f"suite id {self.suite_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
        _check(bool(self.models), "a suite needs at least one [[models]] entry")
        for name, values in (("devices", self.devices), ("runtimes", self.runtimes),
                             ("batches", self.batches), ("threads", self.threads)):
            _check(bool(values), f"suite {name} is empty; list at least one")
        for device in self.devices + tuple(d for g in self.models for d in g.devices or ()):
            DeviceSpec.parse(device)
        _check(self.processes >= 1, f"processes must be >= 1 (got {self.processes})")
        _check(self.timeout_s > 0, "timeout_s must be > 0 s")
        _check(self.retry_window_s >= 0, "retry_window_s must be >= 0 s")
        _check(self.busy_timeout_s > 0, "busy_timeout_s must be > 0 s")

    def runtime_options(self, runtime: str) -> tuple[tuple[str, str], ...]:
        """The runtime options the suite sets for ``runtime``."""
        return dict(self.options).get(runtime, ())

    def expand(self, workdir: str | Path) -> list[SuiteJob]:
        """Every job, in file order: each model group x devices x runtimes x batches x threads.

        Raises ConfigError when two entries expand to the same job (a model listed twice)."""
        import hashlib
        import itertools
        import json

        jobs: list[SuiteJob] = []
        seen: dict[str, int] = {}
        for group in self.models:
            axes = (group.specs, group.devices or self.devices, group.runtimes or self.runtimes,
                    group.batches or self.batches, group.threads or self.threads)
            for model, device, runtime, batch, threads in itertools.product(*axes):
                cfg = RunConfig(model=model, device=device, runtime=runtime, batch=batch,
                                threads=threads, options=self.runtime_options(runtime),
                                protocol=self.protocol, processes=self.processes,
                                timeout_s=self.timeout_s, workdir=str(workdir),
                                check_outputs=self.parity, tag=self.tag)
                identity = {k: v for k, v in cfg.to_dict().items() if k not in ("workdir", "tag")}
                blob = json.dumps([self.suite_id, identity], sort_keys=True).encode()
                key = hashlib.sha256(blob).hexdigest()[:24]
                if key in seen:
                    raise ConfigError(
                        f"{self.path or 'suite'} line {group.line}: {model} on {runtime}@{device} "
                        f"b{batch} is already listed (line {seen[key]}); list each model once")
                seen[key] = group.line
                label = f"{model}/{runtime}@{device} b{batch} t{threads or 'auto'}"
                jobs.append(SuiteJob(key, label, cfg))
        return jobs

    @classmethod
    def from_toml(cls, path: str | Path) -> SuiteConfig:
        """Read and validate a suite file (see :mod:`costmeter.harness.suite_file`)."""
        from costmeter.harness.suite_file import load_suite

        return load_suite(path)


_DEVICE_RE = re.compile(r"^(cpu|fake|cuda(?::(\d+))?)$")
REMOTE_KINDS = ("ssh", "adb")


@dataclass(frozen=True)
class DeviceSpec:
    """A device, parsed once from ``cpu``, ``cuda[:N]``, ``fake``, ``ssh://user@host[:port]`` or
    ``adb://SERIAL``: the only place device strings are read.

    ``kind`` is ``cpu``, ``cuda``, ``fake``, ``ssh`` or ``adb``; ``index`` the CUDA ordinal;
    ``target`` the SSH target (host, user, port) or the adb serial; ``text`` the string given.
    """

    text: str
    kind: str
    index: int = 0
    target: Any = None

    @classmethod
    def parse(cls, device: str) -> DeviceSpec:
        """Parse and check a device string; ConfigError with the accepted forms otherwise."""
        text = str(device).strip()
        if text.startswith("ssh://"):
            from costmeter.devices.remote.ssh import SshTarget

            return cls(text, "ssh", 0, SshTarget.parse(text))
        if text.startswith("adb://"):
            from costmeter.devices.remote.adb import parse_adb_serial

            return cls(text, "adb", 0, parse_adb_serial(text))
        m = _DEVICE_RE.match(text)
        if m is None:
            raise ConfigError(
                f"unknown device {device!r}; use cpu, cuda, cuda:N, ssh://user@host[:port] or "
                "adb://SERIAL (see `bench env`)"
            )
        kind = "cuda" if m.group(1).startswith("cuda") else m.group(1)
        return cls(text, kind, int(m.group(2) or 0))

    @property
    def remote(self) -> bool:
        """Whether benchmarks run on another machine (ssh, adb)."""
        return self.kind in REMOTE_KINDS

    def __str__(self) -> str:
        return self.text



def parse_int_list(text: str, what: str) -> list[int]:
    """Parse ``"1,8,32"`` into ints >= 1; ConfigError naming ``what`` on malformed input."""
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(
                f"malformed {what} {text!r}: expected comma-separated positive integers, e.g. 1,8"
            )
        values.append(int(part))
    return values


def parse_options(pairs: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse ``["precision=f32", "opt_level=all"]`` into sorted pairs; ConfigError if malformed."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"malformed option {pair!r}: expected NAME=VALUE, e.g. opt_level=all")
        out[name.strip()] = value.strip()
    return tuple(sorted(out.items()))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
