"""The measurement protocol: warm-up, sampling until time and count are met, validity.

Adapters only execute (``Session.run_once``/``synchronize``); this module times them. Sessions
may offer optional hooks, used when present:

- ``synchronous = True``: ``synchronize()`` is a no-op and is not called in the timed loop.
- ``time_block(n) -> list[int]``: run ``n`` iterations timed by the device's own clock (CUDA
  events), per-iteration ns. Used instead of the host clock.
- ``block_health() -> dict``: after each block of ``block_size`` runs; ``{"throttled": bool,
  "reasons": [...], ...}``. Throttled blocks are counted; too many make the result INVALID.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from costmeter.devices.base import EnergyMeter, EnergyReading, Session
from costmeter.harness.config import ProtocolConfig

Clock = Callable[[], int]


@dataclass
class ProtocolOutcome:
    """Raw output of one sampling session in one process."""

    samples_ns: list[int]
    warmup_count: int
    warmup_s: float
    sampling_s: float
    hit_max_time: bool
    target_count: int
    blocks: int = 0
    throttled_blocks: int = 0
    health: list[dict[str, Any]] = field(default_factory=list)
    energy: EnergyReading | None = None


def warm_up(session: Session, config: ProtocolConfig, clock: Clock = time.perf_counter_ns) -> tuple[int, float]:
    """Run until both ``warmup_count`` runs and ``warmup_s`` seconds have passed (bounded by
    ``max_time_s``). Returns (runs, seconds)."""
    start = clock()
    need_ns = config.warmup_s * 1e9
    cap_ns = config.max_time_s * 1e9
    count = 0
    while True:
        elapsed = clock() - start
        if (count >= config.warmup_count and elapsed >= need_ns) or elapsed >= cap_ns:
            break
        session.run_once()
        session.synchronize()
        count += 1
    return count, (clock() - start) / 1e9


def sample(
    session: Session,
    config: ProtocolConfig,
    clock: Clock = time.perf_counter_ns,
    energy_meter: EnergyMeter | None = None,
) -> ProtocolOutcome:
    """Warm up, then sample per-run latency (ns) until both the target count and ``min_time_s``
    are reached, stopping at ``max_time_s``. Energy is read around the sampling window only."""
    warm_count, warm_s = warm_up(session, config, clock)
    target = config.target_count()
    if energy_meter is not None:
        energy_meter.start()
    if hasattr(session, "time_block") or hasattr(session, "block_health"):
        outcome = _sample_blocks(session, config, clock, target)
    else:
        outcome = _sample_host(session, config, clock, target)
    if energy_meter is not None:
        outcome.energy = energy_meter.stop()
    outcome.warmup_count = warm_count
    outcome.warmup_s = warm_s
    return outcome


def _sample_host(session: Session, config: ProtocolConfig, clock: Clock, target: int) -> ProtocolOutcome:
    """The tight host-clock loop: one sample per run, nothing else inside the timed region."""
    samples: list[int] = []
    append = samples.append
    run = session.run_once
    sync = None if getattr(session, "synchronous", False) else session.synchronize
    min_ns = int(config.min_time_s * 1e9)
    max_ns = int(config.max_time_s * 1e9)
    start = clock()
    n = 0
    while True:
        if sync is None:
            t0 = clock()
            run()
            t1 = clock()
        else:
            t0 = clock()
            run()
            sync()
            t1 = clock()
        append(t1 - t0)
        n += 1
        elapsed = t1 - start
        if n >= target and elapsed >= min_ns:
            hit_max = False
            break
        if elapsed >= max_ns:
            hit_max = True
            break
    return ProtocolOutcome(samples, 0, 0.0, (clock() - start) / 1e9, hit_max, target)


def _sample_blocks(session: Session, config: ProtocolConfig, clock: Clock, target: int) -> ProtocolOutcome:
    """Blocks of ``block_size`` runs, device-timed when the session offers ``time_block``,
    with a health check (clocks, throttling) after each block."""
    samples: list[int] = []
    health: list[dict[str, Any]] = []
    throttled = 0
    blocks = 0
    min_ns = int(config.min_time_s * 1e9)
    max_ns = int(config.max_time_s * 1e9)
    time_block = getattr(session, "time_block", None)
    check = getattr(session, "block_health", None)
    start = clock()
    while True:
        if time_block is not None:
            samples.extend(int(s) for s in time_block(config.block_size))
        else:
            for _ in range(config.block_size):
                t0 = clock()
                session.run_once()
                session.synchronize()
                samples.append(clock() - t0)
        blocks += 1
        if check is not None:
            state = dict(check())
            state["block"] = blocks - 1
            health.append(state)
            throttled += bool(state.get("throttled"))
        elapsed = clock() - start
        if len(samples) >= target and elapsed >= min_ns:
            hit_max = False
            break
        if elapsed >= max_ns:
            hit_max = True
            break
    return ProtocolOutcome(samples, 0, 0.0, (clock() - start) / 1e9, hit_max, target, blocks, throttled, health)


def judge(
    samples_ns: list[float],
    config: ProtocolConfig,
    hit_max_time: bool = False,
    blocks: int = 0,
    throttled_blocks: int = 0,
) -> tuple[bool, list[str]]:
    """Decide validity. Returns (valid, reasons); each reason says what to change."""
    from costmeter.results.stats import min_samples_for_percentile, summarize

    reasons: list[str] = []
    n = len(samples_ns)
    if n == 0:
        return False, ["no samples were taken; raise --max-time"]
    if min(samples_ns) <= 0:
        reasons.append("clock sanity failed: a sample was <= 0 ns (clock went backwards or is too coarse)")
    summary = summarize(samples_ns, percentiles=config.percentiles, confidence=config.confidence)
    for q, pci in summary.percentiles.items():
        if pci.low is None or pci.high is None:
            need = min_samples_for_percentile(q, config.confidence)
            reasons.append(
                f"too few samples ({n}) for a p{q:g} confidence interval at {config.confidence:.0%}: "
                f"need >= {need}; raise --max-time or drop p{q:g} from --percentiles"
            )
    if hit_max_time and n < config.target_count():
        reasons.append(
            f"maximum time ({config.max_time_s:g} s) reached after {n} of {config.target_count()} "
            "samples; raise --max-time"
        )
    if summary.cv > config.max_cv:
        reasons.append(
            f"coefficient of variation {summary.cv:.1%} is above {config.max_cv:.0%}: the machine is "
            "noisy (other load, frequency scaling); quiet it, pin threads, or raise --max-cv"
        )
    if blocks and throttled_blocks / blocks > config.max_throttled_share:
        reasons.append(
            f"{throttled_blocks} of {blocks} blocks ran while the device was throttled "
            f"(limit {config.max_throttled_share:.0%}); let it cool or fix its clocks"
        )
    return not reasons, reasons


def sample_interleaved(sessions: list[Any], protocol: ProtocolConfig,
                       clock: Clock = time.perf_counter_ns) -> list[list[int]]:
    """Samples (ns) per session. One session: the harness protocol as is. Several: the
    protocol's rules applied round-robin -- warm-up runs, then rounds in which every session
    runs once, timed alone, until every session has ``min_count`` samples and the rounds took
    ``min_time_s`` per session, stopping at ``max_time_s`` per session."""
    if len(sessions) == 1:
        return [sample(sessions[0], protocol, clock).samples_ns]
    runs = [(s.run_once, None if getattr(s, "synchronous", False) else s.synchronize)
            for s in sessions]
    warm_until = clock() + int(protocol.warmup_s * 1e9)
    rounds = 0
    while rounds < protocol.warmup_count or clock() < warm_until:
        for run, sync in runs:
            run()
            if sync is not None:
                sync()
        rounds += 1
    samples: list[list[int]] = [[] for _ in sessions]
    min_ns = int(protocol.min_time_s * 1e9) * len(sessions)
    max_ns = int(protocol.max_time_s * 1e9) * len(sessions)
    start = clock()
    while True:
        for (run, sync), out in zip(runs, samples):
            t0 = clock()
            run()
            if sync is not None:
                sync()
            out.append(clock() - t0)
        elapsed = clock() - start
        if (len(samples[0]) >= protocol.min_count and elapsed >= min_ns) or elapsed >= max_ns:
            return samples
