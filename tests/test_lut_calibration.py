"""Lookup-table calibration on measured whole networks: fitted terms within their bounds, the
file round trip, older files said uncalibrated, budgets at a confidence, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.predictors.estimators.calibration import BOUNDS, CANDIDATES
from costmeter.predictors.lut import blocks
from costmeter.predictors.lut.calibrate import (
    LutCalibration, calibrate_lut, calibration_archs, measure_interleaved, reference_arch)
from costmeter.predictors.lut.table import LatencyTable, LutEntry, load_table

CURVE = ((1.0, 8.0, 32.0, 128.0), (60.0, 70.0, 150.0, 200.0))  # MB, us per MB


def table_and_terms(seed: int = 0) -> tuple[LatencyTable, dict[str, tuple[float, float]]]:
    """An ofa_mbv3 table at 160 px with random entries, and random per-block terms (MB)."""
    rng = np.random.default_rng(seed)
    entries, terms = [], {}
    for spec in blocks.space_blocks("ofa_mbv3", (160,)):
        latency = float(rng.uniform(0.01, 0.3))
        entries.append(LutEntry(spec.key, spec.kind, latency, latency + 0.005,
                                float(rng.uniform(0.0, 0.005)), 20, "measured"))
        terms[spec.key] = (float(rng.uniform(0.0, 0.4)), float(rng.uniform(0.0, 0.2)))
    manifest = {"space": "ofa_mbv3", "device": "cpu", "runtime": "onnxruntime", "threads": 1,
                "resolutions": [160], "overhead_ms": 0.005, "calibration": None}
    return LatencyTable(manifest, entries), terms


def truth(table: LatencyTable, terms: dict[str, tuple[float, float]], archs: list[str],
          seed: int, drift: float = 0.0) -> np.ndarray:
    """What the 'machine' measures: the sum plus 0.3 ms per run and 0.5 ms per MB of weights,
    2 % log-normal noise, and a slow drift of ``drift`` over the pass."""
    rng = np.random.default_rng(seed)
    weight = np.array([sum(terms[k][0] for k in table.keys_of(a)) for a in archs])
    clean = table.estimate_batch(archs) + 0.3 + 0.5 * weight
    return clean * np.exp(rng.normal(0.0, 0.02, len(archs))) * (1 + drift * np.linspace(0, 1, len(archs)))


@pytest.fixture(scope="module")
def calibrated() -> tuple[LatencyTable, dict[str, tuple[float, float]], object, list[list[str]]]:
    table, terms = table_and_terms()
    orders: list[list[str]] = []

    def measure(order: list[str]) -> np.ndarray:
        orders.append(list(order))
        return truth(table, terms, order, seed=1, drift=0.04)

    _, run = calibrate_lut(table, networks=30, measure=measure, curve=CURVE, terms=terms)
    return table, terms, run, orders


def test_networks_are_nested_draws_interleaved_with_the_reference(calibrated: tuple) -> None:
    table, _, run, orders = calibrated
    small, large = (calibration_archs("ofa_mbv3", n, [160]) for n in (10, 20))
    assert large[:10] == small and len(set(large)) == 20
    order = orders[0]
    reference = reference_arch("ofa_mbv3", [160])
    assert order[0::2] == [reference] * 31 and order[1::2] == run.archs == calibration_archs("ofa_mbv3", 30, [160])
    assert run.reference_ms.size == 31 and 1.5 < run.drift_pct() < 6.0  # the 4 % drift shows
    assert "drift" in run.describe()


def test_fitted_terms_are_within_bounds_and_remove_the_bias(calibrated: tuple) -> None:
    table, terms, _, _ = calibrated
    cal = table.calibration
    for name, value in zip(CANDIDATES, cal.traffic.coef_):
        low, high = BOUNDS[name]
        assert low <= value <= high
    coef = dict(zip(CANDIDATES, cal.traffic.coef_))
    assert all(coef[t] >= 0 for t in ("intercept", "weight_mb", "activation_mb", "miss_mb"))
    assert cal.traffic.terms_  # something beat the plain sum out of group
    assert cal.info["sum_bias_pct"] < -10 and abs(cal.info["calibrated_bias_pct"]) < 3
    fresh = calibration_archs("ofa_mbv3", 200, [160], seed=50_000)
    measured = truth(table, terms, fresh, seed=2)
    sums, predicted = table.estimate_batch(fresh), table.predict(fresh)[0]
    assert abs(np.median(predicted / measured - 1)) < 0.03 < abs(np.median(sums / measured - 1))
    upper = table.upper(fresh, 0.9)
    assert np.mean(measured <= upper) >= 0.85  # split-conformal: >= 90 % in expectation
    mean, lower, high = table.predict(fresh, coverage=0.8)
    assert (lower < mean).all() and (mean < high).all()
    assert (table.satisfies(fresh, 20.0, confidence=0.9) == (upper <= 20.0)).all()
    assert (table.satisfies(fresh, 20.0, confidence=0.95) <= table.satisfies(fresh, 20.0, confidence=0.8)).all()


def test_round_trip_keeps_the_calibration(calibrated: tuple, tmp_path: Path) -> None:
    table, _, _, _ = calibrated
    json_path, _ = table.save(tmp_path / "cal")
    body = json.loads(json_path.read_text())
    assert body["format_version"] == 2 and len(body["manifest"]["calibration"]["conformal"]["scores"]) == 30
    loaded = load_table(json_path)
    archs = calibration_archs("ofa_mbv3", 50, [160], seed=9_000)
    assert loaded.calibrated and "calibrated on 30 measured networks" in loaded.calibration_note()
    np.testing.assert_allclose(loaded.predict(archs)[0], table.predict(archs)[0], rtol=1e-12)
    np.testing.assert_allclose(loaded.upper(archs, 0.9), table.upper(archs, 0.9), rtol=1e-12)
    state = loaded.calibration.state()
    assert LutCalibration.from_state(state).traffic.terms_ == table.calibration.traffic.terms_
    damaged = dict(body)
    damaged["manifest"] = {**body["manifest"], "calibration": {
        **body["manifest"]["calibration"],
        "traffic": {**body["manifest"]["calibration"]["traffic"], "coef": [0, -1, 0, 0, 0]}}}
    (tmp_path / "bad.json").write_text(json.dumps(damaged))
    with pytest.raises(ConfigError, match="outside their bounds"):
        load_table(tmp_path / "bad.json")


def test_an_older_file_loads_and_says_uncalibrated(tmp_path: Path) -> None:
    table, _ = table_and_terms()
    json_path, _ = table.save(tmp_path / "old")
    body = json.loads(json_path.read_text())
    body["format_version"] = 1
    del body["manifest"]["calibration"]
    json_path.write_text(json.dumps(body))
    old = load_table(json_path)
    archs = calibration_archs("ofa_mbv3", 10, [160])
    assert not old.calibrated and old.format_version == 1
    assert old.calibration_note().startswith("uncalibrated (a format version 1 file")
    np.testing.assert_allclose(old.predict(archs)[0], table.estimate_batch(archs))
    with pytest.raises(ConfigError, match="uncalibrated; run `bench lut calibrate"):
        old.satisfies(archs, 5.0, confidence=0.9)
    with pytest.raises(ConfigError, match="uncalibrated"):
        old.predict(archs, coverage=0.9)
    assert "uncalibrated" in repr(old)


def test_bad_coverage_budget_and_network_count(calibrated: tuple) -> None:
    table, terms, _, _ = calibrated
    archs = calibration_archs("ofa_mbv3", 3, [160])
    for bad in (0, 1, 1.5, -0.2, "most"):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            table.predict(archs, coverage=bad)
        with pytest.raises(ConfigError, match="between 0 and 1"):
            table.satisfies(archs, 5.0, confidence=bad)
    for bad in (0, -1.0, float("nan"), "fast"):
        with pytest.raises(ConfigError, match="budget"):
            table.satisfies(archs, bad, confidence=0.9)
    with pytest.raises(ConfigError, match="around the calibrated prediction"):
        table.predict(archs, coverage=0.9, corrected=False)
    fresh, _ = table_and_terms()
    with pytest.raises(ConfigError, match="at least 10 networks"):
        calibrate_lut(fresh, networks=5, measure=lambda a: np.ones(len(a)), curve=CURVE, terms=terms)
    with pytest.raises(ConfigError, match="only 8 of 12"):
        calibrate_lut(fresh, networks=12, curve=CURVE, terms=terms,
                      measure=lambda a: np.where(np.arange(len(a)) % 6 == 1, np.nan, 1.0))
    assert not fresh.calibrated  # nothing half-set


def test_interleaving_keeps_failures_in_place() -> None:
    run = measure_interleaved("ofa_mbv3", ["a", "b"], "ref",
                              measure=lambda order: np.array([1.0, 2.0, 1.1, np.nan, 1.2]))
    assert run.measured_ms[0] == 2.0 and np.isnan(run.measured_ms[1])
    assert run.errors == [None, "failed"] and run.drift_pct() == pytest.approx(20.0)
    assert run.spread_pct() == pytest.approx(0.2 / 1.1 * 100)


def test_cli_bad_input_is_one_line_exit_2(calibrated: tuple, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    table, _, _, _ = calibrated
    path = table.save(tmp_path / "cal")[0]
    plain = table_and_terms()[0].save(tmp_path / "plain")[0]
    arch = calibration_archs("ofa_mbv3", 10, [160])[0]
    capsys.readouterr()
    assert main(["predict", str(path), "-m", arch, "--budget-ms", "4", "--coverage", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "80% interval" in out and "within 4 ms at 90%" in out and "calibrated lookup table" in out
    for args, says in (([str(path), "-m", arch, "--coverage", "1.5"], "coverage"),
                       ([str(path), "-m", arch, "--budget-ms", "-1"], "budget"),
                       ([str(path), "-m", arch, "--budget-ms", "4", "--confidence", "0"], "confidence"),
                       ([str(plain), "-m", arch, "--budget-ms", "4"], "uncalibrated")):
        before = path.read_text()
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err
        assert path.read_text() == before
    assert main(["lut", "calibrate", str(plain), "--networks", "3"]) == 2
    assert "--networks" in capsys.readouterr().err


def test_cli_calibrates_a_table_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    """`bench lut calibrate` end to end, with the harness, the cache probe and the block exports
    replaced by the synthetic machine of these tests."""
    from costmeter.predictors.lut import calibrate, check

    table, terms = table_and_terms(seed=3)
    path = table.save(tmp_path / "t")[0]

    def measure_networks(space: str, order: list[str], *args: object, **kwargs: object) -> tuple:
        median = truth(table, terms, order, seed=4)
        return median, median * 0.9, [None] * len(order)

    monkeypatch.setattr(check, "measure_networks", measure_networks)
    monkeypatch.setattr(calibrate, "block_terms", lambda *args: terms)
    monkeypatch.setattr(calibrate, "cache_curve", lambda *args: CURVE)
    assert main(["lut", "calibrate", str(path), "--networks", "12", "--workdir", str(tmp_path / "wd")]) == 0
    out = capsys.readouterr().out
    assert "reference network measured 13 times" in out and "calibrated on 12 measured networks" in out
    assert "90% upper bound" in out and "two-sided 90% interval: needs at least 19 networks" in out
    loaded = load_table(path)
    assert loaded.calibrated and loaded.calibration.info["networks"] == 12


def test_the_additivity_check_shows_the_calibrated_prediction_beside_the_sum(calibrated: tuple) -> None:
    from costmeter.predictors.lut.check import check_lut

    table, terms, _, _ = calibrated
    report = check_lut(table, networks=40, seed=77, measure=lambda archs: truth(table, terms, archs, seed=5))
    metrics = report.metrics()
    assert list(metrics.index) == ["lut", "lut_raw", "lut_calibrated"]
    assert abs(metrics.loc["lut_calibrated", "bias_pct"]) < 3 < abs(metrics.loc["lut", "bias_pct"])
    assert metrics.loc["lut_calibrated", "within_10_pct"] > metrics.loc["lut", "within_10_pct"]
