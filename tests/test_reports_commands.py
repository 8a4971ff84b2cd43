"""The functions behind `bench report ...` and `bench calibrate`, end to end on a real SQLite
results store, and their one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from costmeter.errors import ConfigError
from costmeter.reports.calibrate import save_calibration
from costmeter.reports.commands import (
    calibration_summary,
    parse_reference,
    report_pareto,
    report_predictor,
    report_regress,
    report_roofline,
    report_table,
)
from costmeter.results.schema import (
    BenchKey,
    EnergyInfo,
    EnergyProvenance,
    Measurement,
    MemoryInfo,
    RunResult,
    Status,
    Validity,
)
from costmeter.results.store import ResultStore

ZOO = {  # model: (median ms, params, MACs per item)
    "resnet18": (3.0, 11_689_512, 1_814_083_944),
    "mobilenet_v2": (1.5, 3_504_872, 300_774_272),
    "vit_tiny": (4.0, 5_717_416, 1_258_219_776),
    "bert_tiny": (0.5, 4_385_920, 100_000_000),
}


def stored_result(*, run_id: str, model: str, runtime: str, sha: str, started: str,
                  samples_ns: np.ndarray, params: int, macs: int, energy_per_inference_j: float) -> RunResult:
    """A judged result as `bench run` stores it (one process, RAPL-like energy counter)."""
    samples = samples_ns.astype(np.int64).tolist()
    return RunResult(
        key=BenchKey(model, f"hash-{model}", "cpu", runtime, 1, (1, 3, 224, 224), "float32", 4),
        status=Status.OK, run_id=run_id, tag="nightly", started_at=started, finished_at=started,
        measurement=Measurement([samples]),
        memory=MemoryInfo(peak_rss_bytes=int(90e6 + 4 * params), param_bytes=4 * params),
        energy=EnergyInfo(provenance=EnergyProvenance.COUNTER, energy_j=energy_per_inference_j * len(samples),
                          energy_per_inference_j=energy_per_inference_j, window_s=float(np.sum(samples_ns)) / 1e9),
        validity=Validity.VALID, environment={"git_sha": sha, "hostname": "ci"},
        model_info={"params": params, "macs": macs, "param_bytes": 4 * params},
    )


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ResultStore]:
    rng = np.random.default_rng(2)
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as opened:
        for i, sha in enumerate(("aaaa0000", "bbbb1111", "cccc2222")):
            for model, (median, params, macs) in ZOO.items():
                for runtime, factor in (("onnxruntime", 1.0), ("torch", 1.3)):
                    slower = 1.2 if (model == "vit_tiny" and runtime == "torch" and i == 2) else 1.0
                    opened.write(stored_result(
                        run_id=f"run{i}", model=model, runtime=runtime, sha=sha,
                        started=f"2024-05-0{i + 1}T00:00:00+00:00",
                        samples_ns=rng.lognormal(np.log(median * factor * slower * 1e6), 0.02, 120),
                        params=params, macs=macs, energy_per_inference_j=median * factor * 0.01))
        yield opened


def test_store_figures_the_reports_read(store: ResultStore) -> None:
    """Throughput and energy per inference are the store's: batch / median, joules / runs."""
    frame = store.query()
    row = frame[(frame["model_id"] == "resnet18") & (frame["runtime"] == "torch")].iloc[-1]
    assert row["throughput_items_per_s"] == pytest.approx(1e3 / row["latency_p50_ms"])
    assert row["energy_per_inference_j"] == pytest.approx(3.0 * 1.3 * 0.01)
    assert row["energy_provenance"] == "counter"


def test_pareto_command_writes_plot(store, tmp_path) -> None:
    result, text = report_pareto(store.query(), x="latency_p50", y="top1", device="cpu",
                                 out=tmp_path / "front.svg")
    assert (tmp_path / "front.svg").is_file()
    assert "Pareto front: latency_p50 (min) vs top1 (max)" in text
    assert "skipped (metric missing): bert_tiny" in text  # no ImageNet metric for BERT
    assert len(result.points) == 6  # latest run only, 3 models with top-1 x 2 runtimes


def test_pareto_any_two_metrics_and_reference(store) -> None:
    result, _ = report_pareto(store.query(), x="energy_per_inference", y="params",
                              runtime="onnxruntime", reference="1,3e7")
    assert result.reference == (1.0, 3e7)
    assert set(result.front["model_id"]) == {"bert_tiny", "mobilenet_v2"}


def test_table_command_formats(store, tmp_path) -> None:
    markdown = report_table(store.query(), runtime="torch")
    assert markdown.startswith("## cpu / torch\n") and "random weights" in markdown
    latex = report_table(store.query(), format_name="tex", out=tmp_path / "t.tex")
    assert (tmp_path / "t.tex").read_text() == latex
    csv = report_table(store.query(), format_name="csv", run="run0")
    assert len(csv.strip().splitlines()) == 1 + 8


def test_regress_command_gates_and_writes_files(store, tmp_path) -> None:
    outcome = report_regress(store.query(), store.samples, baseline="run:run1",
                             current="latest", out_dir=tmp_path)
    assert outcome.significant_regression
    assert set(outcome.paths) == {"html", "md", "json"}
    data = json.loads(outcome.paths["json"].read_text())
    regressed = [v["label"] for v in data["verdicts"] if v["verdict"] == "regressed"]
    assert regressed == ["vit_tiny/torch@cpu b1 t4"]
    assert "REGRESSION FOUND" in outcome.markdown
    calm = report_regress(store.query(), store.samples, baseline="run:run0",
                          current="run:run1", with_history=False)
    assert not calm.significant_regression and calm.paths == {}


def test_predictor_command(tmp_path) -> None:
    path = tmp_path / "pred.csv"
    path.write_text("model_id,family,measured_ms,predicted_ms\na,cnn,10,10.5\nb,vit,4,5\n")
    text = report_predictor(path, out_dir=tmp_path / "out")
    assert "| all | 2 |" in text and "predictor_scatter.png" in text
    with pytest.raises(ConfigError, match="band"):
        report_predictor(path, band=10)


def test_calibrate_and_roofline_commands(store, tmp_path) -> None:
    calibration = {"device": "cpu", "dtype": "float32", "threads": None, "usable_cpus": 2,
                   "peak_flops_per_s": 150e9, "peak_backend": "torch", "bandwidth_bytes_per_s": 20e9,
                   "bandwidth_backend": "torch", "problems": ["copy numpy is INVALID: p50 interval ..."],
                   "gemm": {"backends": {
                       "torch": {"status": "ok", "best_rate_per_s": 150e9, "median_rate_per_s": 140e9,
                                 "median_rate_low_per_s": 139e9, "median_rate_high_per_s": 141e9,
                                 "samples": 12, "validity": "VALID"},
                       "numpy": {"status": "failed", "error": "MemoryError: ..."}}},
                   "theoretical": {"flops_per_s": 300e9, "describe": "theoretical float32 peak 300 GFLOP/s"}}
    path = save_calibration(calibration, tmp_path)
    assert calibration_summary(calibration, path).splitlines() == [
        f"cpu (float32, threads default (2 CPUs)): peak 150.0 GFLOP/s (torch, fastest run), bandwidth "
        f"20.0 GB/s (torch); saved to {path}",
        "  GEMM torch: best 150.0 GFLOP/s, median 140.0 [139.0, 141.0] GFLOP/s, 12 runs, VALID",
        "  GEMM numpy: failed (MemoryError: ...)",
        "  theoretical float32 peak 300 GFLOP/s (measured peak = 50% of it)",
        "  problem: copy numpy is INVALID: p50 interval ..."]
    text = report_roofline(store.query(), calibration=tmp_path, device="cpu",
                           out=tmp_path / "roof.png")
    assert "| resnet18/onnxruntime@cpu b1 t4 |" in text
    assert (tmp_path / "roof.png").read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "kernels.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="cannot be read as CSV") as caught:
        report_roofline(store.query(), calibration=tmp_path, device="cpu", kernels=empty)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, t: report_pareto(s.query(), x="speed"), "unknown metric 'speed'; available"),
        (lambda s, t: report_table(s.query(), device="tpu"), "no results for device 'tpu'; "
                                                              "present: cpu"),
        (lambda s, t: report_regress(s.query(), s.samples, baseline="tag:v9",
                                     current="latest"), "selector 'tag:v9' matches no results"),
        (lambda s, t: report_table(s.query(), accuracy_csv=t), "unknown models: efficientnet_b7"),
        (lambda s, t: report_roofline(s.query(), calibration=t.parent / "none"),
         "bench calibrate --device cpu"),
        (lambda s, t: report_table(s.query(run_id="no-such-run")), "results store is empty"),
        (lambda s, t: parse_reference("1;2"), "two numbers"),
    ],
)
def test_bad_input_gives_one_line_config_errors(store, tmp_path, call, message) -> None:
    csv = tmp_path / "acc.csv"
    csv.write_text("model,top1\nefficientnet_b7,84.3\nresnet18,70\n")
    with pytest.raises(ConfigError) as caught:
        call(store, csv)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_reports_import_no_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "import costmeter.reports.commands, costmeter.reports.pareto, costmeter.reports.tables\n"
        "import costmeter.reports.regression, costmeter.reports.regression_render\n"
        "import costmeter.reports.history, costmeter.reports.predictor\n"
        "import costmeter.reports.roofline, costmeter.reports.calibrate\n"
        "heavy = {'matplotlib', 'ruptures', 'scipy', 'torch', 'costmeter.devices'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
