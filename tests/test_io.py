"""Import/export of results: JSON round trip, CSV and Parquet flat tables."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.results.io import export_results, import_results, read_frame
from costmeter.results.schema import SCHEMA_VERSION, Status
from costmeter.results.store import FRAME_COLUMNS, ResultStore, frame_from_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_store import make_result  # noqa: E402


@pytest.fixture()
def results():
    imported = make_result("trace-run", samples=[[2_500_000]])
    imported.extra = {"provenance": "imported", "source": "vendor-trace.csv"}
    return [
        make_result("r1", iterations=2),
        make_result("r1", status=Status.FAILED),
        imported,
    ]


def test_json_round_trip(tmp_path: Path, results) -> None:
    path = export_results(results, tmp_path / "out" / "results.json")
    assert path.exists() and not list(path.parent.glob(".*.tmp"))
    assert import_results(path) == results
    payload = json.loads(path.read_text())
    assert [item["schema_version"] for item in payload] == [SCHEMA_VERSION] * 3
    assert payload[0]["measurement"]["samples_ns"] == results[0].measurement.samples_ns


def test_json_from_store_round_trip(tmp_path: Path, results) -> None:
    with ResultStore(f"sqlite:///{tmp_path / 'a.db'}") as store:
        for result in results:
            store.write(result)
        export_results(store.results(), tmp_path / "all.json")
    with ResultStore(f"sqlite:///{tmp_path / 'b.db'}") as other:
        for result in import_results(tmp_path / "all.json"):
            other.write(result)
        assert other.results() == results


def test_json_rejects_unknown_schema_and_bad_files(tmp_path: Path, results) -> None:
    data = [r.to_dict() for r in results]
    data[1]["schema_version"] = SCHEMA_VERSION + 1
    future = tmp_path / "future.json"
    future.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=r"result 1: result schema version 2 is not supported"):
        import_results(future)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_results(broken)
    not_results = tmp_path / "numbers.json"
    not_results.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list of result objects"):
        import_results(not_results)
    with pytest.raises(ConfigError, match="cannot read results file"):
        import_results(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="needs RunResults"):
        export_results(frame_from_results(results), tmp_path / "x.json")


def test_csv_round_trip(tmp_path: Path, results) -> None:
    with ResultStore(f"sqlite:///{tmp_path / 'a.db'}") as store:
        for result in results:
            store.write(result)
        frame = store.query()
    export_results(frame, tmp_path / "store.csv")
    back = read_frame(tmp_path / "store.csv")
    assert tuple(back.columns) == FRAME_COLUMNS
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["started_at"].dtype == frame["started_at"].dtype
    assert back.loc[1, "reasons"] == "crashed; no samples" and back.loc[0, "reasons"] == ""

    export_results(results, tmp_path / "direct.csv")  # from RunResults: same table, no ids
    direct = read_frame(tmp_path / "direct.csv")
    assert direct["result_id"].isna().all()
    pd.testing.assert_frame_equal(direct.drop(columns="result_id"), frame.drop(columns="result_id"),
                                  check_dtype=False)


def test_parquet_round_trip(tmp_path: Path, results) -> None:
    path = export_results(results, tmp_path / "results.parquet")
    back = read_frame(path)
    expected = frame_from_results(results)
    assert list(back.columns) == [*FRAME_COLUMNS, "iterations_per_sample", "samples_ns"]
    pd.testing.assert_frame_equal(back[list(FRAME_COLUMNS)], expected, check_dtype=False)
    raw = [list(s) for s in back["samples_ns"]]
    first = results[0].measurement.samples_ns
    assert raw[0] == first[0] + first[1] and back["samples_ns"][0].dtype == "int64"
    assert raw[1] == [] and raw[2] == [2_500_000]
    assert back["iterations_per_sample"].tolist()[0] == 2 and pd.isna(back["iterations_per_sample"][1])

    with ResultStore(f"sqlite:///{tmp_path / 'a.db'}") as store:  # a query() frame as it is
        store.write(results[0])
        frame = store.query()
    export_results(frame, tmp_path / "frame.pq")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "frame.pq"), frame)


def test_format_choice(tmp_path: Path, results) -> None:
    path = export_results(results, tmp_path / "named.data", fmt="json")
    assert import_results(path) == results
    with pytest.raises(ConfigError, match="unknown results format '.xlsx'"):
        export_results(results, tmp_path / "results.xlsx")
    with pytest.raises(ConfigError, match="pass RunResults"):
        export_results([{"not": "a result"}], tmp_path / "r.csv")
    with pytest.raises(ConfigError, match="import_results"):
        read_frame(tmp_path / "named.json")
