"""Lookup-table files: default paths, atomic writes, and reading a table back (any readable
format version; see :mod:`costmeter.predictors.lut.table`)."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.lut import blocks
from costmeter.workdir import Workdir


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def default_lut_path(workdir: Path | str, space: str, device: str, runtime: str,
                     resolutions: Sequence[int] | None = None, predicted: bool = False,
                     precision: str = "fp32") -> Path:
    """``<workdir>/lut/<space>-<device>-<runtime>[-int8][-r<res>-...][-predicted].json``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device)
    res = blocks.check_resolutions(space, resolutions)
    tag = "" if res == blocks.space_resolutions(space) else "-r" + "-".join(map(str, res))
    runtime = runtime if precision == "fp32" else f"{runtime}-{precision}"
    return Workdir.of(workdir).lut / f"{space}-{safe}-{runtime}{tag}{'-predicted' if predicted else ''}.json"


def load_table(path: str | Path, device: str | None = None, runtime: str | None = None,
               resolutions: Sequence[int] | None = None, space: str | None = None) -> LatencyTable:
    """Read a table (``.json``, or the ``.csv`` beside it); refuse one built for another
    device/runtime/resolution/space than asked (ConfigError saying which)."""
    from costmeter.predictors.lut.table import (ENTRY_COLUMNS, FORMAT, READABLE_VERSIONS,
                                                LatencyTable, LutEntry)

    p = Path(path)
    json_path = p.with_suffix(".json") if p.suffix.lower() == ".csv" else p
    if not json_path.is_file():
        raise ConfigError(f"lookup table {json_path} not found; build one with `bench lut build`")
    try:
        body = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{json_path} is not a readable lookup table ({type(exc).__name__}); "
                         "build it again with `bench lut build`") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise StoreError(f"{json_path} is not a costmeter lookup table (no '{FORMAT}' format "
                         "field); build one with `bench lut build`")
    if body.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(f"{json_path} has lookup-table format version "
                         f"{body.get('format_version')!r}; this costmeter reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; build it again with `bench lut build`")
    manifest = body.get("manifest") or {}
    lacking = [f for f in ("space", "device", "runtime", "resolutions") if f not in manifest]
    if lacking:
        raise StoreError(f"{json_path} manifest lacks {', '.join(lacking)}; build it again")
    entries = []
    for number, row in enumerate(body.get("entries") or []):
        try:
            entry = LutEntry(str(row["key"]), str(row["kind"]), float(row["latency_ms"]),
                             float(row["raw_ms"]), float(row["spread_ms"]), int(row["samples"]),
                             str(row["source"]),
                             tuple((c, row.get(c, "")) for c in ENTRY_COLUMNS[2:11]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{json_path} entry {number} is malformed ({type(exc).__name__}: "
                             f"{exc}); build the table again") from exc
        if not (entry.latency_ms > 0 and math.isfinite(entry.latency_ms)):
            raise StoreError(f"{json_path} entry {entry.key} has latency {entry.latency_ms} ms; "
                             "latencies must be positive -- build the table again")
        entries.append(entry)
    if body["format_version"] < 2:
        manifest["calibration"] = None  # older files: uncalibrated, said by calibration_note()
    table = LatencyTable(manifest, entries)
    table.format_version = int(body["format_version"])
    table.check_compatible(device, runtime, resolutions, space, where=str(json_path))
    if table.calibrated:
        table.calibration  # noqa: B018 -- an unreadable calibration is refused at load time
    return table
