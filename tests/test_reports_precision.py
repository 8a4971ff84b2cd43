"""Precision in the reports: the results frame carries each result's precision, fidelity and
measured accuracy; Pareto plots take precision as a series; `--accuracy-data` deltas reach the
efficiency tables and the Pareto metrics (over a real SQLite store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.reports.accuracy import attach_accuracy
from costmeter.reports.pareto import pareto_analysis, plot_pareto, point_labels
from costmeter.reports.tables import efficiency_table, to_markdown
from costmeter.results.frames import PRECISION_COLUMNS
from costmeter.results.io import export_results, read_frame
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore


def _result(model: str, runtime: str, precision: str, median_us: float, seed: int,
            accuracy: float | None = None, fp32_accuracy: float | None = None, agree: float | None = None,
            ran: str | None = None) -> RunResult:
    rng = np.random.default_rng(seed)
    samples = (median_us * 1e3 * rng.lognormal(0, 0.02, 200)).astype(np.int64).tolist()
    options = {} if precision == "fp32" else {"precision": precision}
    if precision == "int8":
        options["calibration"] = "random:8"
    dtype = {"fp32": "float32", "int8": "int8", "bf16": "bfloat16"}[precision]
    key = BenchKey(model, "h" + model, "cpu", runtime, 1, (1, 3, 224, 224), dtype, 1, tuple(options.items()))
    extra: dict = {"quantize_s": 3.5} if precision == "int8" else {}
    if ran is not None:
        extra["precision_effective"] = ran
    if agree is not None:
        extra.update(fidelity_top1_agreement=agree, fidelity_cosine=0.999, fidelity_max_abs_diff=0.02)
    if accuracy is not None:
        extra.update(accuracy_top1=accuracy, accuracy_top1_fp32=fp32_accuracy,
                     accuracy_delta_pp=100 * (accuracy - fp32_accuracy))
    return RunResult(key=key, status=Status.OK, run_id="run-q", started_at=f"2026-12-01T00:00:0{seed % 10}",
                     finished_at="2026-12-01T00:01:00", measurement=Measurement([samples]),
                     validity=Validity.VALID, model_info={"params": 3_500_000, "macs": 300_000_000}, extra=extra)


RESULTS = [
    _result("mobilenet_v2", "onnxruntime", "fp32", 4000, 1, accuracy=0.75, fp32_accuracy=0.75, agree=1.0, ran="fp32"),
    _result("mobilenet_v2", "onnxruntime", "int8", 1800, 2, accuracy=0.72, fp32_accuracy=0.75, agree=0.9, ran="int8"),
    _result("mobilenet_v2", "openvino", "fp32", 3500, 3, accuracy=0.75, fp32_accuracy=0.75, agree=1.0),
    _result("mobilenet_v2", "openvino", "int8", 1500, 4, accuracy=0.70, fp32_accuracy=0.75, agree=0.85,
            ran="mixed (80% int8)"),
    _result("resnet18", "onnxruntime", "fp32", 9000, 5),
    _result("resnet18", "onnxruntime", "int8", 5000, 6, agree=0.95, ran="int8"),
]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultStore(url) as store:
        for result in RESULTS:
            store.write(result)
    return url


@pytest.fixture
def frame(store_url: str) -> pd.DataFrame:
    with ResultStore(store_url) as store:
        return store.query()


def test_the_results_frame_carries_precision_fidelity_and_measured_accuracy(frame: pd.DataFrame,
                                                                             tmp_path: Path) -> None:
    by = {(r.model_id, r.runtime, r.precision): r for r in frame.itertuples()}
    assert set(frame["precision"]) == {"fp32", "int8"}
    ort8 = by[("mobilenet_v2", "onnxruntime", "int8")]
    assert ort8.precision_effective == "int8" and ort8.quantize_s == 3.5
    assert ort8.accuracy_top1 == 0.72 and ort8.accuracy_delta_pp == pytest.approx(-3.0)
    assert ort8.fidelity_top1_agreement == 0.9 and ort8.fidelity_cosine == 0.999
    plain = by[("resnet18", "onnxruntime", "fp32")]
    assert plain.precision_effective == "" and np.isnan(plain.accuracy_top1) and np.isnan(plain.quantize_s)
    export_results(frame, tmp_path / "r.csv")  # the CSV export keeps them, with the store's dtypes
    back = read_frame(tmp_path / "r.csv")
    columns = list(PRECISION_COLUMNS)
    pd.testing.assert_frame_equal(back[columns], frame[columns], check_dtype=False)


def test_openvino_spellings_of_the_precision_option_read_as_precision_names(tmp_path: Path) -> None:
    from costmeter.results.frames import frame_from_results

    plain = RESULTS[0]
    spelled = [RunResult(**{**plain.__dict__, "key": BenchKey(**{**plain.key.__dict__, "runtime": "openvino",
                                                                 "options": (("precision", p),)})})
               for p in ("f32", "bf16", "f16", "default")]
    assert frame_from_results(spelled)["precision"].tolist() == ["fp32", "bf16", "fp16", "fp32"]


def test_pareto_takes_precision_as_a_series(frame: pd.DataFrame, tmp_path: Path) -> None:
    rows = attach_accuracy(frame, use_published=False)
    result = pareto_analysis(rows, "latency_p50", "accuracy_delta", series_by="precision")
    assert set(result.series_hypervolume) == {"fp32", "int8"}
    assert len(result.points) == 4 and result.skipped  # resnet18 has no measured accuracy delta
    front = result.front
    # fp32 has delta 0; the fastest int8 (OpenVINO, -5 pp) is on the front, the ORT int8 too
    assert set(zip(front["runtime"], front["precision"])) == {
        ("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "int8")}
    by_runtime = pareto_analysis(rows, "latency_p50", "measured_top1", series_by="runtime_precision")
    assert set(by_runtime.series_hypervolume) == {"onnxruntime/fp32", "onnxruntime/int8",
                                                  "openvino/fp32", "openvino/int8"}
    assert by_runtime.y.unit == "%" and sorted(by_runtime.points["y"]) == pytest.approx([70, 72, 75, 75])
    per_runtime = pareto_analysis(rows, "latency_p50", "top1_agreement", series_by="runtime")
    # two precisions of one model in one series are told apart (resnet18's fp32 has no agreement)
    assert sorted(point_labels(per_runtime.points)) == [
        "mobilenet_v2 (onnxruntime) fp32", "mobilenet_v2 (onnxruntime) int8", "mobilenet_v2 (openvino) fp32",
        "mobilenet_v2 (openvino) int8", "resnet18"]
    svg = plot_pareto(by_runtime, tmp_path / "front.svg")
    text = svg.read_text()
    assert all(name in text for name in ("onnxruntime/int8", "openvino/fp32"))


def test_measured_accuracy_and_its_delta_reach_the_efficiency_table(frame: pd.DataFrame) -> None:
    rows = attach_accuracy(frame)  # the measured top-1 wins over the published reference figure
    table = efficiency_table(rows)
    mobile = table[table["model_id"] == "mobilenet_v2"].set_index(["runtime", "precision"])
    assert mobile.loc[("onnxruntime", "int8"), "accuracy"] == pytest.approx(72.0)
    assert mobile.loc[("onnxruntime", "int8"), "accuracy_source"] == "measured"
    assert mobile.loc[("openvino", "int8"), "accuracy_delta_pp"] == pytest.approx(-5.0)
    assert mobile.loc[("openvino", "int8"), "top1_agreement"] == pytest.approx(85.0)
    resnet = table[table["model_id"] == "resnet18"].set_index("precision")
    assert resnet.loc["fp32", "accuracy_source"] == "published"  # no labelled set: the reference figure
    text = to_markdown(table)
    assert "| Precision | Top-1 change vs fp32 (pp) | Top-1 agree % |" in text
    assert "| int8 (ran mixed (80% int8)) | -5.0 | 85.0 | 70.00 |" in text
    assert "Accuracy measured on the labelled set" in text


def test_an_fp32_only_table_keeps_its_columns(frame: pd.DataFrame) -> None:
    plain = frame[(frame["precision"] == "fp32") & (frame["model_id"] == "resnet18")]
    text = to_markdown(efficiency_table(attach_accuracy(plain)))
    assert "Precision" not in text and "Top-1 change" not in text


def test_cli_pareto_by_precision_and_table(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "p.png"
    assert main(["report", "pareto", "--store", store_url, "--series", "precision", "--y", "accuracy_delta",
                 "--no-published", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "accuracy_delta=-5" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", "table", "--store", store_url, "--runtime", "openvino"]) == 0
    out = capsys.readouterr().out
    assert "int8 (ran mixed (80% int8))" in out and "-5.0" in out
