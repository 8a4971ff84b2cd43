"""NVML helpers and the NVML energy meter with a scripted fake NVML: device info, index mapping,
process memory; counter deltas, a counter going backwards, the power-integration fallback,
short-window flags, idle power and a missing NVML."""
from __future__ import annotations

import os
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costmeter.devices.base import EnergyMeter
from costmeter.devices.cuda.fake import FakeNvml
from costmeter.devices.cuda.nvml import NvmlDevice, decode_throttle_reasons, gpu_environment, resolve_nvml_target
from costmeter.devices.energy.nvml import (
    NvmlEnergyMeter,
    energy_above_idle_j,
    integrate_power_w,
)

NO_COUNTER = ("nvmlDeviceGetTotalEnergyConsumption",)


class FakeClock:
    """Seconds that move only when told to (or when the meter 'sleeps')."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def counter_meter(values: list[int], clock: FakeClock, **kwargs: object) -> NvmlEnergyMeter:
    # the first counter value is consumed by the probe that picks counter mode
    nvml = FakeNvml(energy_mj=values)
    return NvmlEnergyMeter(0, nvml=nvml, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ NVML helpers


def test_throttle_reasons_are_decoded_into_names() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x1 | 0x4 | 0x40) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0x8 | 0x10000) == ["hw_slowdown", "unknown_0x10000"]


def test_cuda_index_is_mapped_to_nvml() -> None:
    assert resolve_nvml_target(0, env={}) == 0
    assert resolve_nvml_target(1, env={"CUDA_VISIBLE_DEVICES": "3,2"}) == 2
    assert resolve_nvml_target(0, env={"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == "GPU-abc"
    assert resolve_nvml_target(0, uuid="abc-123", env={"CUDA_VISIBLE_DEVICES": "5"}) == "GPU-abc-123"
    device = NvmlDevice.open(0, nvml=FakeNvml(device_count=2), env={"CUDA_VISIBLE_DEVICES": "1"})
    assert device.handle == ("handle", 1)


def test_device_info_reads_identity_clocks_and_temperature() -> None:
    nvml = FakeNvml(throttle_masks=[0x4], unsupported=("nvmlDeviceGetPowerManagementLimit",))
    info = gpu_environment(0, nvml=nvml, env={})
    assert info["gpu_name"] == "Fake GPU 80GB"
    assert info["gpu_driver_version"] == "550.54.15"
    assert info["cuda_driver_version"] == "12.4"
    assert info["gpu_sm_clock_mhz"] == 1980 and info["gpu_max_sm_clock_mhz"] == 1980
    assert info["gpu_mem_clock_mhz"] == 2619
    assert info["gpu_temperature_c"] == 45
    assert info["gpu_throttle_reasons"] == ["sw_power_cap"]
    assert info["gpu_power_limit_w"] is None  # NOT_SUPPORTED -> unknown, not invented
    assert nvml.init_count == 0  # opened and closed


def test_gpu_environment_without_nvml_says_why() -> None:
    info = gpu_environment(0, nvml=FakeNvml(init_error=9), env={})
    assert "NVML could not start" in info["gpu_nvml_unavailable"]


def test_process_memory_is_this_process_or_unknown() -> None:
    me = os.getpid()
    device = NvmlDevice.open(0, nvml=FakeNvml(processes=[(me, 123), (me + 1, 5)]), env={})
    assert device.process_used_bytes() == 123
    assert device.memory_used_bytes() == 2 * 2**30
    assert NvmlDevice.open(0, nvml=FakeNvml(processes=[(me + 1, 5)]), env={}).process_used_bytes() is None
    assert NvmlDevice.open(0, nvml=FakeNvml(processes=[(me, None)]), env={}).process_used_bytes() is None


# ------------------------------------------------------------------------------ energy meter


def test_meter_satisfies_the_energy_meter_protocol() -> None:
    assert isinstance(NvmlEnergyMeter(0, nvml=FakeNvml()), EnergyMeter)


def test_counter_delta_is_converted_from_millijoules_to_joules() -> None:
    clock = FakeClock()
    meter = counter_meter([1_000, 5_000, 7_500], clock)
    assert meter.is_available() == (True, "")
    assert meter.mode == "counter"
    meter.start()
    clock.sleep(1.0)
    reading = meter.stop()
    assert reading.provenance == "counter"
    assert reading.energy_j == pytest.approx(2.5)
    assert reading.window_s == pytest.approx(1.0)
    assert reading.domains_j == {"cuda:0": pytest.approx(2.5)}
    assert reading.warnings == []


def test_counter_going_backwards_is_flagged_not_guessed() -> None:
    clock = FakeClock()
    meter = counter_meter([10_000, 10_000, 4_000], clock)
    meter.start()
    clock.sleep(2.0)
    reading = meter.stop()
    assert reading.provenance == "unavailable"
    assert reading.energy_j is None
    assert "went backwards (10000 -> 4000 mJ)" in reading.reason
    assert reading.warnings == ["energy counter reset or wrapped during the window"]


def test_counter_near_the_top_of_its_range_still_gives_the_exact_delta() -> None:
    top = 2**64 - 10_000
    clock = FakeClock()
    meter = counter_meter([top, top, top + 3_000], clock)
    meter.start()
    clock.sleep(0.5)
    assert meter.stop().energy_j == pytest.approx(3.0)


def test_window_shorter_than_the_update_period_is_flagged() -> None:
    clock = FakeClock()
    meter = counter_meter([0, 0, 2_000], clock)
    meter.start()
    clock.sleep(0.02)
    reading = meter.stop()
    assert reading.provenance == "counter"
    assert reading.energy_j == pytest.approx(2.0)
    assert len(reading.warnings) == 1
    assert "20.0 ms is shorter than NVML's ~100 ms update period" in reading.warnings[0]


def test_counter_that_did_not_move_says_so() -> None:
    clock = FakeClock()
    meter = counter_meter([50, 50, 50], clock)
    meter.start()
    clock.sleep(0.5)
    reading = meter.stop()
    assert reading.energy_j == 0.0
    assert any("did not change" in w for w in reading.warnings)


def test_counter_read_error_at_the_end_gives_no_figure() -> None:
    clock = FakeClock()
    nvml = FakeNvml(energy_mj=[0, 100])
    meter = NvmlEnergyMeter(0, nvml=nvml, clock=clock)
    meter.start()
    nvml.unsupported.add("nvmlDeviceGetTotalEnergyConsumption")
    clock.sleep(1.0)
    reading = meter.stop()
    assert reading.provenance == "unavailable" and reading.energy_j is None
    assert "could not be read at the end" in reading.reason


def test_power_integration_fallback_when_the_counter_is_not_supported() -> None:
    nvml = FakeNvml(power_mw=[150_000], unsupported=NO_COUNTER)
    meter = NvmlEnergyMeter(0, nvml=nvml, power_sample_interval_s=0.002)
    assert meter.is_available() == (True, "")
    assert meter.mode == "integrated-power"
    meter.start()
    time.sleep(0.03)
    reading = meter.stop()
    assert reading.provenance == "integrated-power"
    # constant 150 W over the span between the first and the last sample
    assert reading.energy_j == pytest.approx(150.0 * reading.window_s, rel=1e-9)
    assert reading.window_s >= 0.03
    # the probe, the first sample in start(), the thread's samples, the last in stop()
    assert nvml.calls["nvmlDeviceGetPowerUsage"] >= 4
    assert any("integrated from" in w for w in reading.warnings)
    assert any("shorter than NVML's" in w for w in reading.warnings)  # 30 ms < 100 ms
    meter.close()


def test_power_failure_during_the_window_gives_no_figure() -> None:
    nvml = FakeNvml(power_mw=[100_000], unsupported=NO_COUNTER)
    meter = NvmlEnergyMeter(0, nvml=nvml, power_sample_interval_s=0.001)
    meter.start()
    nvml.unsupported.add("nvmlDeviceGetPowerUsage")
    time.sleep(0.01)
    reading = meter.stop()
    assert reading.provenance == "unavailable" and reading.energy_j is None
    assert "power reading failed during the window" in reading.reason


def test_neither_counter_nor_power_is_unavailable_with_the_reason() -> None:
    nvml = FakeNvml(unsupported=NO_COUNTER + ("nvmlDeviceGetPowerUsage",))
    meter = NvmlEnergyMeter(0, nvml=nvml)
    ok, reason = meter.is_available()
    assert not ok and "neither total energy nor power" in reason
    meter.start()
    reading = meter.stop()
    assert reading.provenance == "unavailable" and reading.reason == reason


def test_nvml_without_a_driver_is_unavailable_and_stop_still_answers() -> None:
    nvml = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    meter = NvmlEnergyMeter(0, nvml=nvml)
    ok, reason = meter.is_available()
    assert not ok
    assert "NVML could not start" in reason and "no NVIDIA driver" in reason
    meter.start()  # must not raise: latency is still measured
    reading = meter.stop()
    assert reading.provenance == "unavailable"
    assert reading.energy_j is None
    assert reading.reason == reason
    assert meter.idle_power_w() is None and meter.idle_reason == reason


def test_missing_bindings_name_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    ok, reason = NvmlEnergyMeter(0).is_available()
    assert not ok
    assert "nvidia-ml-py" in reason


def test_missing_gpu_index_is_unavailable() -> None:
    ok, reason = NvmlEnergyMeter(3, nvml=FakeNvml(device_count=1), env={}).is_available()
    assert not ok
    assert "no GPU 3 for cuda:3" in reason and "NVML sees 1 GPU(s)" in reason


def test_idle_power_from_the_counter() -> None:
    clock = FakeClock()
    # probe, then 1000 mJ before and 31000 mJ after 0.5 s of idle: 30 J / 0.5 s = 60 W
    meter = counter_meter([0, 1_000, 31_000], clock)
    assert meter.idle_power_w(0.5) == pytest.approx(60.0)


def test_idle_power_from_power_samples() -> None:
    clock = FakeClock()
    nvml = FakeNvml(power_mw=[40_000, 50_000, 60_000, 70_000], unsupported=NO_COUNTER)
    meter = NvmlEnergyMeter(0, nvml=nvml, clock=clock, sleep=clock.sleep, power_sample_interval_s=0.25)
    # probe reads 40 W; then samples 50, 60, 70 W at 0, 0.25, 0.5 s
    assert meter.idle_power_w(0.5) == pytest.approx(60.0)
    assert clock.now == pytest.approx(100.5)


def test_idle_counter_going_backwards_gives_none_with_reason() -> None:
    clock = FakeClock()
    meter = counter_meter([5_000, 5_000, 1_000], clock)
    assert meter.idle_power_w(0.5) is None
    assert "went backwards" in meter.idle_reason


def test_energy_above_idle() -> None:
    assert energy_above_idle_j(30.0, 50.0, 0.5) == pytest.approx(5.0)
    assert energy_above_idle_j(None, 50.0, 0.5) is None
    assert energy_above_idle_j(30.0, None, 0.5) is None


def test_trapezoid_on_a_triangle() -> None:
    assert integrate_power_w([0.0, 1.0, 2.0], [100.0, 200.0, 100.0]) == pytest.approx(300.0)
    assert integrate_power_w([1.0], [100.0]) == 0.0
    with pytest.raises(ValueError):
        integrate_power_w([0.0, 1.0], [1.0])


@given(
    st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=1, max_size=30),
    st.floats(min_value=0.0, max_value=1000.0),
    st.floats(min_value=-50.0, max_value=50.0),
)
def test_trapezoid_is_exact_for_linear_power(steps: list[float], p0: float, slope: float) -> None:
    times = [0.0]
    for dt in steps:
        times.append(times[-1] + dt)
    powers = [p0 + slope * t for t in times]
    t1 = times[-1]
    exact = p0 * t1 + slope * t1 * t1 / 2
    assert integrate_power_w(times, powers) == pytest.approx(exact, rel=1e-9, abs=1e-9)


def test_sampling_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NvmlEnergyMeter(0, nvml=FakeNvml(), power_sample_interval_s=0)
