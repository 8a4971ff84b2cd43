"""The CPU's theoretical peak: cores x clock (GHz) x FLOP per cycle from its ISA flags.

What cannot be read from the flags is assumed, and every assumption is returned in words with
the figure (:attr:`IsaPeak.assumptions`, :attr:`ClockReading.note`):

- **FMA units per core.** The flags say which vector instructions exist, not how many units
  execute them. Two are assumed (Intel cores since Haswell, Xeon Scalable Gold 6xxx/Platinum
  and later; AMD since Zen 2). Some Xeon Silver/Bronze/Gold 5xxx and client cores have one
  512-bit unit, AMD Zen 4 executes 512-bit FMAs on 256-bit units: pass ``fma_units=1`` there.
- **AMX.** One tile unit per core at Intel's figures: 1024 bf16/fp16 FLOP and 2048 int8
  operations per cycle.
- **Clock.** The highest figure found, in this order: cpufreq's ``cpuinfo_max_freq`` (the
  one-core boost clock; all-core and AVX-512 clocks are lower, so the peak is an upper bound),
  ``cpu MHz`` of ``/proc/cpuinfo`` (on a virtual machine, the host's nominal TSC rate; boost may
  exceed it), ``@ x.xxGHz`` in the model name (nominal), py-cpuinfo's advertised clock.
- **Cores.** Physical cores among the CPUs this process may use (SMT siblings share their
  core's units), capped at the thread count asked for.

Per core and cycle (two units): float32 64 FLOP with AVX-512, 32 with AVX2+FMA, 16 with AVX
(an add and a multiply, no FMA), 8 with SSE, 16 with NEON; float64 half of that; bfloat16 1024
with AMX, 128 with AVX512_BF16; int8 2048 with AMX, 256 with AVX512_VNNI, 128 with AVX-VNNI.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from costmeter.errors import ConfigError
from costmeter.harness.environment import DEFAULT_PROC_ROOT, DEFAULT_SYSFS_ROOT

DTYPES = ("float32", "float64", "bfloat16", "float16", "int8")
ASSUMED_FMA_UNITS = 2
AMX_FLOP_PER_CYCLE = {"bfloat16": 1024, "float16": 1024, "int8": 2048}
_GHZ_IN_NAME = re.compile(r"@\s*([0-9.]+)\s*GHz", re.IGNORECASE)


@dataclass(frozen=True)
class CpuFacts:
    """What ``/proc/cpuinfo`` says: ISA flags (x86 ``flags`` or ARM ``Features``), model name,
    vendor, ``cpu MHz`` of the first CPU (MHz), physical cores and logical CPUs among the CPUs
    read, and the architecture family (``x86``, ``arm`` or ``unknown``)."""

    flags: frozenset[str]
    model_name: str | None
    vendor: str | None
    mhz: float | None
    cores: int
    logical: int
    arch: str
    source: str


def parse_cpuinfo(text: str, cpus: Iterable[int] | None = None,
                  source: str = "/proc/cpuinfo") -> CpuFacts:
    """Parse ``/proc/cpuinfo`` text. ``cpus`` keeps only those processor numbers (the process's
    affinity); physical cores are the distinct (physical id, core id) pairs among them, or the
    processors themselves where the file has no such fields (ARM)."""
    keep = None if cpus is None else {int(c) for c in cpus}
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
        if fields:
            blocks.append(fields)
    processors = [b for b in blocks if "processor" in b and b["processor"].isdigit()]
    if keep is not None:
        processors = [b for b in processors if int(b["processor"]) in keep] or processors
    first = processors[0] if processors else (blocks[0] if blocks else {})
    flag_text = next((b.get("flags") or b.get("features") for b in processors + blocks
                      if b.get("flags") or b.get("features")), "")
    arch = "x86" if any("flags" in b for b in blocks) else (
        "arm" if any("features" in b for b in blocks) else "unknown")
    pairs = {(b.get("physical id"), b.get("core id")) for b in processors}
    cores = len(pairs) if processors and all("core id" in b for b in processors) else len(processors)
    try:
        mhz: float | None = float(first["cpu mhz"])
    except (KeyError, ValueError):
        mhz = None
    model = next((b["model name"] for b in processors + blocks if b.get("model name")), None)
    return CpuFacts(frozenset(flag_text.split()), model, first.get("vendor_id"), mhz,
                    max(cores, 1 if processors else 0), len(processors), arch, source)


def read_cpu_facts(proc_root: str | Path = DEFAULT_PROC_ROOT,
                   cpus: Iterable[int] | None = None) -> CpuFacts:
    """:func:`parse_cpuinfo` of ``<proc_root>/cpuinfo``; where it cannot be read (macOS,
    Windows), py-cpuinfo's flags and psutil's physical core count."""
    path = Path(proc_root) / "cpuinfo"
    try:
        return parse_cpuinfo(path.read_text(errors="replace"), cpus, str(path))
    except OSError:
        pass
    import psutil

    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - py-cpuinfo raises assorted errors on odd platforms
        info = {}
    arch = str(info.get("arch", "")).lower()
    hz = info.get("hz_advertised") or [None]
    return CpuFacts(frozenset(str(f) for f in info.get("flags", ())), info.get("brand_raw"),
                    info.get("vendor_id_raw"), None if hz[0] is None else float(hz[0]) / 1e6,
                    int(psutil.cpu_count(logical=False) or 1), int(psutil.cpu_count() or 1),
                    "x86" if "x86" in arch else "arm" if "arm" in arch else "unknown", "py-cpuinfo")


@dataclass(frozen=True)
class IsaPeak:
    """Peak arithmetic per core and cycle for ``dtype`` (FLOP; operations for int8), the
    instructions it rests on, and what was assumed. ``flop_per_cycle`` is None where the flags
    give no basis for a figure."""

    dtype: str
    isa: str
    flop_per_cycle: float | None
    assumptions: tuple[str, ...]


def _units_note(units: int, given: bool, width: int) -> str:
    if given:
        return f"{units} {width}-bit FMA unit(s) per core (given)"
    if width == 512:
        return (f"{units} 512-bit FMA units per core assumed (Xeon Gold 6xxx/Platinum and later "
                "have two; Xeon Silver/Bronze, some Gold 5xxx and client cores have one, and AMD "
                "Zen 4 runs 512-bit FMAs on 256-bit units: use fma_units=1 there)")
    return (f"{units} {width}-bit FMA units per core assumed (Intel since Haswell, AMD since "
            "Zen 2; AMD Zen/Zen+ have two 128-bit units: half this)")


def _vector_fp(flags: frozenset[str], arch: str, units: int, given: bool) -> tuple[str, int, str]:
    """(isa, float32 FLOP per cycle per core, assumption) of the widest vector FP unit."""
    if arch == "arm" or "asimd" in flags:
        note = (f"{units} 128-bit NEON FMA pipes per core {'(given)' if given else 'assumed'} "
                "(Neoverse N1/N2; V1/V2 have four)")
        if "sve" in flags:
            note += "; SVE vector length is not in the flags: 128 bits assumed"
        return ("neon" + ("+sve" if "sve" in flags else ""), units * 4 * 2, note)
    if "avx512f" in flags:
        return "avx512f", units * 16 * 2, _units_note(units, given, 512)
    if "fma" in flags:
        return ("avx2+fma" if "avx2" in flags else "avx+fma"), units * 8 * 2, _units_note(units, given, 256)
    if "avx" in flags:
        return "avx", 16, "no FMA: one 256-bit add and one 256-bit multiply per cycle"
    if "sse2" in flags or "sse" in flags:
        return "sse2", 8, "no FMA: one 128-bit add and one 128-bit multiply per cycle"
    return "scalar", 2, "no vector flags recognised: one scalar add and multiply per cycle"


def flop_per_cycle(flags: Iterable[str], dtype: str = "float32", *, arch: str = "x86",
                   fma_units: int | None = None) -> IsaPeak:
    """Peak FLOP per core and cycle for ``dtype`` from ISA ``flags`` (see the module
    docstring for the table and the assumptions). ConfigError for an unknown dtype."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} has no ISA peak; use one of {', '.join(DTYPES)}")
    if fma_units is not None and fma_units < 1:
        raise ConfigError(f"fma_units must be >= 1, got {fma_units}")
    have = frozenset(str(f).lower() for f in flags)
    units = fma_units or ASSUMED_FMA_UNITS
    given = fma_units is not None
    isa, fp32, note = _vector_fp(have, arch, units, given)
    if dtype == "float32":
        return IsaPeak(dtype, isa, float(fp32), (note,))
    if dtype == "float64":
        return IsaPeak(dtype, isa, fp32 / 2.0, (note,))
    amx = {"bfloat16": "amx_bf16", "float16": "amx_fp16", "int8": "amx_int8"}[dtype]
    if amx in have:
        return IsaPeak(dtype, amx, float(AMX_FLOP_PER_CYCLE[dtype]),
                       (f"one AMX tile unit per core at Intel's figure of {AMX_FLOP_PER_CYCLE[dtype]} "
                        f"{'operations' if dtype == 'int8' else 'FLOP'} per cycle",))
    wide = "avx512f" in have
    if dtype == "bfloat16" and "avx512_bf16" in have:
        return IsaPeak(dtype, "avx512_bf16", units * 16 * 2 * 2.0,
                       (_units_note(units, given, 512) + "; VDPBF16PS: 2 products per float32 lane",))
    if dtype == "float16" and "avx512_fp16" in have:
        return IsaPeak(dtype, "avx512_fp16", units * 32 * 2.0, (_units_note(units, given, 512),))
    if dtype == "int8":
        if wide and "avx512_vnni" in have:
            return IsaPeak(dtype, "avx512_vnni", units * 16 * 4 * 2.0,
                           (_units_note(units, given, 512) + "; VPDPBUSD: 4 products per 32-bit lane",))
        if "avx_vnni" in have or "avx512_vnni" in have:
            return IsaPeak(dtype, "avx_vnni", units * 8 * 4 * 2.0,
                           (_units_note(units, given, 256) + "; VPDPBUSD: 4 products per 32-bit lane",))
        if "asimddp" in have:
            return IsaPeak(dtype, "asimddp", units * 4 * 4 * 2.0,
                           (note + "; SDOT: 4 products per 32-bit lane",))
        return IsaPeak(dtype, isa, None, ("no VNNI, AMX or dot-product flags: int8 peak not estimated",))
    return IsaPeak(dtype, isa, float(fp32), (note, f"no {dtype} arithmetic in the flags: "
                                              "computed as float32"))


@dataclass(frozen=True)
class ClockReading:
    """A core clock in GHz (None when nothing says), where it was read, and what it means."""

    ghz: float | None
    source: str
    note: str


def cpu_clock(facts: CpuFacts | None = None, *, proc_root: str | Path = DEFAULT_PROC_ROOT,
              sysfs_root: str | Path = DEFAULT_SYSFS_ROOT) -> ClockReading:
    """The clock for the peak, in the order of the module docstring."""
    cpufreq = Path(sysfs_root) / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "cpuinfo_max_freq"
    try:
        khz = int(cpufreq.read_text().strip())
        if khz > 0:
            return ClockReading(khz / 1e6, str(cpufreq), "maximum (boost) clock of one core; "
                                "all-core and AVX-512 clocks are lower, so this peak is an upper bound")
    except (OSError, ValueError):
        pass
    facts = facts or read_cpu_facts(proc_root)
    if facts.mhz:
        return ClockReading(facts.mhz / 1e3, f"{facts.source} cpu MHz",
                            "the clock the kernel reports (on a virtual machine the host's nominal "
                            "rate); boost clocks may exceed it")
    match = _GHZ_IN_NAME.search(facts.model_name or "")
    if match:
        return ClockReading(float(match.group(1)), f"model name {facts.model_name!r}",
                            "nominal (base) clock; boost clocks may exceed it")
    return ClockReading(None, "none", "no clock found (no cpufreq, no cpu MHz, no GHz in the "
                        "model name): the theoretical peak is not estimated")


@dataclass(frozen=True)
class TheoreticalPeak:
    """cores x clock x FLOP/cycle (FLOP/s; None where the clock or the ISA figure is unknown)."""

    flops_per_s: float | None
    dtype: str
    cores: int
    cores_note: str
    clock: ClockReading
    isa: IsaPeak
    cpu_model: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["isa"]["assumptions"] = list(self.isa.assumptions)
        return d

    def describe(self) -> str:
        """One line: the product, the ISA, and where the clock came from."""
        if self.flops_per_s is None:
            why = self.clock.note if self.clock.ghz is None else "; ".join(self.isa.assumptions)
            return f"theoretical {self.dtype} peak not estimated: {why}"
        unit = "operations" if self.dtype == "int8" else "FLOP"
        return (f"theoretical {self.dtype} peak {self.flops_per_s / 1e9:,.1f} G{unit}/s = "
                f"{self.cores} cores x {self.clock.ghz:.3g} GHz x {self.isa.flop_per_cycle:g} "
                f"{unit}/cycle ({self.isa.isa}); assumed: {'; '.join(self.isa.assumptions)}; "
                f"clock from {self.clock.source}: {self.clock.note}")


def theoretical_peak(dtype: str = "float32", threads: int | None = None, *,
                     fma_units: int | None = None, proc_root: str | Path = DEFAULT_PROC_ROOT,
                     sysfs_root: str | Path = DEFAULT_SYSFS_ROOT,
                     affinity: Iterable[int] | None = None) -> TheoreticalPeak:
    """This CPU's theoretical ``dtype`` peak with ``threads`` threads (None: every CPU this
    process may use), in FLOP/s. The hardware seams (procfs and sysfs roots, the affinity) are
    parameters so that captured files can stand in for the machine."""
    if affinity is None and hasattr(os, "sched_getaffinity") and proc_root == DEFAULT_PROC_ROOT:
        affinity = sorted(os.sched_getaffinity(0))
    facts = read_cpu_facts(proc_root, affinity)
    isa = flop_per_cycle(facts.flags, dtype, arch=facts.arch, fma_units=fma_units)
    clock = cpu_clock(facts, proc_root=proc_root, sysfs_root=sysfs_root)
    cores = max(1, facts.cores)
    note = f"{cores} physical core(s) among the {facts.logical or cores} CPU(s) this process may use"
    if threads is not None and threads < cores:
        cores, note = int(threads), f"{threads} thread(s) asked for; " + note
    elif threads is not None and threads > cores:
        note += f"; {threads} threads share them (SMT siblings share a core's units)"
    peak = None
    if clock.ghz is not None and isa.flop_per_cycle is not None:
        peak = cores * clock.ghz * 1e9 * isa.flop_per_cycle
    return TheoreticalPeak(peak, dtype, cores, note, clock, isa, facts.model_name)
