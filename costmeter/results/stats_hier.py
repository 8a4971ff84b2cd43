"""Samples from several processes: a two-level hierarchy (processes, then runs within each).

A process can settle on a level for its whole life (memory layout, the core it was scheduled
on, a neighbour's load): its samples then agree with each other far better than with another
process's. Pooling the samples and using the order-statistic interval treats 3 x 100,000 samples
as 300,000 independent ones and hides that spread. Here the process is the unit of replication.

Headline interval of each percentile (``N >= 2`` processes): the union of

- the pooled within-process interval (order statistics, widened for serial correlation per
  process, see :func:`costmeter.results.stats.summarize_series`), and
- a Student-t interval on the N per-process percentiles: ``mean +- t(N-1) * sd / sqrt(N)``.

Assumptions of the t-interval: the processes are independent draws of the same process-level
distribution (a fresh process each, nothing shared between them but the machine), and their
percentiles are roughly normally distributed about its mean. With few processes and a
two-level ("slow level") distribution that is rough, but the t quantile with N - 1 degrees of
freedom is then large (12.7 for N = 2, 4.3 for N = 3), so processes that disagree give a wide
interval, never a narrow one. The estimand is the mean over processes of the percentile, which
the pooled point value (kept as the headline value) approximates when processes ran for similar
counts; the union keeps the point inside its interval.

One process gives no information about process-to-process variation: its interval covers only
its own sampling noise.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from costmeter.results.stats import DEFAULT_PERCENTILES, PercentileCI, Summary, summarize_series


@dataclass(frozen=True)
class ProcessSpread:
    """Per-process figures and the spread between processes (ns where the samples were ns).

    ``medians``: each process's median. ``median_sd``: standard deviation of those medians
    (ddof=1; NaN for one process). ``between_sd``: the part of it not explained by each median's
    own sampling error (``sqrt(max(0, var(medians) - mean(se_j**2)))`` with ``se_j`` from the
    process's 95% median interval, half-width / 1.96). ``rel_range``: ``(max - min) / mean`` of
    the medians; ``between_rel_sd``: ``between_sd / mean`` (both unitless). ``per_process``:
    one dict per process (n, median, p50 interval and its relative half-width, cv, mad_rel,
    max_over_median, lag-1 r, whether its intervals were widened for serial correlation).
    """

    count: int
    medians: tuple[float, ...]
    median_sd: float
    between_sd: float
    rel_range: float
    between_rel_sd: float
    per_process: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None)."""
        return {
            "count": self.count,
            "medians": list(self.medians),
            "median_sd": _none_if_nan(self.median_sd),
            "between_sd": _none_if_nan(self.between_sd),
            "rel_range": _none_if_nan(self.rel_range),
            "between_rel_sd": _none_if_nan(self.between_rel_sd),
            "per_process": [dict(p) for p in self.per_process],
        }


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize_processes(
    groups: Sequence[Sequence[float] | np.ndarray],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    confidence: float = 0.95,
    serial: bool = True,
) -> Summary:
    """Headline statistics of samples from one or more processes (each in time order, any
    unit; results in the same unit). Point values are those of the pooled samples; intervals
    account for between-process spread as the module docstring says. ``processes`` of the
    result holds the per-process figures. Empty groups are skipped; ConfigError if all are.
    """
    from costmeter.errors import ConfigError

    parts = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not parts:
        raise ConfigError("no samples to summarize; run the benchmark for at least one sample")
    pooled = summarize_series(parts, percentiles, confidence, serial)
    singles = [pooled] if len(parts) == 1 else [summarize_series([p], percentiles, confidence, serial)
                                                 for p in parts]
    spread = _spread(singles)
    if len(parts) < 2:
        return replace(pooled, processes=spread)
    from costmeter.results.distributions import t_ppf

    t_quantile = t_ppf(0.5 + confidence / 2.0, len(parts) - 1)
    widened: dict[float, PercentileCI] = {}
    for q, p in pooled.percentiles.items():
        values = np.array([s.percentiles[q].value for s in singles])
        half = t_quantile * float(np.std(values, ddof=1)) / math.sqrt(len(values))
        centre = float(np.mean(values))
        if not p.has_ci:
            widened[q] = p
            continue
        low = min(p.low, centre - half, p.value)
        high = max(p.high, centre + half, p.value)
        widened[q] = replace(p, low=low, high=high, widened=p.widened or (low, high) != (p.low, p.high))
    return replace(pooled, percentiles=widened, processes=spread)


def _spread(singles: list[Summary]) -> ProcessSpread:
    medians = np.array([s.median for s in singles])
    per_process = []
    se2 = []
    for s in singles:
        p50 = s.percentiles.get(50.0)
        if p50 is not None and p50.has_ci:
            se2.append(((p50.high - p50.low) / 2.0 / 1.96) ** 2)
        per_process.append({
            "n": s.n,
            "median": s.median,
            "p50_low": None if p50 is None else p50.low,
            "p50_high": None if p50 is None else p50.high,
            "p50_rel_half_width": None if p50 is None else p50.rel_half_width,
            "cv": _none_if_nan(s.cv),
            "mad_rel": _none_if_nan(s.mad_rel),
            "max_over_median": _none_if_nan(s.max_over_median),
            "lag1_r": None if s.serial is None else _none_if_nan(s.serial.lag1_r),
            "serial_widened": bool(s.serial is not None and s.serial.widened),
        })
    mean = float(np.mean(medians))
    if len(singles) < 2:
        return ProcessSpread(1, (float(medians[0]),), math.nan, math.nan, 0.0, math.nan, tuple(per_process))
    var = float(np.var(medians, ddof=1))
    within = float(np.mean(se2)) if len(se2) == len(singles) else 0.0
    between = math.sqrt(max(0.0, var - within))
    return ProcessSpread(
        count=len(singles),
        medians=tuple(float(m) for m in medians),
        median_sd=math.sqrt(var),
        between_sd=between,
        rel_range=float(medians.max() - medians.min()) / mean if mean > 0 else math.nan,
        between_rel_sd=between / mean if mean > 0 else math.nan,
        per_process=tuple(per_process),
    )
