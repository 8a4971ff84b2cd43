"""`bench lut build|check` end to end on the small nb201 table (real ONNX Runtime measurements)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.cli import main


@pytest.mark.slow
def test_build_then_check_nb201(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wd = tmp_path / "wd"
    out = tmp_path / "nb201.json"
    assert main(["lut", "build", "--space", "nb201", "--min-time", "0.01", "-o", str(out), "--workdir", str(wd)]) == 0
    said = capsys.readouterr().out
    assert "entries" in said and out.exists() and out.with_suffix(".csv").exists()
    body = json.loads(out.read_text())
    assert body["manifest"]["device"] == "cpu" and body["manifest"]["runtime"] == "onnxruntime"
    assert all(e["latency_ms"] > 0 for e in body["entries"])
    store = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["lut", "check", str(out), "--networks", "3", "--min-time", "0.05", "--update",
                 "--store", store, "--workdir", str(wd)]) == 0
    report = capsys.readouterr().out
    assert "spearman" in report and "lut" in report
    assert "check" in json.loads(out.read_text())["manifest"]


def test_table_for_another_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"format": "costmeter-lut", "format_version": 1, "manifest": {
        "space": "nb201", "device": "pixel3", "runtime": "litert", "resolutions": [32]}, "entries": []}))
    rc = main(["lut", "check", str(table), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "pixel3" in err


def test_predicted_without_predictor(capsys: pytest.CaptureFixture) -> None:
    rc = main(["lut", "build", "--space", "nb201", "--predicted"])
    assert rc == 2 and "--predictor" in capsys.readouterr().err
