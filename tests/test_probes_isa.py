"""The theoretical peak from ISA flags, on captured /proc/cpuinfo files (tests/fixtures/cpuinfo)."""
from __future__ import annotations

from pathlib import Path

import pytest

from costmeter.errors import ConfigError
from costmeter.harness.probes.isa import (
    cpu_clock,
    flop_per_cycle,
    parse_cpuinfo,
    theoretical_peak,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"


def _proc(tmp_path: Path, name: str) -> Path:
    """A fake procfs root holding the captured file as ``cpuinfo``."""
    root = tmp_path / name
    root.mkdir()
    (root / "cpuinfo").write_text((FIXTURES / name).read_text())
    return root


def _facts(name: str, cpus=None):
    return parse_cpuinfo((FIXTURES / name).read_text(), cpus)


def test_sapphire_rapids_flags_give_avx512_amx_and_the_vm_clock() -> None:
    facts = _facts("sapphire_rapids_kvm.txt")
    assert {"avx512f", "amx_bf16", "amx_int8", "avx512_fp16", "avx512_vnni"} <= facts.flags
    assert (facts.arch, facts.cores, facts.logical, facts.mhz) == ("x86", 2, 2, 2600.0)
    assert flop_per_cycle(facts.flags, "float32").flop_per_cycle == 64  # 2 units x 16 lanes x FMA
    assert flop_per_cycle(facts.flags, "float64").flop_per_cycle == 32
    bf16 = flop_per_cycle(facts.flags, "bfloat16")
    assert (bf16.isa, bf16.flop_per_cycle) == ("amx_bf16", 1024)
    assert flop_per_cycle(facts.flags, "int8").flop_per_cycle == 2048
    fp16 = flop_per_cycle(facts.flags, "float16")  # no amx_fp16 flag on this part: AVX512-FP16
    assert (fp16.isa, fp16.flop_per_cycle) == ("avx512_fp16", 128)


def test_cascade_lake_has_vnni_but_no_bf16_arithmetic() -> None:
    facts = _facts("cascade_lake_gold6248.txt")
    assert facts.model_name == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz" and facts.cores == 2
    assert flop_per_cycle(facts.flags, "float32").isa == "avx512f"
    int8 = flop_per_cycle(facts.flags, "int8")
    assert (int8.isa, int8.flop_per_cycle) == ("avx512_vnni", 256)
    bf16 = flop_per_cycle(facts.flags, "bfloat16")
    assert bf16.flop_per_cycle == 64 and "computed as float32" in bf16.assumptions[-1]
    one_unit = flop_per_cycle(facts.flags, "float32", fma_units=1)
    assert one_unit.flop_per_cycle == 32 and "(given)" in one_unit.assumptions[0]


def test_zen2_is_avx2_fma_with_the_assumption_spelled_out() -> None:
    facts = _facts("epyc_7k62_zen2.txt")
    assert "avx512f" not in facts.flags and facts.vendor == "AuthenticAMD"
    fp32 = flop_per_cycle(facts.flags, "float32")
    assert (fp32.isa, fp32.flop_per_cycle) == ("avx2+fma", 32)
    assert "2 256-bit FMA units per core assumed" in fp32.assumptions[0]
    int8 = flop_per_cycle(facts.flags, "int8")
    assert int8.flop_per_cycle is None and "not estimated" in int8.assumptions[0]


def test_arm_features_line_and_cores_without_core_ids() -> None:
    facts = _facts("raspberry_pi_cortex_a53.txt")
    assert (facts.arch, facts.cores, facts.logical, facts.model_name) == ("arm", 4, 4, None)
    neon = flop_per_cycle(facts.flags, "float32", arch=facts.arch)
    assert (neon.isa, neon.flop_per_cycle) == ("neon", 16)
    assert flop_per_cycle(facts.flags, "int8", arch="arm").flop_per_cycle is None  # no asimddp


def test_affinity_keeps_only_the_allowed_processors() -> None:
    assert _facts("sapphire_rapids_kvm.txt", cpus=[1]).cores == 1
    assert _facts("raspberry_pi_cortex_a53.txt", cpus=[0, 2]).cores == 2


def test_clock_order_sysfs_max_then_cpu_mhz_then_model_name(tmp_path: Path) -> None:
    facts = _facts("cascade_lake_gold6248.txt")
    sysfs = tmp_path / "sys"
    assert cpu_clock(facts, sysfs_root=sysfs).ghz == 2.5  # cpu MHz
    freq = sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "cpuinfo_max_freq").write_text("3900000\n")
    boost = cpu_clock(facts, sysfs_root=sysfs)
    assert boost.ghz == 3.9 and "upper bound" in boost.note
    no_mhz = parse_cpuinfo((FIXTURES / "cascade_lake_gold6248.txt").read_text().replace("cpu MHz", "x"))
    named = cpu_clock(no_mhz, sysfs_root=tmp_path / "none")
    assert named.ghz == 2.5 and "model name" in named.source
    arm = cpu_clock(_facts("raspberry_pi_cortex_a53.txt"), sysfs_root=tmp_path / "none")
    assert arm.ghz is None


def test_theoretical_peak_multiplies_cores_clock_and_flop_per_cycle(tmp_path: Path) -> None:
    root = _proc(tmp_path, "sapphire_rapids_kvm.txt")
    none = tmp_path / "nosys"
    peak = theoretical_peak("float32", proc_root=root, sysfs_root=none, affinity=[0, 1])
    assert peak.flops_per_s == pytest.approx(2 * 2.6e9 * 64)
    assert "2 cores x 2.6 GHz x 64 FLOP/cycle (avx512f)" in peak.describe()
    assert "FMA units per core assumed" in peak.describe() and "cpu MHz" in peak.describe()
    one = theoretical_peak("float32", threads=1, proc_root=root, sysfs_root=none, affinity=[0, 1])
    assert one.flops_per_s == pytest.approx(2.6e9 * 64) and one.cores == 1
    more = theoretical_peak("float32", threads=8, proc_root=root, sysfs_root=none, affinity=[0, 1])
    assert more.cores == 2 and "share them" in more.cores_note  # threads beyond cores add nothing
    arm = theoretical_peak("float32", proc_root=_proc(tmp_path, "raspberry_pi_cortex_a53.txt"),
                           sysfs_root=none, affinity=[0, 1, 2, 3])
    assert arm.flops_per_s is None and "not estimated" in arm.describe()
    assert peak.to_dict()["isa"]["flop_per_cycle"] == 64


def test_bad_dtype_and_units_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="no ISA peak"):
        flop_per_cycle({"avx2"}, "int4")
    with pytest.raises(ConfigError, match="fma_units must be >= 1"):
        flop_per_cycle({"avx2"}, fma_units=0)
