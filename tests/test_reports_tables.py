"""Accuracy sources and the efficiency-vs-accuracy table in its four formats (golden Markdown)."""
from __future__ import annotations

import io
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from costmeter.errors import ConfigError
from costmeter.reports.accuracy import (
    PUBLISHED_ACCURACY,
    architecture_of,
    attach_accuracy,
    load_accuracy_csv,
)
from costmeter.reports.tables import (
    TABLE_COLUMNS,
    efficiency_table,
    render_table,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)


def results() -> pd.DataFrame:
    base = {
        "status": "ok", "batch": 1, "threads": 4, "options": "{}", "validity": "VALID",
        "reasons": "", "energy_provenance": "unavailable", "energy_per_inference_j": np.nan,
    }
    rows = [
        dict(base, model_id="zoo:resnet18", device="cpu", runtime="onnxruntime", params=11_689_512,
             macs=1_814_083_944, latency_p50_ms=12.345, latency_p50_low_ms=12.2,
             latency_p50_high_ms=12.5, latency_p99_ms=14.01, throughput_items_per_s=81.0,
             peak_rss_bytes=150 * 2**20, energy_provenance="counter",
             energy_per_inference_j=0.0421),
        dict(base, model_id="zoo:mobilenet_v2", device="cpu", runtime="onnxruntime",
             params=3_504_872, macs=300_774_272, latency_p50_ms=4.0, latency_p50_low_ms=3.9,
             latency_p50_high_ms=4.2, latency_p99_ms=5.5, throughput_items_per_s=250.0,
             peak_rss_bytes=80 * 2**20, energy_provenance="estimated",
             energy_per_inference_j=0.011),
        dict(base, model_id="zoo:resnet50", device="cpu", runtime="onnxruntime",
             params=25_557_032, macs=4_089_184_256, latency_p50_ms=30.0, latency_p50_low_ms=29.0,
             latency_p50_high_ms=31.0, latency_p99_ms=35.0, throughput_items_per_s=33.3,
             peak_rss_bytes=300 * 2**20, validity="INVALID", reasons="CV 0.31 above 0.10"),
        dict(base, model_id="zoo:bert_tiny", device="cpu", runtime="torch", params=4_385_920,
             macs=None, latency_p50_ms=0.8, latency_p50_low_ms=None, latency_p50_high_ms=None,
             latency_p99_ms=1.1, throughput_items_per_s=1250.0, peak_rss_bytes=60 * 2**20),
        dict(base, model_id="custom_net", device="cpu", runtime="torch", params=1_000_000,
             macs=500_000_000, latency_p50_ms=2.0, latency_p50_low_ms=1.9,
             latency_p50_high_ms=2.1, latency_p99_ms=2.5, throughput_items_per_s=500.0,
             peak_rss_bytes=50 * 2**20),
    ]
    return pd.DataFrame(rows)


def user_csv(tmp_path, text: str):
    path = tmp_path / "accuracy.csv"
    path.write_text(text)
    return path


def test_architecture_of_strips_scheme_folders_and_extension() -> None:
    assert architecture_of("zoo:resnet18") == "resnet18"
    assert architecture_of("models/MobileNet_V2.onnx") == "mobilenet_v2"
    assert architecture_of("vit_tiny") == "vit_tiny"


def test_published_references_cover_the_zoo_with_sources() -> None:
    table = {p.architecture: p for p in PUBLISHED_ACCURACY}
    assert table["resnet18"].value == pytest.approx(69.76, abs=0.01)
    assert table["resnet50"].value == pytest.approx(76.13)
    assert table["mobilenet_v2"].value == pytest.approx(71.88, abs=0.01)
    assert table["mobilenet_v3_small"].value == pytest.approx(67.67, abs=0.01)
    assert table["mobilenet_v3_large"].value == pytest.approx(74.04, abs=0.01)
    assert table["efficientnet_b0"].value == pytest.approx(77.69, abs=0.01)
    assert table["vit_tiny"].value == pytest.approx(72.2)
    assert "bert_tiny" not in table
    assert all("arXiv" in p.source for p in PUBLISHED_ACCURACY)


def test_csv_long_and_wide_layouts(tmp_path) -> None:
    known = ["zoo:resnet18", "custom_net"]
    long_csv = user_csv(tmp_path, "model,metric,value\ncustom_net,top1,55.5\n")
    long = load_accuracy_csv(long_csv, known)
    assert long[["model", "metric", "value", "source"]].values.tolist() == [
        ["custom_net", "top1", 55.5, "csv"]
    ]
    wide = load_accuracy_csv(user_csv(tmp_path, "model,top1,top5\nresnet18,70.1,89.0\n"), known)
    assert sorted(wide["metric"]) == ["top1", "top5"]


def test_csv_with_unknown_models_names_them(tmp_path) -> None:
    path = user_csv(tmp_path, "model,top1\nresnet18,70\nghostnet,73.9\nfoo.onnx,1\n")
    with pytest.raises(ConfigError, match=r"unknown models: foo\.onnx, ghostnet"):
        load_accuracy_csv(path, ["zoo:resnet18"])


def test_csv_with_text_values_is_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match="non-numeric values for resnet18"):
        load_accuracy_csv(user_csv(tmp_path, "model,top1\nresnet18,high\n"), ["resnet18"])


def test_missing_csv_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_accuracy_csv(tmp_path / "nope.csv", [])


def test_csv_overrides_published_and_exact_id_beats_architecture(tmp_path) -> None:
    frame = results()
    user = load_accuracy_csv(
        user_csv(tmp_path, "model,top1\nresnet18,10\nzoo:resnet18,20\ncustom_net,55\n"),
        frame["model_id"],
    )
    attached = attach_accuracy(frame, user).set_index("model_id")
    assert attached.loc["zoo:resnet18", "acc_top1"] == 20
    assert attached.loc["zoo:resnet18", "acc_top1_source"] == "csv"
    assert attached.loc["zoo:mobilenet_v2", "acc_top1"] == pytest.approx(71.878)
    assert attached.loc["zoo:mobilenet_v2", "acc_top1_source"] == "published"
    assert attached.loc["custom_net", "acc_top1"] == 55
    assert np.isnan(attached.loc["zoo:bert_tiny", "acc_top1"])


def test_efficiency_table_values_and_pareto_flag() -> None:
    table = efficiency_table(attach_accuracy(results()))
    assert list(table.columns) == list(TABLE_COLUMNS)
    by_model = table.set_index("model_id")
    # within cpu/onnxruntime: mobilenet_v2 (4 ms, 71.9) and resnet50 (30 ms, 76.1) are optimal;
    # resnet18 (12.3 ms, 69.8) is dominated by mobilenet_v2
    assert bool(by_model.loc["zoo:mobilenet_v2", "pareto_optimal"]) is True
    assert bool(by_model.loc["zoo:resnet50", "pareto_optimal"]) is True
    assert bool(by_model.loc["zoo:resnet18", "pareto_optimal"]) is False
    assert pd.isna(by_model.loc["custom_net", "pareto_optimal"])  # accuracy unknown
    assert by_model.loc["zoo:resnet18", "accuracy_per_ms"] == pytest.approx(69.758 / 12.345)
    assert by_model.loc["zoo:resnet18", "inferences_per_j"] == pytest.approx(1 / 0.0421)
    assert np.isnan(by_model.loc["zoo:resnet50", "energy_per_inference_j"])  # unavailable


GOLDEN_MARKDOWN = """\
## cpu / onnxruntime

| Model | Batch | Params | MACs | Latency p50 ms [95% CI] | p99 ms | Items/s | Peak memory | Energy/inference | top1 | Pareto | top1/ms | Inferences/J |
| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |
| zoo:mobilenet_v2 | 1 | 3.50 M | 301 M | 4.00 [3.90, 4.20] | 5.50 | 250 | 80.0 MiB | 11.0 mJ (est.) | 71.88† | yes | 18.0 | 90.9 |
| zoo:resnet18 | 1 | 11.7 M | 1.81 G | 12.3 [12.2, 12.5] | 14.0 | 81.0 | 150.0 MiB | 42.1 mJ | 69.76† | no | 5.65 | 23.8 |
| zoo:resnet50* | 1 | 25.6 M | 4.09 G | 30.0 [29.0, 31.0] | 35.0 | 33.3 | 300.0 MiB | unavailable | 76.13† | yes | 2.54 | – |

## cpu / torch

| Model | Batch | Params | MACs | Latency p50 ms [95% CI] | p99 ms | Items/s | Peak memory | Energy/inference | top1 | Pareto | top1/ms | Inferences/J |
| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |
| zoo:bert_tiny | 1 | 4.39 M | – | 0.800 | 1.10 | 1250 | 60.0 MiB | unavailable | – | – | – | – |
| custom_net | 1 | 1.00 M | 500 M | 2.00 [1.90, 2.10] | 2.50 | 500 | 50.0 MiB | unavailable | 55.00 | yes | 27.5 | – |

† Published ImageNet-1k top-1 (%) of the reference architecture with its trained weights (torchvision model docs and the original papers; DeiT-Tiny from Touvron et al. 2021). The zoo's models have the same architecture but random weights and do not reach these figures: they describe the reference architectures, not the measured models.

* zoo:resnet50/onnxruntime@cpu b1 t4: INVALID measurement (CV 0.31 above 0.10).

(est.) Energy estimated from a power model, not measured by a counter.

Pareto: optimal in latency p50 and accuracy among results of the same device, runtime and batch; – where the accuracy is unknown.
"""


def golden_table(tmp_path) -> pd.DataFrame:
    frame = results()
    user = load_accuracy_csv(user_csv(tmp_path, "model,top1\ncustom_net,55\n"), frame["model_id"])
    return efficiency_table(attach_accuracy(frame, user))


def test_markdown_matches_golden(tmp_path) -> None:
    assert to_markdown(golden_table(tmp_path)) == GOLDEN_MARKDOWN


class _TableCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.rows = 0
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs) -> None:
        self.tables += tag == "table"
        self.rows += tag == "tr"
        self._in_h2 = tag == "h2"

    def handle_data(self, data) -> None:
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


def test_html_has_a_table_per_device_runtime_and_escapes(tmp_path) -> None:
    table = golden_table(tmp_path)
    table.loc[0, "model_id"] = "<script>x</script>"
    page = to_html(table)
    parser = _TableCounter()
    parser.feed(page)
    assert page.startswith("<!DOCTYPE html>")
    assert parser.tables == 2
    assert parser.rows == 2 + 5  # header rows + result rows
    assert parser.headings == ["cpu / onnxruntime", "cpu / torch"]
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "unavailable" in page and "random weights" in page


def test_csv_round_trips_the_numbers(tmp_path) -> None:
    table = golden_table(tmp_path)
    back = pd.read_csv(io.StringIO(to_csv(table)))
    assert list(back.columns) == list(TABLE_COLUMNS)
    assert back["latency_p50_ms"].tolist() == pytest.approx(table["latency_p50_ms"].tolist())
    assert back["accuracy_source"].fillna("").tolist() == [
        "published", "published", "published", "", "csv"
    ]


def test_latex_is_booktabs_and_escaped(tmp_path) -> None:
    tex = to_latex(golden_table(tmp_path))
    assert tex.count(r"\begin{tabular}") == 2 and tex.count(r"\bottomrule") == 2
    assert r"zoo:mobilenet\_v2" in tex
    assert r"\textdagger{}" in tex and "†" not in tex
    assert r"\caption{cpu / torch}" in tex


def test_render_table_rejects_unknown_format(tmp_path) -> None:
    with pytest.raises(ConfigError, match="md, html, csv, tex"):
        render_table(golden_table(tmp_path), "docx")
