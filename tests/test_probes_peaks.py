"""bench calibrate's probes: every installed GEMM backend timed through the protocol, judged and
stored; the fastest is the roof; the theoretical peak beside it; bad input refused up front."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.errors import ConfigError
from costmeter.harness.probes.peaks import _fastest, calibrate
from costmeter.harness.probes.session import probe_protocol
from costmeter.results.store import ResultStore

QUICK = probe_protocol(min_count=5, min_time_s=0.02, max_time_s=0.3, max_rel_ci=0.5)


def test_every_installed_backend_is_timed_judged_and_stored(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    store = ResultStore(f"sqlite:///{tmp_path / 'results.db'}")
    calibration = calibrate("cpu", gemm_size=64, copy_bytes=2**16, threads=1, protocol=QUICK, sink=store)
    stored = store.results(tag="calibrate")
    store.close()
    by_probe = {(r.key.model_id, r.key.runtime): r for r in stored}
    assert set(by_probe) == {("probe:gemm", b) for b in ("torch", "onnxruntime", "numpy")} | {
        ("probe:copy", "numpy"), ("probe:copy", "torch")}
    assert {r.run_id for r in stored} == {calibration["run_id"]}
    for (probe, backend), result in by_probe.items():
        assert result.measurement.count >= 5 and result.environment and result.key.threads == 1
        assert result.validity.value in ("VALID", "INVALID")
        work = 2 * 64**3 if probe == "probe:gemm" else 2 * 2**16
        assert result.extra["best_rate_per_s"] == pytest.approx(
            work / min(result.measurement.samples_ns[0]) * 1e9)
    gemm = calibration["gemm"]["backends"]
    fastest = max(gemm, key=lambda b: gemm[b]["best_rate_per_s"])
    assert calibration["peak_backend"] == fastest
    assert calibration["peak_flops_per_s"] == gemm[fastest]["best_rate_per_s"]
    assert calibration["bandwidth_bytes_per_s"] == max(
        f["best_rate_per_s"] for f in calibration["copy"]["backends"].values())
    assert calibration["theoretical"]["cores"] == 1  # one thread asked for: one core's units
    json.dumps(calibration)  # the calibration file is JSON


def test_the_roof_is_the_fastest_backend_and_a_failed_one_is_not() -> None:
    figures = {"numpy": {"best_rate_per_s": 190e9}, "onnxruntime": {"best_rate_per_s": 230e9},
               "torch": {"status": "failed", "error": "no torch"}}
    assert _fastest(figures) == ("onnxruntime", 230e9)
    assert _fastest({"torch": {"status": "failed"}}) == (None, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "cannot calibrate device 'tpu'"),
    ({"dtype": "int4"}, "dtype 'int4' is not one of"),
    ({"backends": ["tvm"]}, "backend 'tvm' cannot calibrate cpu; use torch, onnxruntime, numpy"),
    ({"backends": ["numpy"], "dtype": "bfloat16"}, "no installed backend multiplies bfloat16 on cpu"),
    ({"gemm_size": 8}, "gemm size must be >= 16"),
])
def test_bad_calibrations_are_refused_before_anything_runs(kwargs: dict, message: str) -> None:
    class Refuse:
        def write(self, result: object) -> None:
            raise AssertionError("nothing may be stored")

    with pytest.raises(ConfigError, match=message):
        calibrate(**{"device": "cpu", **kwargs}, sink=Refuse())


def test_bench_calibrate_stores_its_probes_and_prints_the_theoretical_peak(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from costmeter.cli import main

    code = main(["calibrate", "--backend", "numpy", "--gemm-size", "64", "--copy-mib", "1",
                 "--repeats", "3", "--max-time", "0.2", "--threads", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    saved = json.loads((tmp_path / "calibration-cpu.json").read_text())
    assert saved["peak_backend"] == "numpy" and list(saved["gemm"]["backends"]) == ["numpy"]
    assert out.splitlines()[0].startswith("cpu (float32, threads 1): peak ")
    assert "  GEMM numpy: best " in out and saved["theoretical"]["describe"] in out
    store = ResultStore(f"sqlite:///{tmp_path / 'results.db'}")
    stored = store.results(tag="calibrate")
    store.close()
    assert {r.key.model_id for r in stored} >= {"probe:gemm", "probe:copy"}
    assert all(r.run_id == saved["run_id"] for r in stored)
