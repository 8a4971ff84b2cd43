"""What a predictor can learn: latency, peak memory or energy, each read from one column of a
``ResultStore.query()`` frame.

- ``latency``: ``latency_p50_ms`` (ms), the median of a run's samples (an imported trace's value);
- ``peak_memory``: ``peak_memory_bytes`` (bytes), the memory a run needed above what its
  process held before (CUDA max allocated on a GPU, peak RSS above baseline elsewhere, or an
  imported trace's ``peak_memory_bytes``);
- ``energy``: ``energy_per_inference_j`` (J), from a counter or an imported trace's
  ``energy_j`` (absent where the device has no counter).

:func:`target_rows` keeps the rows that hold a value for a target and says, in one line,
which targets the frame does hold when it holds none of this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costmeter.errors import ConfigError


@dataclass(frozen=True)
class Target:
    """A predictable quantity: its name, the frame column holding it, and its unit."""

    name: str
    column: str
    unit: str

    def format(self, value: float) -> str:
        """A value in this target's unit, readably (ms, MiB, mJ)."""
        if self.unit == "bytes":
            return f"{value / 2**20:.4g} MiB"
        if self.unit == "J":
            return f"{value * 1e3:.4g} mJ"
        return f"{value:.4g} {self.unit}"


TARGETS: dict[str, Target] = {
    "latency": Target("latency", "latency_p50_ms", "ms"),
    "peak_memory": Target("peak_memory", "peak_memory_bytes", "bytes"),
    "energy": Target("energy", "energy_per_inference_j", "J"),
}


def get_target(name: str) -> Target:
    """The Target called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}") from None


def held_targets(frame: Any) -> list[str]:
    """Names of the targets with at least one value in ``frame``, as ``name (column)``."""
    import pandas as pd

    return [f"{t.name} ({t.column})" for t in TARGETS.values()
            if t.column in frame.columns and pd.to_numeric(frame[t.column], errors="coerce").notna().any()]


def target_rows(frame: Any, target: str, what: str = "the stored results") -> Any:
    """The rows of ``frame`` holding a finite, positive ``target`` value (a copy).

    ConfigError, in one line naming the targets the frame does hold, when none does.
    """
    import numpy as np
    import pandas as pd

    spec = get_target(target)
    values = (pd.to_numeric(frame[spec.column], errors="coerce") if spec.column in frame.columns
              else pd.Series(np.nan, index=frame.index))
    keep = np.isfinite(values.to_numpy(dtype=np.float64)) & (values.to_numpy(dtype=np.float64) > 0)
    if not keep.any():
        held = held_targets(frame)
        raise ConfigError(f"{what} hold no {spec.name} values (column {spec.column}); "
                          f"targets they hold: {', '.join(held) if held else 'none'}")
    return frame.loc[keep].copy()
