"""Each benchmark runs in a child process; crashes, kills, hangs and OOM become failed results."""
from __future__ import annotations

from pathlib import Path

import pytest

from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.runner import Runner, validate
from costmeter.results.schema import Status, Validity

# A shared CI machine preempts busy-waits now and then: that raises CV (a warning), not the median's
# precision, which is what decides validity.
FAST = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=50, min_time_s=0.05, max_time_s=5,
                      percentiles=(50.0, 90.0))


class ListSink:
    def __init__(self) -> None:
        self.results = []

    def write(self, result) -> None:
        self.results.append(result)


def _cfg(workdir: Path, model: str, **opts: str) -> RunConfig:
    return RunConfig(model=model, device="fake", runtime="fake", protocol=FAST, workdir=str(workdir),
                     options=tuple(opts.items()), timeout_s=30)


@pytest.mark.slow
def test_faults_are_recorded_and_the_run_goes_on(workdir: Path) -> None:
    configs = [
        _cfg(workdir, "segv", fault="segfault"),
        _cfg(workdir, "killed", fault="kill", fault_when="run"),
        _cfg(workdir, "raises", fault="raise"),
        _cfg(workdir, "healthy", latency_us="50", jitter="0.02"),
    ]
    oom = RunConfig(model="oom", device="fake", runtime="fake", protocol=FAST, workdir=str(workdir),
                    options=(("fault", "oom"),), memory_limit_bytes=1 << 30)
    hang = RunConfig(model="hang", device="fake", runtime="fake", protocol=FAST, workdir=str(workdir),
                     options=(("fault", "hang"),), timeout_s=3)
    sink = ListSink()
    results = Runner(sink, workdir).run(validate(configs + [oom, hang]))
    by_model = {r.key.model_id: r for r in results}
    assert len(sink.results) == 6  # every result written, failed ones included
    assert by_model["segv"].status is Status.FAILED and "SIGSEGV" in by_model["segv"].error
    assert by_model["killed"].status is Status.FAILED and "SIGKILL" in by_model["killed"].error
    assert by_model["raises"].status is Status.FAILED and "failed on purpose" in by_model["raises"].error
    assert by_model["oom"].status is Status.FAILED and "out of memory" in by_model["oom"].error
    assert by_model["hang"].status is Status.FAILED and "timed out after 3 s" in by_model["hang"].error
    ok = by_model["healthy"]
    assert ok.status is Status.OK and ok.validity is Validity.VALID, ok.reasons
    med = ok.measurement.summary((50.0,)).median
    assert 45_000 < med < 80_000  # 50 us busy-wait, measured for real in the child
    assert ok.memory.peak_rss_bytes > ok.memory.baseline_rss_bytes > 0
    assert ok.energy.energy_j is None and ok.energy.reason


@pytest.mark.slow
def test_processes_keep_per_process_samples(workdir: Path) -> None:
    cfg = RunConfig(model="p", device="fake", runtime="fake", protocol=FAST, workdir=str(workdir),
                    processes=3, options=(("latency_us", "20"),))
    (result,) = Runner(None, workdir).run(validate([cfg]))
    assert result.status is Status.OK
    assert len(result.measurement.samples_ns) == 3
    assert all(len(p) >= 50 for p in result.measurement.samples_ns)
    assert result.extra["per_process_samples"] == [len(p) for p in result.measurement.samples_ns]


def test_peak_rss_is_this_process_image_not_the_parents(workdir: Path, tmp_path: Path) -> None:
    """A parent holding a big buffer must not inflate the worker's peak (ru_maxrss would)."""
    from costmeter.harness.worker import peak_rss_bytes

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n")
    assert peak_rss_bytes(str(status)) == 12345 * 1024
    ballast = bytearray(400 * 2**20)  # 400 MiB resident in the parent
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    cfg = RunConfig(model="rss", device="fake", runtime="fake", protocol=FAST, workdir=str(workdir),
                    options=(("latency_us", "20"),))
    (result,) = Runner(None, workdir).run(validate([cfg]))
    assert result.memory.peak_rss_bytes < 300 * 2**20
    del ballast
