"""GPU energy from NVML around a measured window.

Probe order:

1. ``counter``: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and
   newer) read at the start and the end of the window. A counter that goes backwards (driver
   reload, or a wrap of its unsigned 64-bit mJ value, ~1.8e13 kJ away) is flagged and no figure
   is reported: we do not guess how much was lost.
2. ``integrated-power``: where the counter is NOT_SUPPORTED, a helper thread samples
   ``nvmlDeviceGetPowerUsage`` (mW) every ``power_sample_interval_s`` and the samples are
   integrated with the trapezoid rule between the first sample (taken in ``start``) and the last
   (taken in ``stop``).
3. ``unavailable``: no bindings, no driver, or neither reading supported; the reason is returned.

Update period: NVML's power and energy readings change about every 100 ms on current data-centre
GPUs, and on A100/H100 the power sensor averages only part of each period (Yang, Adamek and
Armour, "Accurate and Convenient Energy Measurements for GPUs: A Detailed Study of NVIDIA GPU's
Built-In Power Sensor", SC 2024). Windows shorter than ``min_window_s`` (default 0.1 s) carry a
warning; a window spans at most one extra update period of error at each end.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Sequence

from costmeter.devices.base import EnergyReading
from costmeter.devices.cuda.nvml import NvmlDevice, is_not_supported
from costmeter.errors import UnavailableError

COUNTER = "counter"
INTEGRATED = "integrated-power"
UNAVAILABLE = "unavailable"
NVML_UPDATE_PERIOD_S = 0.1


def integrate_power_w(times_s: Sequence[float], powers_w: Sequence[float]) -> float:
    """Energy (J) from power samples (W) at times (s), by the trapezoid rule (numpy)."""
    import numpy as np

    if len(times_s) != len(powers_w):
        raise ValueError("times and powers must have the same length")
    if len(times_s) < 2:
        return 0.0
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(np.asarray(powers_w, dtype=float), np.asarray(times_s, dtype=float)))


def energy_above_idle_j(energy_j: float | None, idle_power_w: float | None, window_s: float | None) -> float | None:
    """Energy above idle (J) = energy - idle power x window; None if any input is unknown."""
    if energy_j is None or idle_power_w is None or window_s is None:
        return None
    return energy_j - idle_power_w * window_s


class NvmlEnergyMeter:
    """EnergyMeter for one GPU (``device_index`` is the CUDA index, as in ``cuda:N``).

    Seams: ``nvml`` (default ``import pynvml``), ``clock`` (seconds), ``sleep`` (used by
    :meth:`idle_power_w`), ``uuid``/``env`` for mapping the CUDA index to NVML's."""

    def __init__(
        self,
        device_index: int = 0,
        nvml: Any = None,
        clock: Callable[[], float] = time.perf_counter,
        power_sample_interval_s: float = 0.01,
        *,
        sleep: Callable[[float], None] = time.sleep,
        min_window_s: float = NVML_UPDATE_PERIOD_S,
        uuid: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if power_sample_interval_s <= 0:
            raise ValueError("power_sample_interval_s must be > 0")
        self.device_index = device_index
        self.power_sample_interval_s = power_sample_interval_s
        self.min_window_s = min_window_s
        self.idle_reason = ""
        self._nvml = nvml
        self._clock = clock
        self._sleep = sleep
        self._uuid = uuid
        self._env = env
        self._device: NvmlDevice | None = None
        self._reason = ""
        self._mode: str | None = None
        self._opened = False
        self._t0 = 0.0
        self._e0: int | None = None
        self._samples: list[tuple[float, float]] = []
        self._sample_error = ""
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        """``counter``, ``integrated-power`` or ``unavailable`` (probes NVML on first use)."""
        self._probe()
        return self._mode or UNAVAILABLE

    def is_available(self) -> tuple[bool, str]:
        """(True, "") when the counter or power readings work; else (False, the reason)."""
        self._probe()
        return (self._mode in (COUNTER, INTEGRATED)), self._reason

    def start(self) -> None:
        """Begin a window: read the counter, or take the first power sample and start sampling."""
        self._probe()
        self._e0 = None
        self._samples = []
        self._sample_error = ""
        self._t0 = self._clock()
        if self._mode == COUNTER:
            try:
                self._e0 = self._device.total_energy_mj()  # type: ignore[union-attr]
            except self._nvml_error() as exc:
                self._sample_error = f"NVML total energy could not be read at the start ({exc})"
            self._t0 = self._clock()
        elif self._mode == INTEGRATED:
            self._take_power_sample()
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._sample_loop, name="nvml-power-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReading:
        """End the window and return its energy, or provenance ``unavailable`` with the reason."""
        end = self._clock()
        if self._mode == COUNTER:
            return self._stop_counter()
        if self._mode == INTEGRATED:
            return self._stop_integrated()
        return EnergyReading(UNAVAILABLE, None, end - self._t0, reason=self._reason)

    def idle_power_w(self, duration_s: float = 0.5) -> float | None:
        """Average power (W) over ``duration_s`` seconds of waiting, measured before the run.

        Uses the counter when there is one, else the mean of power samples. None (with
        ``idle_reason`` set) when nothing can be read. A 0.5 s window with a ~100 ms counter
        update period has up to ~20 % timing error; pass a longer duration for a finer figure."""
        self._probe()
        self.idle_reason = ""
        try:
            if self._mode == COUNTER:
                device = self._device
                assert device is not None
                t0, e0 = self._clock(), device.total_energy_mj()
                self._sleep(duration_s)
                t1, e1 = self._clock(), device.total_energy_mj()
                if e1 < e0:
                    self.idle_reason = f"NVML total energy counter went backwards ({e0} -> {e1} mJ) while idle"
                    return None
                if t1 <= t0:
                    self.idle_reason = "the clock did not advance during the idle measurement"
                    return None
                return (e1 - e0) / 1000.0 / (t1 - t0)
            if self._mode == INTEGRATED:
                device = self._device
                assert device is not None
                watts = [device.power_mw() / 1000.0]
                steps = max(1, int(round(duration_s / self.power_sample_interval_s)))
                for _ in range(steps):
                    self._sleep(duration_s / steps)
                    watts.append(device.power_mw() / 1000.0)
                return sum(watts) / len(watts)
        except self._nvml_error() as exc:
            self.idle_reason = f"NVML power reading failed during the idle measurement ({exc})"
            return None
        self.idle_reason = self._reason
        return None

    def close(self) -> None:
        """Stop any sampler and release NVML."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._device is not None:
            self._device.close()
            self._device = None

    # -- internals ----------------------------------------------------------------------------

    def _probe(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            self._device = NvmlDevice.open(self.device_index, nvml=self._nvml, uuid=self._uuid, env=self._env)
        except UnavailableError as exc:
            self._mode, self._reason = UNAVAILABLE, f"GPU energy unavailable: {exc}"
            return
        nvml = self._device.nvml
        try:
            self._device.total_energy_mj()
            self._mode = COUNTER
            return
        except nvml.NVMLError as exc:
            if not is_not_supported(nvml, exc):
                self._mode, self._reason = UNAVAILABLE, f"GPU energy unavailable: NVML total energy failed ({exc})"
                return
        try:
            self._device.power_mw()
            self._mode = INTEGRATED
        except nvml.NVMLError as exc:
            self._mode = UNAVAILABLE
            self._reason = (
                f"GPU energy unavailable: this GPU reports neither total energy nor power through NVML ({exc})"
            )

    def _nvml_error(self) -> type[BaseException]:
        return self._device.nvml.NVMLError if self._device is not None else RuntimeError

    def _stop_counter(self) -> EnergyReading:
        t1 = self._clock()
        window = t1 - self._t0
        if self._e0 is None:
            return EnergyReading(UNAVAILABLE, None, window, reason=self._sample_error)
        try:
            e1 = self._device.total_energy_mj()  # type: ignore[union-attr]
        except self._nvml_error() as exc:
            reason = f"NVML total energy could not be read at the end ({exc})"
            return EnergyReading(UNAVAILABLE, None, window, reason=reason)
        t1 = self._clock()
        window = t1 - self._t0
        if e1 < self._e0:
            return EnergyReading(
                UNAVAILABLE, None, window,
                reason=(
                    f"NVML total energy counter went backwards ({self._e0} -> {e1} mJ): the driver was reloaded "
                    "or the counter wrapped; no figure is reported for this window"
                ),
                warnings=["energy counter reset or wrapped during the window"],
            )
        energy_j = (e1 - self._e0) / 1000.0
        warnings = self._window_warnings(window)
        if e1 == self._e0:
            warnings.append("the NVML energy counter did not change during the window; the figure is 0 J at the "
                            "counter's resolution")
        return EnergyReading(COUNTER, energy_j, window, {f"cuda:{self.device_index}": energy_j}, warnings=warnings)

    def _stop_integrated(self) -> EnergyReading:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._take_power_sample()
        samples = sorted(self._samples)
        window = samples[-1][0] - samples[0][0] if samples else self._clock() - self._t0
        if self._sample_error or len(samples) < 2:
            reason = self._sample_error or "fewer than two power samples were taken in the window"
            return EnergyReading(UNAVAILABLE, None, window, reason=reason)
        energy_j = integrate_power_w([t for t, _ in samples], [w for _, w in samples])
        warnings = self._window_warnings(window)
        warnings.append(
            f"integrated from {len(samples)} NVML power samples taken every {self.power_sample_interval_s * 1000:g} ms "
            "(this GPU has no total-energy counter)"
        )
        return EnergyReading(INTEGRATED, energy_j, window, {f"cuda:{self.device_index}": energy_j}, warnings=warnings)

    def _window_warnings(self, window_s: float) -> list[str]:
        if window_s < self.min_window_s:
            return [
                f"energy window of {window_s * 1000:.1f} ms is shorter than NVML's ~{self.min_window_s * 1000:g} ms "
                "update period; the figure is coarse: raise --min-time"
            ]
        return []

    def _take_power_sample(self) -> None:
        try:
            watts = self._device.power_mw() / 1000.0  # type: ignore[union-attr]
        except self._nvml_error() as exc:
            if not self._sample_error:
                self._sample_error = f"NVML power reading failed during the window ({exc})"
            return
        self._samples.append((self._clock(), watts))

    def _sample_loop(self) -> None:
        while not self._stop_event.wait(self.power_sample_interval_s):
            self._take_power_sample()
