"""Network-level calibration (cache model on top of a kernel sum) and the network predictor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from costmeter.errors import ConfigError
from costmeter.harness.probes.cache import measure_cache_curve
from costmeter.predictors.estimators.calibration import BOUNDS, CANDIDATES, TrafficCalibration, miss_fraction, network_terms

CURVE = ((1.0, 16.0, 32.0, 64.0), (10.0, 12.0, 30.0, 50.0))  # MB, us per MB


def test_cache_curve_is_measured_per_size_through_the_protocol_and_stored(tmp_path: Path) -> None:
    from costmeter.results.store import ResultStore

    store = ResultStore(f"sqlite:///{tmp_path / 'results.db'}")
    sizes, costs = measure_cache_curve((0.5, 2.0), chunk_mb=0.25, repeats=3, block_mb=8.0, sink=store)
    stored = store.results(model_id="probe:cache-read")
    store.close()
    assert sizes == (0.5, 2.0) and len(costs) == 2 and all(c > 0 for c in costs)
    assert [dict(r.key.options)["working_set_mb"] for r in stored] == ["0.5", "2"]
    for result, cost in zip(stored, costs):
        samples = result.measurement.samples_ns[0]
        assert len(samples) >= 3 and result.validity.value in ("VALID", "INVALID") and result.environment
        # the curve is each size's fastest run: 8 MB of reads (4 passes at 2 MB, 16 at 0.5 MB)
        assert cost == pytest.approx(min(samples) / 1e3 / 8.0)
        assert result.extra["us_per_mb_fastest"] == cost
    with pytest.raises(ConfigError):
        measure_cache_curve(())


def test_miss_fraction_interpolates_between_cheapest_and_dearest_reads() -> None:
    misses = miss_fraction([0.5, 1.0, 16.0, 24.0, 64.0, 500.0], *CURVE)
    assert misses == pytest.approx([0.0, 0.0, 0.05, 0.275, 1.0, 1.0])  # (cost - 10) / (50 - 10)
    assert miss_fraction([8.0], (1.0, 64.0), (10.0, 10.0)) == pytest.approx([0.0])  # flat curve


def _conv_model(path: Path) -> Path:
    """1x3x8x8 -> Conv 3->16, 3x3, pad 1 (weights 16*3*3*3 floats + 16 bias) -> Relu."""
    weight = numpy_helper.from_array(np.ones((16, 3, 3, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(16, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["y"], ["z"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 8, 8])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_network_terms_of_a_conv_by_hand(tmp_path: Path) -> None:
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.kernels.fuse import fuse

    graph = fuse(load_graph(_conv_model(tmp_path / "c.onnx")), builtin_rules("onnxruntime"))
    terms = network_terms(graph)
    assert terms["kernels"] == 1  # conv + relu fuse into one kernel
    assert terms["weight_mb"] == pytest.approx((16 * 3 * 3 * 3 + 16) * 4 / 1e6)
    # reads the 3x8x8 input, writes the 16x8x8 output (float32)
    assert terms["activation_mb"] == pytest.approx((3 * 64 + 16 * 64) * 4 / 1e6)


def _synthetic(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Networks of 3 families whose latency follows the cache model exactly."""
    rng = np.random.default_rng(seed)
    weights = np.concatenate([rng.uniform(1, 60, 30), [13.0, 15.0, 17.0, 19.0]])
    frame = pd.DataFrame({"kernel_sum_ms": rng.uniform(1, 10, len(weights)), "weight_mb": weights,
                          "activation_mb": rng.uniform(5, 80, len(weights))})
    y = (frame.kernel_sum_ms + 0.010 * frame.weight_mb + 0.005 * frame.activation_mb
         + 0.030 * frame.weight_mb * miss_fraction(frame.weight_mb, *CURVE) + 0.1).to_numpy()
    groups = np.array(["a", "b", "c"] * (len(weights) // 3) + ["a"] * (len(weights) % 3))
    return frame, y, groups


def test_calibration_recovers_the_cache_model() -> None:
    frame, y, groups = _synthetic()
    model = TrafficCalibration(*CURVE, alpha=0.0).fit(frame, y, groups)
    assert model.terms_ == ("intercept", "weight_mb", "activation_mb", "miss_mb")
    coef = dict(zip(CANDIDATES, model.coef_))
    assert [coef[t] for t in model.terms_] == pytest.approx([0.1, 0.010, 0.005, 0.030], abs=1e-6)
    assert coef["scale"] == 0.0 and model.intercept_ms_ == pytest.approx(0.1, abs=1e-6)
    assert model.cv_within_ == 1.0 and model.cv_rel_rmse_ < 1e-6
    assert model.kernel_sum_within_ < 0.5  # the sum alone misses: the terms are needed
    assert model.predict(frame) == pytest.approx(y)
    assert "50% of 32 MB" not in model.describe() and "3 families" in model.describe()
    outside = frame.head(2).assign(kernel_sum_ms=[frame.kernel_sum_ms.min() / 2, 100.0])
    assert model.in_range(frame).all() and not model.in_range(outside).any()


def test_costs_per_mb_never_go_negative() -> None:
    """Latency that falls with weight MB (as an unconstrained fit found on real networks) can't
    give a negative cost per MB: every fitted coefficient stays within its bounds."""
    frame, _, groups = _synthetic()
    y = (frame.kernel_sum_ms * 1.3 - 0.02 * frame.weight_mb).clip(lower=0.2).to_numpy()
    model = TrafficCalibration(*CURVE).fit(frame, y, groups)
    for name, value in zip(CANDIDATES, model.coef_):
        low, high = BOUNDS[name]
        assert low - 1e-12 <= value <= high + 1e-12, (name, value)
    assert dict(zip(CANDIDATES, model.coef_))["weight_mb"] == 0.0


def test_calibration_falls_back_to_the_kernel_sum_when_no_term_helps_out_of_family() -> None:
    """Networks whose measured latency is the kernel sum times unstructured noise: no term
    beats the plain sum on unseen families, so none is kept and predictions are the sum."""
    frame, _, groups = _synthetic()
    noise = np.random.default_rng(3).uniform(0.97, 1.03, len(frame))
    y = frame.kernel_sum_ms.to_numpy() * noise
    model = TrafficCalibration(*CURVE).fit(frame, y, groups)
    assert model.terms_ == ()
    assert model.predict(frame) == pytest.approx(frame.kernel_sum_ms.to_numpy())
    assert "no term beat the kernel sum" in model.describe()


def test_a_calibration_that_loses_to_the_kernel_sum_out_of_family_is_dropped() -> None:
    """Two families run 30% above their kernel sum, the third at it: any share fitted on two
    families misses the third by >10%, so the nested estimate (0% within) loses to the plain
    sum (the third family: 33%) and no term is kept."""
    frame, _, groups = _synthetic()
    noise = np.random.default_rng(5).uniform(0.99, 1.01, len(frame))
    y = frame.kernel_sum_ms.to_numpy() * np.where(groups == "c", 1.0, 1.3) * noise
    model = TrafficCalibration(*CURVE).fit(frame, y, groups)
    assert model.terms_ == () and model.predict(frame) == pytest.approx(frame.kernel_sum_ms.to_numpy())
    assert model.cv_within_ == model.kernel_sum_within_ == pytest.approx(1 / 3)


def test_a_small_network_moves_by_at_most_the_cross_validated_error() -> None:
    """A per-run term fitted on large networks would add +50% to a network five times smaller
    than any of them; the correction there is capped at the calibration's own CV error."""
    frame, _, groups = _synthetic()
    frame = frame.assign(kernel_sum_ms=frame.kernel_sum_ms + 5.0)  # 6..15 ms
    noise = np.random.default_rng(4).uniform(0.98, 1.02, len(frame))
    y = (frame.kernel_sum_ms + 0.5).to_numpy() * noise
    model = TrafficCalibration(*CURVE).fit(frame, y, groups)
    assert model.intercept_ms_ > 0.3  # a real per-run term, needed in range
    tiny = frame.head(3).assign(kernel_sum_ms=[1.0, 0.5, 0.2], weight_mb=1.0, activation_mb=1.0)
    moved = model.predict(tiny) / tiny.kernel_sum_ms.to_numpy() - 1
    assert 0 < model.cv_rel_rmse_ < 0.1
    assert np.all(np.abs(moved) <= model.cv_rel_rmse_ + 1e-12)
    inside = model.predict(frame.head(3)) - frame.kernel_sum_ms.head(3).to_numpy()
    assert inside == pytest.approx(np.full(3, model.intercept_ms_), rel=0.2)  # not capped in range


def test_the_cross_validated_figure_is_out_of_family() -> None:
    """One family runs 20% slower than the others: fitted on all three the terms absorb part
    of it, but the nested leave-one-family-out figure says that family is not predicted."""
    frame, y, groups = _synthetic()
    slow = y.copy()
    slow[groups == "c"] *= 1.2
    model = TrafficCalibration(*CURVE).fit(frame, slow, groups)
    assert model.cv_by_family_["c"] < 0.5 and model.cv_within_ < 0.9


def test_calibration_weighs_families_equally() -> None:
    """A family with many networks does not outvote the others: its rows weigh 1/count."""
    frame, y, groups = _synthetic()
    biased = y.copy()
    biased[groups == "c"] *= 1.2  # one family runs 20% slower than the model says
    crowded = pd.concat([frame] + [frame[groups == "a"]] * 5, ignore_index=True)
    crowded_y = np.concatenate([biased] + [biased[groups == "a"]] * 5)
    crowded_groups = np.concatenate([groups] + [groups[groups == "a"]] * 5)
    equal = TrafficCalibration(*CURVE).fit(frame, biased, groups)
    weighted = TrafficCalibration(*CURVE).fit(crowded, crowded_y, crowded_groups)
    assert weighted.coef_ == pytest.approx(equal.coef_, rel=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda f, y, g: (f.head(3), y[:3], g[:3]), "at least 4"),
    (lambda f, y, g: (f.drop(columns="weight_mb"), y, g), "weight_mb"),
    (lambda f, y, g: (f, np.where(np.arange(len(y)) == 2, 0.0, y), g), "positive"),
    (lambda f, y, g: (f, y, np.full(len(y), "a")), "2 families"),
])
def test_calibration_refuses_bad_input(change, message) -> None:
    frame, y, groups = _synthetic()
    with pytest.raises(ConfigError, match=message):
        TrafficCalibration(*CURVE).fit(*change(frame, y, groups))
    with pytest.raises(ConfigError, match="cache curve"):
        TrafficCalibration().fit(frame, y, groups)


def _kernel_samples(wd: Path) -> None:
    """Kernel samples of 1x1 and 3x3 convs timed by a fake clock (a latency per file, no runtime)."""
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.measure import measure_kernels, samples_path
    from costmeter.predictors.sampling.configs import make_config

    configs = [make_config("conv", (1, c, s, s), [("Conv", {"c_out": o, "kernel": k})])
               for c in (3, 8, 16) for o in (8, 16, 32) for s in (8, 16) for k in (1, 3)]

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        return [[0.01 if p.name.startswith("overhead") else 0.05 + 0.001 * len(p.name) for p in g]
                for g in groups]

    samples = measure_kernels(configs, builtin_rules("onnxruntime"), workdir=wd, measure=measure)
    samples.save(samples_path(wd, "cpu", "onnxruntime"))


def test_network_predictor_calibrates_and_round_trips(tmp_path: Path) -> None:
    from costmeter.predictors.artifacts import load_predictor, save_predictor
    from costmeter.predictors.kernels.features import stack_tables
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.estimators.network import NetworkPredictor

    _kernel_samples(tmp_path)
    samples = KernelSamples.load(samples_path(tmp_path, "cpu", "onnxruntime"))
    graph = fuse(load_graph(_conv_model(tmp_path / "c.onnx")), builtin_rules("onnxruntime"))
    graphs = {f"net{i}": graph for i in range(6)}
    plain = NetworkPredictor(overhead_ms=0.02).fit(samples.tables(), samples.latencies())
    base = plain.predict(graphs)
    assert plain.calibration_ is None and "not calibrated" in plain.describe()
    kernel_sum = plain.kernel_forest_.predict(stack_tables(graphs)).reindex(list(graphs))
    assert base.to_numpy() == pytest.approx(kernel_sum.to_numpy() + 0.02)
    measured = base.to_numpy() * np.array([1.1, 1.3, 1.2, 1.25, 1.15, 1.2])
    model = NetworkPredictor(overhead_ms=0.02, calibration=TrafficCalibration(*CURVE)).fit(
        samples.tables(), samples.latencies(), graphs,
                                                   measured, ["a", "a", "b", "b", "c", "c"])
    frame = model.predict_frame(graphs)
    # identical networks get the calibrated mean of their measurements; spread widens the std
    assert frame["latency_ms"].to_numpy() == pytest.approx(np.full(6, measured.mean()), rel=0.02)
    assert (frame["std_ms"] > plain.predict_frame(graphs)["std_ms"]).all()
    assert "calibrated" in model.describe()
    path = tmp_path / "n.costmodel"
    save_predictor(model, path, device="cpu", runtime="onnxruntime")
    assert load_predictor(path).predict(graphs).to_numpy() == pytest.approx(frame["latency_ms"].to_numpy())
    with pytest.raises(ConfigError, match="one measured latency per network"):
        NetworkPredictor().fit(samples.tables(), samples.latencies(), graphs, measured[:3])

