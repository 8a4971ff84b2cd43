"""Simulated nightly histories of one benchmark key, with known noise and an optional step.

Used to measure the false-alarm and detection rates of regression verdicts (the power benchmark
and its small seeded counterpart in the tests). The numbers are synthetic. Per key, night and
process, the log latency of sample ``i`` is::

    log(base_ms) + night_offset + process_offset + ar1_i + stall_i + log(1 + step)

- ``night_offset ~ N(0, run_sd^2)``: shared by every process of a night (run-to-run offset);
  ``run_sd`` is drawn per key, uniformly in ``NoiseModel.run_sd``;
- ``process_offset ~ N(0, process_sd^2)``: the level each process settles on;
- ``ar1``: a stationary AR(1) series with marginal SD ``within_sd`` and coefficient ``phi``
  (drawn per key, uniformly in ``NoiseModel.phi``), generated with ``scipy.signal.lfilter``;
- ``stall``: a share ``stall_share`` of samples is slowed by a factor drawn uniformly in
  ``stall_factor`` (scheduler stalls);
- ``step``: the planted relative slowdown, from night ``step_at`` on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseModel:
    """Noise of a simulated key (log-scale standard deviations are relative: 0.01 = 1%).

    ``run_sd``: (low, high) range of the night-to-night SD, drawn per key. ``process_sd``: SD of
    a process's own level. ``within_sd``: marginal SD of per-run samples. ``phi``: (low, high)
    range of the AR(1) coefficient, drawn per key. ``stall_share``: share of samples stalled;
    ``stall_factor``: (low, high) slowdown of a stalled sample. ``samples``: per-run latencies
    per process. ``processes``: processes per night. ``base_ms``: the key's level (ms).
    """

    run_sd: tuple[float, float] = (0.01, 0.02)
    process_sd: float = 0.005
    within_sd: float = 0.03
    phi: tuple[float, float] = (0.3, 0.9)
    stall_share: float = 0.005
    stall_factor: tuple[float, float] = (1.5, 10.0)
    samples: int = 300
    processes: int = 1
    base_ms: float = 2.0


def ar1(rng: np.random.Generator, phi: float, sd: float, shape: tuple[int, ...]) -> np.ndarray:
    """Stationary AR(1) series along the last axis: marginal SD ``sd``, lag-1 correlation
    ``phi`` (the first value is drawn from the stationary distribution)."""
    from scipy.signal import lfilter

    shocks = rng.standard_normal(shape) * sd * np.sqrt(1.0 - phi**2)
    shocks[..., 0] = rng.standard_normal(shape[:-1]) * sd
    return lfilter([1.0], [1.0, -phi], shocks, axis=-1)


def simulate_key(rng: np.random.Generator, model: NoiseModel, nights: int, *,
                 step: float = 0.0, step_at: int | None = None) -> list[list[np.ndarray]]:
    """One key's history: per night, a list of per-process latency arrays (ms). The step (a
    fraction, 0.07 = 7% slower) applies from night ``step_at`` (default: the last night)."""
    step_at = nights - 1 if step_at is None else step_at
    run_sd = rng.uniform(*model.run_sd)
    phi = rng.uniform(*model.phi)
    shape = (nights, model.processes, model.samples)
    logs = ar1(rng, phi, model.within_sd, shape)
    logs += rng.normal(0.0, run_sd, (nights, 1, 1))
    logs += rng.normal(0.0, model.process_sd, (nights, model.processes, 1))
    stalled = rng.random(shape) < model.stall_share
    logs[stalled] += np.log(rng.uniform(*model.stall_factor, int(stalled.sum())))
    logs[step_at:] += np.log1p(step)
    values = model.base_ms * np.exp(logs)
    return [list(night) for night in values]
