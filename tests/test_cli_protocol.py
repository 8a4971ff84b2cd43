"""`bench run` and `bench results show` on the protocol's figures: bad precision settings are
refused before anything runs, and the JSON carries the summary the table is drawn from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.cli import main

FAST = ["--device", "fake", "--runtime", "fake", "--model", "m", "-o", "latency_us=200", "-o", "jitter=0.05",
        "--min-time", "0.05", "--max-time", "5", "--min-count", "50", "--warmup", "2", "--warmup-time", "0"]


def _bad(args: list[str], workdir: Path, capsys: pytest.CaptureFixture) -> str:
    url = f"sqlite:///{workdir / 'results.db'}"
    rc = main(["run", *args, "--store", url])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert not (workdir / "results.db").exists()  # nothing written: refused before the store opens
    return err


@pytest.mark.parametrize("value", ["0", "1", "-0.01", "1.5"])
def test_max_rel_ci_outside_zero_one_is_refused(value: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = _bad([*FAST, "--percentiles", "50", "--max-rel-ci", value], workdir, capsys)
    assert "--max-rel-ci" in err and "e.g. 0.01" in err


@pytest.mark.parametrize("value", ["", ",", "0", "100", "50,101", "-5"])
def test_percentiles_empty_or_outside_zero_hundred_are_refused(value: str, workdir: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    err = _bad([*FAST, "--percentiles", value], workdir, capsys)
    assert "--percentiles" in err and "e.g. 50,90,99" in err


@pytest.mark.slow
def test_run_json_and_results_show_carry_the_same_summary(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{workdir / 'results.db'}"
    assert main(["run", *FAST, "--percentiles", "50,90", "--processes", "2", "--json", "--store", url]) == 0
    (ran,) = json.loads(capsys.readouterr().out)
    summary = ran["summary"]
    assert "samples_ns" not in ran["measurement"] and len(ran["measurement"]["count_per_process"]) == 2
    assert summary["validity"] == ran["validity"] and summary["warnings"] == ran["warnings"]
    assert summary["throughput_items_per_s"] == ran["extra"]["throughput_items_per_s"]
    assert [p["q"] for p in summary["percentiles"]] == [50.0, 90.0]
    for p in summary["percentiles"]:
        assert p["low"] <= p["value"] <= p["high"] and p["rel_half_width"] > 0
    for name in ("mad_rel", "iqr_rel", "outlier_share", "max_over_median", "longest_stall_ns", "cv"):
        assert summary[name] is not None, name
    assert summary["serial"]["p_value"] is not None and "widened" in summary["serial"]
    processes = summary["processes"]
    assert processes["count"] == 2 and len(processes["per_process"]) == 2
    assert processes["median_sd"] is not None and processes["rel_range"] >= 0

    assert main(["results", "show", "1", "--store", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["summary"] == summary  # the same code computed both
    assert "samples_ns" not in shown["measurement"]
    assert main(["results", "show", "1", "--store", url, "--samples"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert [len(p) for p in full["measurement"]["samples_ns"]] == ran["measurement"]["count_per_process"]
