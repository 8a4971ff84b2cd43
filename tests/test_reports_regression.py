"""Regression verdicts on a real SQLite store: the rule, replication units, FDR, window
baselines, selectors and history steps; plus a small seeded simulation of null and stepped
histories (the full one is benchmarks/regression_power.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from costmeter.errors import ConfigError
from costmeter.reports.history import change_points, detect_steps, key_history
from costmeter.reports.regression import (
    RegressionSettings,
    compare_runs,
    compare_selections,
    compare_window,
    decide,
    per_process_samples,
    regression_report,
    run_level,
)
from costmeter.reports.regression_render import render_markdown
from costmeter.reports.regression_stats import run_noise
from costmeter.reports.selectors import select_results
from costmeter.reports.simulated_history import NoiseModel, simulate_key
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore

MODELS = ("resnet18", "mobilenet_v2", "vit_tiny", "bert_tiny")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as opened:
        yield opened


def add(store: ResultStore, *, run_id: str, model: str, started_at: str,
        processes_ns: Sequence[np.ndarray] = (), tag: str | None = None, git_sha: str = "",
        validity: Validity = Validity.VALID, reasons: Sequence[str] = (),
        status: Status = Status.OK, error: str | None = None) -> None:
    """Write one result with per-process samples (ns) to the real store."""
    measurement = None
    if len(processes_ns):
        measurement = Measurement(samples_ns=[np.asarray(p).astype(np.int64).tolist()
                                              for p in processes_ns])
    key = BenchKey(model, f"hash-{model}", "cpu", "onnxruntime", 1, (1, 3, 224, 224), "float32",
                   4)
    store.write(RunResult(
        key=key, status=status, run_id=run_id, tag=tag, started_at=started_at,
        finished_at=started_at, measurement=measurement, validity=validity,
        reasons=list(reasons), error=error, environment={"git_sha": git_sha},
    ))


def lognormal_ns(rng: np.random.Generator, median_ms: float, n: int,
                 sigma: float = 0.03) -> np.ndarray:
    return rng.lognormal(np.log(median_ms * 1e6), sigma, n)


def day(i: int) -> str:
    return f"2024-06-{i + 1:02d}T01:00:00+00:00"


def verdicts(report) -> pd.DataFrame:
    return report.verdicts.set_index("model_id")


def nightly(store: ResultStore, shifts: dict[str, float], *, nights: int = 10, n: int = 300,
            sigma: float = 0.03, seed: int = 0) -> None:
    """``nights`` stable runs (run00..) of MODELS, then run 'cur' with model m slower by
    shifts[m]. Run levels differ only by sampling noise."""
    rng = np.random.default_rng(seed)
    for i in range(nights):
        for index, model in enumerate(MODELS):
            add(store, run_id=f"run{i:02d}", model=model, started_at=day(i), tag="nightly",
                git_sha=f"{i:02d}" + "a" * 38,
                processes_ns=[lognormal_ns(rng, 2.0 + index, n, sigma)])
    for index, model in enumerate(MODELS):
        median = (2.0 + index) * (1 + shifts.get(model, 0.0))
        add(store, run_id="cur", model=model, started_at=day(nights), tag="pr-42",
            git_sha="b" * 40, processes_ns=[lognormal_ns(rng, median, n, sigma)])


def report_of(store: ResultStore, baseline: str = "latest~1", current: str = "latest",
              settings: RegressionSettings | None = None, **kw):
    return regression_report(store.query(), baseline, current, per_process_samples(store),
                             settings, **kw)


# ------------------------------------------------------------ the verdict rule


@pytest.mark.parametrize(
    ("ratio", "low", "high", "q", "expected"),
    [
        (1.003, 1.002, 1.004, 1e-12, "unchanged"),  # real but small: never regressed
        (1.07, 1.05, 1.09, 1e-6, "regressed"),
        (1.06, 1.01, 1.11, 0.01, "regressed"),  # beyond threshold, interval excludes 1
        (1.07, 0.99, 1.15, 0.08, "inconclusive"),  # interval includes no change
        (1.07, 1.01, 1.13, 0.2, "inconclusive"),  # not significant after BH
        (1.03, 1.01, 1.055, 0.01, "inconclusive"),  # within band, interval reaches past it
        (0.93, 0.91, 0.95, 1e-6, "improved"),
        (0.997, 0.996, 0.998, 1e-12, "unchanged"),
    ],
)
def test_verdict_rule(ratio, low, high, q, expected) -> None:
    assert decide(ratio, low, high, q, threshold=0.05, alpha=0.05)[0] == expected


def test_small_slowdown_with_tiny_p_is_not_regressed(store) -> None:
    """0.3% slower with a very stable history: the test is highly significant, the verdict is
    unchanged because the change is far below the threshold."""
    nightly(store, {"resnet18": 0.003}, n=4000, sigma=0.005)
    row = verdicts(report_of(store)).loc["resnet18"]
    assert row["p_value"] < 1e-3
    assert row["ratio"] == pytest.approx(1.003, abs=0.001)
    assert row["verdict"] == "unchanged"
    assert row["unit"].startswith("runs: SD") and "over 10 stored runs" in row["unit"]


def test_seven_percent_slowdown_with_tight_interval_is_regressed(store) -> None:
    nightly(store, {"resnet18": 0.07, "vit_tiny": -0.08})
    report = report_of(store)
    rows = verdicts(report)
    assert rows.loc["resnet18", "verdict"] == "regressed"
    assert rows.loc["resnet18", "ratio_low"] > 1.05
    assert rows.loc["vit_tiny", "verdict"] == "improved"
    assert rows.loc["mobilenet_v2", "verdict"] == "unchanged"
    assert report.significant_regression
    assert report.counts() == {"regressed": 1, "improved": 1, "unchanged": 2, "inconclusive": 0}


def test_disagreeing_processes_widen_the_interval(store) -> None:
    """No history: four agreeing processes 7% slower are a regression; four processes that
    disagree (0% and +14%, the same mean) leave the change unresolved."""
    rng = np.random.default_rng(4)
    levels = {"resnet18": [1.07] * 4, "mobilenet_v2": [1.0, 1.14, 1.0, 1.14]}
    for model, current in levels.items():
        add(store, run_id="base", model=model, started_at=day(0),
            processes_ns=[lognormal_ns(rng, 2.0, 300, 0.01) for _ in range(4)])
        add(store, run_id="cur", model=model, started_at=day(1),
            processes_ns=[lognormal_ns(rng, 2.0 * f, 300, 0.01) for f in current])
    rows = verdicts(report_of(store, "run:base", "run:cur"))
    agree, disagree = rows.loc["resnet18"], rows.loc["mobilenet_v2"]
    assert agree["verdict"] == "regressed"
    assert disagree["verdict"] == "inconclusive"
    assert disagree["ratio_low"] < 1 < disagree["ratio_high"]
    width = {m: math.log(r["ratio_high"] / r["ratio_low"]) for m, r in rows.iterrows()}
    assert width["mobilenet_v2"] > 3 * width["resnet18"]
    assert disagree["unit"] == "replicates within the runs (4 processes vs 4 processes)"
    assert agree["processes_current"] == 4 and agree["n_current"] == 1200


def test_one_process_without_history_uses_the_assumed_run_noise(store) -> None:
    """Pooled samples of one run are not replicates of its offset: without history the
    interval is as wide as the assumed run-to-run SD says, however many samples there are."""
    rng = np.random.default_rng(5)
    for run, factor in (("base", 1.0), ("cur", 1.06)):
        add(store, run_id=run, model="resnet18", started_at=day(run == "cur"),
            processes_ns=[lognormal_ns(rng, 2.0 * factor, 3000, 0.01)])
    row = verdicts(report_of(store, "run:base", "run:cur")).loc["resnet18"]
    half_width = math.log(row["ratio_high"] / row["ratio_low"]) / 2
    assert half_width == pytest.approx(stats.norm.ppf(0.975) * math.sqrt(2) * 0.01, rel=0.01)
    assert row["verdict"] == "regressed" and row["unit"].startswith("assumed run-to-run SD 1%")
    wider = RegressionSettings(assumed_run_sd=0.03)
    assert verdicts(report_of(store, "run:base", "run:cur", wider)).loc[
        "resnet18", "verdict"] == "inconclusive"


def test_q_values_are_benjamini_hochberg_of_the_p_values(store) -> None:
    nightly(store, {"resnet18": 0.01, "mobilenet_v2": 0.005})
    report = report_of(store)
    p, q = report.verdicts["p_value"].to_numpy(), report.verdicts["q_value"].to_numpy()
    assert q == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert (q >= p - 1e-15).all()


def test_invalid_failed_and_short_inputs_are_inconclusive(store) -> None:
    rng = np.random.default_rng(1)
    add(store, run_id="base", model="resnet18", started_at=day(0),
        processes_ns=[lognormal_ns(rng, 2, 100)])
    add(store, run_id="cur", model="resnet18", started_at=day(1), validity=Validity.INVALID,
        reasons=["CPU throttled"], processes_ns=[lognormal_ns(rng, 3, 100)])
    add(store, run_id="base", model="tiny_cnn", started_at=day(0),
        processes_ns=[lognormal_ns(rng, 1, 50)])
    add(store, run_id="cur", model="tiny_cnn", started_at=day(1), status=Status.FAILED,
        error="worker crashed")
    add(store, run_id="base", model="tiny_mlp", started_at=day(0), processes_ns=[np.full(5, 1e6)])
    add(store, run_id="cur", model="tiny_mlp", started_at=day(1), processes_ns=[np.full(5, 2e6)])
    rows = verdicts(report_of(store, "run:base", "run:cur"))
    assert set(rows["verdict"]) == {"inconclusive"}
    assert "current INVALID: CPU throttled" in rows.loc["resnet18", "reason"]
    assert "worker crashed" in rows.loc["tiny_cnn", "reason"]
    assert "too few samples" in rows.loc["tiny_mlp", "reason"]


def test_report_json_and_markdown(store) -> None:
    nightly(store, {"mobilenet_v2": 0.10})
    report = report_of(store)
    data = json.loads(report.to_json())
    assert data["significant_regression"] is True
    assert data["counts"]["regressed"] == 1
    assert {v["verdict"] for v in data["verdicts"]} == {"regressed", "unchanged"}
    regressed = next(v for v in data["verdicts"] if v["verdict"] == "regressed")
    assert regressed["baseline"] == "run run09" and regressed["n_history"] == 10
    markdown = render_markdown(report)
    assert "REGRESSION FOUND" in markdown
    assert "| mobilenet_v2/onnxruntime@cpu b1 t4 | regressed |" in markdown
    assert f"| run run09 | {regressed['unit']} |" in markdown


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        RegressionSettings(threshold=5)
    with pytest.raises(ConfigError, match="alpha"):
        RegressionSettings(alpha=0)
    with pytest.raises(ConfigError, match="assumed_run_sd"):
        RegressionSettings(assumed_run_sd=0)


# ------------------------------------------------------------ window baselines


def test_window_baseline_compares_tonight_with_the_last_nights(store) -> None:
    """window:N: each key against its last N good nights. One slow baseline night (vit_tiny's
    run09, +10%) moves neither verdict."""
    rng = np.random.default_rng(8)
    for i in range(12):
        for index, model in enumerate(("resnet18", "vit_tiny")):
            noisy = 1.10 if model == "vit_tiny" and i == 10 else 1.0
            slower = 1.12 if model == "resnet18" and i == 11 else 1.0
            add(store, run_id=f"run{i:02d}", model=model, started_at=day(i),
                processes_ns=[lognormal_ns(rng, (2 + index) * noisy * slower, 300, 0.02)])
    report = report_of(store, "window:8", "latest")
    rows = verdicts(report)
    assert rows.loc["resnet18", "verdict"] == "regressed"
    assert rows.loc["vit_tiny", "verdict"] not in ("regressed", "improved")
    assert rows.loc["resnet18", "baseline"] == "window of 8 runs (run03..run10)"
    assert report.baseline_selector == "window:8"
    assert report.baseline_runs[0] == "run03" and report.baseline_runs[-1] == "run10"
    two_run = verdicts(report_of(store, "run:run10", "latest")).loc["vit_tiny"]
    assert two_run["ratio"] < 0.93  # against the slow night alone tonight looks 9% faster


def test_window_with_too_few_runs_is_inconclusive_and_window_1_is_refused(store) -> None:
    rng = np.random.default_rng(9)
    for i in range(2):
        add(store, run_id=f"run{i}", model="resnet18", started_at=day(i),
            processes_ns=[lognormal_ns(rng, 2, 100)])
    row = verdicts(report_of(store, "window:5", "latest")).loc["resnet18"]
    assert row["verdict"] == "inconclusive" and "window holds 1 good runs" in row["reason"]
    with pytest.raises(ConfigError, match="window:1 is too short"):
        report_of(store, "window:1", "latest")


# ------------------------------------------------------------ simulated histories


def test_simulated_null_histories_rarely_alarm_and_15_percent_steps_are_found() -> None:
    """Seeded AR(1) samples with stalls and a 1-2% night-to-night offset, 10 nights of history:
    at the default 5% threshold at most a few % of null keys are flagged (either way) and at
    least 90% of 15% steps are found, by the window and the two-run comparison. At a 2%
    threshold the interval has to do the work: ours stays near its 5% level, while treating the
    pooled samples of a run as replicates (no run-to-run noise) flags a third of null keys."""
    rng = np.random.default_rng(12)
    model = NoiseModel(samples=120)

    def verdicts_of(step: float, threshold: float) -> list[str]:
        nights = simulate_key(rng, model, 11, step=step)
        levels = [run_level(n) for n in nights]
        noise = run_noise([lv.log_level for lv in levels[:-1]], min_history=5, assumed_sd=0.01)
        samples_only = run_noise([], min_history=5, assumed_sd=1e-6)
        rows = (compare_window(levels[:-1], levels[-1]),
                compare_runs(levels[-2], levels[-1], noise),
                compare_runs(levels[-2], levels[-1], samples_only))
        return [decide(r["ratio"], r["ratio_low"], r["ratio_high"], r["p_value"],
                       threshold=threshold, alpha=0.05)[0] for r in rows]

    def flagged(threshold: float) -> np.ndarray:
        null = np.array([verdicts_of(0.0, threshold) for _ in range(300)])
        return np.isin(null, ["regressed", "improved"]).mean(axis=0)

    window, two_run, _ = flagged(0.05)
    assert window <= 0.02 and two_run <= 0.04
    found = (np.array([verdicts_of(0.15, 0.05) for _ in range(60)]) == "regressed").mean(axis=0)
    assert found[0] >= 0.9 and found[1] >= 0.9
    window, two_run, samples_as_replicates = flagged(0.02)
    assert window <= 0.08 and two_run <= 0.08
    assert samples_as_replicates >= 0.25


# ------------------------------------------------------------ selectors


def test_selectors_by_run_tag_sha_date_and_latest(store) -> None:
    nightly(store, {}, nights=2, n=20)
    frame = store.query()
    assert set(select_results(frame, "run:run00")["run_id"]) == {"run00"}
    assert set(select_results(frame, "tag:pr-42")["run_id"]) == {"cur"}
    assert set(select_results(frame, "sha:bbbb")["run_id"]) == {"cur"}
    assert set(select_results(frame, "date:2024-06-01")["run_id"]) == {"run00"}
    assert set(select_results(frame, "date:2024-06-01..2024-06-02")["run_id"]) == {"run00",
                                                                                  "run01"}
    assert set(select_results(frame, "latest")["run_id"]) == {"cur"}
    assert set(select_results(frame, "latest~1")["run_id"]) == {"run01"}
    assert set(select_results(frame, "nightly")["run_id"]) == {"run00", "run01"}  # bare tag
    assert set(select_results(frame, "01" + "a" * 6)["run_id"]) == {"run01"}  # bare SHA
    assert set(select_results(frame, "2024-06-03")["run_id"]) == {"cur"}  # bare date


def test_selector_matching_nothing_says_what_exists(store) -> None:
    nightly(store, {}, nights=1, n=20)
    expected = r"matches no results; runs: run00, cur; tags: nightly, pr-42; git SHAs: "
    with pytest.raises(ConfigError, match=expected):
        select_results(store.query(), "tag:release")
    with pytest.raises(ConfigError, match="is not YYYY-MM-DD"):
        select_results(store.query(), "date:yesterday")


def test_empty_store_is_a_config_error(store) -> None:
    with pytest.raises(ConfigError, match="store is empty"):
        report_of(store, "latest", "latest")


def test_selections_without_common_keys_are_a_config_error(store) -> None:
    add(store, run_id="a", model="x", started_at=day(0), processes_ns=[np.ones(20)])
    add(store, run_id="b", model="y", started_at=day(1), processes_ns=[np.ones(20)])
    with pytest.raises(ConfigError, match="share no benchmark key"):
        report_of(store, "run:a", "run:b")
    frame = store.query()
    with pytest.raises(ConfigError, match="share no benchmark key"):
        compare_selections(frame[frame["run_id"] == "a"], frame[frame["run_id"] == "b"],
                           store.samples)


# ------------------------------------------------------------ history and steps


def history_store(store: ResultStore, step_at: int = 12, runs: int = 24,
                  step: float = 0.10) -> ResultStore:
    rng = np.random.default_rng(3)
    for i in range(runs):
        for model in ("resnet18", "vit_tiny"):
            level = 1 + (step if model == "resnet18" and i >= step_at else 0.0)
            add(store, run_id=f"run{i:02d}", model=model, git_sha=f"{i:02d}" + "c0ffee" * 6,
                processes_ns=[lognormal_ns(rng, 3.0 * level, 200, 0.02)], started_at=day(i))
    return store


def test_step_detection_finds_the_planted_step_and_its_commit(store) -> None:
    steps = detect_steps(key_history(history_store(store).query()))
    assert len(steps) == 1
    step = steps.iloc[0]
    assert step["label"].startswith("resnet18/")
    assert step["position"] == 12 and step["run_id"] == "run12"
    assert step["git_sha"].startswith("12c0ffee") and step["previous_run_id"] == "run11"
    assert step["change"] == pytest.approx(0.10, abs=0.02)


def test_flat_noisy_series_has_no_steps_and_short_series_none(store) -> None:
    rng = np.random.default_rng(11)
    false_steps = sum(
        len(change_points(rng.lognormal(0, 0.01, 30))) > 0 for _ in range(100)
    )
    assert false_steps <= 10
    assert change_points([1.0, 2.0, 1.0]) == []
    assert detect_steps(key_history(history_store(store, step=0.0).query())).empty


def test_regression_report_attaches_history_up_to_current(store) -> None:
    history_store(store)
    report = report_of(store, "run:run11", "run:run12")
    assert verdicts(report).loc["resnet18", "verdict"] == "regressed"
    assert verdicts(report).loc["vit_tiny", "verdict"] == "unchanged"
    assert report.history["run_id"].max() == "run12"  # nothing after the current selection
    assert report.steps.empty  # a single run at the new level is too short for a step
    later = report_of(store, "run:run11", "latest")
    assert later.steps["run_id"].tolist() == ["run12"]
    assert "Steps in the history" in render_markdown(later)
    assert isinstance(later.history, pd.DataFrame)
