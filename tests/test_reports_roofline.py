"""Roofline placement (pure arithmetic) and the calibration that feeds it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from costmeter.errors import ConfigError
from costmeter.reports.calibrate import load_calibration, save_calibration
from costmeter.reports.roofline import (
    attainable_flops,
    kernel_items,
    model_items,
    plot_roofline,
    render_markdown,
    ridge_point,
    roofline_table,
)

PEAK = 100e9  # FLOP/s
BANDWIDTH = 10e9  # bytes/s -> ridge at 10 FLOP/byte


def test_ridge_and_attainable_bound() -> None:
    assert ridge_point(PEAK, BANDWIDTH) == 10
    assert attainable_flops([1, 10, 100], PEAK, BANDWIDTH).tolist() == [10e9, 100e9, 100e9]
    with pytest.raises(ConfigError, match="must be positive"):
        ridge_point(0, BANDWIDTH)


def test_roofline_table_places_items() -> None:
    items = pd.DataFrame(
        {
            "name": ["memory_bound", "compute_bound", "no_latency"],
            "flops": [2e9, 4e10, 1e9],
            "bytes": [1e9, 1e9, 1e6],
            "latency_s": [0.4, 0.8, np.nan],
        }
    )
    table = roofline_table(items, PEAK, BANDWIDTH).set_index("name")
    assert list(table.index) == ["memory_bound", "compute_bound"]
    memory = table.loc["memory_bound"]
    assert memory["intensity_flop_per_byte"] == 2
    assert memory["bound"] == "memory"
    assert memory["attainable_flops_per_s"] == pytest.approx(20e9)
    assert memory["achieved_flops_per_s"] == pytest.approx(5e9)
    assert memory["share_of_peak"] == pytest.approx(0.05)
    assert memory["share_of_bound"] == pytest.approx(0.25)
    assert memory["min_latency_s"] == pytest.approx(0.1)  # 1 GB at 10 GB/s
    compute = table.loc["compute_bound"]
    assert compute["bound"] == "compute"
    assert compute["share_of_peak"] == pytest.approx(0.5)
    assert compute["min_latency_s"] == pytest.approx(0.4)
    assert "| compute_bound |" in render_markdown(table.reset_index(), PEAK, BANDWIDTH)


def test_model_items_use_macs_per_item_times_batch() -> None:
    results = pd.DataFrame(
        {
            "model_id": ["resnet18", "nomacs"], "device": "cpu", "runtime": "onnxruntime",
            "batch": [4, 1], "threads": 4, "options": "{}", "macs": [1.8e9, np.nan],
            "param_bytes": [46.8e6, 1e6], "latency_p50_ms": [40.0, 1.0],
        }
    )
    items, skipped = model_items(results)
    assert items["flops"].tolist() == [2 * 1.8e9 * 4]
    assert items["latency_s"].tolist() == [0.04]
    assert skipped == ["nomacs/onnxruntime@cpu b1 t4"]


def test_kernel_items_from_breakdown() -> None:
    breakdown = pd.DataFrame(
        {"kernel": ["conv", "relu"], "flops": [1e9, 1e6], "bytes_read": [1e6, 4e6],
         "bytes_written": [1e6, 4e6], "latency_ms": [2.0, 0.5]}
    )
    items = kernel_items(breakdown)
    assert items["bytes"].tolist() == [2e6, 8e6]
    assert items["latency_s"].tolist() == [0.002, 0.0005]
    with pytest.raises(ConfigError, match="kernel breakdown needs"):
        kernel_items(breakdown.drop(columns=["latency_ms"]))


def test_plot_roofline_svg(tmp_path) -> None:
    items = pd.DataFrame({"name": ["a", "b", "c"], "flops": [1e9, 1e10, 1e11],
                          "bytes": [1e9, 1e8, 1e8], "latency_s": [0.2, 0.2, 2.0]})
    table = roofline_table(items, PEAK, BANDWIDTH)
    svg = plot_roofline(table, PEAK, BANDWIDTH, tmp_path / "roof.svg").read_text()
    assert svg.count('<g id="roofline-points-') == 2  # compute- and memory-bound series
    assert "ridge 10 FLOP/B" in svg


def test_a_share_above_the_roof_is_a_calibration_error_never_a_result(tmp_path) -> None:
    # resnet18-like: 3.6 GFLOP in 18 ms = 200 GFLOP/s against a 190 GFLOP/s numpy calibration
    items = pd.DataFrame({"name": ["resnet18/openvino", "tiny"], "flops": [3.6e9, 1e9],
                          "bytes": [46e6, 1e8], "latency_s": [0.018, 0.5]})
    table = roofline_table(items, 190e9, 20e9)
    assert table["calibration_error"].tolist() == [True, False]
    calibration = {"peak_backend": "numpy", "threads": 2, "theoretical": {
        "flops_per_s": 332.8e9, "describe": "theoretical float32 peak 332.8 GFLOP/s = ..."}}
    text = render_markdown(table, 190e9, 20e9, calibration)
    row = next(line for line in text.splitlines() if line.startswith("| resnet18/openvino"))
    assert "calib. error" in row and "105" not in row  # the share is not printed as a figure
    assert "| tiny |" in text and "1.1%" in text  # 2 GFLOP/s of 190: an ordinary share
    assert "calibration error: 1 item(s) ran faster than the calibrated roofline (peak from numpy, " \
           "threads 2), up to 105% of it (resnet18/openvino)" in text
    assert "Theoretical peak" in text and "(measured = 57% of it)" in text
    assert "calibration error" not in render_markdown(roofline_table(items[1:], 190e9, 20e9), 190e9, 20e9)


def test_calibration_file_round_trip(tmp_path) -> None:
    result = {"device": "cpu", "peak_flops_per_s": 1e11, "bandwidth_bytes_per_s": 1e10}
    path = save_calibration(result, tmp_path)
    assert path.name == "calibration-cpu.json"
    assert load_calibration(tmp_path, "cpu") == json.loads(path.read_text()) == result
    assert load_calibration(path)["device"] == "cpu"


def test_calibration_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="bench calibrate --device cpu"):
        load_calibration(tmp_path, "cpu")
    (tmp_path / "calibration-cpu.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_calibration(tmp_path, "cpu")
    (tmp_path / "calibration-cpu.json").write_text('{"peak_flops_per_s": 0}')
    with pytest.raises(ConfigError, match="lacks a positive peak_flops_per_s"):
        load_calibration(tmp_path, "cpu")
