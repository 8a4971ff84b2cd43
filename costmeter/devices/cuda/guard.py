"""Throttle guard: SM clock, temperature and throttle reasons read around each measurement block.

A CUDA session calls :meth:`ThrottleGuard.begin_block` before a block and returns
:meth:`ThrottleGuard.block_health` from its ``block_health()`` hook after it. A block counts as
throttled when a throttling reason (power cap, thermal or hardware slowdown; see
:data:`~costmeter.devices.cuda.nvml.THROTTLING_REASONS`) was set at either reading. The harness
counts throttled blocks and marks the result INVALID above ``max_throttled_share``.

Without NVML the guard cannot see throttling: it reports ``throttled: False`` and says so in
``guard`` rather than failing the run (latency is still measured).
"""
from __future__ import annotations

from typing import Any, Iterable

from costmeter.devices.cuda.nvml import THROTTLING_REASONS, NvmlDevice


class ThrottleGuard:
    """Reads the device state around blocks and judges whether each block was throttled.

    ``device`` is an open :class:`NvmlDevice`, or None with ``unavailable_reason`` saying why.
    ``throttling_reasons`` are the decoded reason names that make a block throttled.
    """

    def __init__(
        self,
        device: NvmlDevice | None,
        unavailable_reason: str = "",
        throttling_reasons: Iterable[str] = THROTTLING_REASONS,
    ) -> None:
        self.device = device
        self.unavailable_reason = unavailable_reason
        self.throttling_reasons = frozenset(throttling_reasons)
        self._before: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """True when readings come from NVML."""
        return self.device is not None

    def read(self) -> dict[str, Any]:
        """One reading: SM clock (MHz), temperature (C) and decoded throttle reasons."""
        if self.device is None:
            return {}
        return {
            "sm_clock_mhz": self.device.sm_clock_mhz(),
            "temperature_c": self.device.temperature_c(),
            "throttle_reasons": self.device.throttle_reasons(),
        }

    def begin_block(self) -> None:
        """Take the reading before a block."""
        self._before = self.read()

    def block_health(self) -> dict[str, Any]:
        """The state of the block just finished, in the shape the protocol's ``block_health``
        hook returns: ``throttled`` (bool), ``reasons`` (throttling reasons seen before or after
        the block), ``all_reasons`` (every reason seen, idle included), SM clocks before/after
        (MHz), temperature after (C)."""
        if self.device is None:
            self._before = None
            return {"throttled": False, "reasons": [], "guard": f"unavailable: {self.unavailable_reason}"}
        before = self._before if self._before is not None else {}
        after = self.read()
        self._before = None
        seen: list[str] = []
        for reading in (before, after):
            for reason in reading.get("throttle_reasons") or []:
                if reason not in seen:
                    seen.append(reason)
        throttling = [r for r in seen if r in self.throttling_reasons]
        health: dict[str, Any] = {
            "throttled": bool(throttling),
            "reasons": throttling,
            "all_reasons": seen,
            "sm_clock_mhz_before": before.get("sm_clock_mhz"),
            "sm_clock_mhz_after": after.get("sm_clock_mhz"),
            "temperature_c": after.get("temperature_c"),
        }
        if before.get("throttle_reasons") is None and after.get("throttle_reasons") is None:
            health["guard"] = "throttle reasons not reported by NVML for this GPU"
        return health

    def close(self) -> None:
        """Release the NVML device."""
        if self.device is not None:
            self.device.close()
            self.device = None
