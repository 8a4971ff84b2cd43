"""`bench collect` and `bench kernels detect` wiring, with real ONNX Runtime measurements."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.cli import main


@pytest.mark.slow
def test_collect_then_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wd, store = tmp_path / "wd", f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["collect", "--space", "nb201", "--samples", "3", "--min-time", "0.02", "--threads", "1",
                 "--store", store, "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "measured 3 nb201 architectures" in out
    assert main(["results", "list", "--store", store]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    # a second collect skips what is already measured
    assert main(["collect", "--space", "nb201", "--samples", "3", "--min-time", "0.02", "--threads", "1",
                 "--store", store, "--workdir", str(wd)]) == 0
    assert "measured 0 nb201 architectures" in capsys.readouterr().out


@pytest.mark.slow
def test_kernels_detect_writes_rules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wd = tmp_path / "wd"
    assert main(["kernels", "detect", "--pairs", "Conv+Relu", "--repeats", "1", "--min-time", "0.05",
                 "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "fusion rules" in out and "Conv" in out
    written = list(wd.rglob("*.json"))
    assert written and any("Conv" in p.read_text() for p in written)
    json.loads(written[0].read_text())


def test_bad_pair_is_one_line(capsys: pytest.CaptureFixture) -> None:
    rc = main(["kernels", "detect", "--pairs", "Conv+Banana"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Banana" in err
