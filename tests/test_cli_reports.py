"""`bench report ...` wiring: exit codes and outputs over a real SQLite store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from costmeter.cli import main
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore


def _result(model: str, run_id: str, tag: str, median_us: float, seed: int, params: int) -> RunResult:
    rng = np.random.default_rng(seed)
    samples = (median_us * 1e3 * rng.lognormal(0, 0.03, 400)).astype(np.int64).tolist()
    key = BenchKey(model, "h" + model, "cpu", "onnxruntime", 1, (1, 3, 224, 224), "float32", 1)
    return RunResult(key=key, status=Status.OK, run_id=run_id, tag=tag, started_at=f"2026-11-2{seed % 7}T00:00:00",
                     finished_at="2026-11-27T00:00:01", measurement=Measurement([samples]),
                     validity=Validity.VALID, model_info={"params": params, "macs": params * 10, "param_bytes": params * 4},
                     extra={"throughput_items_per_s": 1e6 / median_us})


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultStore(url)
    for i, (m, p) in enumerate([("resnet18", 11_000_000), ("mobilenet_v2", 3_500_000)]):
        store.write(_result(m, "run-a", "base", 1000 + 500 * i, 1 + i, p))
        store.write(_result(m, "run-b", "same", 1000 + 500 * i, 11 + i, p))
        store.write(_result(m, "run-c", "slow", (1000 + 500 * i) * (1.3 if m == "resnet18" else 1.0), 21 + i, p))
    store.close()
    return url


def test_regress_exit_codes(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["report", "regress", "--baseline", "tag:base", "--current", "tag:same", "--store", store_url,
               "--no-history"])
    assert rc == 0, capsys.readouterr()
    out = tmp_path / "rep"
    rc = main(["report", "regress", "--baseline", "tag:base", "--current", "tag:slow", "--store", store_url,
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "resnet18" in captured.out and "regress" in captured.out.lower()
    assert (out / "regression.html").exists()


def test_regress_selector_that_matches_nothing(store_url: str, capsys: pytest.CaptureFixture) -> None:
    rc = main(["report", "regress", "--baseline", "tag:nope", "--current", "tag:same", "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err


def test_table_and_pareto(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "table", "--store", store_url, "--run", "tag:base"]) == 0
    text = capsys.readouterr().out
    assert "resnet18" in text and "69.76" in text  # published top-1 of the reference architecture
    png = tmp_path / "front.png"
    assert main(["report", "pareto", "--store", store_url, "--run", "tag:base", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_metric_and_empty_store(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["report", "pareto", "--x", "speediness", "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "speediness" in err and len(err.splitlines()) == 1
    rc = main(["report", "table", "--store", f"sqlite:///{tmp_path / 'empty.db'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
