"""`bench run --precision/--calibration/--accuracy-data`: bad input is one line, exit 2, nothing
written; a real int8 run on ONNX Runtime stores its recipe, quantization time and fidelity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from costmeter.cli import main

QUICK = ["--min-time", "0.05", "--max-time", "5", "--min-count", "20", "--percentiles", "50",
         "--warmup", "2", "--warmup-time", "0", "--max-cv", "10"]


def _bad(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    store = tmp_path / "results.db"
    rc = main(["run", "--model", "tiny_cnn", "--workdir", str(tmp_path / "wd"),
               "--store", f"sqlite:///{store}", *args, *QUICK])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not store.exists()
    return err[0]


def test_a_precision_the_runtime_cannot_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _bad(["--runtime", "onnxruntime", "--precision", "bf16"], tmp_path, capsys)
    assert "runtime onnxruntime cannot run bf16; it runs fp32, int8" in line
    line = _bad(["--runtime", "torch_compile", "--precision", "int8"], tmp_path, capsys)
    assert "runtime torch_compile cannot run int8; it runs fp32" in line
    assert "unknown precision 'int4'" in _bad(["--precision", "int4"], tmp_path, capsys)


def test_bad_calibration_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "random:N needs N >= 1" in _bad(["--precision", "int8", "--calibration", "random:0"], tmp_path, capsys)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((8, 3, 224, 224), np.float32))
    line = _bad(["--precision", "int8", "--calibration", str(wrong)], tmp_path, capsys)
    assert "input 'input' has shape (8, 3, 224, 224)" in line and "expects (N, 3, 32, 32)" in line
    assert "--calibration is for int8" in _bad(["--precision", "fp32", "--calibration", "random:4"], tmp_path, capsys)
    assert "not found" in _bad(["--precision", "int8", "--calibration", str(tmp_path / "no.npz")], tmp_path, capsys)
    no_labels = tmp_path / "acc.npz"
    np.savez(no_labels, input=np.zeros((8, 3, 32, 32), np.float32))
    assert "no 'labels' array" in _bad(["--accuracy-data", str(no_labels)], tmp_path, capsys)


@pytest.mark.slow
def test_bad_input_with_every_runtime_and_precision_is_still_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """`--runtime all --precision all` imports every installed runtime (their libraries log on
    import): the error is still the only line, and no store is written."""
    assert "random:N needs N >= 1" in _bad(["--runtime", "all", "--precision", "all", "--calibration", "random:0"],
                                            tmp_path, capsys)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((2, 3, 8, 8), np.float32))
    line = _bad(["--runtime", "all", "--precision", "all", "--calibration", str(wrong)], tmp_path, capsys)
    assert "input 'input' has shape (2, 3, 8, 8)" in line and "expects (N, 3, 32, 32)" in line


@pytest.mark.slow
def test_int8_and_fp32_side_by_side_with_recipe_fidelity_and_accuracy(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from costmeter.models.source import resolve_model

    source = resolve_model("tiny_cnn")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.stack([source.example_inputs(1, seed=500 + i)["input"][0] for i in range(8)]))
    acc = tmp_path / "acc.npz"
    inputs = np.stack([source.example_inputs(1, seed=900 + i)["input"][0] for i in range(16)])
    np.savez(acc, input=inputs, labels=np.arange(16) % 10)
    rc = main(["run", "--model", "tiny_cnn", "--runtime", "onnxruntime", "--precision", "fp32,int8",
               "--calibration", str(calib), "--accuracy-data", str(acc), "--threads", "1", "--json",
               "--workdir", str(tmp_path / "wd"), "--store", f"sqlite:///{tmp_path / 'r.db'}", *QUICK])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = {r["key"]["options"].get("precision", "fp32"): r for r in json.loads(captured.out)}
    fp32, int8 = results["fp32"], results["int8"]
    assert fp32["key"]["dtype"] == "float32" and int8["key"]["dtype"] == "int8"
    calib_sha = int8["extra"]["calibration_sha"]
    assert int8["key"]["options"]["calibration"] == f"sha:{calib_sha}"
    recipe = int8["extra"]["quant_recipe"]
    assert recipe["method"] == "static" and recipe["format"] == "QDQ" and "per-channel" in recipe["weights"]
    assert recipe["calibration_sha"] == calib_sha and int8["extra"]["calibration_samples"] == 8
    assert int8["extra"]["quantize_s"] > 0 and int8["extra"]["prepare_s"] > 0
    assert int8["extra"]["precision_effective"] == "int8"
    assert int8["extra"]["precision_compute_share"] == 1.0
    extra = int8["extra"]
    assert 0 < extra["fidelity_max_abs_diff"] < 1 and 0.9 < extra["fidelity_cosine"] <= 1.0
    assert extra["fidelity_samples"] == 16 and extra["fidelity_inputs"] == "acc.npz"
    assert extra["accuracy_delta_pp"] == pytest.approx(100 * (extra["accuracy_top1"] - extra["accuracy_top1_fp32"]))
    assert fp32["extra"]["fidelity_max_abs_diff"] < 1e-4  # fp32 ORT against fp32 torch
    assert fp32["extra"]["accuracy_top1"] == pytest.approx(fp32["extra"]["accuracy_top1_fp32"])
    assert "parity_ok" not in int8["extra"]  # judged by fidelity, not by the fp32 tolerance


USER_MODEL = '''
import os
with open(os.environ["IMPORT_LOG"], "a") as log:
    log.write(f"{os.getpid()}\\n")
import torch


def build():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4))
    return net.eval(), (torch.randn(1, 3, 8, 8),)
'''


@pytest.mark.slow
def test_a_python_model_runs_int8_with_its_calibration_and_accuracy_files_in_children_only(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """User code is imported in child processes only, also to check --calibration and
    --accuracy-data files against its inputs, draw its held-out inputs and compute its fp32
    reference; a file that does not fit it is still one line, exit 2, no store."""
    import os

    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    imports = tmp_path / "imports.txt"
    monkeypatch.setenv("IMPORT_LOG", str(imports))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "bad.npz", x=np.zeros((6, 3, 9, 9), np.float32))
    np.savez(tmp_path / "acc.npz", x=rng.standard_normal((10, 3, 8, 8)).astype(np.float32), labels=np.arange(10) % 4)
    store = tmp_path / "r.db"
    base = ["run", "--model", "usermodel:build", "--runtime", "onnxruntime", "--threads", "1",
            "--workdir", str(tmp_path / "wd"), "--store", f"sqlite:///{store}", *QUICK]
    assert main([*base, "--precision", "int8", "--calibration", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input 'input' has shape (6, 3, 9, 9)" in err[0] and "expects (N, 3, 8, 8)" in err[0]
    assert not store.exists()
    rc = main([*base, "--precision", "fp32,int8", "--calibration", str(tmp_path / "calib.npz"),
               "--accuracy-data", str(tmp_path / "acc.npz"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = {r["key"]["options"].get("precision", "fp32"): r for r in json.loads(captured.out)}
    int8 = results["int8"]
    assert int8["status"] == "ok" and int8["extra"]["precision_effective"] == "int8"
    assert int8["key"]["options"]["calibration"] == f"sha:{int8['extra']['calibration_sha']}"
    assert int8["extra"]["calibration_samples"] == 6
    assert int8["extra"]["fidelity_samples"] == 10 and int8["extra"]["fidelity_inputs"] == "acc.npz"
    assert 0 < int8["extra"]["fidelity_max_abs_diff"] < 1 and int8["extra"]["fidelity_cosine"] > 0.9
    assert "accuracy_delta_pp" in int8["extra"]
    assert results["fp32"]["extra"]["fidelity_max_abs_diff"] < 1e-4  # the child's fp32 torch vs ORT fp32
    pids = {int(line) for line in imports.read_text().split()}
    assert pids and os.getpid() not in pids
