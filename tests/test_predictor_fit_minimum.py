"""`bench predictor fit` refuses training sets below the minimum and says what the minimum is."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.predictors.estimators.arch import MIN_FIT_ROWS
from costmeter.predictors.artifacts import read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"


def _store_with(tmp_path: Path, rows: pd.DataFrame) -> str:
    csv = tmp_path / "few.csv"
    rows[["arch", "gold_6240_ms"]].to_csv(csv, index=False)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert main(["traces", "import", str(csv), "--space", "nb201", "--store", url]) == 0
    return url


def test_too_few_distinct_architectures_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = pd.read_csv(FIXTURE)
    few = MIN_FIT_ROWS - 1
    # 25 rows, but only 19 distinct architectures: repeats are one training point each
    rows = pd.concat([data.head(few), data.head(6)], ignore_index=True)
    url = _store_with(tmp_path, rows)
    capsys.readouterr()
    out = tmp_path / "m.costmodel"
    assert main(["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", str(out),
                 "--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"only {few} distinct nb201 architectures" in err
    assert f"at least {MIN_FIT_ROWS}" in err
    assert not out.exists()


def test_the_minimum_fits_and_scores_itself(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = _store_with(tmp_path, pd.read_csv(FIXTURE).head(MIN_FIT_ROWS))
    out = tmp_path / "m.costmodel"
    assert main(["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", str(out),
                 "--store", url]) == 0
    assert f"{MIN_FIT_ROWS} architectures" in capsys.readouterr().out
    metrics = read_manifest(out)["metrics"]
    assert metrics["n"] == 4 and metrics["holdout"] == 0.2  # held-out rows: 20 x 0.2
