"""Conformal intervals of kernel-level network predictors: scores from the calibration's
leave-one-family-out predictions, scaled by the kernels' spread; the manifest entry and
`bench predict --coverage/--budget-ms` on a kernel-level file."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.predictors.estimators.calibration import TrafficCalibration
from costmeter.predictors.estimators.conformal import METHOD_KERNEL, ConformalCalibration, min_rows
from costmeter.predictors.estimators.network import _interval_calibration

sys.path.insert(0, str(Path(__file__).parent))
import test_build  # noqa: E402  (fake seams of a build)
from test_calibration import CURVE, _kernel_samples  # noqa: E402

TERMS = ("scale", "intercept")  # fewer subsets to search: the tests stay fast


def _networks(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Networks of 3 families: kernel sums with a relative kernel spread of 2% to 20%, and
    measured latencies 1.2 x the sum + 0.1 ms, times lognormal noise whose sigma is that spread
    (the known noise model the intervals must cover)."""
    base = rng.uniform(1.0, 10.0, n)
    rel = rng.uniform(0.02, 0.20, n)
    frame = pd.DataFrame({"kernel_sum_ms": base, "weight_mb": rng.uniform(1, 60, n),
                          "activation_mb": rng.uniform(5, 80, n), "std_ms": rel * base})
    truth = 1.2 * base + 0.1
    return frame, truth * np.exp(rel * rng.standard_normal(n))


def test_intervals_cover_synthetic_networks_at_the_level_asked() -> None:
    rng = np.random.default_rng(0)
    covered, widths_low, widths_high = [], [], []
    for _ in range(12):
        frame, y = _networks(rng, 45)
        groups = np.array(["a", "b", "c"] * 15)
        cal = TrafficCalibration(*CURVE, candidates=TERMS).fit(frame, y, groups)
        conformal = _interval_calibration(cal, frame, y)
        test, y_test = _networks(rng, 400)
        mean = cal.predict(test)
        lower, upper = conformal.interval(mean, test["std_ms"], 0.8)
        covered.append(np.mean((y_test >= lower) & (y_test <= upper)))
        relative = (upper - lower) / mean
        noisy = (test["std_ms"] / test["kernel_sum_ms"]).to_numpy() > 0.11
        widths_low.append(np.median(relative[~noisy]))
        widths_high.append(np.median(relative[noisy]))
    assert 0.76 <= np.mean(covered) <= 0.92, covered
    # the kernels' spread sets the width: noisier networks get wider intervals
    assert np.mean(widths_high) > 1.5 * np.mean(widths_low)
    assert conformal.method_ == METHOD_KERNEL and conformal.n_calibration_ == 45


def test_scores_come_from_the_held_out_family_predictions() -> None:
    rng = np.random.default_rng(1)
    frame, y = _networks(rng, 12)
    groups = np.array(["a", "b", "c"] * 4)
    cal = TrafficCalibration(*CURVE, candidates=TERMS).fit(frame, y, groups)
    assert cal.cv_predicted_.shape == (12,)
    relative = cal.cv_predicted_ / y - 1
    assert np.sqrt(np.mean(relative ** 2)) == pytest.approx(cal.cv_rel_rmse_)
    conformal = _interval_calibration(cal, frame, y)
    spread = np.maximum(frame["std_ms"] / cal.cv_predicted_, conformal.floor_)
    expected = np.sort(np.log(y / cal.cv_predicted_) / spread)
    assert conformal.scores_ == pytest.approx(expected)
    # 12 networks: a finite 80% interval, none at 95% (needs 39) -- an infinite bound, not a crash
    assert np.isfinite(conformal.interval([5.0], [0.5], 0.8)[1]).all()
    assert np.isinf(conformal.interval([5.0], [0.5], 0.95)[1]).all() and min_rows(0.95) == 39
    again = ConformalCalibration.from_state(conformal.state())
    assert np.concatenate(again.interval([5.0], [0.5], 0.8)) == pytest.approx(
        np.concatenate(conformal.interval([5.0], [0.5], 0.8)))
    with pytest.raises(ConfigError, match="unreadable"):
        ConformalCalibration.from_state({"scores": [1.0, 2.0]})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A calibrated kernel-level predictor from a build with fake hardware, and its folder."""
    from costmeter.predictors.workflows.build import build_predictor

    root = tmp_path_factory.mktemp("built")
    out, wd = root / "m.costmodel", root / "wd"
    build_predictor(test_build.spec(), out, wd, seams=test_build.seams())
    return out, wd


def test_the_manifest_keeps_the_method_and_scores(built) -> None:
    from costmeter.predictors.artifacts import load_predictor, read_manifest

    out, _ = built
    manifest = read_manifest(out)
    entry = manifest["extra"]["interval"]
    networks = len(manifest["extra"]["calibration_networks"])
    assert entry["method"] == METHOD_KERNEL and len(entry["scores"]) == networks
    assert entry["scores"] == sorted(entry["scores"]) and entry["calibration_rows"] == networks
    assert manifest["interval"]["method"] == METHOD_KERNEL  # the top-level summary too
    loaded = load_predictor(out).interval_calibration()
    assert loaded.scores_ == pytest.approx(np.array(entry["scores"]))


def test_bench_predict_prints_intervals_and_budget_verdicts(built, capsys) -> None:
    from costmeter.predictors.artifacts import load_predictor, read_manifest
    from costmeter.predictors.kernels.rules import RuleSet
    from costmeter.predictors.workflows.graphs import network_rows

    out, wd = built
    args = ["predict", str(out), "-m", "tiny_cnn", "--no-breakdown", "--workdir", str(wd)]
    assert main([*args, "--coverage", "0.5"]) == 0
    line = capsys.readouterr().out.strip()
    assert "(50% interval)" in line, line
    low, high = (float(v) for v in line.split("[", 1)[1].split("]", 1)[0].split(","))
    rules = RuleSet.from_dict(read_manifest(out)["extra"]["rules"])
    _, rows = network_rows("tiny_cnn", wd, rules)
    frame = load_predictor(out).predict_interval({"tiny_cnn": rows}, 0.5)
    assert low == pytest.approx(frame["lower_ms"].iloc[0], rel=1e-3)
    assert high == pytest.approx(frame["upper_ms"].iloc[0], rel=1e-3)
    mean = frame["latency_ms"].iloc[0]
    assert low <= mean <= high
    assert main([*args, "--budget-ms", f"{100 * high:g}", "--confidence", "0.5"]) == 0
    assert capsys.readouterr().out.strip().endswith("at 50%: yes")
    assert main([*args, "--budget-ms", f"{low / 10:g}", "--confidence", "0.5"]) == 0
    assert capsys.readouterr().out.strip().endswith("at 50%: no")
    networks = len(read_manifest(out)["extra"]["calibration_networks"])
    assert networks < min_rows(0.98)  # the fake build measures a few dozen at most
    assert main([*args, "--coverage", "0.98", "--budget-ms", "5", "--confidence", "0.999"]) == 0
    text = capsys.readouterr().out
    assert f"no finite 98% interval: {networks} calibration networks" in text
    assert "within 5 ms at 100%: unknown" in text


def test_a_kernel_predictor_without_calibration_refuses_intervals_in_one_line(tmp_path: Path, capsys) -> None:
    from costmeter.predictors.artifacts import save_predictor
    from costmeter.predictors.estimators.network import NetworkPredictor
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path

    _kernel_samples(tmp_path)
    samples = KernelSamples.load(samples_path(tmp_path, "cpu", "onnxruntime"))
    plain = NetworkPredictor(overhead_ms=0.02).fit(samples.tables(), samples.latencies())
    path = tmp_path / "plain.costmodel"
    save_predictor(plain, path, device="cpu", runtime="onnxruntime")
    for extra in (["--coverage", "0.9"], ["--budget-ms", "3"]):
        assert main(["predict", str(path), "-m", "tiny_cnn", *extra, "--workdir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "has no interval calibration" in err, err
    assert not (tmp_path / "cache" / "predictions").exists()  # refused before any answer
    with pytest.raises(ConfigError, match="no interval calibration"):
        plain.interval_calibration()
    assert main(["predict", str(path), "-m", "tiny_cnn", "--coverage", "1.5"]) == 2
    assert "--coverage" in capsys.readouterr().err
