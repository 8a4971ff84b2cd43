"""The held-out benchmark of the bring-up workflow (benchmarks/predictor_cpu_families.py)
measures some of the build's own calibration networks again, so that the machine's drift since
the build shows; and it scores the build's conformal intervals on the held-out families."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from script_modules import load_script


def _benchmark() -> ModuleType:
    return load_script("predictor_cpu_families")


def test_probes_are_spread_over_families_and_drift_is_their_median_ratio() -> None:
    bench = _benchmark()
    networks = {f"{family}:{i:02d}": {"family": family, "ms": [1.0 + i, 0.9 + i, 0.5 + i]}
                for family in ("resnet", "nb201", "mobilenet_v2") for i in range(12)}
    networks["nb201:99"] = {"family": "nb201", "ms": [float("nan")]}  # never measured: no probe
    probes = bench.drift_probes(networks, per_family=3)
    assert len(probes) == 9 and {p.split(":")[0] for p in probes} == {"resnet", "nb201", "mobilenet_v2"}
    assert "nb201:99" not in probes and len(set(probes)) == 9
    now = {m: (0.9 + int(m.split(":")[1])) * 1.06 for m in probes}  # 6% slower than the fastest
    now[probes[0]] *= 2.0  # one outlier does not move the median
    ratio, ratios = bench.drift(networks, now, rounds=2)  # the third round is not compared
    assert ratio == pytest.approx(1.06) and max(ratios) == pytest.approx(2.12)


def test_interval_coverage_counts_held_out_networks_inside_the_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import costmeter.predictors.workflows.predict as predict

    bench = _benchmark()

    class Interval:
        def interval(self, mean, scale, level):  # +-(level x 10%) around the prediction
            mean = np.asarray(mean)
            return mean * (1 - level / 10), mean * (1 + level / 10)

    answers = [{"latency_ms": 1.0, "kernel_std_ms": 0.01} for _ in range(10)]
    y = np.array([1.0] * 8 + [1.085, 1.2])  # the 9th is inside at 90% (+9%) and 95%, not at 80%
    monkeypatch.setattr(predict, "interval_of", lambda manifest, path: Interval())
    table = bench.interval_coverage({}, Path("x"), answers, y)
    assert isinstance(table, pd.DataFrame)
    assert table["held"].tolist() == ["8/10", "9/10", "9/10"]
    assert table.loc[0.9, "mean_rel_width_pct"] == pytest.approx(18.0)
