"""Nested, reproducible draws: a larger draw with the same seed starts with the smaller one, for
every space and family that `bench collect` and `bench predictor build` draw from, and for
kernel micro-benchmark configurations."""
from __future__ import annotations

import pytest

from costmeter.predictors.workflows.collect import collect_spaces, plan


@pytest.mark.parametrize("space", collect_spaces())
def test_collect_plans_are_nested_and_reproducible(space: str) -> None:
    small, large = plan(space, 12, seed=3), plan(space, 24, seed=3)
    assert large[:12] == small and len({i.model_id for i in large}) == 24
    assert plan(space, 12, seed=3) == small and plan(space, 12, seed=4) != small


def _prior():
    import sys
    from pathlib import Path

    from costmeter.predictors.sampling.configs import build_prior

    sys.path.insert(0, str(Path(__file__).parent))
    import test_build

    return build_prior(test_build.prior_graphs())


def test_kernel_configs_are_nested_per_type_and_other_types_do_not_move() -> None:
    from costmeter.predictors.sampling.configs import sample_configs

    prior = _prior()
    small = sample_configs(prior, {"conv": 10, "dwconv": 6, "activation": 4}, seed=5)
    large = sample_configs(prior, {"conv": 20, "dwconv": 6, "activation": 8}, seed=5)
    by_type = lambda configs, t: [c.key for c in configs if c.kernel_type == t]  # noqa: E731
    assert by_type(large, "conv")[:10] == by_type(small, "conv")
    assert by_type(large, "dwconv") == by_type(small, "dwconv")
    assert by_type(large, "activation")[:len(by_type(small, "activation"))] == by_type(small, "activation")
    again = sample_configs(prior, {"conv": 10, "dwconv": 6, "activation": 4}, seed=5)
    assert [c.key for c in again] == [c.key for c in small]
    other = sample_configs(prior, {"conv": 10, "dwconv": 6, "activation": 4}, seed=6)
    assert [c.key for c in other] != [c.key for c in small]


def test_an_interleaved_plan_keeps_every_prefix_balanced() -> None:
    from costmeter.predictors.sampling.configs import interleave, sample_configs

    configs = sample_configs(_prior(), {"conv": 30, "dwconv": 10, "activation": 5}, seed=1)
    order = interleave(configs)
    assert sorted(c.key for c in order) == sorted(c.key for c in configs)
    for t in ("conv", "dwconv", "activation"):  # each type keeps its own (nested) order
        assert [c.key for c in order if c.kernel_type == t] == [c.key for c in configs if c.kernel_type == t]
    counts = {"conv": 30, "dwconv": 10, "activation": 5}
    total = sum(counts.values())
    for prefix in (9, 18, 27):
        seen = [c.kernel_type for c in order[:prefix]]
        for t, n in counts.items():
            assert abs(seen.count(t) - prefix * n / total) <= 1, (prefix, t)
