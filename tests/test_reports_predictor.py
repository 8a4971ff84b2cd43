"""Predictor report: error statistics per family and the scatter/histogram files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from costmeter.errors import ConfigError
from costmeter.reports.predictor import (
    family_table,
    load_predictions,
    plot_error_histogram,
    plot_predicted_vs_measured,
    render_markdown,
    write_predictor_report,
)
from svg_markers import svg_marker_counts


def predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model_id": ["a", "b", "c", "d", "e"],
            "family": ["cnn", "cnn", "cnn", "transformer", "transformer"],
            "measured_ms": [10.0, 20.0, 5.0, 8.0, 4.0],
            "predicted_ms": [11.0, 18.0, 6.0, 8.4, 4.0],
        }
    )


def test_family_table_statistics_by_hand() -> None:
    table = family_table(predictions()).set_index("family")
    # cnn errors: +10%, -10%, +20%
    cnn = table.loc["cnn"]
    assert cnn["n"] == 3
    assert cnn["mape_pct"] == pytest.approx((10 + 10 + 20) / 3)
    assert cnn["median_ape_pct"] == pytest.approx(10)
    assert cnn["rmspe_pct"] == pytest.approx(np.sqrt((100 + 100 + 400) / 3))
    assert cnn["max_ape_pct"] == pytest.approx(20)
    assert cnn["bias_pct"] == pytest.approx(10)
    assert cnn["within_band_pct"] == pytest.approx(200 / 3)  # ±10% counts as inside
    # transformer errors: +5%, 0%
    assert table.loc["transformer", "within_band_pct"] == 100
    assert table.loc["all", "n"] == 5
    assert table.loc["all", "within_band_pct"] == pytest.approx(80)


def test_markdown_table_rows() -> None:
    text = render_markdown(family_table(predictions()))
    assert text.splitlines()[0].startswith("| Family | n | MAPE % |")
    assert "| cnn | 3 | 13.3 | 10.0 | 14.1 | 20.0 | +10.0 | 67 |" in text
    assert "| all | 5 |" in text


def test_scatter_svg_has_every_prediction(tmp_path) -> None:
    svg = plot_predicted_vs_measured(predictions(), tmp_path / "scatter.svg").read_text()
    counts = svg_marker_counts(svg, "predictor-points-")
    assert counts == {"predictor-points-0": 3, "predictor-points-1": 2}
    assert "±10%" in svg and "80% of 5 predictions within ±10%" in svg


def test_histogram_png(tmp_path) -> None:
    import matplotlib.image

    path = plot_error_histogram(predictions(), tmp_path / "errors.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).ndim == 3


def test_write_report_files(tmp_path) -> None:
    written = write_predictor_report(predictions(), tmp_path / "out", image_format="svg")
    for path in written["paths"].values():
        assert path.is_file() and path.stat().st_size > 0
    assert pd.read_csv(written["paths"]["csv"])["family"].tolist() == ["cnn", "transformer", "all"]


def test_load_predictions_csv_and_json(tmp_path) -> None:
    csv_path = tmp_path / "p.csv"
    predictions().to_csv(csv_path, index=False)
    assert len(load_predictions(csv_path)) == 5
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps(predictions().to_dict(orient="records")))
    assert load_predictions(json_path)["family"].tolist()[-1] == "transformer"
    lines_path = tmp_path / "p.jsonl"
    lines_path.write_text(predictions().to_json(orient="records", lines=True))
    assert len(load_predictions(lines_path)) == 5


def test_bad_predictions_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="lack column.*predicted_ms"):
        family_table(predictions().drop(columns=["predicted_ms"]))
    bad = predictions()
    bad.loc[1, "measured_ms"] = 0
    with pytest.raises(ConfigError, match="bad rows for b"):
        family_table(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_predictions(tmp_path / "missing.csv")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"use \.csv, \.json or \.parquet"):
        load_predictions(tmp_path / "p.txt")
