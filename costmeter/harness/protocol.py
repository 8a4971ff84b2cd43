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

from costmeter.devices.base import (
    BlockTimedSession,
    EnergyMeter,
    EnergyReading,
    HealthCheckedSession,
    Session,
    is_synchronous,
)
from costmeter.harness.config import ProtocolConfig

Clock = Callable[[], int]


@dataclass
class ProtocolOutcome:
    """Raw output of one sampling session in one process.

    ``hit_max_time``: sampling stopped at ``max_time_s`` (before the count, time and precision
    targets were all met). ``warmup_cut_short``: warm-up stopped at ``max_time_s`` before its
    count and time were reached. ``precision_checks``: how often the median's precision was
    computed while sampling (outside the timed regions).
    """

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
    warmup_cut_short: bool = False
    precision_checks: int = 0


def warm_up(session: Session, config: ProtocolConfig, clock: Clock = time.perf_counter_ns) -> tuple[int, float]:
    """Run until both ``warmup_count`` runs and ``warmup_s`` seconds have passed (bounded by
    ``max_time_s``). Returns (runs, seconds); seconds >= ``max_time_s`` with fewer runs or less
    time than asked means the warm-up was cut short (see :func:`warmup_was_cut_short`)."""
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


def warmup_was_cut_short(config: ProtocolConfig, runs: int, seconds: float) -> bool:
    """True when a warm-up of ``runs`` runs and ``seconds`` s stopped at ``max_time_s`` short of
    ``warmup_count`` runs or ``warmup_s`` seconds."""
    return seconds >= config.max_time_s and (runs < config.warmup_count or config.warmup_s > config.max_time_s)


def sample(
    session: Session,
    config: ProtocolConfig,
    clock: Clock = time.perf_counter_ns,
    energy_meter: EnergyMeter | None = None,
) -> ProtocolOutcome:
    """Warm up, then sample per-run latency (ns) until the target count and ``min_time_s`` are
    reached, every reported percentile has an interval and the median's is within
    ``max_rel_ci``, stopping at ``max_time_s``. Energy is read
    around the sampling window only."""
    warm_count, warm_s = warm_up(session, config, clock)
    target = config.target_count()
    if energy_meter is not None:
        energy_meter.start()
    if isinstance(session, (BlockTimedSession, HealthCheckedSession)):
        outcome = _sample_blocks(session, config, clock, target)
    else:
        outcome = _sample_host(session, config, clock, target)
    if energy_meter is not None:
        outcome.energy = energy_meter.stop()
    outcome.warmup_count = warm_count
    outcome.warmup_s = warm_s
    outcome.warmup_cut_short = warmup_was_cut_short(config, warm_count, warm_s)
    return outcome


class _StopRule:
    """When to stop sampling: count and minimum time first, then the reported figures pinned
    down (:func:`figures_pinned`), checked at most every ``precision_check_s`` and spending at most ~5% of the wall time on it
    (the next check waits 20x as long as the last one took). ``max_time_s`` ends it anyway."""

    def __init__(self, config: ProtocolConfig, clock: Clock, target: int, start: int) -> None:
        self.config = config
        self.clock = clock
        self.max_at = start + int(config.max_time_s * 1e9)
        self.check_at = start + int(config.min_time_s * 1e9)  # nothing to decide before these
        self.check_n = target
        self.checks = 0

    def due(self, n: int, now: int) -> bool:
        """Cheap test, once per sample or block: is a decision due?"""
        return (now >= self.check_at and n >= self.check_n) or now >= self.max_at

    def stop(self, samples: list[int], now: int) -> tuple[bool, bool]:
        """(stop, hit_max_time): called when :meth:`due`; runs the precision check if needed."""
        if now >= self.check_at and len(samples) >= self.check_n:
            t0 = self.clock()
            self.checks += 1
            if figures_pinned(samples, self.config):
                return True, False
            cost = self.clock() - t0
            self.check_at = self.clock() + max(int(self.config.precision_check_s * 1e9), 20 * cost)
        if now >= self.max_at:
            return True, True
        self.check_at = min(self.check_at, self.max_at)
        return False, False


def figures_pinned(samples_ns: list[int] | list[float], config: ProtocolConfig) -> bool:
    """True when every reported percentile has an interval and the median's has a relative
    half-width within ``config.max_rel_ci`` (intervals widened for serial correlation exactly
    as in the summary, so correlated samples need more of them)."""
    from costmeter.results.stats import summarize

    if len(samples_ns) < 2:
        return False
    qs = tuple(sorted(set(config.percentiles) | {50.0}))
    summary = summarize(samples_ns, percentiles=qs, confidence=config.confidence)
    width = summary.percentiles[50.0].rel_half_width
    return width is not None and width <= config.max_rel_ci and all(p.has_ci for p in summary.percentiles.values())


def _sample_host(session: Session, config: ProtocolConfig, clock: Clock, target: int) -> ProtocolOutcome:
    """The tight host-clock loop: one sample per run, nothing else inside the timed region."""
    samples: list[int] = []
    append = samples.append
    run = session.run_once
    sync = None if is_synchronous(session) else session.synchronize
    start = clock()
    rule = _StopRule(config, clock, target, start)
    check_at, check_n, max_at = rule.check_at, rule.check_n, rule.max_at
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
        if (t1 >= check_at and n >= check_n) or t1 >= max_at:  # the only test per run
            done, hit_max = rule.stop(samples, t1)
            if done:
                break
            check_at = rule.check_at
    return ProtocolOutcome(samples, 0, 0.0, (clock() - start) / 1e9, hit_max, target,
                           precision_checks=rule.checks)


def _sample_blocks(session: Session, config: ProtocolConfig, clock: Clock, target: int) -> ProtocolOutcome:
    """Blocks of ``block_size`` runs, device-timed when the session offers ``time_block``,
    with a health check (clocks, throttling) after each block."""
    samples: list[int] = []
    health: list[dict[str, Any]] = []
    throttled = 0
    blocks = 0
    time_block = session.time_block if isinstance(session, BlockTimedSession) else None
    check = session.block_health if isinstance(session, HealthCheckedSession) else None
    start = clock()
    rule = _StopRule(config, clock, target, start)
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
        now = clock()
        if rule.due(len(samples), now):
            done, hit_max = rule.stop(samples, now)
            if done:
                break
    return ProtocolOutcome(samples, 0, 0.0, (clock() - start) / 1e9, hit_max, target, blocks, throttled, health,
                           precision_checks=rule.checks)


def judge(
    samples_ns: list[float],
    config: ProtocolConfig,
    hit_max_time: bool = False,
    blocks: int = 0,
    throttled_blocks: int = 0,
) -> tuple[bool, list[str]]:
    """Decide validity of one process's samples. Returns (valid, reasons); each reason says
    what to change. :func:`costmeter.harness.verdict.judge_process` also returns warnings."""
    from costmeter.harness.verdict import judge_process

    verdict = judge_process(samples_ns, config, hit_max_time=hit_max_time, blocks=blocks,
                            throttled_blocks=throttled_blocks)
    return verdict.valid, verdict.reasons


def sample_group(sessions: list[Any], protocol: ProtocolConfig,
                 clock: Clock = time.perf_counter_ns) -> list[ProtocolOutcome]:
    """One outcome per session. One session: :func:`sample` as is. Several: the protocol's rules
    applied round-robin, every run timed alone, with each limit scaled by the number of
    sessions ``n`` (each session gets its share of the time):

    - warm-up rounds until ``warmup_count`` rounds and ``warmup_s`` x n seconds, bounded by
      ``max_time_s`` x n (a warm-up cut short is flagged in every outcome);
    - sampling rounds until every session has the target count, ``min_time_s`` x n seconds have
      passed and every session's reported figures are pinned (:func:`figures_pinned`), checked
      outside the timed regions at most every ``precision_check_s`` and for at most ~5% of the
      time; ``max_time_s`` x n ends it, and each session whose count or precision was not
      reached by then has ``hit_max_time`` set.

    ``sampling_s`` of each outcome is the wall time of the whole round-robin."""
    if len(sessions) == 1:
        return [sample(sessions[0], protocol, clock)]
    n = len(sessions)
    runs = [(s.run_once, None if is_synchronous(s) else s.synchronize) for s in sessions]
    start = clock()
    need_ns, cap_ns = protocol.warmup_s * 1e9 * n, protocol.max_time_s * 1e9 * n
    rounds = 0
    while True:
        elapsed = clock() - start
        if (rounds >= protocol.warmup_count and elapsed >= need_ns) or elapsed >= cap_ns:
            break
        for run, sync in runs:
            run()
            if sync is not None:
                sync()
        rounds += 1
    warm_s = (clock() - start) / 1e9 / n  # each session's share, as the protocol counts it
    cut_short = warmup_was_cut_short(protocol, rounds, warm_s)
    samples: list[list[int]] = [[] for _ in sessions]
    target = protocol.target_count()
    start = clock()
    check_at = start + int(protocol.min_time_s * 1e9) * n
    max_at = start + int(protocol.max_time_s * 1e9) * n
    pinned = [False] * n
    checks = 0
    stopped_at_max = False
    while True:
        for (run, sync), out in zip(runs, samples):
            t0 = clock()
            run()
            if sync is not None:
                sync()
            out.append(clock() - t0)
        now = clock()
        if now >= check_at and len(samples[0]) >= target:
            t0 = clock()
            checks += 1
            pinned = [done or figures_pinned(out, protocol) for done, out in zip(pinned, samples)]
            if all(pinned):
                break
            cost = clock() - t0
            check_at = clock() + max(int(protocol.precision_check_s * 1e9), 20 * cost)
        if now >= max_at:
            stopped_at_max = True
            pinned = [done or figures_pinned(out, protocol) for done, out in zip(pinned, samples)]
            break
    sampling_s = (clock() - start) / 1e9
    return [ProtocolOutcome(out, rounds, warm_s, sampling_s,
                            stopped_at_max and not (done and len(out) >= target), target,
                            warmup_cut_short=cut_short, precision_checks=checks)
            for out, done in zip(samples, pinned)]


def sample_interleaved(sessions: list[Any], protocol: ProtocolConfig,
                       clock: Clock = time.perf_counter_ns) -> list[list[int]]:
    """Samples (ns) per session of :func:`sample_group` (the flags dropped)."""
    return [outcome.samples_ns for outcome in sample_group(sessions, protocol, clock)]
