"""CPU energy from RAPL counters exposed by the Linux powercap framework (sysfs).

Layout read (``/sys/class/powercap`` by default; Intel, and AMD Zen through the same driver)::

    intel-rapl:0/name                  "package-0"
    intel-rapl:0/energy_uj             cumulative microjoules, wraps at max_energy_range_uj
    intel-rapl:0/max_energy_range_uj
    intel-rapl:0:0/name                "core" | "uncore" | "dram"   (subzones; also listed
    intel-rapl:0:0/energy_uj            at the root as symlinks, or nested inside the zone)
    intel-rapl:1/name                  "package-1" | "psys"

Domain keys in readings: ``package-N`` for packages, ``<subzone>-N`` for the subzones of package
N (``dram-0``, ``core-0``), the plain name for other top-level zones (``psys``).

**Total energy** (``EnergyReading.energy_j``) is the sum of the *package* domains only. Core and
uncore are parts of the package (adding them would count twice); DRAM is outside the package and
psys covers the whole platform, so both are reported in ``domains_j`` but left out of the total.
If any package domain cannot be read, the total is ``None`` rather than an undercount.

Counters wrap: when an end reading is below the start reading, ``max_energy_range_uj`` is added
once. A window long enough for two wraps cannot be detected; a warning says when that is possible.
RAPL updates its counters about every millisecond, so a window shorter than that may read 0 or one
whole update; such windows are flagged.

All file access goes through ``read_text``/``list_dir`` seams so the same code can read a fake
tree in tests or a remote board's sysfs over a transport. Seams must raise ``OSError`` subclasses
(``FileNotFoundError``, ``PermissionError``) the way local file access does.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from costmeter.devices.base import EnergyReading
from costmeter.errors import MeasurementError

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
# Intel documents the RAPL energy-status update period as about 1 ms (976 us on most parts).
RAPL_UPDATE_INTERVAL_S = 1e-3
# Windows shorter than this many update intervals carry a quantization error above 1/this.
RAPL_ACCURATE_WINDOW_UPDATES = 100
# An assumed upper bound on package power, used only to warn that a window may span two wraps.
MAX_PLAUSIBLE_DOMAIN_POWER_W = 1000.0

_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")

ReadText = Callable[[Path], str]
ListDir = Callable[[Path], list[str]]


def read_local_text(path: Path) -> str:
    """Read a local text file (the default ``read_text`` seam)."""
    return Path(path).read_text()


def list_local_dir(path: Path) -> list[str]:
    """Entries of a local directory, sorted (the default ``list_dir`` seam)."""
    return sorted(os.listdir(path))


def permission_hint(path: Path) -> str:
    """Why an ``energy_uj`` file is unreadable and how to fix it."""
    return (
        f"cannot read {path}: permission denied (energy_uj is readable only by root since Linux "
        "5.10, CVE-2020-8694); run as root or grant read access, e.g. "
        "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`"
    )


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL zone: its reading key, sysfs name, directory and counter range (microjoules)."""

    key: str
    name: str
    path: Path
    max_energy_range_uj: int | None
    is_package: bool


class RaplMeter:
    """EnergyMeter over RAPL powercap counters (provenance ``counter``; energies in joules).

    ``sysfs_root`` is the powercap directory, ``clock`` returns seconds (window length),
    ``read_text``/``list_dir`` are the file-access seams (local files by default).
    """

    def __init__(
        self,
        sysfs_root: str | Path = DEFAULT_POWERCAP_ROOT,
        clock: Callable[[], float] = time.perf_counter,
        read_text: ReadText = read_local_text,
        list_dir: ListDir = list_local_dir,
    ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self._clock = clock
        self._read_text = read_text
        self._list_dir = list_dir
        self._domains: list[RaplDomain] | None = None
        self._start: dict[str, int] | None = None
        self._start_errors: dict[str, str] = {}
        self._t0 = 0.0

    # -- discovery ------------------------------------------------------------------------

    def _root_problem(self) -> str | None:
        """None if the root lists; else a reason."""
        try:
            self._list_dir(self.sysfs_root)
        except (FileNotFoundError, NotADirectoryError):
            return (
                f"no RAPL counters: {self.sysfs_root} absent (virtual machine or non-Intel/AMD CPU)"
            )
        except PermissionError:
            return f"no RAPL counters: cannot list {self.sysfs_root} (permission denied)"
        except OSError as exc:
            return f"no RAPL counters: cannot list {self.sysfs_root} ({exc})"
        return None

    def domains(self) -> list[RaplDomain]:
        """RAPL zones under the root (cached after the first successful call); [] if none."""
        if self._domains is not None:
            return list(self._domains)
        if self._root_problem() is not None:
            return []
        zones: dict[tuple[int, int | None], Path] = {}
        for entry in self._list_dir(self.sysfs_root):
            m = _ZONE_RE.match(entry)
            if m:
                sub = None if m.group(2) is None else int(m.group(2))
                zones[(int(m.group(1)), sub)] = self.sysfs_root / entry
        for (pkg, sub), path in list(zones.items()):
            if sub is not None:
                continue
            try:
                nested = self._list_dir(path)
            except OSError:
                continue
            for entry in nested:
                m = _ZONE_RE.match(entry)
                if m and m.group(2) is not None and int(m.group(1)) == pkg:
                    zones.setdefault((pkg, int(m.group(2))), path / entry)

        top_keys: dict[int, str] = {}
        found: list[RaplDomain] = []
        def order(item: tuple[tuple[int, int | None], Path]) -> tuple[int, int]:
            (pkg, sub), _ = item
            return pkg, -1 if sub is None else sub

        for (pkg, sub), path in sorted(zones.items(), key=order):
            name = self._read_str(path / "name") or path.name
            if sub is None:
                is_package = name.startswith("package")
                key = name if (is_package or name not in top_keys.values()) else f"{name}-{pkg}"
                top_keys[pkg] = key
            else:
                parent = top_keys.get(pkg, f"package-{pkg}")
                suffix = parent[len("package-"):] if parent.startswith("package-") else str(pkg)
                key = f"{name}-{suffix}"
                is_package = False
            if any(d.key == key for d in found):
                key = f"{key}@{path.name}"
            found.append(
                RaplDomain(
                    key=key,
                    name=name,
                    path=path,
                    max_energy_range_uj=self._read_int(path / "max_energy_range_uj"),
                    is_package=is_package,
                )
            )
        if found:
            self._domains = found
        return list(found)

    def _read_str(self, path: Path) -> str | None:
        try:
            return self._read_text(path).strip()
        except OSError:
            return None

    def _read_int(self, path: Path) -> int | None:
        text = self._read_str(path)
        try:
            return None if text is None else int(text)
        except ValueError:
            return None

    def is_available(self) -> tuple[bool, str]:
        """(True, "") if every package counter reads; else (False, reason with a fix)."""
        problem = self._root_problem()
        if problem is not None:
            return False, problem
        domains = self.domains()
        if not domains:
            return False, (
                f"no RAPL counters: {self.sysfs_root} has no intel-rapl zones "
                "(load the intel_rapl_msr kernel module, or the CPU has no RAPL)"
            )
        packages = [d for d in domains if d.is_package]
        if not packages:
            return False, f"no RAPL package domain under {self.sysfs_root} (found: " + ", ".join(
                d.key for d in domains
            ) + ")"
        _, errors = self._snapshot(packages)
        if errors:
            return False, "; ".join(errors.values())
        return True, ""

    # -- reading --------------------------------------------------------------------------

    def _snapshot(self, domains: list[RaplDomain]) -> tuple[dict[str, int], dict[str, str]]:
        """energy_uj of each domain, and a reason for each one that could not be read."""
        values: dict[str, int] = {}
        errors: dict[str, str] = {}
        for d in domains:
            path = d.path / "energy_uj"
            try:
                values[d.key] = int(self._read_text(path).strip())
            except PermissionError:
                errors[d.key] = permission_hint(path)
            except OSError as exc:
                errors[d.key] = f"cannot read {path}: {exc.strerror or exc}"
            except ValueError:
                errors[d.key] = f"cannot parse {path} as an integer microjoule count"
        return values, errors

    def start(self) -> None:
        """Read every domain's counter and start the window clock."""
        self._start, self._start_errors = self._snapshot(self.domains())
        self._t0 = self._clock()

    def stop(self) -> EnergyReading:
        """End the window: per-domain energy (J), package total (J) and warnings."""
        t1 = self._clock()
        if self._start is None:
            raise MeasurementError("RaplMeter.stop() called before start(); call start() first")
        domains = self.domains()
        end, end_errors = self._snapshot(domains)
        start, start_errors = self._start, self._start_errors
        self._start = None
        window_s = t1 - self._t0

        if not domains:
            problem = self._root_problem() or f"no RAPL zones under {self.sysfs_root}"
            return EnergyReading("unavailable", None, window_s, reason=problem)

        warnings: list[str] = []
        domains_j: dict[str, float] = {}
        failed: dict[str, str] = {}
        for d in domains:
            reason = start_errors.get(d.key) or end_errors.get(d.key)
            if reason is None:
                delta_uj = end[d.key] - start[d.key]
                if delta_uj < 0:
                    if d.max_energy_range_uj is None:
                        reason = (
                            f"{d.key} counter wrapped and {d.path / 'max_energy_range_uj'} "
                            "is unreadable, so the wrap cannot be corrected"
                        )
                    else:
                        delta_uj += d.max_energy_range_uj
            if reason is not None:
                failed[d.key] = reason
                continue
            domains_j[d.key] = delta_uj / 1e6
            if d.max_energy_range_uj:
                wrap_s = d.max_energy_range_uj / 1e6 / MAX_PLAUSIBLE_DOMAIN_POWER_W
                if window_s > wrap_s:
                    warnings.append(
                        f"{d.key}: window of {window_s:.0f} s could span more than one counter "
                        f"wrap above {MAX_PLAUSIBLE_DOMAIN_POWER_W:.0f} W (range "
                        f"{d.max_energy_range_uj / 1e6:.0f} J); only one wrap is corrected"
                    )

        for key, reason in failed.items():
            warnings.append(f"RAPL domain {key} unreadable: {reason}")
        warnings.extend(_window_warnings(window_s))

        packages = [d.key for d in domains if d.is_package]
        missing = [k for k in packages if k in failed]
        if not packages or missing:
            why = (
                f"RAPL package domain(s) {', '.join(missing)} unreadable"
                if missing
                else "no RAPL package domain to total"
            )
            return EnergyReading(
                "unavailable", None, window_s, domains_j=domains_j, reason=why, warnings=warnings
            )
        total_j = sum(domains_j[k] for k in packages)
        return EnergyReading("counter", total_j, window_s, domains_j=domains_j, warnings=warnings)


def _window_warnings(window_s: float) -> list[str]:
    """Warnings about a window too short for RAPL's ~1 ms update period."""
    if window_s < RAPL_UPDATE_INTERVAL_S:
        return [
            f"window of {window_s * 1e3:.3f} ms is shorter than the RAPL update interval "
            f"(~{RAPL_UPDATE_INTERVAL_S * 1e3:.0f} ms): the reading may be 0 or one whole update; "
            "measure more iterations per window"
        ]
    if window_s < RAPL_ACCURATE_WINDOW_UPDATES * RAPL_UPDATE_INTERVAL_S:
        err = RAPL_UPDATE_INTERVAL_S / window_s
        return [
            f"window of {window_s * 1e3:.1f} ms spans few RAPL updates (~"
            f"{RAPL_UPDATE_INTERVAL_S * 1e3:.0f} ms each): up to ~{err:.0%} quantization error"
        ]
    return []
