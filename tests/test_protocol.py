"""The measurement protocol with a fake clock and the seeded fake runtime."""
from __future__ import annotations

import numpy as np
import pytest

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.fake import FakeClock, FakeRuntime
from costmeter.errors import ConfigError
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.protocol import judge, sample
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


def test_high_cv_is_invalid_with_reason() -> None:
    clock = FakeClock()
    s = _session(clock, latency_us="100", jitter="0.8", seed="3")
    cfg = ProtocolConfig(warmup_count=0, warmup_s=0, min_count=500, min_time_s=0, max_time_s=10,
                         percentiles=(50.0,), max_cv=0.1)
    out = sample(s, cfg, clock=clock)
    valid, reasons = judge(out.samples_ns, cfg)
    assert not valid and any("coefficient of variation" in r for r in reasons)


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
                                    {"percentiles": (100.0,)}, {"max_cv": 0}])
def test_bad_protocol_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ProtocolConfig(**kwargs)
