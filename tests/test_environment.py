"""Environment capture and the counters report, on fake sysfs/procfs trees and fake NVML."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple
from importlib import metadata
from pathlib import Path


from costmeter import __version__
from costmeter.devices.cuda.fake import FakeNvml
from costmeter.harness.environment import (
    capture,
    counters_report,
    cpu_frequencies,
    cpu_model,
    library_versions,
    source_git_state,
    temperatures,
)

Temp = namedtuple("Temp", "label current high critical")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_cpufreq(
    root: Path, cpu: int, governor: str, cur_khz: int, driver: str = "intel_pstate"
) -> Path:
    d = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
    write(d / "scaling_governor", governor)
    write(d / "scaling_driver", driver)
    write(d / "scaling_cur_freq", str(cur_khz))
    write(d / "scaling_min_freq", "800000")
    write(d / "scaling_max_freq", "3500000")
    write(d / "cpuinfo_min_freq", "400000")
    write(d / "cpuinfo_max_freq", "3900000")
    return d


# -- capture ---------------------------------------------------------------------------------


def test_capture_is_json_ready_and_has_the_documented_fields(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = capture(threads=3)
    assert json.loads(json.dumps(env, allow_nan=False)) == env
    for key in ("hostname", "os", "kernel", "python_version", "cpu_model", "logical_cores",
                "physical_cores", "cpu_affinity", "cpufreq", "load_average", "memory_total_bytes",
                "memory_available_bytes", "temperature", "libraries", "costmeter_version",
                "git_sha", "thread_env", "threads_requested", "captured_at"):
        assert key in env, key
    assert env["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert env["costmeter_version"] == __version__
    assert env["threads_requested"] == 3
    assert env["thread_env"]["OMP_NUM_THREADS"] == "3"
    assert env["libraries"]["numpy"] == metadata.version("numpy")
    assert env["memory_total_bytes"] >= env["memory_available_bytes"] > 0
    assert len(env["load_average"]) == 3


def test_capture_reads_dynamic_parts_each_call(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert capture()["thread_env"]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert capture()["thread_env"]["OMP_NUM_THREADS"] == "2"
    make_cpufreq(tmp_path, 0, "performance", 3_000_000)
    env = capture(sysfs_root=tmp_path)
    assert env["cpufreq"]["per_cpu"]["cpu0"]["governor"] == "performance"


def test_capture_reads_what_cannot_change_once(monkeypatch):
    """The slow facts (CPU model, git state: subprocesses) are read on the first call only; what
    can change (load, affinity, memory) on every call. (Timings: benchmarks/environment_capture.py.)"""
    from costmeter.harness import environment

    calls = {"cpu_model": 0, "git": 0}

    def cpu_model(proc_root):
        calls["cpu_model"] += 1
        return "Test CPU", "test"

    def git_state(source_dir=None):
        calls["git"] += 1
        return {"git_sha": "abc", "git_dirty": False}

    monkeypatch.setattr(environment, "cpu_model", cpu_model)
    monkeypatch.setattr(environment, "source_git_state", git_state)
    environment._static_facts.cache_clear()
    try:
        first = capture(proc_root="/nonexistent-proc-for-this-test")
        for _ in range(3):
            again = capture(proc_root="/nonexistent-proc-for-this-test")
        again["libraries"]["numpy"] = "changed"  # callers get copies: the cache stays intact
        after = capture(proc_root="/nonexistent-proc-for-this-test")
    finally:
        environment._static_facts.cache_clear()
    assert calls == {"cpu_model": 1, "git": 1}
    assert first["cpu_model"] == after["cpu_model"] == "Test CPU" and after["git_sha"] == "abc"
    assert after["captured_at"] >= first["captured_at"] and "load_average" in after
    assert after["libraries"].get("numpy") != "changed"


def test_capture_imports_no_heavy_library():
    code = (
        "import sys, json; from costmeter.harness.environment import capture; capture(); "
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'onnx', 'openvino', 'tvm', "
        "'sklearn', 'executorch', 'ai_edge_litert') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# -- parts -----------------------------------------------------------------------------------


def test_cpu_frequencies_from_fake_tree(tmp_path):
    make_cpufreq(tmp_path, 0, "performance", 3_400_000)
    d1 = make_cpufreq(tmp_path, 1, "powersave", 1_200_000)
    (tmp_path / "devices" / "system" / "cpu" / "cpu2").mkdir()  # offline: no cpufreq
    (d1 / "scaling_cur_freq").unlink()
    (d1 / "scaling_cur_freq").mkdir()  # unreadable as a file
    write(tmp_path / "devices" / "system" / "cpu" / "cpufreq" / "boost", "1")
    f = cpu_frequencies(tmp_path)
    assert f["available"] is True and f["boost"] is True
    assert f["governors"] == ["performance", "powersave"]
    assert set(f["per_cpu"]) == {"cpu0", "cpu1"}
    assert f["per_cpu"]["cpu0"] == {"governor": "performance", "driver": "intel_pstate",
                                    "cur_khz": 3_400_000, "min_khz": 800_000, "max_khz": 3_500_000,
                                    "hw_min_khz": 400_000, "hw_max_khz": 3_900_000}
    assert f["per_cpu"]["cpu1"]["cur_khz"] is None


def test_cpu_frequencies_intel_no_turbo_and_absent(tmp_path):
    make_cpufreq(tmp_path, 0, "performance", 3_000_000)
    write(tmp_path / "devices" / "system" / "cpu" / "intel_pstate" / "no_turbo", "1")
    assert cpu_frequencies(tmp_path)["boost"] is False
    empty = tmp_path / "empty"
    (empty / "devices" / "system" / "cpu" / "cpu0").mkdir(parents=True)
    f = cpu_frequencies(empty)
    assert f["available"] is False and "no cpufreq" in f["reason"]
    f = cpu_frequencies(tmp_path / "nowhere")
    assert f["available"] is False and "cannot list" in f["reason"]


def test_temperatures_through_the_sensor_seam():
    t = temperatures(lambda: {"coretemp": [Temp("Package id 0", 51.0, 80.0, 100.0),
                                            Temp("", 49.5, None, None)]})
    assert t == {
        "available": True,
        "sensors_c": {"coretemp/Package id 0": 51.0, "coretemp/1": 49.5},
    }
    assert temperatures(lambda: {})["available"] is False

    def broken() -> dict:
        raise OSError("hwmon read failed")

    t = temperatures(broken)
    assert t["available"] is False and "hwmon read failed" in t["reason"]
    assert capture(sensors=lambda: {"acpitz": [Temp("", 40.0, None, None)]})["temperature"][
        "sensors_c"] == {"acpitz/0": 40.0}


def test_cpu_model_from_proc_cpuinfo(tmp_path):
    write(tmp_path / "x86" / "cpuinfo",
          "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 143\n"
          "model name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    model, source = cpu_model(tmp_path / "x86")
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and source == f"{tmp_path / 'x86'}/cpuinfo"
    write(tmp_path / "arm" / "cpuinfo",
          "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\n"
          "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    assert cpu_model(tmp_path / "arm")[0] == "Raspberry Pi 4 Model B Rev 1.4"


def test_library_versions_use_metadata():
    v = library_versions(extra=["pytest", "no-such-distribution-xyz"])
    assert v["pytest"] == metadata.version("pytest")
    assert v["no-such-distribution-xyz"] is None
    expected = metadata.version("scikit-learn") if _installed("scikit-learn") else None
    assert v["sklearn"] == expected


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_source_git_state(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], check=True)
    write(repo / "a.txt", "one")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
    sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert source_git_state(repo) == {"git_sha": sha, "git_dirty": False}
    write(repo / "a.txt", "two")
    assert source_git_state(repo) == {"git_sha": sha, "git_dirty": True}
    # A copy installed below a checkout (e.g. in a virtual environment) is not that checkout.
    (repo / "venv" / "site-packages").mkdir(parents=True)
    assert source_git_state(repo / "venv" / "site-packages")["git_sha"] is None
    assert source_git_state(tmp_path / "not-a-repo")["git_sha"] is None


# -- counters report -------------------------------------------------------------------------


def by_name(report: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in report}


def test_counters_report_all_readable(tmp_path):
    zone = tmp_path / "class" / "powercap" / "intel-rapl:0"
    write(zone / "name", "package-0")
    write(zone / "energy_uj", "12345")
    write(zone / "max_energy_range_uj", "262143328850")
    make_cpufreq(tmp_path, 0, "performance", 3_000_000)
    write(tmp_path / "class" / "thermal" / "thermal_zone0" / "type", "x86_pkg_temp")
    write(tmp_path / "class" / "thermal" / "thermal_zone0" / "temp", "45000")
    report = counters_report(tmp_path, nvml=FakeNvml(device_count=2))
    items = by_name(report)
    assert set(items) == {"rapl", "cpufreq", "thermal", "nvml:0", "nvml:1"}
    assert all(i["available"] and i["reason"] == "" for i in report), report
    assert items["rapl"]["detail"] == "package-0"
    assert "performance" in items["cpufreq"]["detail"]
    assert "x86_pkg_temp" in items["thermal"]["detail"]
    assert items["nvml:0"]["detail"] == "total energy counter"
    assert json.loads(json.dumps(report)) == report


def test_counters_report_says_why_not(tmp_path):
    no_driver = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    report = counters_report(tmp_path, nvml=no_driver)
    items = by_name(report)
    assert set(items) == {"rapl", "cpufreq", "thermal", "nvml"}
    assert not any(i["available"] for i in report)
    assert "absent" in items["rapl"]["reason"]
    assert "cpufreq" in items["cpufreq"]["reason"] or "cannot list" in items["cpufreq"]["reason"]
    assert "thermal" in items["thermal"]["reason"]
    assert "NVML could not start" in items["nvml"]["reason"]


def test_counters_report_nvml_power_only_and_no_gpu(tmp_path):
    fake = FakeNvml(unsupported=["nvmlDeviceGetTotalEnergyConsumption"])
    items = by_name(counters_report(tmp_path, nvml=fake))
    assert items["nvml:0"]["available"] and items["nvml:0"]["detail"] == "power samples, integrated"
    assert fake.init_count == 0  # every nvmlInit was paired with a shutdown
    items = by_name(counters_report(tmp_path, nvml=FakeNvml(device_count=0)))
    assert items["nvml"]["available"] is False and "no GPU" in items["nvml"]["reason"]


def test_counters_report_unreadable_rapl(tmp_path):
    zone = tmp_path / "class" / "powercap" / "intel-rapl:0"
    write(zone / "name", "package-0")
    (zone / "energy_uj").mkdir()  # cannot be read as a file
    item = by_name(counters_report(tmp_path, nvml=FakeNvml(device_count=0)))["rapl"]
    assert item["available"] is False and "energy_uj" in item["reason"]
