"""Round-robin sampling under the protocol's rules (LUT entries, kernels, probes), the judged
batch lines built from it, and a probe kernel measured as a judged, storable result."""
from __future__ import annotations

from dataclasses import replace

import pytest

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.fake import FakeClock, FakeRuntime
from costmeter.harness.batch import judged_line
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.probes.session import (
    ProbeSession,
    ProbeSpec,
    failed_probe,
    measure_probe,
    probe_protocol,
)
from costmeter.harness.protocol import sample_group, sample_interleaved
from costmeter.results.schema import Status, Validity

LUT_LIKE = ProtocolConfig(warmup_count=5, warmup_s=0.01, min_count=15, min_time_s=0.01,
                          max_time_s=2.0, percentiles=(50.0,), auto_min_count=False,
                          max_rel_ci=0.02, max_cv=0.5)


def _sessions(clock: FakeClock, *jitters: float, latency_us: str = "100"):
    runtime = FakeRuntime(clock)
    return [runtime.prepare(Artifact("none", {}), SessionOptions(options=(
        ("latency_us", latency_us), ("jitter", str(j)), ("seed", str(i))))) for i, j in enumerate(jitters)]


def test_round_robin_goes_on_past_the_minimum_count_until_every_median_is_pinned() -> None:
    clock = FakeClock()
    outcomes = sample_group(_sessions(clock, 0.01, 0.3), LUT_LIKE, clock)
    quiet, noisy = outcomes
    assert len(quiet.samples_ns) == len(noisy.samples_ns)  # rounds: every session runs once each
    # 15 samples pin a 1%-jitter median to +-2% but not a 30%-jitter one: it needs far more
    assert len(noisy.samples_ns) > 5 * LUT_LIKE.min_count
    assert not quiet.hit_max_time and not noisy.hit_max_time
    assert noisy.precision_checks >= 1 and not noisy.warmup_cut_short
    line = judged_line("noisy", noisy, LUT_LIKE)
    assert line["validity"] == "VALID" and line["samples"] == len(noisy.samples_ns)
    assert line["p50_low_ms"] < line["median_ms"] < line["p50_high_ms"]
    assert len(line["samples_ns"]) == line["samples"]
    steady = FakeClock()
    first, second = sample_interleaved(_sessions(steady, 0.0, 0.0), LUT_LIKE, steady)  # samples only
    assert len(first) == len(second) >= LUT_LIKE.min_count and set(first) == {100_000}


def test_time_limit_is_reported_per_session_with_its_verdict() -> None:
    clock = FakeClock()
    short = replace(LUT_LIKE, max_time_s=0.02)  # 2 sessions x 20 ms of 100 us runs: ~200 rounds
    quiet, wild = sample_group(_sessions(clock, 0.01, 2.0), short, clock)
    assert not quiet.hit_max_time  # its median was pinned when time ran out
    assert wild.hit_max_time
    assert clock() >= 2 * 0.02e9  # it did run to the limit (scaled by the group's size)
    line = judged_line("wild", wild, short)
    assert line["validity"] == "INVALID" and line["hit_max_time"]
    assert any("after --max-time" in r for r in line["reasons"]), line["reasons"]
    assert judged_line("quiet", quiet, short)["validity"] == "VALID"


def test_warm_up_cut_short_by_the_time_limit_is_flagged_in_every_outcome() -> None:
    clock = FakeClock()
    cut = replace(LUT_LIKE, warmup_s=5.0, max_time_s=0.05)
    outcomes = sample_group(_sessions(clock, 0.01, 0.01), cut, clock)
    assert all(o.warmup_cut_short for o in outcomes)
    line = judged_line("a", outcomes[0], cut)
    assert any(w.startswith("warm-up cut short by --max-time") for w in line["warnings"])
    calm_clock = FakeClock()
    calm = sample_group(_sessions(calm_clock, 0.01, 0.01), LUT_LIKE, calm_clock)
    assert not any(o.warmup_cut_short for o in calm)


def _gemm_spec(**kw) -> ProbeSpec:
    return ProbeSpec("gemm", "fake", work_per_run=2 * 64**3, shape=(64, 64),
                     options=(("size", "64"),), macs=64**3, **kw)


def test_a_probe_kernel_is_sampled_judged_and_keyed_for_the_store() -> None:
    clock = FakeClock()
    durations = iter([1_000_000, 2_000_000] * 10_000)  # alternating 1 ms and 2 ms runs
    result = measure_probe(_gemm_spec(threads=2), ProbeSession(lambda: clock.advance(next(durations))),
                           probe_protocol(min_count=10, min_time_s=0.05, max_time_s=1.0),
                           clock=clock, environment={"hostname": "test"}, run_id="r1")
    key = result.key
    assert (key.model_id, key.runtime, key.threads, key.dtype) == ("probe:gemm", "fake", 2, "float32")
    assert dict(key.options) == {"size": "64", "dtype": "float32"}
    assert result.status is Status.OK and result.model_info == {"macs": 64**3}
    assert result.measurement is not None and result.measurement.count >= 10
    assert result.extra["best_rate_per_s"] == pytest.approx(2 * 64**3 / 1e-3)  # the 1 ms runs
    assert result.extra["rate_unit"] == "FLOP/s" and result.extra["work_per_run"] == 2 * 64**3
    # half the runs take 2x as long: the median is not pinned to +-1% and the limit was hit
    assert result.validity is Validity.INVALID and result.measurement.hit_max_time
    assert any("p50 interval" in r for r in result.reasons)
    assert result.environment == {"hostname": "test"} and result.tag == "probe"
    steady = measure_probe(_gemm_spec(), ProbeSession(lambda: clock.advance(1_000_000)),
                           probe_protocol(min_count=10, min_time_s=0.05), clock=clock,
                           environment={}, run_id="r2")
    assert steady.validity is Validity.VALID, steady.reasons
    assert steady.extra["median_rate_per_s"] == pytest.approx(2 * 64**3 / 1e-3)
    assert steady.key.digest() == _gemm_spec().key().digest()  # same probe, same identity over time
    assert _gemm_spec(dtype="float64").key().model_hash != _gemm_spec().key().model_hash


def test_failed_probe_and_bad_specs() -> None:
    failed = failed_probe(_gemm_spec(), "torch is not installed", run_id="r")
    assert failed.status is Status.FAILED and failed.error == "torch is not installed"
    from costmeter.errors import ConfigError

    with pytest.raises(ConfigError, match="work unit"):
        ProbeSpec("x", "numpy", work_per_run=1.0, work_unit="ops")
    with pytest.raises(ConfigError, match="work per run must be > 0"):
        ProbeSpec("x", "numpy", work_per_run=0.0)


def test_batch_lines_become_stored_results_measured_or_failed(tmp_path) -> None:
    from costmeter.harness.batch_results import store_lines
    from costmeter.results.store import ResultStore

    clock = FakeClock()
    quiet, wild = sample_group(_sessions(clock, 0.01, 2.0), replace(LUT_LIKE, max_time_s=0.02), clock)
    onnx = tmp_path / "conv-3x3.onnx"
    onnx.write_bytes(b"model bytes")
    base = {"device": "cpu", "runtime": "onnxruntime", "threads": 1, "interleave": 2,
            "options": [["opt_level", "all"]], "protocol": {"min_count": 15}}
    entries = [{"key": "a", "onnx": str(onnx), "shape": [1, 16, 8, 8], "group": 0, "model_id": "lut:a"},
               {"key": "b", "onnx": str(onnx), "group": 0},
               {"key": "c", "onnx": str(onnx)},
               {"key": "never-ran", "onnx": str(onnx)}]
    lines = {"a": judged_line("a", quiet, LUT_LIKE), "b": judged_line("b", wild, LUT_LIKE),
             "c": {"key": "c", "median_ms": float("nan"), "spread_ms": float("nan"), "samples": 0,
                   "error": "worker died (signal 11)"}}
    store = ResultStore(f"sqlite:///{tmp_path / 'results.db'}")
    run_id = store_lines(store, base, entries, lines, {"hostname": "box"}, tag="lut")
    stored = {r.extra["batch_key"]: r for r in store.results(run_id=run_id)}
    store.close()
    assert set(stored) == {"a", "b", "c"}  # an entry without a line is not invented
    a, b, c = stored["a"], stored["b"], stored["c"]
    assert (a.key.model_id, b.key.model_id) == ("lut:a", "batch:conv-3x3")
    assert a.key.input_shape == (1, 16, 8, 8) and a.key.threads == 1
    assert dict(a.key.options) == {"opt_level": "all"} and a.key.model_hash == b.key.model_hash
    assert a.validity is Validity.VALID and a.measurement.samples_ns[0] == quiet.samples_ns
    assert b.validity is Validity.INVALID and b.measurement.hit_max_time
    assert b.reasons == lines["b"]["reasons"] and a.environment == {"hostname": "box"}
    assert c.status is Status.FAILED and c.error == "worker died (signal 11)" and c.tag == "lut"


def test_a_micro_benchmark_that_never_settles_stops_at_its_cap_not_at_ten_seconds() -> None:
    from costmeter.predictors.sampling.micro_measure import (MICRO_MAX_TIME_FACTOR,
                                                             MICRO_MAX_TIME_FLOOR_S, micro_protocol)

    protocol = micro_protocol(0.05)
    assert protocol.max_time_s == max(MICRO_MAX_TIME_FLOOR_S, MICRO_MAX_TIME_FACTOR * 0.05)
    assert micro_protocol(0.2).max_time_s == pytest.approx(2.0)  # wall-clock runner protocol
    clock = FakeClock()
    # a kernel and two baselines, one of them scattered (a busy machine): the median of a
    # 300%-jitter run never pins to +-2% within the cap
    outcomes = sample_group(_sessions(clock, 0.01, 0.01, 3.0), protocol, clock)
    assert outcomes[2].hit_max_time and not outcomes[0].hit_max_time
    spent_s = clock() / 1e9
    assert 3 * protocol.max_time_s <= spent_s < 3 * protocol.max_time_s + 0.5  # not 3 x 10 s
    assert all(o.samples_ns and len(o.samples_ns) == len(outcomes[0].samples_ns) for o in outcomes)
