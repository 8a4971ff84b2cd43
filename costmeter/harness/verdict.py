"""Validity of a measurement: INVALID only when a reported figure is not pinned down.

The rule (README, "How to read the numbers"):

- INVALID: no samples; a clock that went backwards; a reported percentile without a confidence
  interval (too few samples, or too few *effective* samples when they are serially correlated);
  the count asked for not reached before ``--max-time``; the median's interval wider than
  ``--max-rel-ci`` (relative half-width); more than ``max_throttled_share`` of blocks throttled.
  Output parity failures are judged by the runner (they need the reference outputs).
- Warning (VALID stays VALID): CV above ``--max-cv`` (with the stall figures: longest stall,
  outlier share, robust dispersion); a non-median percentile looser than ``tail_rel_ci``; a
  warm-up cut short by ``--max-time``; serial correlation too strong to widen for with so few
  samples; a single process, whose interval says nothing about process-to-process variation.
- Several processes: each is judged on its own (its reasons are prefixed ``process i of N``),
  and the headline, whose intervals include the spread between processes, must be precise too.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from costmeter.harness.config import ProtocolConfig
from costmeter.results.stats import Summary, min_samples_for_percentile, percentile_name


@dataclass
class Verdict:
    """``valid`` with the ``reasons`` it is not, ``warnings`` that leave it valid, and the
    ``summary`` it was judged on (None when there were no samples)."""

    valid: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: Summary | None = None


@dataclass
class ProcessRecord:
    """What one process's sampling left for judging: samples (ns, in time order) and flags."""

    samples_ns: Sequence[float]
    hit_max_time: bool = False
    blocks: int = 0
    throttled_blocks: int = 0
    warmup_cut_short: bool = False
    warmup_count: int = 0
    warmup_s: float = 0.0


ONE_PROCESS_WARNING = (
    "one process: its intervals cover this process's sampling noise only, not process-to-process "
    "variation (a process can settle on a slower level for its whole life); use --processes 3 or "
    "more for intervals that do"
)


def fmt_ns(ns: float | None) -> str:
    """A duration in ns as ``7.40 us``, ``11.9 ms`` or ``1.20 s``."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _judged_percentiles(config: ProtocolConfig) -> tuple[float, ...]:
    """The reported percentiles plus the median (throughput and the precision rule use it)."""
    return tuple(sorted(set(config.percentiles) | {50.0}))


def judge_process(
    samples_ns: Sequence[float],
    config: ProtocolConfig,
    hit_max_time: bool = False,
    blocks: int = 0,
    throttled_blocks: int = 0,
    warmup_cut_short: bool = False,
    warmup: tuple[int, float] = (0, 0.0),
) -> Verdict:
    """Judge one process's samples (ns, in time order); see the module docstring."""
    from costmeter.results.stats_hier import summarize_processes

    n = len(samples_ns)
    if n == 0:
        return Verdict(False, ["no samples were taken; raise --max-time"])
    reasons: list[str] = []
    warnings: list[str] = []
    if min(samples_ns) <= 0:
        reasons.append("clock sanity failed: a sample was <= 0 ns (clock went backwards or is too coarse)")
    summary = summarize_processes([samples_ns], _judged_percentiles(config), config.confidence)
    reasons += _unpinned_reasons(summary, config)
    if hit_max_time and n < config.target_count():
        reasons.append(
            f"maximum time ({config.max_time_s:g} s) reached after {n} of {config.target_count()} "
            "samples; raise --max-time"
        )
    reasons += _precision_reasons(summary, config, hit_max_time)
    if blocks and throttled_blocks / blocks > config.max_throttled_share:
        reasons.append(
            f"{throttled_blocks} of {blocks} blocks ran while the device was throttled "
            f"(limit {config.max_throttled_share:.0%}); let it cool or fix its clocks"
        )
    warnings += noise_warnings(summary, config)
    if warmup_cut_short:
        warnings.append(
            f"warm-up cut short by --max-time ({warmup[0]} runs in {warmup[1]:.3g} s; asked "
            f"{config.warmup_count} runs and {config.warmup_s:g} s): early samples may still be warming up"
        )
    return Verdict(not reasons, reasons, warnings, summary)


def judge_processes(records: Sequence[ProcessRecord], config: ProtocolConfig) -> Verdict:
    """Judge a measurement of one or more processes: each on its own, then the headline, whose
    intervals include the between-process spread (see ``results.stats_hier``)."""
    from costmeter.results.stats_hier import summarize_processes

    verdicts = [judge_process(r.samples_ns, config, r.hit_max_time, r.blocks, r.throttled_blocks,
                              r.warmup_cut_short, (r.warmup_count, r.warmup_s)) for r in records]
    count = len(records)
    if count == 1:
        v = verdicts[0]
        v.warnings.append(ONE_PROCESS_WARNING)
        return v
    reasons: list[str] = []
    warnings: list[str] = []
    for i, v in enumerate(verdicts):
        reasons += [f"process {i + 1} of {count}: {r}" for r in v.reasons]
        warnings += [f"process {i + 1} of {count}: {w}" for w in v.warnings if w.startswith("warm-up")]
    groups = [r.samples_ns for r in records if len(r.samples_ns)]
    if not groups:
        return Verdict(False, reasons or ["no samples were taken; raise --max-time"], warnings)
    summary = summarize_processes(groups, _judged_percentiles(config), config.confidence)
    reasons += _precision_reasons(summary, config, hit_max_time=False, headline=True)
    warnings += noise_warnings(summary, config)
    return Verdict(not reasons, reasons, warnings, summary)


def _unpinned_reasons(summary: Summary, config: ProtocolConfig) -> list[str]:
    """A reason for each reported percentile without an interval."""
    out = []
    for q in config.percentiles:
        p = summary.percentiles[q]
        if p.has_ci:
            continue
        name = percentile_name(q)
        if p.widened:
            r = summary.serial.lag1_r if summary.serial is not None else float("nan")
            out.append(
                f"too few effective samples for a {name} confidence interval: {summary.n} samples, "
                f"serially correlated (lag-1 r {r:.2f}); raise --min-time or drop {name} from --percentiles"
            )
        else:
            need = min_samples_for_percentile(q, config.confidence)
            out.append(
                f"too few samples ({summary.n}) for a {name} confidence interval at {config.confidence:.0%}: "
                f"need >= {need}; raise --max-time or drop {name} from --percentiles"
            )
    return out


def _precision_reasons(summary: Summary, config: ProtocolConfig, hit_max_time: bool,
                       headline: bool = False) -> list[str]:
    """The median's relative half-width against ``max_rel_ci`` (no reason when it has no
    interval: that is reported as too few samples)."""
    p50 = summary.percentiles.get(50.0)
    width = None if p50 is None else p50.rel_half_width
    if width is None or width <= config.max_rel_ci:
        return []
    what = f"p50 interval is +-{width:.2%} ({fmt_ns(p50.low)} to {fmt_ns(p50.high)})"
    limit = f"wider than --max-rel-ci +-{config.max_rel_ci:.2%}"
    spread = summary.processes
    if headline and spread is not None and spread.count > 1:
        return [
            f"headline {what}, {limit}: process medians range {fmt_ns(min(spread.medians))} to "
            f"{fmt_ns(max(spread.medians))} (between-process SD {spread.between_rel_sd:.1%}); "
            "pin the workers (--cpus), quiet the machine, add processes, or raise --max-rel-ci"
        ]
    when = f" after --max-time {config.max_time_s:g} s" if hit_max_time else ""
    return [f"{what}{when}, {limit}: raise --max-time, quiet the machine (or pin it with --cpus), "
            "or raise --max-rel-ci"]


def noise_warnings(summary: Summary, config: ProtocolConfig) -> list[str]:
    """Warnings that leave a result VALID: CV above ``max_cv`` (with the stall figures), loose
    non-median percentiles, serial correlation that could not be allowed for."""
    out = []
    if summary.cv == summary.cv and summary.cv > config.max_cv:
        out.append(
            f"coefficient of variation {summary.cv:.1%} is above --max-cv {config.max_cv:.0%}: longest "
            f"stall {fmt_ns(summary.max)} ({summary.max_over_median:,.0f}x the median), "
            f"{summary.outlier_share:.1%} of samples outside Tukey's fences (k=1.5), robust dispersion "
            f"MAD/median {summary.mad_rel:.1%}; the machine is noisy (other load, frequency scaling)"
        )
    for q in config.percentiles:
        p = summary.percentiles[q]
        width = p.rel_half_width
        if q != 50.0 and width is not None and width > config.tail_rel_ci:
            out.append(
                f"{percentile_name(q)} is loose: +-{width:.1%} ({fmt_ns(p.low)} to {fmt_ns(p.high)}), "
                f"more than +-{config.tail_rel_ci:.0%}; measure longer (--min-time) to pin the tail"
            )
    serial = summary.serial
    if serial is not None and serial.significant and not serial.widened:
        out.append(
            f"samples are serially correlated (lag-1 r {serial.lag1_r:.2f}) but too few "
            "(< 100 per process) to widen the intervals for it; they may be too narrow"
        )
    return out
