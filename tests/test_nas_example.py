"""The NAS example's smallest setting runs end to end: table, NSGA-II, proxy, real measurements."""
from __future__ import annotations

import importlib.util
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
                           "--workdir", str(tmp_path / "wd"), "--out", str(out)])
    trials, front, budget = result["trials"], result["pareto"], result["budget_ms"]
    assert len(trials) == 8 and (trials["latency_ms"] > 0).all()
    assert not trials.loc[trials["latency_ms"] > budget, "proxy_scored"].any()
    assert 1 <= len(front) <= 2 and (front["predicted_ms"] <= budget).all()
    assert np.isfinite(front["measured_ms"]).all() and (front["measured_ms"] > 0).all()
    for name in ("trials.csv", "pareto.csv", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "wd" / "results.db").is_file()  # measured like `bench run`, stored
