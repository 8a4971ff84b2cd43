"""Trace import: the NB201 fixture slice into RunResults and a real store, long and wide
layouts, CSV and Parquet, ONNX paths, and one-line errors that write nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.arch import ArchPredictor
from costmeter.models.spaces import nb201
from costmeter.results.traces import (
    PROVENANCE,
    import_traces,
    read_traces,
    traces_to_results,
    training_frame,
)
from costmeter.results.schema import Status, Validity
from costmeter.results.store import ResultStore

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"
ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"


def write_csv(path: Path, rows: dict) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fixture_slice_becomes_imported_results() -> None:
    traces = read_traces(FIXTURE, space="nb201")
    data = pd.read_csv(FIXTURE)
    assert len(traces.frame) == 300 * 5
    assert set(traces.frame["device"]) == {"1080ti_1", "gold_6240", "pixel3", "samsung_a50",
                                           "titan_rtx_32"}
    results = traces_to_results(traces, runtime="tflite")
    first = results[0]
    # one value per row cannot be judged: imported, unjudged, never VALID
    assert first.status is Status.OK and {r.validity for r in results} == {Validity.UNJUDGED}
    assert first.measurement is not None and first.measurement.count == 1
    assert first.measurement.samples_ns[0][0] == round(data["1080ti_1_ms"][0] * 1e6)
    assert first.extra["provenance"] == PROVENANCE
    assert first.extra["source_file"] == FIXTURE.name and first.extra["source_row"] == 1
    assert first.key.model_id == f"nb201:{data['arch'][0]}"
    assert first.key.input_shape == (1, 3, 32, 32) and first.key.runtime == "tflite"
    assert first.model_info["params"] == nb201.param_count(data["arch"][0])
    assert any("imported trace" in w for w in first.warnings)


def test_import_into_store_and_fit_from_it(workdir: Path) -> None:
    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        summary = import_traces(FIXTURE, store, space="nb201", device="pixel3,gold_6240",
                                runtime="tflite")
        assert summary.n_results == 600 and summary.devices == ("gold_6240", "pixel3")
        frame = store.query(device="pixel3")
        assert len(frame) == 300 and (frame["latency_p50_ms"] > 0).all()
    train = training_frame(frame, "nb201", device="pixel3", runtime="tflite")
    data = pd.read_csv(FIXTURE).set_index("arch")
    np.testing.assert_allclose(train["latency_ms"], data.loc[train["arch"], "pixel3_ms"], rtol=1e-6)
    pred = ArchPredictor("nb201", device="pixel3").fit(train["arch"], train["latency_ms"])
    assert pred.predict(list(train["arch"][:5])).shape == (5,)


def test_long_layout_csv_and_parquet(tmp_path: Path) -> None:
    rows = {"arch": [ARCH, ARCH], "latency_ms": [3.0, 4.0], "device": ["a", "b"]}
    for path in (tmp_path / "t.csv", tmp_path / "t.parquet"):
        df = pd.DataFrame(rows)
        df.to_csv(path, index=False) if path.suffix == ".csv" else df.to_parquet(path)
        traces = read_traces(path, space="nb201")
        assert traces.frame["device"].tolist() == ["a", "b"]
        assert read_traces(path, space="nb201", device="b").frame["latency_ms"].tolist() == [4.0]
    path = write_csv(tmp_path / "nodev.csv", {"arch": [ARCH], "latency_ms": [2.0]})
    assert read_traces(path, space="nb201", device="cpu").frame["device"].tolist() == ["cpu"]
    with pytest.raises(ConfigError, match="no 'device' column; pass the device name"):
        read_traces(path, space="nb201")


def test_onnx_path_traces(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    path = write_csv(tmp_path / "t.csv", {"onnx_path": ["relu.onnx"], "latency_ms": [0.5]})
    results = traces_to_results(read_traces(path, device="cpu"), runtime="onnxruntime", batch=4)
    assert results[0].key.model_id == "relu" and results[0].key.input_shape == (4, 8)
    assert len(results[0].key.model_hash) == 16
    missing = write_csv(tmp_path / "m.csv", {"onnx_path": ["gone.onnx"], "latency_ms": [0.5]})
    with pytest.raises(ConfigError, match="data row 1: ONNX file .*gone.onnx not found"):
        read_traces(missing, device="cpu")


@pytest.mark.parametrize("rows, kwargs, message", [
    ({"model": [ARCH], "latency_ms": [1.0]}, {"space": "nb201", "device": "x"},
     "needs an architecture column"),
    ({"arch": [ARCH], "time": [1.0]}, {"space": "nb201", "device": "x"},
     "no 'latency_ms' column and no '<device>_ms' columns"),
    ({"arch": [ARCH] * 9, "latency_ms": [1, 0, 2, -3, 0, 0, 0, 0, 0]},
     {"space": "nb201", "device": "x"},
     "non-positive latency in column latency_ms, data rows 2, 4, 5, 6, 7 and 2 more;"),
    ({"arch": [ARCH] * 3, "latency_ms": [1, None, 2]}, {"space": "nb201", "device": "x"},
     "missing or non-numeric latency in column latency_ms, data row 2"),
    ({"arch": [ARCH, ARCH.replace("nor_conv_1x1", "conv_1x1")], "latency_ms": [1, 2]},
     {"space": "nb201", "device": "x"}, "data row 2: nb201: edge 1->3 has unknown op 'conv_1x1'"),
    ({"arch": [ARCH], "latency_ms": [1.0]}, {"space": "darts", "device": "x"},
     "unknown search space 'darts'"),
    ({"arch": [ARCH], "latency_ms": [1.0]}, {"device": "x"}, "pass the search space"),
    ({"arch": [ARCH], "a_ms": [1.0], "b_ms": [2.0]}, {"space": "nb201", "device": "c"},
     "no column for device\\(s\\) c; devices in the file: a, b"),
    ({"arch": [ARCH] * 3, "latency_ms": ["1", "inf", "-Infinity"]}, {"space": "nb201", "device": "x"},
     "infinite latency in column latency_ms, data rows 2, 3;"),
    ({"arch": [ARCH] * 3, "latency_ms": [1, 2, 1e300]}, {"space": "nb201", "device": "x"},
     "latency beyond 9.22e\\+12 ms \\(int64 nanoseconds\\) in column latency_ms, data row 3;"),
    ({"arch": [ARCH] * 3, "latency_ms": [1, 9.3e12, 2]}, {"space": "nb201", "device": "x"},
     "beyond .* data row 2;"),
    ({"arch": [ARCH] * 3, "latency_ms": [1, 4e-7, 2]}, {"space": "nb201", "device": "x"},
     "latency under one nanosecond in column latency_ms, data row 2;"),
    ({"arch": [ARCH] * 2, "latency_ms": ["1", "fast"]}, {"space": "nb201", "device": "x"},
     "missing or non-numeric latency in column latency_ms, data row 2"),
])
def test_bad_trace_files_raise_one_line_and_write_nothing(
        tmp_path: Path, workdir: Path, rows: dict, kwargs: dict, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", rows)
    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        with pytest.raises(ConfigError, match=message) as info:
            import_traces(path, store, **kwargs)
        assert "\n" not in str(info.value)
        assert len(store.query()) == 0


def test_missing_or_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_traces(tmp_path / "absent.csv", space="nb201")
    odd = tmp_path / "t.xlsx"
    odd.write_text("x")
    with pytest.raises(ConfigError, match="must be .csv"):
        read_traces(odd, space="nb201")


def test_fit_and_evaluate_from_stored_results(workdir: Path) -> None:
    from costmeter.predictors.estimators.arch import fit_from_results
    from costmeter.predictors.estimators.evaluate import evaluate_predictor

    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        import_traces(FIXTURE, store, space="nb201", device="titan_rtx_32", runtime="pytorch")
        frame = store.query()
    predictor, scores, digest = fit_from_results(frame, space="nb201", device="titan_rtx_32",
                                                 runtime="pytorch")
    assert predictor.n_train_ == 300 and len(digest) == 64
    assert scores["n"] == 60 and scores["spearman"] > 0.9
    table = evaluate_predictor(predictor, frame)
    assert table.loc["overall", "n"] == 300 and table.loc["overall", "within_10_pct"] > 90
    with pytest.raises(ConfigError, match="no nb201 results for device 'pixel3'"):
        fit_from_results(frame, space="nb201", device="pixel3")


def test_training_frame_takes_the_space_ids_and_merges_repeats() -> None:
    empty = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    frame = pd.DataFrame({
        "model_id": [f"nb201:{empty}", f"nb201:{empty}", f"nb201:{ARCH}", "resnet18",
                     "onnx:3eb335be84430336"],
        "status": ["ok", "ok", "ok", "ok", "ok"], "device": "cpu", "runtime": "onnxruntime",
        "latency_p50_ms": [2.0, 4.0, 5.0, 9.0, 1.0]})
    out = training_frame(frame, "nb201", device="cpu")
    assert dict(zip(out["arch"], out["latency_ms"])) == {empty: 3.0, ARCH: 5.0}


def test_reimport_is_a_no_op_and_force_imports_under_a_new_run(workdir: Path) -> None:
    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        first = import_traces(FIXTURE, store, space="nb201")
        again = import_traces(FIXTURE, store, space="nb201")
        assert not first.already and again.already
        assert (again.run_id, again.n_results) == (first.run_id, first.n_results)
        assert len(store.query()) == first.n_results
        forced = import_traces(FIXTURE, store, space="nb201", force=True)
        assert not forced.already and forced.run_id != first.run_id
        other = import_traces(FIXTURE, store, space="nb201", runtime="tflite")  # other settings
        assert not other.already
        frame = store.query()
        assert len(frame) == 3 * first.n_results
        assert frame.groupby("run_id").size().tolist() == [first.n_results] * 3
        from costmeter.results.integrity import check_store

        report = check_store(store)
        assert report.ok and report.counts["imports"] == 3


def test_an_import_that_fails_midway_writes_nothing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.errors import StoreError
    from costmeter.results import store as store_module

    real = store_module.insert_results

    def half_then_fail(conn, rows):
        real(conn, rows[: len(rows) // 2])
        raise StoreError("disk full")

    monkeypatch.setattr(store_module, "insert_results", half_then_fail)
    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        with pytest.raises(StoreError, match="disk full"):
            import_traces(FIXTURE, store, space="nb201")
        assert store.query().empty
        monkeypatch.setattr(store_module, "insert_results", real)
        assert not import_traces(FIXTURE, store, space="nb201").already  # the ledger stayed empty too


def test_concurrent_imports_of_one_file_commit_it_once(tmp_path: Path) -> None:
    from suite_helpers import bench_popen

    rows = {"arch": [ARCH] * 1000, "a_ms": np.linspace(1, 2, 1000), "b_ms": np.linspace(2, 3, 1000)}
    path = write_csv(tmp_path / "t.csv", rows)
    workdir = tmp_path / "wd"
    procs = [bench_popen(["traces", "import", str(path), "--space", "nb201"], workdir, tmp_path)
             for _ in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    assert sum(o.startswith("imported 2000 measurements") for o, _ in outs) == 1
    assert sum(o.startswith("already imported") for o, _ in outs) == 7
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        frame = store.query()
        assert len(frame) == 2000 and frame["run_id"].nunique() == 1


def test_a_file_imported_before_the_ledger_is_not_imported_twice(workdir: Path) -> None:
    traces = read_traces(FIXTURE, space="nb201")
    legacy = traces_to_results(traces, run_id=f"import-{traces.source_sha256[:12]}")
    with ResultStore(f"sqlite:///{workdir / 'r.db'}") as store:
        store.write_many(legacy)  # as an older costmeter imported it
        summary = import_traces(FIXTURE, store, space="nb201")
        assert summary.already and summary.run_id == legacy[0].run_id
        assert len(store.query()) == len(legacy)
        from costmeter.results.integrity import check_store

        assert check_store(store).ok
