"""The machine calibration a roofline is drawn against: the file it lives in, read and written.

``bench calibrate`` measures it (:mod:`costmeter.harness.probes.peaks`: the GEMM peak of the
fastest installed backend at the runs' thread count, the copy bandwidth, the theoretical peak
from the CPU's ISA flags beside them, every probe stored as a judged result) and keeps it as
``calibration-<device>.json`` in the working folder; reports read it from there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError


def calibration_path(folder: str | Path, device: str) -> Path:
    """Where the calibration of ``device`` lives in ``folder``."""
    return Path(folder) / f"calibration-{device}.json"


def save_calibration(calibration: dict[str, Any], folder: str | Path) -> Path:
    """Write ``calibration`` as ``calibration-<device>.json`` under ``folder``; returns the path."""
    path = calibration_path(folder, calibration["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(source: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Read a calibration: ``source`` is the JSON file itself or the folder holding
    ``calibration-<device>.json``. ConfigError (with the command to run) when absent or bad."""
    path = Path(source)
    if path.is_dir() or not path.suffix:
        path = calibration_path(path, device)
    if not path.is_file():
        raise ConfigError(
            f"no calibration at {str(path)!r}; run `bench calibrate --device {device}` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"calibration {str(path)!r} is not valid JSON ({err}); "
                          f"run `bench calibrate --device {device}` again") from err
    for field in ("peak_flops_per_s", "bandwidth_bytes_per_s"):
        value = data.get(field) if isinstance(data, dict) else None
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"calibration {str(path)!r} lacks a positive {field}; "
                              f"run `bench calibrate --device {device}` again")
    return data
