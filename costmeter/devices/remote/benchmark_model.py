"""Parser for the output of LiteRT/TensorFlow Lite's ``benchmark_model`` tool.

The format is the one documented with the tool (TensorFlow Lite ``tools/benchmark`` README and
the "Performance measurement" guide). Lines may carry a log prefix (``INFO: `` or a logcat
header); the parser looks for these anywhere in a line::

    The input model file size (MB): 3.06409
    Initialized session in 92.318ms.
    Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
    count=3 first=235158 curr=200386 min=199462 max=235158 avg=211669 std=16613 [p5=... median=... p95=...]
    Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
    count=25 first=187533 curr=140990 min=140071 max=195121 avg=145528 std=13583
    Inference timings in us: Init: 92318, First inference: 235158, Warmup (avg): 211669, Inference (avg): 145528
    Memory footprint delta from the start of the tool (MB): init=54.2852 overall=73.4102
    Overall peak memory footprint (MB) via periodic monitoring: 93.2383

The first ``count=`` line is the warm-up phase, the last one the timed runs. Times are in
microseconds (``count=`` lines and the timings line) or milliseconds (``Initialized session``).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from costmeter.errors import MeasurementError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_STATS_RE = re.compile(r"\bcount=(\d+)((?:\s+\w+=" + _NUM[1:-1] + r")*)")
_PAIR_RE = re.compile(r"(\w+)=" + _NUM)
_TIMINGS_RE = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                         + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
_INIT_RE = re.compile(r"Initialized session in " + _NUM + r"\s*ms")
_MODEL_SIZE_RE = re.compile(r"The input model file size \(MB\): " + _NUM)
_MEM_DELTA_RE = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=" + _NUM
                           + r" overall=" + _NUM)
_PEAK_RE = re.compile(r"(?:Overall )?peak memory footprint \(MB\)[^:]*:\s*" + _NUM, re.IGNORECASE)
_FAILED = ("Benchmarking failed", "Failed to apply", "Failed to allocate", "Failed to invoke",
           "Failed to load model", "Failed to create", "Could not open")


@dataclass
class RunStats:
    """One ``count=...`` line: runs and their latency statistics in microseconds."""

    count: int
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    avg_us: float | None = None
    std_us: float | None = None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass
class BenchmarkModelReport:
    """Everything the tool reported. ``inference`` is the timed phase, ``warmup`` the warm-up."""

    inference: RunStats
    warmup: RunStats | None = None
    init_ms: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    model_size_mb: float | None = None
    memory_init_delta_mb: float | None = None
    memory_overall_delta_mb: float | None = None
    peak_memory_mb: float | None = None
    delegate_lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _stats(line_match: re.Match[str]) -> RunStats:
    pairs = {k: float(v) for k, v in _PAIR_RE.findall(line_match.group(2))}
    return RunStats(count=int(line_match.group(1)),
                    **{f"{k}_us": pairs.get(k) for k in ("first", "curr", "min", "max", "avg", "std",
                                                         "p5", "median", "p95")})


def parse_benchmark_model(text: str) -> BenchmarkModelReport:
    """Parse the tool's output. MeasurementError (with the tool's own error line) when it failed
    or printed no timed-run statistics."""
    stats: list[RunStats] = []
    report: dict[str, Any] = {"delegate_lines": []}
    errors: list[str] = []
    failures: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _TIMINGS_RE.search(line):
            report.update(init_us=float(m.group(1)), first_inference_us=float(m.group(2)),
                          warmup_avg_us=float(m.group(3)), inference_avg_us=float(m.group(4)))
        elif m := _STATS_RE.search(line):
            stats.append(_stats(m))
        elif m := _INIT_RE.search(line):
            report["init_ms"] = float(m.group(1))
        elif m := _MODEL_SIZE_RE.search(line):
            report["model_size_mb"] = float(m.group(1))
        elif m := _MEM_DELTA_RE.search(line):
            report.update(memory_init_delta_mb=float(m.group(1)), memory_overall_delta_mb=float(m.group(2)))
        elif m := _PEAK_RE.search(line):
            report["peak_memory_mb"] = float(m.group(1))
        elif "delegate" in line.lower() and ("Created" in line or "Replacing" in line or "Explicitly" in line):
            report["delegate_lines"].append(line)
        if any(marker in line for marker in _FAILED):
            failures.append(line)
        elif "ERROR" in line:
            errors.append(line)
    if (failures or errors) and "inference_avg_us" not in report:
        first = (failures or errors)[0]  # the tool's own verdict before other error lines
        raise MeasurementError(f"benchmark_model failed: {first[:300]}; check the delegate and model "
                               "(e.g. drop --use_gpu for ops the GPU delegate lacks)")
    if not stats:
        raise MeasurementError("benchmark_model printed no run statistics (no 'count=' line); check that the "
                               "binary is LiteRT's benchmark_model and that it ran to the end")
    init_us = report.pop("init_us", None)
    if report.get("init_ms") is None and init_us is not None:
        report["init_ms"] = init_us / 1000.0
    return BenchmarkModelReport(inference=stats[-1], warmup=stats[0] if len(stats) > 1 else None, **report)
