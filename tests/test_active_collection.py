"""Choosing what to measure on a new device: the round schedule, active picks where the model
is unsure, reference starts, ``bench collect --strategy --budget`` and its refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.predictors.estimators.active import run_collection, schedule


def test_schedule_grows_to_the_budget_through_every_checkpoint() -> None:
    plan = schedule(300, initial=10, growth=0.25, checkpoints=(25, 100, 200, 900))
    assert plan[0] == 10 and plan[-1] == 300 and plan == sorted(set(plan))
    assert {25, 100, 200} <= set(plan) and 900 not in plan
    assert all(b - a >= 5 or b in (25, 100, 200, 300) for a, b in zip(plan, plan[1:]))
    with pytest.raises(ConfigError, match="budget"):
        schedule(0)


class _UnsureAbove:
    """A stand-in predictor: sure (spread 1%) of rows below ``edge``, unsure (30%) above."""

    def __init__(self, edge: float) -> None:
        self.edge = edge

    def predict_with_uncertainty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(X, dtype=np.float64)[:, 0]
        return np.ones_like(x), np.where(x > self.edge, 0.3, 0.01)


def test_active_measures_where_the_model_is_unsure() -> None:
    pool = list(range(1000))
    measured: list[list[int]] = []

    def measure(rows: list[int]) -> np.ndarray:
        measured.append(list(rows))
        return np.ones(len(rows))

    result = run_collection(pool, measure, 40, fit=lambda rows, values: _UnsureAbove(900),
                            features=lambda rows: np.asarray(rows, dtype=np.float64)[:, None],
                            strategy="active", initial=10, seed=0)
    assert len(result.archs) == 40 == len(set(result.archs))
    assert result.rounds == schedule(40, 10)
    after_start = [r for batch in measured[1:] for r in batch]
    assert after_start and min(after_start) > 900  # every later pick from the unsure corner
    # thinned among the 3x round size most unsure rows rather than taking their first ones
    assert np.min(np.diff(sorted(measured[1]))) >= 2
    random = run_collection(pool, lambda rows: np.ones(len(rows)), 40, strategy="random", seed=0)
    assert np.mean(np.asarray(random.archs) > 900) < 0.3


def test_references_replace_the_random_start_and_bad_calls_are_refused() -> None:
    pool = [f"a{i}" for i in range(50)]
    refs = ["a7", "a3", "a42"]
    result = run_collection(pool, lambda rows: np.ones(len(rows)), 8, strategy="random", references=refs)
    assert result.archs[:3] == refs and len(set(result.archs)) == 8
    with pytest.raises(ConfigError, match="not in the pool"):
        run_collection(pool, lambda rows: np.ones(len(rows)), 8, references=["b1"], strategy="random")
    with pytest.raises(ConfigError, match="exceeds"):
        run_collection(pool, lambda rows: np.ones(len(rows)), 51, strategy="random")
    with pytest.raises(ConfigError, match="unknown strategy"):
        run_collection(pool, lambda rows: np.ones(len(rows)), 8, strategy="greedy")
    with pytest.raises(ConfigError, match="predictor to fit"):
        run_collection(pool, lambda rows: np.ones(len(rows)), 8, strategy="active")
    with pytest.raises(ConfigError, match="returned 1 values"):
        run_collection(pool, lambda rows: np.ones(1), 8, strategy="random")


@pytest.mark.slow
def test_space_collection_on_nb201_with_a_simulated_device() -> None:
    """The loop over the whole NB201 space with the default predictor refitted every round;
    the 'device' is an additive per-operation cost plus an interaction."""
    from costmeter.models.spaces import get_space
    from costmeter.predictors.estimators.active import space_collection

    space = get_space("nb201")

    def measure(archs: list[str]) -> np.ndarray:
        f = space.features(archs)
        onehot = f[list(space.onehot_feature_names())].to_numpy(dtype=np.float64)
        cost = np.linspace(0.1, 1.0, onehot.shape[1])
        return 1.0 + onehot @ cost + 0.5 * onehot[:, 3] * onehot[:, 10]

    result = space_collection("nb201", 30, measure, strategy="active", seed=1)
    assert len(set(result.archs)) == 30 and result.rounds[-1] == 30
    assert np.all(np.isfinite(result.values)) and np.allclose(result.values, measure(result.archs))


@pytest.mark.parametrize("args, flag", [
    (["--strategy", "active"], "--budget"),
    (["--budget", "20"], "--strategy"),
    (["--strategy", "active", "--budget", "0"], "--budget"),
    (["--strategy", "greedy", "--budget", "20"], "--strategy"),
    (["--space", "resnet", "--strategy", "active", "--budget", "5"], "search space"),
])
def test_collect_strategy_refusals_are_one_line(tmp_path: Path, args: list[str], flag: str,
                                                capsys: pytest.CaptureFixture) -> None:
    store = f"sqlite:///{tmp_path / 'c.db'}"
    space = [] if "--space" in args else ["--space", "nb201"]
    rc = main(["collect", *space, *args, "--store", store, "--workdir", str(tmp_path / "wd")])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert flag in captured.err
    assert not (tmp_path / "c.db").exists() or main(["results", "list", "--store", store]) == 0


@pytest.mark.slow
def test_collect_active_measures_its_budget_through_the_harness(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    wd, store = tmp_path / "wd", f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["collect", "--space", "nb201", "--strategy", "active", "--budget", "12", "--min-time", "0.02",
                 "--threads", "1", "--store", store, "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "active: 10 of 12 architectures measured" in out and "active: 12 nb201 architectures in 2 rounds" in out
    from costmeter.results.store import ResultStore

    frame = ResultStore(store).query(status="ok")
    assert frame["model_id"].nunique() == 12
