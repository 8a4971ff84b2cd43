"""The NAS example's smallest setting runs end to end: table, NSGA-II, proxy, real measurements."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nas_search.py"


def _example() -> object:
    spec = importlib.util.spec_from_file_location("nas_search_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_naswot_prefers_networks_that_separate_inputs() -> None:
    """NASWOT is the log-determinant of the activation-pattern kernel: a network whose ReLUs are
    all off for every input scores far below one whose patterns differ between inputs."""
    import torch

    example = _example()
    torch.manual_seed(0)
    varied = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 64), torch.nn.ReLU())
    dead = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 64), torch.nn.ReLU())
    with torch.no_grad():
        dead[1].weight.zero_()
        dead[1].bias.fill_(-1.0)
    shape = (1, 3, 2, 2)
    assert example.naswot_score(varied, shape, batch=8) > example.naswot_score(dead, shape, batch=8) + 5


def test_synflow_grows_with_width() -> None:
    import torch

    example = _example()
    narrow = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 4))
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 4))
    for net in (narrow, wide):
        torch.nn.init.constant_(net[1].weight, 0.1)
        torch.nn.init.constant_(net[3].weight, 0.1)
    shape = (1, 3, 2, 2)
    assert example.synflow_score(wide, shape) > example.synflow_score(narrow, shape)


@pytest.mark.slow
def test_smallest_setting_runs(tmp_path: Path) -> None:
    example = _example()
    out = tmp_path / "out"
    result = example.main(["--space", "nb201", "--trials", "8", "--population", "4",
                           "--measure", "2", "--min-time", "0.05", "--proxy-batch", "8",
                           "--calibration-networks", "10",
                           "--workdir", str(tmp_path / "wd"), "--out", str(out)])
    trials, front, budget = result["trials"], result["pareto"], result["budget_ms"]
    assert len(trials) == 8 and (trials["latency_ms"] > 0).all()
    assert (trials["upper_ms"] >= trials["latency_ms"]).all()
    assert not trials.loc[trials["upper_ms"] > budget, "proxy_scored"].any()
    assert len(front) <= 2 and (front["upper_ms"] <= budget).all()
    assert np.isfinite(front["measured_ms"]).all() and (front["measured_ms"] > 0).all()
    assert result["summary"]["n"] == len(front)
    table = json.loads(next((tmp_path / "wd" / "lut").glob("nb201-*.json")).read_text())
    assert table["format_version"] == 2 and table["manifest"]["calibration"]["info"]["networks"] == 10
    for name in ("trials.csv", "pareto.csv", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "wd" / "results.db").is_file()  # measured like `bench run`, stored


def test_budget_summary_counts_both_targets() -> None:
    """Share within the budget, share within ±10 % of the prediction, bias and rank, over the
    networks that were measured (a failed one, NaN, left out)."""
    example = _example()
    measured = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    predicted = np.array([1.05, 1.5, 3.2, 4.0, 2.0])
    summary = example.budget_summary(measured, predicted, budget_ms=3.5)
    assert summary["n"] == 4
    assert summary["within_budget_pct"] == pytest.approx(75.0)
    assert summary["within_10_pct"] == pytest.approx(75.0)  # 1.5 vs 2.0 is -25 %
    assert summary["bias_pct"] == pytest.approx(np.median([5.0, -25.0, 20 / 3, 0.0]))
    assert summary["spearman"] == pytest.approx(1.0)
    lines = example.summary_lines(summary, 3.5, 0.9)
    assert "75 % measured within the budget (target >= 90%)" in lines[0]
    assert "75 % measured within ±10 %" in lines[0] and "Spearman 1.00" in lines[1]
    assert example.budget_summary([np.nan], [1.0], 1.0)["n"] == 0


@pytest.mark.parametrize("bad, says", [(["--confidence", "1.5"], "between 0 and 1"),
                                       (["--confidence", "0"], "between 0 and 1"),
                                       (["--budget-ms", "-2"], "budget"),
                                       (["--budget-ms", "0"], "budget"),
                                       (["--calibration-networks", "3"], "calibration-networks")])
def test_bad_settings_are_one_line_exit_2_before_anything_runs(bad: list[str], says: str,
                                                                tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])}
    done = subprocess.run([sys.executable, str(EXAMPLE), *bad, "--workdir", str(tmp_path / "wd"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and says in done.stderr
    assert not (tmp_path / "wd").exists() and not (tmp_path / "out").exists()
