"""The cheap nightly subset: chosen on earlier nights, scored on later ones, against random
subsets of the same budget, on a seeded simulated suite with planted regressions; and the suite
history read from a real SQLite store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from costmeter.errors import ConfigError
from costmeter.reports.history import suite_history
from costmeter.reports.simulated_suite import SuiteModel, simulate_suite
from costmeter.reports.subset import SuiteHistory, choose_subset, score_subset
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore

MODEL = SuiteModel(nights=120, event_rate=0.4)


def simulated(seed: int = 3, model: SuiteModel = MODEL) -> SuiteHistory:
    sim = simulate_suite(seed, model)
    return SuiteHistory(sim.p50_ms, sim.regressed, sim.keys)


@pytest.fixture(scope="module")
def report():
    return choose_subset(simulated(), 0.1, random_draws=100, seed=1)


def test_chosen_subset_beats_random_subsets_on_held_out_nights(report) -> None:
    held, rand = report.held_out, report.random
    assert report.cost_share["keys"] <= 0.1 + 1e-9
    assert held.nights == 40 and held.alarms >= 10  # enough later nights to score on
    assert held.tau >= rand.tau + 0.2, (held.tau, rand.tau)
    assert held.recall >= rand.recall + 0.15, (held.recall, rand.recall)
    assert rand.beaten_tau >= 0.8 and rand.beaten_recall >= 0.8
    # the tau reported is scipy's, per held-out night, for the subset chosen on earlier nights
    history = simulated()
    again = score_subset(history, report.evaluated_items,
                         np.arange(120 - held.nights, 120))
    assert again.tau_per_night == pytest.approx(held.tau_per_night)


def test_figures_are_on_later_nights_than_the_choice(report) -> None:
    assert len(report.train_nights) == 80 and len(report.test_nights) == 40
    assert max(report.train_nights) < min(report.test_nights)
    # the choice ignores the held-out nights: rewriting them leaves it unchanged
    history = simulated()
    shuffled = history.regressed.copy()
    rng = np.random.default_rng(0)
    shuffled.iloc[80:] = rng.random(shuffled.iloc[80:].shape) < 0.05
    p50 = history.p50_ms.copy()
    p50.iloc[80:] = p50.iloc[80:].to_numpy() * rng.uniform(0.5, 2.0, p50.iloc[80:].shape)
    rewritten = choose_subset(SuiteHistory(p50, shuffled, history.keys), 0.1, random_draws=0)
    assert rewritten.evaluated_items == report.evaluated_items
    assert rewritten.held_out.tau != pytest.approx(report.held_out.tau)


def test_the_whole_suite_preserves_itself() -> None:
    history = simulated(model=SuiteModel(nights=30))
    whole = choose_subset(history, 1.0, random_draws=0)
    assert whole.cost_share == {"keys": 1.0, "time": pytest.approx(1.0)}
    assert whole.held_out.tau_per_night == pytest.approx([1.0] * whole.held_out.nights)
    assert whole.held_out.key_caught == whole.held_out.key_regressions
    assert len(whole.keys) == history.p50_ms.shape[1]


def tiny_history() -> SuiteHistory:
    """Two runtimes x three models over six nights. Model c is where runtime b is slow, so a
    subset of model c alone ranks the runtimes backwards; b regresses in model a on night 2 and
    model c on night 4."""
    keys = pd.DataFrame({
        "label": [f"{m}/{r}" for r in "ab" for m in "abc"],
        "contestant": [r for r in "ab" for _ in "abc"],
        "item": [m for _ in "ab" for m in "abc"],
        "cost_s": [1.0, 1.0, 4.0, 1.0, 1.0, 4.0],
    }, index=[f"{r}{m}" for r in "ab" for m in "abc"])
    base = np.array([10.0, 20.0, 5.0, 8.0, 16.0, 6.0])  # b faster on a, b; slower on c
    p50 = pd.DataFrame(np.tile(base, (6, 1)), index=[f"n{i}" for i in range(6)],
                       columns=keys.index)
    regressed = pd.DataFrame(False, index=p50.index, columns=keys.index)
    regressed.loc["n2", "ba"] = True
    regressed.loc["n4", "bc"] = True
    return SuiteHistory(p50, regressed, keys)


def test_scores_by_hand() -> None:
    history = tiny_history()
    only_c = score_subset(history, ["c"])
    assert only_c.tau == pytest.approx(-1.0)  # ranks a/b the other way round
    assert (only_c.alarms, only_c.caught, only_c.key_regressions, only_c.key_caught) == (2, 1, 2, 1)
    a_and_b = score_subset(history, ["a", "b"], nights=[0, 1, 2, 3])
    assert a_and_b.tau == pytest.approx(1.0)
    assert (a_and_b.alarms, a_and_b.caught, a_and_b.recall) == (1, 1, 1.0)
    assert kendalltau([1, 2], [2, 1]).statistic == pytest.approx(-1.0)


def test_time_budget_counts_measuring_time() -> None:
    history = tiny_history()
    # 2 of 12 seconds fit a or b but not c (8 s)
    chosen = choose_subset(history, 0.2, budget_by="time", held_out=0.34, random_draws=0)
    assert "c" not in chosen.items and chosen.cost_share["time"] <= 0.2
    with pytest.raises(ConfigError, match="holds no whole item"):
        choose_subset(history, 0.1, budget_by="time", random_draws=0)


@pytest.mark.parametrize(("budget", "message"), [(0.0, "must be in"), (1.5, "must be in")])
def test_bad_budget(budget, message) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_subset(tiny_history(), budget)


def test_too_short_a_history_is_refused() -> None:
    history = tiny_history()
    short = SuiteHistory(history.p50_ms.iloc[:4], history.regressed.iloc[:4], history.keys)
    with pytest.raises(ConfigError, match="holds 4 nights"):
        choose_subset(short, 0.5)


# ------------------------------------------------------------ history from a real store


def add(store: ResultStore, run: str, night: int, model: str, runtime: str,
        median_ms: float, rng: np.random.Generator) -> None:
    key = BenchKey(model, f"hash-{model}", "cpu", runtime, 1, (1, 3, 224, 224), "float32", 4)
    samples = rng.lognormal(np.log(median_ms * 1e6), 0.01, 200).astype(np.int64).tolist()
    started = f"2024-06-{night + 1:02d}T01:00:00+00:00"
    store.write(RunResult(key=key, status=Status.OK, run_id=run, tag="nightly", started_at=started,
                          finished_at=f"2024-06-{night + 1:02d}T01:00:03+00:00",
                          measurement=Measurement(samples_ns=[samples]), validity=Validity.VALID,
                          environment={"git_sha": f"{night:02d}" * 20}))


def test_suite_history_from_the_store_finds_planted_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        for night in range(12):
            for m, model in enumerate(("resnet18", "mobilenet_v2", "vit_tiny")):
                for r, runtime in enumerate(("onnxruntime", "openvino")):
                    slower = 1.2 if (model, runtime) == ("vit_tiny", "openvino") and night >= 6 \
                        else 1.0
                    add(store, f"nightly-{night:02d}", night, model, runtime,
                        (2.0 + m) * (1 + 0.1 * r) * slower, rng)
        frame = store.query()
    history = suite_history(frame)
    assert history.p50_ms.shape == (12, 6)
    assert list(history.p50_ms.index) == [f"nightly-{n:02d}" for n in range(12)]
    assert sorted(history.keys["contestant"].unique()) == ["cpu/onnxruntime", "cpu/openvino"]
    assert sorted(history.keys["item"].unique()) == ["mobilenet_v2", "resnet18", "vit_tiny"]
    assert history.keys["cost_s"].tolist() == [3.0] * 6  # finished - started
    hits = history.regressed.stack()
    hits = hits[hits]
    assert [(n, history.keys.loc[k, "label"]) for n, k in hits.index] == [
        ("nightly-06", "vit_tiny/openvino@cpu b1 t4")]
    by_date = suite_history(frame, nights="date", rank_by=("runtime",))
    assert list(by_date.p50_ms.index)[:2] == ["2024-06-01", "2024-06-02"]
    assert choose_subset(history, 0.4, random_draws=0).held_out.nights == 4
    with pytest.raises(ConfigError, match="rank_by"):
        suite_history(frame, rank_by=("colour",))


def test_choose_subset_takes_stored_results_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        for night in range(8):
            for m, model in enumerate(("resnet18", "mobilenet_v2", "vit_tiny", "bert_tiny")):
                for r, runtime in enumerate(("onnxruntime", "openvino")):
                    add(store, f"n{night}", night, model, runtime, (1.0 + m) * (1 + 0.2 * r), rng)
        frame = store.query()
    report = choose_subset(frame, 0.25, random_draws=0)
    assert len(report.items) == 1 and len(report.keys) == 2
    assert set(report.keys) <= set(frame["key_digest"])  # key digests, to filter a suite by
    assert report.held_out.tau == pytest.approx(1.0)  # openvino is slower on every model
