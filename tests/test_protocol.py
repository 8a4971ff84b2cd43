"""The measurement protocol with a fake clock and the seeded fake runtime."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.fake import FakeClock, FakeRuntime
from costmeter.errors import ConfigError
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.protocol import judge, sample
from costmeter.harness.verdict import ONE_PROCESS_WARNING, ProcessRecord, judge_process, judge_processes
from costmeter.results.stats import min_samples_for_percentile


def _session(clock: FakeClock, **opts: str):
    rt = FakeRuntime(clock=clock)
    inputs = {"x": np.zeros((1, 4), dtype=np.float32)}
    return rt.prepare(Artifact("none", inputs), SessionOptions(options=tuple(opts.items())))


def test_sampling_stops_when_count_and_time_are_both_met() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="1000", jitter="0")  # 1 ms a run
    cfg = ProtocolConfig(warmup_count=5, warmup_s=0.01, min_count=50, min_time_s=1.0, max_time_s=10,
                         percentiles=(50.0,), auto_min_count=False)
    out = sample(s, cfg, clock=clock)
    # time dominates: 1 s of 1 ms runs -> 1000 samples, every one exactly 1 ms
    assert len(out.samples_ns) == 1000
    assert set(out.samples_ns) == {1_000_000}
    assert out.warmup_count == 10  # 10 ms of warm-up at 1 ms a run (time beats the count of 5)
    assert not out.hit_max_time


def test_count_dominates_when_runs_are_slow_and_auto_count_covers_p99() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="10000", jitter="0.01")  # 10 ms a run
    cfg = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=10, min_time_s=0.1, max_time_s=100)
    out = sample(s, cfg, clock=clock)
    need = min_samples_for_percentile(99.0, 0.95)
    assert len(out.samples_ns) == max(need, 10)
    valid, reasons = judge(out.samples_ns, cfg, out.hit_max_time)
    assert valid, reasons


def test_max_time_bounds_sampling_and_invalidates() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="100000", jitter="0")  # 100 ms a run
    cfg = ProtocolConfig(warmup_count=0, warmup_s=0, min_count=100, min_time_s=0.5, max_time_s=1.0,
                         percentiles=(50.0, 99.0))
    out = sample(s, cfg, clock=clock)
    assert out.hit_max_time
    assert len(out.samples_ns) == 10
    valid, reasons = judge(out.samples_ns, cfg, out.hit_max_time)
    assert not valid
    assert any("maximum time" in r for r in reasons)
    assert any("too few samples" in r and "p99" in r for r in reasons)


def test_high_cv_is_a_warning_when_the_median_is_pinned() -> None:
    """A shared machine's stalls: 10,000 runs at 7.4 us +-1% and 20 stalls of 4-44 ms. CV is
    ~300%, the median is known to better than 0.1%: VALID, with the stalls in the warning."""
    rng = np.random.default_rng(4)
    samples = rng.normal(7400.0, 74.0, 10_000)
    samples[rng.choice(10_000, 20, replace=False)] = np.linspace(4e6, 44e6, 20)
    cfg = ProtocolConfig(percentiles=(50.0, 90.0), max_cv=0.15)
    verdict = judge_process(samples.tolist(), cfg)
    assert verdict.valid, verdict.reasons
    (cv_warning,) = [w for w in verdict.warnings if "coefficient of variation" in w]
    assert "longest stall 44 ms" in cv_warning and "outside Tukey's fences" in cv_warning
    assert verdict.summary.max_over_median == pytest.approx(44e6 / np.median(samples), rel=1e-6)
    # Tukey's fences (k=1.5) flag 0.70% of normal data; the 20 stalls add 0.2%.
    assert verdict.summary.outlier_share == pytest.approx(0.0070 + 20 / 10_000, abs=0.002)
    # The same samples against a tighter precision than they reach: INVALID, and it says why.
    strict = judge_process(samples.tolist(), ProtocolConfig(percentiles=(50.0,), max_rel_ci=0.0001))
    assert not strict.valid and any("wider than --max-rel-ci" in r for r in strict.reasons)


def test_sampling_goes_on_until_the_median_is_precise() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="100", jitter="0.5", seed="3")
    cfg = ProtocolConfig(warmup_count=0, warmup_s=0, min_count=200, min_time_s=0.01, max_time_s=60,
                         percentiles=(50.0,), max_rel_ci=0.01, precision_check_s=0.1)
    out = sample(s, cfg, clock=clock)
    assert not out.hit_max_time
    # lognormal sigma 0.5: +-1% needs roughly (1.96 * 1.25 * 0.5 / 0.01)**2 ~ 15,000 samples
    assert 8_000 < len(out.samples_ns) < 30_000
    verdict = judge_process(out.samples_ns, cfg)
    assert verdict.valid, verdict.reasons
    assert verdict.summary.percentiles[50.0].rel_half_width <= 0.01
    # Checked every 0.1 s of (fake) sampling time, not every sample.
    assert 1 < out.precision_checks <= out.sampling_s / 0.1 + 2


class _Ar1Session:
    """Latency 1 ms * exp(0.1 * AR(1), phi = 0.9): consecutive runs alike, as on a busy machine."""

    synchronous = True

    def __init__(self, clock: FakeClock, seed: int = 0) -> None:
        self.clock, self.rng, self.state = clock, np.random.default_rng(seed), 0.0

    def run_once(self) -> None:
        self.state = 0.9 * self.state + self.rng.standard_normal()
        self.clock.advance(1e6 * np.exp(0.1 * self.state))

    def synchronize(self) -> None:
        pass


def test_serially_correlated_samples_are_taken_until_the_tail_has_an_interval() -> None:
    cfg = ProtocolConfig(warmup_count=0, warmup_s=0, min_count=10, min_time_s=0.0, max_time_s=30.0,
                         percentiles=(50.0, 99.0), max_rel_ci=0.5, precision_check_s=0.2)
    need = cfg.target_count()  # 368: enough for p99 were the samples independent
    clock = FakeClock()
    out = sample(_Ar1Session(clock), cfg, clock=clock)
    assert len(out.samples_ns) > 2 * need and not out.hit_max_time  # ~19x fewer effective samples
    verdict = judge_process(out.samples_ns, cfg)
    assert verdict.valid, verdict.reasons
    assert verdict.summary.serial.widened and verdict.summary.percentiles[99.0].widened
    clock = FakeClock()
    short = sample(_Ar1Session(clock, seed=1), replace(cfg, max_time_s=0.5), clock=clock)
    assert short.hit_max_time and len(short.samples_ns) >= need
    verdict = judge_process(short.samples_ns, replace(cfg, max_time_s=0.5), hit_max_time=True)
    assert any(r.startswith("too few effective samples for a p99") for r in verdict.reasons), verdict.reasons


def test_imprecise_median_at_max_time_is_invalid_and_loose_tail_is_a_warning() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="1000", jitter="0.8", seed="5")
    cfg = ProtocolConfig(warmup_count=0, warmup_s=0, min_count=400, min_time_s=0.1, max_time_s=1.0,
                         percentiles=(50.0, 99.0))
    out = sample(s, cfg, clock=clock)
    assert out.hit_max_time and len(out.samples_ns) >= 400
    verdict = judge_process(out.samples_ns, cfg, hit_max_time=out.hit_max_time)
    assert not verdict.valid
    assert any("p50 interval is" in r and "after --max-time 1 s" in r for r in verdict.reasons)
    assert any(w.startswith("p99 is loose") for w in verdict.warnings)
    assert not any("p99" in r for r in verdict.reasons)  # a loose tail never invalidates


def test_warm_up_cut_short_by_max_time_is_a_warning() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="1000", jitter="0")
    cfg = ProtocolConfig(warmup_count=5000, warmup_s=0, min_count=10, min_time_s=0.01, max_time_s=1.0,
                         percentiles=(50.0,), auto_min_count=False)
    out = sample(s, cfg, clock=clock)
    assert out.warmup_cut_short and out.warmup_count == 1000
    verdict = judge_process(out.samples_ns, cfg, warmup_cut_short=True, warmup=(out.warmup_count, out.warmup_s))
    assert verdict.valid and any("warm-up cut short by --max-time (1000 runs" in w for w in verdict.warnings)
    ok = sample(_session(FakeClock(), latency_us="1000", jitter="0"), replace(cfg, warmup_count=10))
    assert not ok.warmup_cut_short


def test_each_process_is_judged_on_its_own() -> None:
    cfg = ProtocolConfig(percentiles=(50.0,), min_count=500)
    rng = np.random.default_rng(2)
    full = [ProcessRecord(rng.normal(1e6, 1e4, 2000).tolist()) for _ in range(2)]
    short = ProcessRecord(rng.normal(1e6, 1e4, 300).tolist(), hit_max_time=True)
    verdict = judge_processes([*full, short], cfg)
    # Pooled there are 4,300 samples, far past 500: the short process still makes it INVALID.
    assert not verdict.valid
    assert any(r.startswith("process 3 of 3: maximum time") and "after 300 of 500" in r for r in verdict.reasons)
    assert judge_processes(full + [ProcessRecord(rng.normal(1e6, 1e4, 2000).tolist())], cfg).valid


def test_processes_on_different_levels_make_the_headline_imprecise() -> None:
    cfg = ProtocolConfig(percentiles=(50.0,))
    rng = np.random.default_rng(8)
    records = [ProcessRecord(rng.normal(m, 0.01 * m, 5000).tolist()) for m in (7400.0, 7400.0, 10500.0)]
    verdict = judge_processes(records, cfg)
    assert all(judge_process(r.samples_ns, cfg).valid for r in records)  # each one is precise
    assert not verdict.valid
    (reason,) = verdict.reasons
    assert reason.startswith("headline p50 interval") and "process medians range 7.4 us to 10.5 us" in reason
    assert verdict.summary.processes.count == 3


def test_one_process_carries_the_warning_that_it_cannot_see_process_variation() -> None:
    cfg = ProtocolConfig(percentiles=(50.0,))
    rng = np.random.default_rng(1)
    verdict = judge_processes([ProcessRecord(rng.normal(1e6, 1e4, 2000).tolist())], cfg)
    assert verdict.valid and ONE_PROCESS_WARNING in verdict.warnings
    assert verdict.summary.processes.count == 1


def test_clock_sanity_and_throttled_blocks() -> None:
    cfg = ProtocolConfig(percentiles=(50.0,), min_count=10)
    valid, reasons = judge([100.0] * 20 + [0.0], cfg)
    assert not valid and any("clock sanity" in r for r in reasons)
    valid, reasons = judge([100.0] * 50, cfg, blocks=10, throttled_blocks=5)
    assert not valid and any("throttled" in r for r in reasons)
    valid, _ = judge([100.0] * 50, cfg, blocks=10, throttled_blocks=1)
    assert valid


class _BlockSession:
    """A device-timed session: time_block returns scripted latencies; every 2nd block throttled."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.blocks = 0

    def run_once(self) -> None:
        self.clock.advance(1000)

    def synchronize(self) -> None:
        pass

    def time_block(self, n: int) -> list[int]:
        self.clock.advance(n * 2000)
        return [2000] * n

    def block_health(self) -> dict:
        self.blocks += 1
        return {"throttled": self.blocks % 2 == 0, "sm_clock_mhz": 1000}


def test_device_timed_blocks_and_health_are_used() -> None:
    clock = FakeClock()
    s = _BlockSession(clock)
    cfg = ProtocolConfig(warmup_count=1, warmup_s=0, min_count=100, min_time_s=0, max_time_s=10,
                         percentiles=(50.0,), block_size=10, auto_min_count=False)
    out = sample(s, cfg, clock=clock)
    assert out.samples_ns == [2000] * 100
    assert out.blocks == 10 and out.throttled_blocks == 5
    valid, reasons = judge(out.samples_ns, cfg, blocks=out.blocks, throttled_blocks=out.throttled_blocks)
    assert not valid and "5 of 10 blocks" in reasons[0]


@pytest.mark.parametrize("kwargs", [{"min_count": 0}, {"max_time_s": 1, "min_time_s": 2},
                                    {"percentiles": (100.0,)}, {"percentiles": (0.0, 50.0)},
                                    {"percentiles": ()}, {"max_cv": 0}, {"max_rel_ci": 0},
                                    {"max_rel_ci": 1}, {"max_rel_ci": -0.01}, {"max_rel_ci": 1.5}])
def test_bad_protocol_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ProtocolConfig(**kwargs)
