"""FAKE energy meter for tests and demos: constant power times the window. Not a measurement.

Its readings say so in ``warnings``, and its provenance is ``estimated`` unless a test asks it to
pretend to be a counter (``pretend_counter=True``) to exercise counter-only code paths.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from costmeter.devices.base import EnergyReading
from costmeter.errors import ConfigError, MeasurementError


class FakeEnergyMeter:
    """Deterministic FAKE EnergyMeter: ``energy_j = power_w * window_s`` from an injected clock.

    ``power_w`` in watts; ``clock`` returns seconds; ``available=False`` makes ``is_available``
    and ``stop`` report ``unavailable_reason``.
    """

    def __init__(
        self,
        power_w: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
        pretend_counter: bool = False,
        available: bool = True,
        unavailable_reason: str = "fake energy meter switched off for this test",
    ) -> None:
        if power_w < 0:
            raise ConfigError(f"power_w={power_w!r} must be >= 0 watts")
        self.power_w = float(power_w)
        self._clock = clock
        self.pretend_counter = pretend_counter
        self.available = available
        self.unavailable_reason = unavailable_reason
        self._t0: float | None = None

    def is_available(self) -> tuple[bool, str]:
        """(True, "") unless constructed with ``available=False``."""
        return (True, "") if self.available else (False, self.unavailable_reason)

    def start(self) -> None:
        """Begin a window at the injected clock's current time."""
        self._t0 = self._clock()

    def stop(self) -> EnergyReading:
        """End the window: ``power_w * window_s`` joules, labelled FAKE."""
        t1 = self._clock()
        if self._t0 is None:
            raise MeasurementError(
                "FakeEnergyMeter.stop() called before start(); call start() first"
            )
        window_s = t1 - self._t0
        self._t0 = None
        if not self.available:
            return EnergyReading("unavailable", None, window_s, reason=self.unavailable_reason)
        energy_j = self.power_w * window_s
        return EnergyReading(
            provenance="counter" if self.pretend_counter else "estimated",
            energy_j=energy_j,
            window_s=window_s,
            domains_j={"fake": energy_j},
            warnings=[
                f"FAKE energy meter: constant {self.power_w:g} W x window, not a measurement"
            ],
        )
