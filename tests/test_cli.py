"""`bench` end to end on a temporary store, and every bad input: one line, exit 2, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.cli import main

QUICK = ["--min-time", "0.05", "--max-time", "5", "--min-count", "30", "--percentiles", "50,90",
         "--warmup", "2", "--warmup-time", "0", "--max-cv", "1.0"]


def _store(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'results.db'}"


def _count(url: str) -> int:
    from costmeter.results.store import ResultStore

    store = ResultStore(url)
    try:
        return len(store.query())
    finally:
        store.close()


@pytest.mark.slow
def test_run_cross_product_then_list_show_export(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    url = _store(workdir)
    rc = main(["run", "--device", "cpu", "--runtime", "onnxruntime,torch", "--model", "tiny_mlp",
               "--batch", "1,2", "--threads", "1", "--store", url, "--json", *QUICK])
    out = capsys.readouterr().out
    assert rc == 0
    results = json.loads(out)
    assert len(results) == 4
    assert {(r["key"]["runtime"], r["key"]["batch"]) for r in results} == {
        ("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)}
    for r in results:
        assert r["status"] == "ok"
        assert r["measurement"]["count_per_process"][0] >= 30 and "samples_ns" not in r["measurement"]
        assert r["summary"]["p50_low"] <= r["summary"]["p50"] <= r["summary"]["p50_high"]
        assert r["extra"]["max_abs_diff"] < 1e-4  # ONNX Runtime and torch agree on the same inputs
        assert r["energy"]["provenance"] in ("unavailable", "counter")
        assert r["model_info"]["params"] > 0 and r["model_info"]["macs"] > 0
        assert r["environment"]["costmeter_version"]
    assert _count(url) == 4

    assert main(["results", "list", "--store", url]) == 0
    assert "tiny_mlp" in capsys.readouterr().out
    assert main(["results", "show", "1", "--store", url, "--samples"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key"]["model_id"] == "tiny_mlp" and shown["measurement"]["samples_ns"]
    for fmt in ("csv", "json", "parquet"):
        target = workdir / f"out.{fmt}"
        assert main(["results", "export", "--format", fmt, "-o", str(target), "--store", url]) == 0
        assert target.stat().st_size > 0


@pytest.mark.slow
def test_table_output_and_second_run_reuses_export_cache(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    url = _store(workdir)
    args = ["run", "--runtime", "onnxruntime", "--model", "tiny_cnn", "--store", url, *QUICK]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "tiny_cnn" in table and "p50 ms" in table and "MAD/med" in table
    assert "unavailable" not in table  # energy: shown where measured, or with --wide
    cached = list((workdir / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert main(args) == 0
    assert cached[0].stat().st_mtime_ns == mtime
    assert len(list((workdir / "cache" / "onnx").glob("*.onnx"))) == 1


def _bad(args: list[str], workdir: Path, capsys: pytest.CaptureFixture) -> str:
    url = _store(workdir)
    rc = main([*args, "--store", url, *QUICK])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert not (workdir / "results.db").exists() or _count(url) == 0
    return err


def test_unknown_device(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert "unknown device 'tpu'" in _bad(["run", "--device", "tpu", "--model", "tiny_mlp"], workdir, capsys)


def test_unknown_runtime(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = _bad(["run", "--runtime", "tensorflow", "--model", "tiny_mlp"], workdir, capsys)
    assert "unknown runtime 'tensorflow'" in err and "onnxruntime" in err


def test_runtime_not_installed(workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.devices.cpu import onnxruntime_cpu

    monkeypatch.setattr(onnxruntime_cpu.OnnxRuntimeCPU, "is_available",
                        lambda self: (False, "onnxruntime is not installed; install it with: pip install 'costmeter[onnx]'"))
    err = _bad(["run", "--runtime", "onnxruntime", "--model", "tiny_mlp"], workdir, capsys)
    assert "costmeter[onnx]" in err


def test_unknown_zoo_model_suggests(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert "resnet18" in _bad(["run", "--model", "resnet19"], workdir, capsys)


def test_missing_and_corrupt_onnx(workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _bad(["run", "--model", str(tmp_path / "nope.onnx")], workdir, capsys)
    assert "nope.onnx" in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    assert "bad.onnx" in _bad(["run", "--model", str(bad)], workdir, capsys)


@pytest.mark.parametrize("flag,value", [("--batch", "1,x"), ("--batch", "0"), ("--threads", "two"), ("--threads", "-1")])
def test_malformed_lists(flag: str, value: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert f"malformed {flag}" in _bad(["run", "--model", "tiny_mlp", flag, value], workdir, capsys)


def test_store_that_cannot_be_opened(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["run", "--model", "tiny_mlp", "--store", "postgresql+psycopg://u:p@127.0.0.1:9/none", *QUICK])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "store" in err


def test_help_loads_no_heavy_library() -> None:
    import subprocess
    import sys

    code = ("import sys; from costmeter.cli import bench; "
            "bench.main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('torch','onnxruntime','tvm','onnx','pandas','sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_model_lists_are_unambiguous_for_every_grammar(tmp_path: Path) -> None:
    from costmeter.cli.common import model_specs
    from costmeter.errors import ConfigError

    ofa = "ofa_mbv3:r128|k3e4,k5e6|k3e3,k3e3|k5e4,k5e4|k7e6,k3e3|k3e4,k3e6"
    family = "mobilenet_v3:w=0.75,d=1,r=160"
    listing = tmp_path / "models.txt"
    listing.write_text(f"# held-out networks\n{ofa}\n\n{family}  # a variant\nresnet18\n")
    assert model_specs(("tiny_mlp,tiny_cnn", ofa, family)) == ["tiny_mlp", "tiny_cnn", ofa, family]
    assert model_specs((f"@{listing}",)) == [ofa, family, "resnet18"]
    with pytest.raises(ConfigError, match="cannot read model list"):
        model_specs((f"@{tmp_path / 'missing.txt'}",))
    with pytest.raises(ConfigError, match="no model given"):
        model_specs((" , ",))


@pytest.mark.slow
def test_one_architecture_of_each_space_runs_through_bench_run(workdir: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Every registered search space and a family variant, named on the command line (OFA and
    family ids contain commas), measured by `bench run` under their canonical ids."""
    from costmeter.models.spaces import get_space, space_names

    specs = [f"{name}:{get_space(name).sample(1, seed=2)[0]}" for name in space_names()]
    specs.append("mobilenet_v3:w=0.5,d=0,r=96")
    args = ["run", "--runtime", "onnxruntime", "--threads", "1", "--store", _store(workdir), "--json",
            "--no-parity", *QUICK]
    for spec in specs:
        args += ["--model", spec]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["key"]["model_id"] for r in results] == specs
    assert all(r["status"] == "ok" for r in results)
