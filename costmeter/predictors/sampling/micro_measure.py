"""Measuring micro-benchmark ONNX files through the harness runner, like any model: one
isolated worker per file, results optionally stored (the graphs come from
:mod:`costmeter.models.onnx.microbench`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


# a micro-benchmark samples at most this many times its minimum sampling time (and at least
# MICRO_MAX_TIME_FLOOR_S): in a quiet build of 30 minutes on a 2-core VM, the 12 groups (of 587)
# that never reached +-2% sampled to the former 10 s cap and took 830 s of the 1,245 s of
# kernel sampling; on a busy machine most small kernels never reach it
MICRO_MAX_TIME_FACTOR = 10.0
MICRO_MAX_TIME_FLOOR_S = 0.5


def micro_protocol(min_time_s: float = 0.2, min_count: int = 30) -> Any:
    """A short protocol for micro-benchmarks (median only, no percentile CIs needed). Sampling goes
    on past the minimums until the median is within +-2%, for at most
    ``max(MICRO_MAX_TIME_FLOOR_S, MICRO_MAX_TIME_FACTOR * min_time_s)`` seconds: enough for a cost
    model whose own errors are several percent. A kernel stopped by that cap is flagged
    (``hit_max_time``) and keeps the median of what it sampled."""
    from costmeter.harness.config import ProtocolConfig

    max_time_s = max(MICRO_MAX_TIME_FLOOR_S, MICRO_MAX_TIME_FACTOR * min_time_s)
    return ProtocolConfig(warmup_count=10, warmup_s=0.05, min_count=min_count,
                          min_time_s=min_time_s, max_time_s=max_time_s,
                          percentiles=(50.0,), auto_min_count=False, max_cv=0.5, max_rel_ci=0.02)


def measure_onnx(paths: Sequence[Path | str], device: str = "cpu", runtime: str = "onnxruntime",
                 workdir: Path | str = ".costmeter", protocol: Any = None,
                 threads: int | None = 1, sink: Any = None, tag: str | None = None,
                 progress: Any = None) -> list[Any]:
    """Measure ONNX files through the harness runner; returns their RunResults in order.

    Every file runs in its own worker process; ``sink`` (e.g. a ResultStore) receives each
    result as it finishes. Output parity against torch is skipped (there is no torch module).
    """
    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import Runner, validate

    protocol = protocol or micro_protocol()
    configs = [RunConfig(model=str(p), device=device, runtime=runtime, threads=threads,
                         protocol=protocol, check_outputs=False, workdir=str(workdir), tag=tag)
               for p in paths]
    jobs = validate(configs)
    return Runner(sink, Path(workdir), progress=progress).run(jobs, tag=tag)


def median_ms(result: Any) -> float:
    """Median latency of a RunResult in ms (NaN when the run failed or has no samples)."""
    if result.measurement is None or not result.measurement.all_samples_ns():
        return float("nan")
    import numpy as np

    return float(np.median(result.measurement.all_samples_ns())) / 1e6
