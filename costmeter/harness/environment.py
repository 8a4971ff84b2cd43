"""What the machine looked like when a benchmark ran, and which counters it can read.

:func:`capture` returns a flat, JSON-ready dict recorded with every result. What cannot change
inside a process (host, CPU model, library versions, git SHA) is computed once and cached; what
can (affinity, frequencies, load, memory, temperature, thread variables) is read on every call,
which keeps a call after the first to a few milliseconds.

:func:`counters_report` lists, for ``bench env``, which energy, frequency and temperature
counters are readable here, and why not when they are not.

Library versions come from installed package metadata (``importlib.metadata``): the heavy
libraries are never imported. Sysfs and procfs roots are parameters so tests can use fake trees.
"""
from __future__ import annotations

import copy
import functools
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_PROC_ROOT = "/proc"

# import name -> distributions that provide it, most common first
LIBRARY_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "tvm": ("apache-tvm", "tvm"),
    "ai_edge_litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "executorch": ("executorch",),
    "sklearn": ("scikit-learn",),
}

THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TBB_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "GOMP_CPU_AFFINITY",
    "CUDA_VISIBLE_DEVICES",
)

_CPU_DIR_RE = re.compile(r"^cpu(\d+)$")


# -- small readers ---------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    """Stripped file text, or None when it cannot be read."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


# -- static facts (cached per process) -------------------------------------------------------


def cpu_model(proc_root: str | Path = DEFAULT_PROC_ROOT) -> tuple[str | None, str]:
    """(CPU model name, where it came from). Reads ``<proc_root>/cpuinfo`` first (fast); falls
    back to py-cpuinfo (slow: it may spawn a process), then to ``platform.processor()``."""
    text = _read(Path(proc_root) / "cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu model", "processor"):
        value = fields.get(key)
        if value and not value.isdigit():
            return value, f"{proc_root}/cpuinfo"
    try:
        import cpuinfo

        brand = cpuinfo.get_cpu_info().get("brand_raw")
        if brand:
            return str(brand), "py-cpuinfo"
    except Exception:  # noqa: BLE001 - py-cpuinfo raises assorted errors on odd platforms
        pass
    return (platform.processor() or None), "platform.processor"


def library_versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Installed version of each known library (and of ``extra`` names), None if absent.

    ``extra`` may be import names listed in :data:`LIBRARY_DISTRIBUTIONS` or distribution names.
    Nothing is imported."""
    names = list(LIBRARY_DISTRIBUTIONS) + [n for n in extra if n not in LIBRARY_DISTRIBUTIONS]
    out: dict[str, str | None] = {}
    for name in names:
        out[name] = None
        for dist in LIBRARY_DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def source_git_state(source_dir: str | Path | None = None) -> dict[str, Any]:
    """``git_sha`` and ``git_dirty`` of the costmeter source tree when it is a git checkout.

    ``source_dir`` defaults to the directory above the ``costmeter`` package. An installed copy
    inside some other repository (e.g. a virtual environment under a checkout) does not count:
    the checkout's top level must be ``source_dir`` itself. Never raises."""
    if source_dir is None:
        source_dir = Path(__file__).resolve().parents[2]
    root = Path(source_dir)
    state: dict[str, Any] = {"git_sha": None, "git_dirty": None}
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.split()
        if Path(top).resolve() != root.resolve():
            return state
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return state
    state.update(git_sha=sha, git_dirty=bool(dirty))
    return state


@functools.lru_cache(maxsize=8)
def _static_facts(proc_root: str, extra_libraries: tuple[str, ...]) -> dict[str, Any]:
    import psutil

    from costmeter import __version__

    model, model_source = cpu_model(proc_root)
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "os": uname.system,
        "kernel": uname.release,
        "platform": platform.platform(),
        "machine": uname.machine,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "cpu_model": model,
        "cpu_model_source": model_source,
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "libraries": library_versions(extra_libraries),
        "costmeter_version": __version__,
        **source_git_state(),
    }


# -- dynamic facts ---------------------------------------------------------------------------


def cpu_frequencies(sysfs_root: str | Path = DEFAULT_SYSFS_ROOT) -> dict[str, Any]:
    """Governor and frequencies (kHz, as sysfs reports them) of each CPU with cpufreq.

    Returns ``{"available": True, "governors": [...], "boost": bool|None, "per_cpu": {"cpu0":
    {"governor", "driver", "cur_khz", "min_khz", "max_khz", "hw_min_khz", "hw_max_khz"}}}``, or
    ``{"available": False, "reason": ...}``. Unreadable single files are None."""
    cpu_root = Path(sysfs_root) / "devices" / "system" / "cpu"
    try:
        entries = os.listdir(cpu_root)
    except OSError as exc:
        return {"available": False, "reason": f"cannot list {cpu_root} ({exc.strerror or exc})"}
    cpus = sorted((int(m.group(1)), name) for name in entries if (m := _CPU_DIR_RE.match(name)))
    per_cpu: dict[str, dict[str, Any]] = {}
    for _, name in cpus:
        freq = cpu_root / name / "cpufreq"
        if not freq.is_dir():
            continue
        per_cpu[name] = {
            "governor": _read(freq / "scaling_governor"),
            "driver": _read(freq / "scaling_driver"),
            "cur_khz": _read_int(freq / "scaling_cur_freq"),
            "min_khz": _read_int(freq / "scaling_min_freq"),
            "max_khz": _read_int(freq / "scaling_max_freq"),
            "hw_min_khz": _read_int(freq / "cpuinfo_min_freq"),
            "hw_max_khz": _read_int(freq / "cpuinfo_max_freq"),
        }
    if not per_cpu:
        return {
            "available": False,
            "reason": f"no cpufreq under {cpu_root}/cpu*/cpufreq (virtual machine, or no cpufreq "
            "driver loaded): governor and clock speed unknown",
        }
    boost: bool | None = None
    boost_flag = _read_int(cpu_root / "cpufreq" / "boost")
    no_turbo = _read_int(cpu_root / "intel_pstate" / "no_turbo")
    if boost_flag is not None:
        boost = bool(boost_flag)
    elif no_turbo is not None:
        boost = not no_turbo
    governors = sorted({c["governor"] for c in per_cpu.values() if c["governor"]})
    return {"available": True, "governors": governors, "boost": boost, "per_cpu": per_cpu}


def temperatures(
    sensors: Callable[[], dict[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """Temperatures (degrees C) from ``psutil.sensors_temperatures`` (or the ``sensors`` seam):
    ``{"available": True, "sensors_c": {"coretemp/Package id 0": 45.0, ...}}`` or
    ``{"available": False, "reason": ...}``."""
    if sensors is None:
        import psutil

        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is None:
            return {"available": False, "reason": "psutil cannot read temperatures on this OS"}
    try:
        groups = sensors() or {}
    except (OSError, RuntimeError) as exc:
        return {"available": False, "reason": f"temperature sensors unreadable ({exc})"}
    readings: dict[str, float] = {}
    for chip, entries in groups.items():
        for i, entry in enumerate(entries):
            label = getattr(entry, "label", "") or str(i)
            current = getattr(entry, "current", None)
            if current is not None:
                readings[f"{chip}/{label}"] = float(current)
    if not readings:
        return {
            "available": False,
            "reason": "no temperature sensors exposed (no hwmon/thermal drivers; usual in "
            "virtual machines)",
        }
    return {"available": True, "sensors_c": readings}


def cpu_affinity() -> list[int] | None:
    """CPUs this process may run on, or None where the OS cannot say."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    try:
        import psutil

        return sorted(psutil.Process().cpu_affinity())
    except (AttributeError, OSError):
        return None


def capture(
    threads: int | None = None,
    extra_libraries: Iterable[str] = (),
    *,
    sysfs_root: str | Path = DEFAULT_SYSFS_ROOT,
    proc_root: str | Path = DEFAULT_PROC_ROOT,
    sensors: Callable[[], dict[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """The environment of a run as a flat JSON-ready dict.

    ``threads`` is the thread count the run asked for (recorded as ``threads_requested``);
    ``extra_libraries`` adds library versions beyond the default list. Keys: hostname, os,
    kernel, platform, machine, python_version, python_implementation, python_executable,
    cpu_model, cpu_model_source, logical_cores, physical_cores, cpu_affinity, cpufreq,
    load_average (1/5/15 min), memory_total_bytes, memory_available_bytes, temperature,
    libraries, costmeter_version, git_sha, git_dirty, thread_env, threads_requested,
    captured_at (UTC, ISO 8601). Unreadable parts are None or ``{"available": False, "reason"}``.
    """
    import psutil

    facts = copy.deepcopy(_static_facts(str(proc_root), tuple(extra_libraries)))
    try:
        load: list[float] | None = [round(x, 3) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    facts.update(
        cpu_affinity=cpu_affinity(),
        cpufreq=cpu_frequencies(sysfs_root),
        load_average=load,
        memory_available_bytes=int(psutil.virtual_memory().available),
        temperature=temperatures(sensors),
        thread_env={name: os.environ.get(name) for name in THREAD_ENV_VARS},
        threads_requested=threads,
        captured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return facts


# -- counters report -------------------------------------------------------------------------


def _thermal_counters(sysfs_root: Path) -> dict[str, Any]:
    zones = sorted((sysfs_root / "class" / "thermal").glob("thermal_zone*"))
    hwmon = sorted((sysfs_root / "class" / "hwmon").glob("hwmon*/temp*_input"))
    readable = [z for z in zones if _read_int(z / "temp") is not None]
    readable_hwmon = [h for h in hwmon if _read_int(h) is not None]
    if readable or readable_hwmon:
        names = [_read(z / "type") or z.name for z in readable]
        names += [f"{_read(h.parent / 'name') or h.parent.name}/{h.name}" for h in readable_hwmon]
        return {"available": True, "reason": "", "detail": ", ".join(names)}
    if zones or hwmon:
        return {"available": False, "reason": "thermal sensors present but unreadable"}
    return {
        "available": False,
        "reason": f"no thermal zones or hwmon sensors under {sysfs_root}/class (usual in virtual "
        "machines)",
    }


_NVML_MODE_DETAIL = {
    "counter": "total energy counter",
    "integrated-power": "power samples, integrated",
}


def _nvml_counters(nvml: Any | None) -> list[dict[str, Any]]:
    from costmeter.devices.cuda.nvml import load_nvml
    from costmeter.devices.energy.nvml import NvmlEnergyMeter
    from costmeter.errors import UnavailableError

    base = {"name": "nvml", "kind": "energy"}
    try:
        module = load_nvml(nvml)
    except UnavailableError as exc:
        return [{**base, "available": False, "reason": str(exc)}]
    try:
        module.nvmlInit()
    except module.NVMLError as exc:
        return [{**base, "available": False, "reason": f"NVML could not start ({exc}): no NVIDIA "
                 "driver loaded, or no NVIDIA GPU"}]
    try:
        count, error = int(module.nvmlDeviceGetCount()), "NVML sees no GPU"
    except module.NVMLError as exc:
        count, error = 0, f"NVML cannot count GPUs ({exc})"
    out = []
    try:
        for index in range(count):
            meter = NvmlEnergyMeter(index, nvml=module, env={})
            try:
                ok, reason = meter.is_available()
                mode = meter.mode
            finally:
                meter.close()
            out.append({"name": f"nvml:{index}", "kind": "energy", "available": ok,
                        "reason": reason, "detail": _NVML_MODE_DETAIL.get(mode, "")})
    finally:
        module.nvmlShutdown()
    return out or [{**base, "available": False, "reason": error}]
    return out


def counters_report(
    sysfs_root: str | Path = DEFAULT_SYSFS_ROOT, nvml: Any | None = None
) -> list[dict[str, Any]]:
    """Which energy, frequency and temperature counters are readable here, and why not.

    One dict per counter: ``name`` (rapl, cpufreq, thermal, nvml:N), ``kind`` (energy,
    frequency, temperature), ``available``, ``reason`` (why not, with a fix where there is
    one) and ``detail`` (what was found). ``nvml`` is a pynvml-like module (default: import)."""
    from costmeter.devices.energy.rapl import RaplMeter

    root = Path(sysfs_root)
    report: list[dict[str, Any]] = []

    rapl = RaplMeter(root / "class" / "powercap")
    ok, reason = rapl.is_available()
    domains = ", ".join(d.key for d in rapl.domains())
    report.append({"name": "rapl", "kind": "energy", "available": ok, "reason": reason,
                   "detail": domains})

    freq = cpu_frequencies(root)
    detail = ""
    if freq["available"]:
        detail = f"{len(freq['per_cpu'])} CPU(s), governor(s): " + (
            ", ".join(freq["governors"]) or "unknown"
        )
    report.append({"name": "cpufreq", "kind": "frequency", "available": freq["available"],
                   "reason": freq.get("reason", ""), "detail": detail})

    report.append({"name": "thermal", "kind": "temperature", **_thermal_counters(root)})
    report.extend(_nvml_counters(nvml))
    for item in report:
        item.setdefault("detail", "")
    return report
