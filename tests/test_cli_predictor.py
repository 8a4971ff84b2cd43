"""`bench traces import`, `bench predictor fit|eval`, `bench predict` on the NB201 fixture slice."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from costmeter.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'p.db'}"


def test_import_fit_eval_predict(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fit on 200 architectures; eval scores only the 100 imported afterwards (never the
    training rows), refuses when there are none, and labels --in-sample figures."""
    rows = pd.read_csv(FIXTURE)
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    rows.iloc[:200].to_csv(first, index=False)
    rows.iloc[200:].to_csv(later, index=False)
    assert main(["traces", "import", str(first), "--space", "nb201", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert "imported 1000 measurements for 5 device(s)" in out  # 200 rows x 5 device columns
    model = tmp_path / "gold.costmodel"
    assert main(["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", str(model),
                 "--store", store_url]) == 0
    assert model.exists() and "200 architectures" in capsys.readouterr().out
    assert main(["predictor", "eval", str(model), "--store", store_url]) == 2  # only training rows
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained" in err and "--in-sample" in err
    assert main(["traces", "import", str(later), "--space", "nb201", "--store", store_url]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    assert main(["predictor", "eval", str(model), "--store", store_url, "-o", str(preds)]) == 0
    table = capsys.readouterr().out
    assert "spearman" in table and "overall (held out)" in table
    assert "100 stored models the predictor was not trained on (200 training rows left out)" in table
    frame = pd.read_csv(preds)
    assert len(frame) == 100 and not frame["in_sample"].any()
    assert set(frame["model_id"]).isdisjoint(f"nb201:{a}" for a in rows["arch"].iloc[:200])
    assert main(["predictor", "eval", str(model), "--store", store_url, "--in-sample"]) == 0
    captured = capsys.readouterr()
    assert "IN-SAMPLE" in captured.err and "overall (IN-SAMPLE)" in captured.out
    assert main(["report", "predictor", "--input", str(preds)]) == 0
    capsys.readouterr()
    arch = frame["model_id"].iloc[0]
    assert main(["predict", str(model), "--model", arch]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(arch) and "ms ±" in line and "gold_6240" in line


def test_a_file_that_does_not_record_its_training_rows_is_not_scored_silently(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from costmeter.predictors import fit_from_results, save_predictor
    from costmeter.results.store import ResultStore

    assert main(["traces", "import", str(FIXTURE), "--space", "nb201", "--store", store_url]) == 0
    with ResultStore(store_url) as store:
        pred, _, digest = fit_from_results(store.query(), space="nb201", device="gold_6240")
    old = tmp_path / "old.costmodel"
    save_predictor(pred, old, training_hash=digest)  # as files written before this version
    capsys.readouterr()
    assert main(["predictor", "eval", str(old), "--store", store_url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not record what it was trained on" in err


def test_cross_validation_mode(store_url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["traces", "import", str(FIXTURE), "--space", "nb201", "--device", "pixel3",
                 "--store", store_url]) == 0
    capsys.readouterr()
    assert main(["predictor", "eval", "--space", "nb201", "--device", "pixel3", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "within_10_pct" in out


def test_bad_trace_file_writes_nothing(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,x_ms\n|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|,-1\n")
    rc = main(["traces", "import", str(bad), "--space", "nb201", "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert main(["results", "list", "--store", store_url]) == 0
    assert "no results" in capsys.readouterr().out


def test_tampered_predictor_file(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "x.costmodel"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    rc = main(["predict", str(bad), "--model", "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
