"""FBNet traces through the CLI and a real SQLite store: import of the fixture slice, predictor
fit, batch prediction from arch strings, and bad input (one line, exit 2, nothing written)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.models.spaces import fbnet
from costmeter.results.store import ResultStore
from costmeter.results.traces import read_traces

FIXTURE = Path(__file__).parent / "fixtures" / "fbnet_slice.csv.gz"
DEVICES = {"1080ti_1", "titan_rtx_32", "gold_6240", "pixel3", "samsung_a50"}


@pytest.fixture
def store_url(tmp_path: Path, workdir: Path) -> str:
    return f"sqlite:///{tmp_path / 'fb.db'}"


def _stored(store_url: str) -> int:
    with ResultStore(store_url) as store:
        return len(store.query())


def test_fixture_reads_as_fbnet_traces() -> None:
    traces = read_traces(FIXTURE, space="fbnet")
    data = pd.read_csv(FIXTURE)
    frame = traces.frame
    assert len(frame) == 60 * 5 and set(frame["device"]) == DEVICES
    assert frame["model_id"].iloc[0] == f"fbnet:{data['arch'][0]}"
    assert (frame["arch"].str.count(r"\|") == 21).all()


def test_import_fit_and_batch_predict(store_url: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    from costmeter.predictors.api import load_predictor

    assert main(["traces", "import", str(FIXTURE), "--space", "fbnet", "--store", store_url]) == 0
    assert "imported 300 measurements for 5 device(s)" in capsys.readouterr().out
    with ResultStore(store_url) as store:
        rows = store.query(device="pixel3")
    assert len(rows) == 60 and rows["model_id"].str.startswith("fbnet:").all()
    model = tmp_path / "pixel3.costmodel"
    assert main(["predictor", "fit", "--space", "fbnet", "--device", "pixel3", "-o", str(model),
                 "--store", store_url]) == 0
    assert "60 architectures" in capsys.readouterr().out
    predictor = load_predictor(model, device="pixel3", space="fbnet")
    archs = fbnet.sample(5, seed=0)
    mean, std = predictor.predict(archs)
    assert mean.shape == std.shape == (5,) and np.all(mean > 0) and np.all(np.isfinite(std))
    data = pd.read_csv(FIXTURE)
    measured = data["pixel3_ms"].to_numpy()
    fitted, _ = predictor.predict(list(data["arch"]))
    # fitted on these 60: ranks far better than chance (a broken feature path would not)
    assert np.corrcoef(np.argsort(np.argsort(fitted)), np.argsort(np.argsort(measured)))[0, 1] > 0.8
    assert main(["predict", str(model), "--model", f"fbnet:{archs[0]}"]) == 0
    assert capsys.readouterr().out.startswith(f"fbnet:{archs[0]}\t")


def _write_variant(tmp_path: Path, edit: str) -> Path:
    data = pd.read_csv(FIXTURE)
    arch = data["arch"].copy()
    if edit == "layers":                    # a 21-layer file: every row drops its last block
        arch = arch.str.rsplit("|", n=1).str[0]
    else:                                   # one malformed block in data row 3, layer 7
        blocks = arch[2].split("|")
        blocks[6] = "k7_e6"
        arch[2] = "|".join(blocks)
    data["arch"] = arch
    path = tmp_path / f"bad_{edit}.csv.gz"
    with gzip.open(path, "wt") as fh:
        data.to_csv(fh, index=False)
    return path


@pytest.mark.parametrize("case, message", [
    ("space", "unknown search space 'fbnet2'; known spaces: nb201, ofa_mbv3, fbnet"),
    ("block", "data row 3: fbnet: layer 7 (stage 3, block 2 of 4) has unknown block 'k7_e6'; "
              "allowed: k3_e1, k3_e1_g2"),
    ("layers", "data row 1: fbnet: "),
])
def test_bad_input_is_one_line_exit_2_nothing_written(
        case: str, message: str, store_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    path = FIXTURE if case == "space" else _write_variant(tmp_path, case)
    space = "fbnet2" if case == "space" else "fbnet"
    rc = main(["traces", "import", str(path), "--space", space, "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err
    if case == "layers":
        assert "has 21 layers separated by '|', expected 22" in err
    assert _stored(store_url) == 0


def test_predict_rejects_malformed_arch(store_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["traces", "import", str(FIXTURE), "--space", "fbnet", "--device", "gold_6240",
                 "--store", store_url]) == 0
    model = tmp_path / "gold.costmodel"
    assert main(["predictor", "fit", "--space", "fbnet", "--device", "gold_6240", "-o", str(model),
                 "--holdout", "0", "--store", store_url]) == 0
    capsys.readouterr()
    bad = "|".join(["k3_e1"] * 21 + ["k3_e9"])
    assert main(["predict", str(model), "--model", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layer 22 (stage 7, block 1 of 1)" in err
