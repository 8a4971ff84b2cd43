"""The cache curve: this machine's read cost (us per MB) against the working set (MB).

A working set of S MB is the first S / ``chunk_mb`` of a pool of float32 buffers, read in turn
(a dot product each, one thread), like a network reading each kernel's weights once per run.
One timed run of a size reads its working set over and over, about ``block_mb`` of reads, so
that the set is warm for all but the first pass. Every size is one probe
(:mod:`costmeter.harness.probes.session`), and the sizes are sampled round-robin together
(:func:`costmeter.harness.protocol.sample_group`), so that a burst of other work on a shared
machine touches them alike, until every size's median is pinned or the time limit is hit; each
size is judged and, with a ``sink``, stored with its raw samples and environment. The curve
keeps each size's fastest run (other work only adds time).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from costmeter.errors import ConfigError
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.probes.session import PROBE_TAG, ProbeSession, ProbeSpec, probe_protocol, probe_result

CURVE_SIZES_MB: tuple[float, ...] = (0.5, 1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128)
CURVE_CHUNK_MB = 0.25


def cache_protocol(repeats: int = 9, max_time_s: float = 2.0) -> ProtocolConfig:
    """At least ``repeats`` runs per size, the median within 2%, at most ``max_time_s`` (s) per
    size (the round-robin's limits are this times the number of sizes)."""
    return probe_protocol(min_count=repeats, min_time_s=0.05, max_time_s=max_time_s,
                          max_rel_ci=0.02, warmup_count=1, warmup_s=0.0)


def measure_cache_curve(sizes_mb: Sequence[float] = CURVE_SIZES_MB,
                        chunk_mb: float = CURVE_CHUNK_MB, repeats: int = 9,
                        block_mb: float = 512.0, *, sink: Any = None,
                        protocol: ProtocolConfig | None = None,
                        clock: Any = time.perf_counter_ns) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """This machine's read cost (us per MB) per working set (MB): (sizes MB, us per MB), from
    each size's fastest run. ``sink`` (the store: ``write(result)``) receives every size's
    judged result (model ``probe:cache-read``, tag ``probe``)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from costmeter.harness.protocol import sample_group
    from costmeter.harness.runner import new_run_id

    if not sizes_mb or chunk_mb <= 0 or repeats < 1 or block_mb <= 0:
        raise ConfigError("the cache curve needs at least one size, a positive chunk and block, "
                          "and repeats >= 1")
    protocol = protocol or cache_protocol(repeats)
    counts = [max(1, round(size / chunk_mb)) for size in sizes_mb]
    pool = [np.ones(int(chunk_mb * 1e6 / 4), np.float32) for _ in range(max(counts))]
    specs: list[ProbeSpec] = []
    sessions: list[ProbeSession] = []
    for size, count in zip(sizes_mb, counts):
        passes = max(2, int(block_mb / (count * chunk_mb)))

        def read(buffers: list[Any] = pool[:count], passes: int = passes) -> None:
            for _ in range(passes):
                for buffer in buffers:
                    np.dot(buffer, buffer)

        sessions.append(ProbeSession(read))
        specs.append(ProbeSpec("cache-read", "numpy", work_per_run=passes * count * chunk_mb * 1e6,
                               work_unit="B", threads=1, shape=(count, int(chunk_mb * 1e6 / 4)),
                               options=(("chunk_mb", f"{chunk_mb:g}"), ("working_set_mb", f"{size:g}"))))
    with threadpool_limits(limits=1):
        outcomes = sample_group(sessions, protocol, clock)
    costs = []
    run_id = new_run_id()
    environment = None
    for spec, outcome in zip(specs, outcomes):
        fastest_ns = min((s for s in outcome.samples_ns if s > 0), default=float("nan"))
        costs.append(float(fastest_ns / 1e3 / (spec.work_per_run / 1e6)))
        if sink is not None:
            if environment is None:
                from costmeter.harness.environment import capture

                environment = capture(threads=1)
            sink.write(probe_result(spec, outcome, protocol, environment=environment, run_id=run_id,
                                    tag=PROBE_TAG, extra={"us_per_mb_fastest": costs[-1]}))
    return tuple(float(s) for s in sizes_mb), tuple(costs)
