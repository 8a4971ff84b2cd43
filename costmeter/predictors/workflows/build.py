"""``bench predictor build``: from a new machine to a calibrated kernel-level predictor, as one
resumable workflow under a time budget.

Steps (each records what it did in the working folder's build state, so Ctrl-C and the same
command again continue where it stopped):

1. ``prior`` -- the kernel configurations real models contain (the zoo and samples of the search
   spaces), exported and fused once, kept in ``build/``;
2. ``kernels`` -- micro-benchmarks timed in context, walking a nested plan drawn from the prior
   (every kernel type in proportion at every point of the walk), in chunks, until its seconds
   are spent;
3. ``adaptive`` -- neighbours of the kernels whose cross-validated forest error exceeds 10%;
4. ``networks`` -- calibration networks of the ``calibrate_on`` families, interleaved, each
   family weighing the same; when every planned network is measured, further rounds (the
   lowest median is kept: other work on the machine only adds time);
5. ``curve`` -- this machine's cache curve;
6. ``fit`` -- kernel forests, the constrained calibration with its nested leave-one-family-out
   estimate, and the ``.costmodel`` file, whose manifest records threads, pinning and budget.

Every step runs at the same thread count and pinned to the same CPUs: this process pins itself
(``os.sched_setaffinity``) and every worker it starts inherits the pinning. At 1 thread, kernels
and networks are timed by the measuring thread's CPU clock: on a shared machine a network of a
few milliseconds is descheduled in most of its runs, which the wall clock counts (on this
project's 2-vCPU VM under load, wall-clock medians came out 3-5x the CPU time, fastest runs
2-4x for networks above ~5 ms, while both clocks agree on small networks' fastest runs). The
seconds per step come from :mod:`costmeter.predictors.workflows.budget`.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.workflows import budget as rule
from costmeter.predictors.workflows.graphs import read_json, write_json
from costmeter.workdir import Workdir

STATE_VERSION = 1
DEFAULT_CALIBRATION: tuple[str, ...] = ("resnet", "mobilenet_v2", "nb201")
KERNEL_PLAN_SCALE = 4  # the kernel plan: DEFAULT_COUNTS x 4, walked as far as the budget goes
MAX_NETWORKS_PER_FAMILY = 40
MAX_NETWORK_ROUNDS = 3
KERNEL_CHUNK = 24
NETWORK_CHUNK = 6
ADAPTIVE_ROUND_MAX = 160
PRIOR_SPACE_SAMPLES = 30
FOREST_TREES = 200
STEPS: tuple[str, ...] = ("prior", "kernels", "adaptive", "networks", "curve", "fit")


@dataclass(frozen=True)
class BuildSpec:
    """What to build: device, runtime, threads, pinning (``cpus``; empty: not pinned), budget
    (s, the build's total wall time over all its runs), calibration families, seed, and the
    precision the predicted networks run at (fp32, or int8: ONNX Runtime's static QDQ, the
    recipe of ``bench run --precision int8``, for micro-benchmarks and networks alike)."""

    device: str = "cpu"
    runtime: str = "onnxruntime"
    threads: int = 1
    cpus: tuple[int, ...] = ()
    budget_s: float = 1800.0
    calibrate_on: tuple[str, ...] = DEFAULT_CALIBRATION
    seed: int = 0
    keep_artifacts: bool = False
    kernel_min_time_s: float | None = None  # per micro-benchmark; default by clock, see below
    network_min_time_s: float | None = None  # per network; default by clock, see below
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from costmeter.predictors.sampling.quantized import check_micro_precision
        from costmeter.predictors.workflows.collect import collect_spaces

        check_micro_precision(self.precision, self.runtime)

        object.__setattr__(self, "cpus", tuple(sorted({int(c) for c in self.cpus})))
        object.__setattr__(self, "calibrate_on", tuple(dict.fromkeys(self.calibrate_on)))
        if self.device != "cpu":
            raise ConfigError(f"bench predictor build measures this machine's CPU (its cache curve "
                              f"calibrates the predictor); {self.device!r} is not it -- run the "
                              "build on the device itself with --device cpu")
        if int(self.threads) < 1:
            raise ConfigError(f"--threads must be >= 1 (got {self.threads})")
        if self.cpus and self.threads > len(self.cpus):
            raise ConfigError(f"--threads {self.threads} on {len(self.cpus)} pinned CPU(s) would "
                              f"share cores; pin at least {self.threads} CPUs or use fewer threads")
        if not math.isfinite(self.budget_s) or self.budget_s <= 0:
            raise ConfigError(f"--budget must be a positive duration (got {self.budget_s})")
        unknown = [f for f in self.calibrate_on if f not in collect_spaces()]
        if unknown or len(self.calibrate_on) < 2:
            raise ConfigError(f"--calibrate-on needs at least 2 families from "
                              f"{', '.join(collect_spaces())} (got {', '.join(self.calibrate_on)})")

    @property
    def clock(self) -> str:
        """How runs are timed: at 1 thread by the measuring thread's CPU clock (time spent
        descheduled by other work on a shared core is not counted), else by the wall clock."""
        return "thread_cpu" if int(self.threads) == 1 else "wall"

    @property
    def kernel_time_s(self) -> float:
        """Sampling seconds per micro-benchmark: 0.05 s of CPU time (the thread CPU clock
        leaves out other work, so a short sample is precise: a 20 us kernel runs 2,500
        times), 0.2 s of wall time."""
        if self.kernel_min_time_s is not None:
            return float(self.kernel_min_time_s)
        return 0.05 if self.clock == "thread_cpu" else 0.2

    @property
    def network_time_s(self) -> float:
        """Sampling seconds per network: 0.25 s of CPU time, 0.5 s of wall time."""
        if self.network_min_time_s is not None:
            return float(self.network_min_time_s)
        return 0.25 if self.clock == "thread_cpu" else 0.5

    @property
    def slot(self) -> str:
        """The name this build's files go under in the working folder: the runtime, with the
        precision unless fp32 (an fp32 and an int8 build share a folder, not their files)."""
        from costmeter.predictors.sampling.measure import precision_slot

        return precision_slot(self.runtime, self.precision)

    @property
    def cpus_text(self) -> str:
        """The pinning as ``taskset`` writes it (``"0,2"``; ``""``: not pinned)."""
        return ",".join(str(c) for c in self.cpus)

    def identity(self) -> dict[str, Any]:
        """What must not change between the runs of one build in one working folder."""
        identity = {"device": self.device, "runtime": self.runtime, "threads": int(self.threads),
                    "cpus": list(self.cpus), "seed": int(self.seed),
                    "calibrate_on": list(self.calibrate_on), "kernel_timing": "context",
                    "clock": self.clock}
        if self.precision != "fp32":
            identity["precision"] = self.precision
        return identity


def describe_identity(identity: dict[str, Any]) -> str:
    """``--threads 1 --cpus 1 --calibrate-on resnet,nb201 --seed 0`` for error messages."""
    cpus = ",".join(str(c) for c in identity.get("cpus") or []) or "(unpinned)"
    return (f"--threads {identity.get('threads')} --cpus {cpus} --calibrate-on "
            f"{','.join(identity.get('calibrate_on') or [])} --seed {identity.get('seed')} "
            f"--precision {identity.get('precision', 'fp32')}")


@dataclass(frozen=True)
class BuildProgress:
    """One progress report: the step, its items done and planned, seconds spent of the budget,
    an estimate of the seconds left, a note worth a line of its own (empty: none) and a short
    status of the step."""

    step: str
    done: int
    total: int
    spent_s: float
    budget_s: float
    left_s: float
    note: str = ""
    status: str = ""


@dataclass
class BuildSeams:
    """Replacements for what touches hardware or torch (tests): ``kernel_measure`` (groups of
    ONNX files -> medians ms), ``network_measure`` (CollectItems -> model id -> ms),
    ``prior_graphs`` (() -> kernel graphs), ``network_rows`` (model id -> NetworkRows),
    ``cache_curve`` (() -> (MB, us per MB)), ``clock`` (seconds)."""

    kernel_measure: Callable[..., Any] | None = None
    network_measure: Callable[..., Any] | None = None
    prior_graphs: Callable[[], Any] | None = None
    network_rows: Callable[[str], Any] | None = None
    cache_curve: Callable[[], Any] | None = None
    clock: Callable[[], float] = time.monotonic


@dataclass
class BuildResult:
    """What a build wrote and found."""

    output: Path
    manifest: dict[str, Any]
    calibration: dict[str, Any]
    spent_s: dict[str, float]
    kernels: int
    networks: dict[str, int] = field(default_factory=dict)


def build_predictor(spec: BuildSpec, output: Path | str, workdir: Path | str, store: Any = None,
                    progress: Callable[[BuildProgress], None] | None = None,
                    seams: BuildSeams | None = None) -> BuildResult:
    """Run (or resume, or extend) the build of ``spec`` in ``workdir``; write ``output``.

    ConfigError, before anything is measured, for a budget below the minimum, or settings that
    differ from the build already in the folder; StoreError when the disk is full (nothing
    measured before is lost: rerun to resume). ``store`` receives the calibration networks'
    results. KeyboardInterrupt leaves a state the next call resumes from."""
    from costmeter.predictors.workflows.build_steps import BuildRun

    wd = Workdir.of(workdir)
    check_build(spec, wd)
    with disk_errors(wd), build_lock(wd, spec), pinned(spec.cpus):
        state = load_state(wd, spec)
        run = BuildRun(spec, wd, state, store, progress, seams or BuildSeams())
        run.check_budget()
        for step in STEPS[:-1]:
            getattr(run, step)()
        return run.fit(Path(output))


def check_build(spec: BuildSpec, workdir: Path | str | Workdir) -> None:
    """ConfigError for CPUs this process may not use, settings that differ from the build
    already in ``workdir``, or a budget below the minimum; reads the folder, writes nothing."""
    from costmeter.predictors.workflows.build_steps import check_budget

    check_pinning(spec.cpus)
    wd = Workdir.of(workdir)
    check_budget(spec, load_state(wd, spec))


def new_state(spec: BuildSpec) -> dict[str, Any]:
    """The state of a build that has not started."""
    return {"version": STATE_VERSION, "identity": spec.identity(),
            "spent_s": {step: 0.0 for step in STEPS}, "done": {},
            "kernels": {"position": 0}, "adaptive": {"round": 0, "planned": [], "position": 0},
            "items": {},
            "networks": {}, "budget_s": spec.budget_s}


def load_state(wd: Workdir, spec: BuildSpec) -> dict[str, Any]:
    """The folder's build state for ``spec``'s device and runtime (new when there is none);
    ConfigError when it was built with other settings."""
    data = read_json(wd.build_state(spec.device, spec.slot))
    if data is None:
        state = new_state(spec)
    elif data.get("version") != STATE_VERSION:
        raise ConfigError(f"{wd.root} holds a build state of version {data.get('version')!r}; "
                          "start over with `bench workdir clean --kind samples` or another --workdir")
    else:
        state = data
    theirs, mine = state.get("identity") or {}, spec.identity()
    if theirs != mine:
        raise ConfigError(f"{wd.root} holds a build made with {describe_identity(theirs)}, not "
                          f"{describe_identity(mine)}; rerun with its settings to resume or extend "
                          "it, or use another --workdir")
    state["budget_s"] = spec.budget_s
    return state


def save_state(wd: Workdir, spec: BuildSpec, state: dict[str, Any]) -> None:
    """Write the build state atomically."""
    write_json(wd.build_state(spec.device, spec.slot), state)


def check_pinning(cpus: Sequence[int]) -> None:
    """ConfigError unless this process may run on every CPU of ``cpus`` (none: nothing to check)."""
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cpus needs a system that can pin processes (Linux); leave it out here")
    allowed = os.sched_getaffinity(0)
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise ConfigError(f"--cpus names CPU {outside[0]}, which this process may not use (CPUs "
                          f"available: {','.join(map(str, sorted(allowed)))}); pick CPUs from that list")


@contextlib.contextmanager
def pinned(cpus: Sequence[int]) -> Iterator[None]:
    """This process (and every process it starts) on ``cpus`` for the block; nothing when
    ``cpus`` is empty. ConfigError for a CPU this process may not use."""
    if not cpus:
        yield
        return
    check_pinning(cpus)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@contextlib.contextmanager
def build_lock(wd: Workdir, spec: BuildSpec) -> Iterator[None]:
    """Held while the build runs; ConfigError when another build of the folder holds it."""
    import fcntl

    path = wd.build_lock(spec.device, spec.slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another build of {spec.slot} on {spec.device} is running in "
                              f"{wd.root}; wait for it, or use another --workdir") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def disk_errors(wd: Workdir) -> Iterator[None]:
    """A full disk as one StoreError with the fix (what was measured before is kept)."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        raise StoreError(f"the disk is full{where}; free space (`bench workdir du`, `bench workdir "
                         f"clean`) or use another --workdir, then rerun the same command to "
                         "resume") from error
