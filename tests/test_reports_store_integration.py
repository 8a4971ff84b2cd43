"""Reports on a real SQLite results store: the frame and samples contract end to end."""
from __future__ import annotations

import json

import numpy as np

from costmeter.reports.commands import report_pareto, report_regress, report_table
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


def result(model: str, run: int, median_ms: float, rng: np.random.Generator) -> RunResult:
    samples = rng.lognormal(np.log(median_ms * 1e6), 0.02, 200).astype(int).tolist()
    return RunResult(
        key=BenchKey(model, f"hash-{model}", "cpu", "onnxruntime", 1, (1, 3, 224, 224), "float32",
                     4),
        status=Status.OK,
        run_id=f"run{run}",
        tag="nightly",
        started_at=f"2024-05-0{run + 1}T00:00:00+00:00",
        finished_at=f"2024-05-0{run + 1}T00:01:00+00:00",
        measurement=Measurement(samples_ns=[samples]),
        memory=MemoryInfo(peak_rss_bytes=200_000_000, param_bytes=46_000_000),
        energy=EnergyInfo(provenance=EnergyProvenance.UNAVAILABLE),
        validity=Validity.VALID,
        environment={"git_sha": f"{run}" * 12, "hostname": "ci"},
        model_info={"params": 11_689_512, "macs": 1_814_083_944, "param_bytes": 46_000_000},
    )


def test_reports_read_the_real_store(tmp_path) -> None:
    rng = np.random.default_rng(0)
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        for run in range(3):
            store.write(result("resnet18", run, 3.0 * (1.2 if run == 2 else 1.0), rng))
            store.write(result("mobilenet_v2", run, 1.5, rng))
        frame = store.query()
        outcome = report_regress(frame, store.samples, baseline="run:run1", current="latest",
                                 out_dir=tmp_path / "out")
        table = report_table(frame)
        pareto, _ = report_pareto(frame, x="latency_p50", y="top1")
    verdicts = {v["label"]: v["verdict"] for v in json.loads(outcome.report.to_json())["verdicts"]}
    assert verdicts == {"mobilenet_v2/onnxruntime@cpu b1 t4": "unchanged",
                        "resnet18/onnxruntime@cpu b1 t4": "regressed"}
    assert outcome.significant_regression
    assert "| resnet18 | 1 | 11.7 M | 1.81 G |" in table
    assert set(pareto.front["model_id"]) == {"mobilenet_v2"}
