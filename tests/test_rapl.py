"""RaplMeter on fake powercap trees built in tmp_path (and on an in-memory 'remote' tree)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from costmeter.devices.base import EnergyMeter
from costmeter.devices.energy.rapl import RAPL_UPDATE_INTERVAL_S, RaplMeter
from costmeter.errors import MeasurementError

RANGE_UJ = 262_143_328_850  # a typical max_energy_range_uj


class StepClock:
    """Returns the given times in order (seconds)."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def make_zone(
    root: Path, zone: str, name: str, energy_uj: int, max_range_uj: int = RANGE_UJ
) -> Path:
    d = root / zone
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return d


def set_energy(zone_dir: Path, energy_uj: int) -> None:
    (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")


def test_implements_energy_meter_protocol(tmp_path):
    assert isinstance(RaplMeter(tmp_path), EnergyMeter)


def test_normal_delta_package_total_excludes_core_and_dram(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    core = make_zone(tmp_path, "intel-rapl:0:0", "core", 500_000)
    dram = make_zone(tmp_path, "intel-rapl:0:1", "dram", 200_000)
    meter = RaplMeter(tmp_path, clock=StepClock(10.0, 12.0))
    assert meter.is_available() == (True, "")
    meter.start()
    set_energy(pkg, 31_000_000)  # +30 J
    set_energy(core, 20_500_000)  # +20 J (inside the package)
    set_energy(dram, 5_200_000)  # +5 J (outside the package)
    r = meter.stop()
    assert r.provenance == "counter"
    assert r.window_s == pytest.approx(2.0)
    assert r.domains_j == pytest.approx({"package-0": 30.0, "core-0": 20.0, "dram-0": 5.0})
    assert r.energy_j == pytest.approx(30.0)
    assert r.warnings == []


def test_wrap_around_adds_max_range(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", RANGE_UJ - 1_000)
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0))
    meter.start()
    set_energy(pkg, 4_000)  # wrapped: 1 000 uJ to the top, then 4 000 uJ
    r = meter.stop()
    assert r.energy_j == pytest.approx((RANGE_UJ - (RANGE_UJ - 1_000) + 4_000) / 1e6)
    assert r.energy_j > 0


def test_wrap_without_readable_range_is_not_guessed(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 9_000)
    (pkg / "max_energy_range_uj").unlink()
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0))
    meter.start()
    set_energy(pkg, 1_000)
    r = meter.stop()
    assert r.energy_j is None and r.provenance == "unavailable"
    assert any("wrapped" in w for w in r.warnings)


def test_multiple_packages_are_summed_psys_is_not(tmp_path):
    p0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    p1 = make_zone(tmp_path, "intel-rapl:1", "package-1", 0)
    d1 = make_zone(tmp_path, "intel-rapl:1:0", "dram", 0)
    psys = make_zone(tmp_path, "intel-rapl:2", "psys", 0)
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0))
    meter.start()
    set_energy(p0, 7_000_000)
    set_energy(p1, 9_500_000)
    set_energy(d1, 1_000_000)
    set_energy(psys, 40_000_000)
    r = meter.stop()
    assert set(r.domains_j) == {"package-0", "package-1", "dram-1", "psys"}
    assert r.energy_j == pytest.approx(7.0 + 9.5)
    assert r.domains_j["psys"] == pytest.approx(40.0)
    assert [d.key for d in meter.domains() if d.is_package] == ["package-0", "package-1"]


def test_subzones_nested_inside_the_zone_directory(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    dram = make_zone(pkg, "intel-rapl:0:0", "dram", 0)
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0))
    meter.start()
    set_energy(pkg, 3_000_000)
    set_energy(dram, 2_000_000)
    r = meter.stop()
    assert r.domains_j == pytest.approx({"package-0": 3.0, "dram-0": 2.0})


def test_missing_root_is_unavailable_with_reason(tmp_path):
    root = tmp_path / "powercap"
    ok, reason = RaplMeter(root).is_available()
    assert not ok
    assert reason.startswith("no RAPL counters") and str(root) in reason and "absent" in reason
    meter = RaplMeter(root, clock=StepClock(0.0, 1.0))
    meter.start()
    r = meter.stop()
    assert r.provenance == "unavailable" and r.energy_j is None and "absent" in r.reason


def test_root_without_zones_is_unavailable(tmp_path):
    (tmp_path / "intel-rapl").mkdir()  # the control-type directory alone
    ok, reason = RaplMeter(tmp_path).is_available()
    assert not ok and "no intel-rapl zones" in reason


def permission_denied_for(denied: str):
    def read_text(path: Path) -> str:
        if str(path).endswith(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return Path(path).read_text()

    return read_text


def test_unreadable_package_counter(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    deny_pkg = permission_denied_for("intel-rapl:0/energy_uj")
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0), read_text=deny_pkg)
    ok, reason = meter.is_available()
    assert not ok and "root" in reason and "permission denied" in reason
    meter.start()
    r = meter.stop()
    assert r.provenance == "unavailable" and r.energy_j is None
    assert "package-0" in r.reason
    assert any("package-0 unreadable" in w and "root" in w for w in r.warnings)


def test_unreadable_dram_keeps_package_total_and_warns(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    make_zone(tmp_path, "intel-rapl:0:0", "dram", 0)
    deny_dram = permission_denied_for("intel-rapl:0:0/energy_uj")
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 1.0), read_text=deny_dram)
    assert meter.is_available() == (True, "")
    meter.start()
    set_energy(pkg, 2_000_000)
    r = meter.stop()
    assert r.provenance == "counter" and r.energy_j == pytest.approx(2.0)
    assert "dram-0" not in r.domains_j
    assert any(w.startswith("RAPL domain dram-0 unreadable") for w in r.warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_on_disk(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (pkg / "energy_uj").chmod(0)
    ok, reason = RaplMeter(tmp_path).is_available()
    assert not ok and "permission denied" in reason


def test_short_window_is_flagged(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    short = RAPL_UPDATE_INTERVAL_S / 2
    meter = RaplMeter(tmp_path, clock=StepClock(5.0, 5.0 + short))
    meter.start()
    set_energy(pkg, 10)
    r = meter.stop()
    assert r.energy_j == pytest.approx(1e-5)
    assert any("shorter than the RAPL update interval" in w for w in r.warnings)
    # A 10 ms window is readable but coarse: flagged with its quantization bound.
    meter = RaplMeter(tmp_path, clock=StepClock(0.0, 0.010))
    meter.start()
    r = meter.stop()
    assert any("quantization" in w for w in r.warnings)


def test_stop_before_start_raises(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    with pytest.raises(MeasurementError):
        RaplMeter(tmp_path).stop()


def test_remote_tree_through_seams():
    """A tree that lives elsewhere (e.g. on a board over SSH) is read through the two seams."""
    files = {
        "/remote/powercap/intel-rapl:0/name": "package-0\n",
        "/remote/powercap/intel-rapl:0/energy_uj": "100\n",
        "/remote/powercap/intel-rapl:0/max_energy_range_uj": f"{RANGE_UJ}\n",
    }
    calls: list[str] = []

    def read_text(path: Path) -> str:
        calls.append(str(path))
        try:
            return files[str(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file", str(path)) from None

    def list_dir(path: Path) -> list[str]:
        prefix = str(path).rstrip("/") + "/"
        names = {k[len(prefix):].split("/")[0] for k in files if k.startswith(prefix)}
        if not names:
            raise FileNotFoundError(2, "No such directory", str(path))
        return sorted(names)

    meter = RaplMeter(
        "/remote/powercap", clock=StepClock(0.0, 3.0), read_text=read_text, list_dir=list_dir
    )
    assert meter.is_available() == (True, "")
    meter.start()
    files["/remote/powercap/intel-rapl:0/energy_uj"] = "6000100\n"
    r = meter.stop()
    assert r.energy_j == pytest.approx(6.0) and r.window_s == pytest.approx(3.0)
    assert "/remote/powercap/intel-rapl:0/energy_uj" in calls
