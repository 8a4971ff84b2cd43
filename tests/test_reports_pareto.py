"""Pareto fronts and hypervolume against brute force; the Pareto plot as real PNG/SVG files."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmeter.errors import ConfigError
from costmeter.reports.pareto import (
    default_reference,
    hypervolume_2d,
    pareto_analysis,
    pareto_mask,
    plot_pareto,
)
from svg_markers import svg_marker_counts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force_front(points: list[tuple[float, ...]], maximize: tuple[bool, ...]) -> list[bool]:
    """Row i is on the front unless some row is no worse everywhere and better somewhere."""
    def better_or_equal(a: float, b: float, maximise: bool) -> bool:
        return a >= b if maximise else a <= b

    front = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if i == j:
                continue
            no_worse = all(better_or_equal(qk, pk, m) for qk, pk, m in zip(q, p, maximize))
            if no_worse and tuple(q) != tuple(p):
                dominated = True
                break
        front.append(not dominated)
    return front


def brute_force_hypervolume(points, reference, maximize) -> float:
    """Area of the union of the boxes between each point and the reference, by summing the
    cells of the grid the coordinates induce and testing each cell's centre."""
    signs = [-1.0 if m else 1.0 for m in maximize]
    costs = [(p[0] * signs[0], p[1] * signs[1]) for p in points]
    ref = (reference[0] * signs[0], reference[1] * signs[1])
    boxes = [c for c in costs if c[0] < ref[0] and c[1] < ref[1]]
    xs = sorted({c[0] for c in boxes} | {ref[0]})
    ys = sorted({c[1] for c in boxes} | {ref[1]})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if any(b[0] <= cx and b[1] <= cy for b in boxes):
            area += (x1 - x0) * (y1 - y0)
    return area


small_ints = st.integers(min_value=0, max_value=12)


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(st.tuples(small_ints, small_ints, small_ints), min_size=1, max_size=25),
    maximize=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_pareto_mask_matches_brute_force_with_ties(points, maximize) -> None:
    assert pareto_mask(np.array(points, dtype=float), maximize).tolist() == brute_force_front(
        points, maximize
    )


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(st.tuples(small_ints, small_ints), min_size=1, max_size=20),
    maximize=st.tuples(st.booleans(), st.booleans()),
    reference=st.tuples(st.integers(-2, 14), st.integers(-2, 14)),
)
def test_hypervolume_matches_brute_force(points, maximize, reference) -> None:
    expected = brute_force_hypervolume(points, reference, maximize)
    assert hypervolume_2d(np.array(points, dtype=float), reference, maximize) == pytest.approx(
        expected, abs=1e-9
    )


def test_hypervolume_of_known_staircase() -> None:
    # minimise both: points (1,3), (2,2), (3,1) against (4,4): 3 + 2 + 1 = 6
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1]], (4, 4), (False, False)) == pytest.approx(6.0)
    # a dominated point adds nothing; a point beyond the reference adds nothing
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1], [3, 3], [5, 0]], (4, 4), (False, False)) == 6.0


def test_nan_rows_are_never_on_the_front() -> None:
    mask = pareto_mask([[1.0, np.nan], [2.0, 2.0], [3.0, 3.0]], (False, False))
    assert mask.tolist() == [False, True, False]


def test_default_reference_lies_beyond_the_worst_point() -> None:
    reference = default_reference([[1, 10], [3, 20]], (False, True))
    assert reference[0] > 3 and reference[1] < 10


def results_frame() -> pd.DataFrame:
    rows = [
        # model, runtime, latency p50, top1
        ("fast_low", "onnxruntime", 1.0, 60.0),
        ("mid", "onnxruntime", 2.0, 70.0),
        ("slow_high", "onnxruntime", 4.0, 80.0),
        ("dominated", "onnxruntime", 3.0, 65.0),
        ("fast_low", "torch", 1.5, 60.0),
        ("slow_high", "torch", 5.0, 80.0),
        ("no_accuracy", "torch", 0.5, np.nan),
    ]
    frame = pd.DataFrame(rows, columns=["model_id", "runtime", "latency_p50_ms", "acc_top1"])
    frame["device"] = "cpu"
    frame["batch"] = 1
    frame["threads"] = 4
    frame["options"] = "{}"
    frame["validity"] = ["VALID"] * 6 + ["INVALID"]
    frame["latency_p50_low_ms"] = frame["latency_p50_ms"] * 0.9
    frame["latency_p50_high_ms"] = frame["latency_p50_ms"] * 1.1
    return frame


def test_pareto_analysis_finds_front_and_skips_missing_metrics() -> None:
    result = pareto_analysis(results_frame(), "latency_p50", "top1")
    assert result.x.goal == "min" and result.y.goal == "max"
    assert result.front["model_id"].tolist() == ["fast_low", "mid", "slow_high"]
    assert result.front["runtime"].unique().tolist() == ["onnxruntime"]
    assert result.skipped == ["no_accuracy/torch@cpu b1 t4"]
    assert result.hypervolume == pytest.approx(
        brute_force_hypervolume(
            list(zip(result.points["x"], result.points["y"])), result.reference, (False, True)
        )
    )
    assert set(result.series_hypervolume) == {"cpu/onnxruntime", "cpu/torch"}
    assert result.points["x_low"].notna().all()  # latency CI carried for error bars
    assert "hypervolume" in result.summary()


def test_goal_override_flips_the_front() -> None:
    result = pareto_analysis(results_frame(), "latency_p50", "top1", x_goal="max", y_goal="min")
    front = set(zip(result.front["model_id"], result.front["runtime"]))
    assert front == {("fast_low", "torch"), ("dominated", "onnxruntime"), ("slow_high", "torch")}


def test_unknown_metric_lists_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'speed'.*latency_p50.*top1"):
        pareto_analysis(results_frame(), "speed", "top1")


def test_no_row_with_both_metrics_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no result has both"):
        pareto_analysis(results_frame(), "latency_p50", "energy_per_inference")


def test_plot_svg_has_one_marker_per_point_per_series(tmp_path) -> None:
    result = pareto_analysis(results_frame(), "latency_p50", "top1")
    path = plot_pareto(result, tmp_path / "front.svg")
    svg = path.read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    counts = svg_marker_counts(svg, "pareto-points-")
    assert counts == {"pareto-points-0": 4, "pareto-points-1": 2}
    for model in ("fast_low", "mid", "slow_high", "dominated"):
        assert model in svg  # points are labelled (SVG text kept as text)


def test_plot_png_is_a_real_image(tmp_path) -> None:
    import matplotlib.image

    result = pareto_analysis(results_frame(), "latency_p50", "top1")
    path = plot_pareto(result, tmp_path / "front.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0  # not a blank canvas


def test_plot_rejects_unknown_suffix(tmp_path) -> None:
    result = pareto_analysis(results_frame(), "latency_p50", "top1")
    with pytest.raises(ConfigError, match=r"\.png, \.svg, \.pdf"):
        plot_pareto(result, tmp_path / "front.jpg")


def crowded_frame() -> pd.DataFrame:
    """resnet18 on two runtimes at the same accuracy and nearly the same latency (the labels
    used to print on top of each other), plus neighbours; latencies span 2 ms to 60 ms."""
    rows = [
        ("resnet18", "onnxruntime", 10.0, 69.76),
        ("resnet18", "openvino", 10.2, 69.76),
        ("resnet50", "onnxruntime", 24.0, 76.13),
        ("resnet50", "openvino", 23.5, 76.13),
        ("mobilenet_v2", "onnxruntime", 2.0, 71.88),
        ("mobilenet_v2", "openvino", 2.1, 71.88),
        ("vit_tiny", "onnxruntime", 60.0, 72.2),
    ]
    frame = pd.DataFrame(rows, columns=["model_id", "runtime", "latency_p50_ms", "acc_top1"])
    frame["device"], frame["batch"], frame["threads"], frame["options"] = "cpu", 1, 4, "{}"
    frame["validity"] = "VALID"
    return frame


def label_boxes(figure, texts) -> dict[str, object]:
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)  # the boxes of the figure as rendered
    return {t.get_text(): t.get_window_extent(renderer) for t in texts}


def test_labels_of_two_runtimes_at_one_accuracy_do_not_overlap() -> None:
    from costmeter.reports.pareto import pareto_figure

    result = pareto_analysis(crowded_frame(), "latency_p50", "top1")
    figure, texts = pareto_figure(result)
    boxes = label_boxes(figure, texts)
    assert len(boxes) == 7  # one distinct label per point: the series tells runtimes apart
    ort, ov = boxes["resnet18 (cpu/onnxruntime)"], boxes["resnet18 (cpu/openvino)"]
    assert not ort.overlaps(ov), (ort, ov)
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), f"{a} overlaps {b}"
    # the labels stay inside the axes
    axes_box = figure.axes[0].get_window_extent()
    assert all(axes_box.x0 - 1 <= b.x0 and b.x1 <= axes_box.x1 + 1 for b in boxes.values())


def test_unadjusted_labels_would_overlap() -> None:
    """The check above can fail: the same labels at their points, unadjusted, do overlap."""
    from costmeter.reports.pareto import pareto_figure

    result = pareto_analysis(crowded_frame(), "latency_p50", "top1")
    figure, _ = pareto_figure(result, label_points=False)
    axes = figure.axes[0]
    rows = result.points.set_index("label")
    texts = [axes.text(rows.loc[k, "x"], rows.loc[k, "y"], k, fontsize=7)
             for k in ("resnet18/onnxruntime@cpu b1 t4", "resnet18/openvino@cpu b1 t4")]
    from costmeter.reports.pareto import _ensure_canvas

    _ensure_canvas(figure)
    first, second = label_boxes(figure, texts).values()
    assert first.overlaps(second)


def test_log_axis_only_beyond_tenfold_span() -> None:
    from costmeter.reports.pareto import pareto_figure, wants_log

    assert wants_log([2.0, 60.0]) and not wants_log([2.0, 19.0]) and not wants_log([0.0, 50.0])
    figure, _ = pareto_figure(pareto_analysis(crowded_frame(), "latency_p50", "top1"),
                              label_points=False)
    assert figure.axes[0].get_xscale() == "log"  # 2 ms .. 60 ms
    assert figure.axes[0].get_yscale() == "linear"  # accuracy 69.8 .. 76.1
    narrow = crowded_frame()
    narrow = narrow[narrow["model_id"] != "vit_tiny"]  # 2 ms .. 24 ms: 12x, still log
    figure, _ = pareto_figure(pareto_analysis(narrow, "latency_p50", "top1"), label_points=False)
    assert figure.axes[0].get_xscale() == "log"
    narrower = narrow[narrow["model_id"] != "mobilenet_v2"]  # 10 ms .. 24 ms: linear
    figure, _ = pareto_figure(pareto_analysis(narrower, "latency_p50", "top1"), label_points=False)
    assert figure.axes[0].get_xscale() == "linear"
