"""Regression verdicts on synthetic samples with known shifts, FDR control, selectors, steps."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from costmeter.errors import ConfigError
from costmeter.reports.history import change_points, detect_steps, key_history
from costmeter.reports.regression import (
    RegressionSettings,
    apply_verdicts,
    compare_samples,
    compare_selections,
    regression_report,
)
from costmeter.reports.regression_render import render_markdown
from costmeter.reports.selectors import select_results
from costmeter.reports.synthetic import SyntheticStore

MODELS = ("resnet18", "mobilenet_v2", "vit_tiny", "bert_tiny")


def lognormal_ns(rng: np.random.Generator, median_ms: float, n: int, sigma: float = 0.03):
    return rng.lognormal(np.log(median_ms * 1e6), sigma, n)


def two_runs(shifts: dict[str, float], *, n: int = 300, sigma: float = 0.03, seed: int = 0,
             **current_columns) -> SyntheticStore:
    """Run 'base' and run 'cur' over MODELS; model m is slower by shifts[m] in 'cur'."""
    rng = np.random.default_rng(seed)
    store = SyntheticStore()
    for index, model in enumerate(MODELS):
        median = 2.0 + index
        store.add(run_id="base", model_id=model, samples_ns=lognormal_ns(rng, median, n, sigma),
                  started_at="2024-05-01T02:00:00+00:00", tag="nightly", git_sha="aaaa1111")
        store.add(run_id="cur", model_id=model,
                  samples_ns=lognormal_ns(rng, median * (1 + shifts.get(model, 0.0)), n, sigma),
                  started_at="2024-05-02T02:00:00+00:00", tag="pr-42", git_sha="bbbb2222",
                  **current_columns.get(model, {}))
    return store


def compare(store: SyntheticStore, settings: RegressionSettings | None = None):
    frame = store.frame()
    return compare_selections(
        frame[frame["run_id"] == "base"], frame[frame["run_id"] == "cur"], store.samples_for,
        settings or RegressionSettings(n_resamples=1000),
    )


def verdict_of(report, model: str) -> str:
    return report.verdicts.set_index("model_id").loc[model, "verdict"]


def test_known_shifts_get_the_right_verdicts() -> None:
    store = two_runs({"resnet18": 0.05, "mobilenet_v2": 0.10, "vit_tiny": -0.08, "bert_tiny": 0.0})
    report = compare(store)
    assert verdict_of(report, "resnet18") == "regressed"  # 5% slower, default 5% threshold
    assert verdict_of(report, "mobilenet_v2") == "regressed"
    assert verdict_of(report, "vit_tiny") == "improved"
    assert verdict_of(report, "bert_tiny") == "unchanged"
    assert report.significant_regression
    rows = report.verdicts.set_index("model_id")
    assert rows.loc["mobilenet_v2", "ratio"] == pytest.approx(1.10, abs=0.015)
    assert rows.loc["mobilenet_v2", "ratio_low"] < 1.10 < rows.loc["mobilenet_v2", "ratio_high"]
    assert report.counts() == {"regressed": 2, "improved": 1, "unchanged": 1, "inconclusive": 0}


def test_small_real_shift_below_threshold_is_unchanged() -> None:
    report = compare(two_runs({"resnet18": 0.015}, n=2000, sigma=0.02))
    row = report.verdicts.set_index("model_id").loc["resnet18"]
    assert row["q_value"] < 0.05  # detectable ...
    assert row["verdict"] == "unchanged"  # ... but inside the ±5% band
    assert not report.significant_regression


def test_noisy_small_samples_are_inconclusive() -> None:
    report = compare(two_runs({"resnet18": 0.04}, n=12, sigma=0.25))
    row = report.verdicts.set_index("model_id").loc["resnet18"]
    assert row["verdict"] == "inconclusive"
    assert "noisy" in row["reason"]


def test_invalid_failed_and_short_inputs_are_inconclusive() -> None:
    store = two_runs(
        {"resnet18": 0.5},
        resnet18={"validity": "INVALID", "reasons": "CPU throttled"},
    )
    store.add(run_id="base", model_id="tiny_cnn", samples_ns=np.full(50, 1e6),
              started_at="2024-05-01T02:00:00+00:00")
    store.add(run_id="cur", model_id="tiny_cnn", status="failed", error="worker crashed",
              started_at="2024-05-02T02:00:00+00:00")
    store.add(run_id="base", model_id="tiny_mlp", samples_ns=np.full(5, 1e6),
              started_at="2024-05-01T02:00:00+00:00")
    store.add(run_id="cur", model_id="tiny_mlp", samples_ns=np.full(5, 2e6),
              started_at="2024-05-02T02:00:00+00:00")
    report = compare(store)
    rows = report.verdicts.set_index("model_id")
    assert rows.loc["resnet18", "verdict"] == "inconclusive"
    assert "current INVALID: CPU throttled" in rows.loc["resnet18", "reason"]
    assert rows.loc["tiny_cnn", "verdict"] == "inconclusive"
    assert "worker crashed" in rows.loc["tiny_cnn", "reason"]
    assert rows.loc["tiny_mlp", "verdict"] == "inconclusive"
    assert "too few samples" in rows.loc["tiny_mlp", "reason"]
    assert not report.significant_regression  # INVALID input does not gate


def test_q_values_are_benjamini_hochberg_of_the_p_values() -> None:
    report = compare(two_runs({"resnet18": 0.01, "mobilenet_v2": 0.005}, n=400))
    p, q = report.verdicts["p_value"].to_numpy(), report.verdicts["q_value"].to_numpy()
    assert q == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert (q >= p - 1e-15).all()


def test_no_shift_is_not_flagged_beyond_the_fdr_rate() -> None:
    """100 null trials of 10 keys each: with every hypothesis null, BH keeps the chance of any
    false discovery in a trial at or below alpha, and no key may be called regressed/improved."""
    rng = np.random.default_rng(7)
    settings = RegressionSettings(n_resamples=200)
    trials, keys, any_discovery, flagged = 100, 10, 0, 0
    for _ in range(trials):
        rows = [
            {**compare_samples(rng.lognormal(0, 0.05, 60), rng.lognormal(0, 0.05, 60), settings,
                               rng), "reason": None}
            for _ in range(keys)
        ]
        verdicts = apply_verdicts(pd.DataFrame(rows), settings)
        any_discovery += bool((verdicts["q_value"] <= settings.alpha).any())
        flagged += int(verdicts["verdict"].isin(["regressed", "improved"]).sum())
    # expected rate <= 0.05; 12 of 100 is beyond the binomial 99.8% bound
    assert any_discovery <= 12
    assert flagged / (trials * keys) <= 0.01


def test_report_json_and_markdown() -> None:
    report = compare(two_runs({"mobilenet_v2": 0.10}))
    data = json.loads(report.to_json())
    assert data["significant_regression"] is True
    assert data["counts"]["regressed"] == 1
    assert {v["verdict"] for v in data["verdicts"]} == {"regressed", "unchanged"}
    markdown = render_markdown(report)
    assert "REGRESSION FOUND" in markdown
    assert "| mobilenet_v2/onnxruntime@cpu b1 t4 | regressed |" in markdown


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        RegressionSettings(threshold=5)
    with pytest.raises(ConfigError, match="alpha"):
        RegressionSettings(alpha=0)


# ------------------------------------------------------------ selectors


def test_selectors_by_run_tag_sha_date_and_latest() -> None:
    frame = two_runs({}).frame()
    assert set(select_results(frame, "run:base")["run_id"]) == {"base"}
    assert set(select_results(frame, "tag:pr-42")["run_id"]) == {"cur"}
    assert set(select_results(frame, "sha:bbbb")["run_id"]) == {"cur"}
    assert set(select_results(frame, "date:2024-05-01")["run_id"]) == {"base"}
    assert set(select_results(frame, "date:2024-05-01..2024-05-02")["run_id"]) == {"base", "cur"}
    assert set(select_results(frame, "latest")["run_id"]) == {"cur"}
    assert set(select_results(frame, "latest~1")["run_id"]) == {"base"}
    assert set(select_results(frame, "nightly")["run_id"]) == {"base"}  # bare tag
    assert set(select_results(frame, "aaaa1111")["run_id"]) == {"base"}  # bare SHA
    assert set(select_results(frame, "2024-05-02")["run_id"]) == {"cur"}  # bare date


def test_selector_matching_nothing_says_what_exists() -> None:
    frame = two_runs({}).frame()
    expected = (r"matches no results; runs: base, cur; tags: nightly, pr-42; "
                r"git SHAs: aaaa1111, bbbb2222; dates: 2024-05-01")
    with pytest.raises(ConfigError, match=expected):
        select_results(frame, "tag:release")
    with pytest.raises(ConfigError, match="is not YYYY-MM-DD"):
        select_results(frame, "date:yesterday")


def test_empty_store_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="store is empty"):
        regression_report(SyntheticStore().frame(), "latest", "latest", lambda r: np.array([]))


def test_selections_without_common_keys_are_a_config_error() -> None:
    store = SyntheticStore()
    store.add(run_id="a", model_id="x", samples_ns=np.ones(20), started_at="2024-01-01")
    store.add(run_id="b", model_id="y", samples_ns=np.ones(20), started_at="2024-01-02")
    with pytest.raises(ConfigError, match="share no benchmark key"):
        regression_report(store.frame(), "run:a", "run:b", store.samples_for)


# ------------------------------------------------------------ history and steps


def history_store(step_at: int = 12, runs: int = 24, step: float = 0.10) -> SyntheticStore:
    rng = np.random.default_rng(3)
    store = SyntheticStore()
    for i in range(runs):
        for model in ("resnet18", "vit_tiny"):
            level = 1 + (step if model == "resnet18" and i >= step_at else 0.0)
            store.add(run_id=f"run{i:02d}", model_id=model, git_sha=f"{i:02d}" + "c0ffee" * 6,
                      samples_ns=lognormal_ns(rng, 3.0 * level, 200, 0.02),
                      started_at=f"2024-06-{i + 1:02d}T01:00:00+00:00")
    return store


def test_step_detection_finds_the_planted_step_and_its_commit() -> None:
    history = key_history(history_store().frame())
    steps = detect_steps(history)
    assert len(steps) == 1
    step = steps.iloc[0]
    assert step["label"].startswith("resnet18/")
    assert step["position"] == 12 and step["run_id"] == "run12"
    assert step["git_sha"].startswith("12c0ffee") and step["previous_run_id"] == "run11"
    assert step["change"] == pytest.approx(0.10, abs=0.02)


def test_flat_noisy_series_has_no_steps_and_short_series_none() -> None:
    rng = np.random.default_rng(11)
    false_steps = sum(
        len(change_points(rng.lognormal(0, 0.01, 30))) > 0 for _ in range(100)
    )
    assert false_steps <= 10
    assert change_points([1.0, 2.0, 1.0]) == []
    assert detect_steps(key_history(history_store(step=0.0).frame())).empty


def test_regression_report_attaches_history_up_to_current() -> None:
    store = history_store()
    report = regression_report(store.frame(), "run:run11", "run:run12", store.samples_for,
                               RegressionSettings(n_resamples=500))
    assert verdict_of(report, "resnet18") == "regressed"
    assert verdict_of(report, "vit_tiny") == "unchanged"
    assert report.history["run_id"].max() == "run12"  # nothing after the current selection
    assert report.steps.empty  # a single run at the new level is too short for a step
    later = regression_report(store.frame(), "run:run11", "latest", store.samples_for,
                              RegressionSettings(n_resamples=500))
    assert later.steps["run_id"].tolist() == ["run12"]
    assert "Steps in the history" in render_markdown(later)
    assert isinstance(later.history, pd.DataFrame)
