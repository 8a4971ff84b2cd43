"""The FAKE energy meter: deterministic, labelled, and a counter only when asked to pretend."""
from __future__ import annotations

import pytest

from costmeter.devices.base import EnergyMeter
from costmeter.devices.energy.fake import FakeEnergyMeter
from costmeter.errors import ConfigError, MeasurementError


class StepClock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_constant_power_times_window_and_labelled_fake():
    meter = FakeEnergyMeter(power_w=12.5, clock=StepClock(100.0, 102.0))
    assert isinstance(meter, EnergyMeter)
    assert meter.is_available() == (True, "")
    meter.start()
    r = meter.stop()
    assert r.energy_j == pytest.approx(25.0) and r.window_s == pytest.approx(2.0)
    assert r.provenance == "estimated"
    assert r.domains_j == {"fake": pytest.approx(25.0)}
    assert any(w.startswith("FAKE energy meter") for w in r.warnings)


def test_counter_provenance_only_when_pretending():
    meter = FakeEnergyMeter(power_w=4.0, clock=StepClock(0.0, 0.5), pretend_counter=True)
    meter.start()
    r = meter.stop()
    assert r.provenance == "counter" and r.energy_j == pytest.approx(2.0)
    assert any("FAKE" in w for w in r.warnings)


def test_unavailable_and_misuse():
    meter = FakeEnergyMeter(available=False, clock=StepClock(0.0, 1.0))
    ok, reason = meter.is_available()
    assert not ok and reason
    meter.start()
    r = meter.stop()
    assert r.provenance == "unavailable" and r.energy_j is None and r.reason == reason
    with pytest.raises(MeasurementError):
        FakeEnergyMeter().stop()
    with pytest.raises(ConfigError):
        FakeEnergyMeter(power_w=-1.0)
