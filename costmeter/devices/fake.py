"""A deterministic, seeded fake runtime for tests and demos. Its numbers are synthetic.

With a :class:`FakeClock`, ``run_once`` advances the clock by a drawn latency and returns at once
(fast, exact tests of the protocol). Without one it busy-waits the drawn latency on the real clock.
The ``fault`` option makes a worker process fail on purpose (``segfault``, ``kill``, ``hang``,
``oom``, ``raise``) so the harness's isolation can be tested.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import numpy as np

from costmeter.devices.base import Artifact, SessionOptions

FAULTS = ("segfault", "kill", "hang", "oom", "raise")


class FakeClock:
    """A monotonic nanosecond clock that only moves when told to."""

    def __init__(self, start_ns: int = 0) -> None:
        self.now_ns = int(start_ns)

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: float) -> None:
        """Move the clock forward by ``ns`` nanoseconds."""
        self.now_ns += int(ns)


class FakeSession:
    """Latency ~ lognormal around ``latency_us`` with relative spread ``jitter``; seeded."""

    synchronous = True

    def __init__(self, latency_us: float, jitter: float, seed: int, clock: FakeClock | None,
                 batch: int, fault_at_run: str | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._latency_ns = latency_us * 1e3
        self._jitter = jitter
        self._clock = clock
        self._batch = batch
        self._fault_at_run = fault_at_run
        self.runs = 0

    def _draw_ns(self) -> float:
        if self._jitter <= 0:
            return self._latency_ns
        return float(self._latency_ns * self._rng.lognormal(0.0, self._jitter))

    def run_once(self) -> None:
        """Spend one drawn latency (fake clock: advance it; real clock: busy-wait)."""
        self.runs += 1
        if self._fault_at_run is not None:
            trigger_fault(self._fault_at_run)
        ns = self._draw_ns()
        if self._clock is not None:
            self._clock.advance(ns)
            return
        end = time.perf_counter_ns() + ns
        while time.perf_counter_ns() < end:
            pass

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def outputs(self) -> list[Any]:
        """A deterministic output of shape (batch, 10)."""
        self.run_once()
        return [np.arange(self._batch * 10, dtype=np.float32).reshape(self._batch, 10)]

    def close(self) -> None:
        """Nothing to release."""


class FakeRuntime:
    """Runtime ``fake`` on device ``fake``. Options: latency_us, jitter, seed, fault, fault_when."""

    name = "fake"
    device_kind = "fake"
    artifact_kind = "none"
    option_names = ("latency_us", "jitter", "seed", "fault", "fault_when")

    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock = clock

    def is_available(self) -> tuple[bool, str]:
        """Always available."""
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> FakeSession:
        """Make a fake session; ``fault_when=prepare`` fails here, ``run`` on the first run."""
        fault = options.get("fault")
        when = options.get("fault_when", "prepare")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
        if fault is not None and when == "prepare":
            trigger_fault(fault)
        batch = int(next(iter(artifact.inputs.values())).shape[0]) if artifact.inputs else 1
        return FakeSession(
            latency_us=float(options.get("latency_us", "100")),
            jitter=float(options.get("jitter", "0.05")),
            seed=int(options.get("seed", "0")),
            clock=self._clock,
            batch=batch,
            fault_at_run=fault if when == "run" else None,
        )


def trigger_fault(fault: str) -> None:
    """Make this process fail in the named way (only ever used by the fake runtime)."""
    if fault == "segfault":
        ctypes.string_at(0)
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        while True:
            time.sleep(1)
    elif fault == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(256 * 1024 * 1024))
    elif fault == "raise":
        raise RuntimeError("fake runtime failed on purpose")
