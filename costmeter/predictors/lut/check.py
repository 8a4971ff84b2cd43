"""Additivity check: is a lookup table's block sum close to the measured network latency?

:func:`check_lut` samples N whole architectures of the table's space (at the table's
resolutions), measures each through the harness runner like ``bench run`` (one isolated worker
per network, same device, runtime and threads as the table), and compares against the
measurements:

- ``lut``: the table's estimate (block entries, overhead-corrected, plus one run overhead);
- ``lut_raw``: the plain sum of the blocks' raw medians (what a table without the overhead
  correction would say);
- ``lut_calibrated``: the table's calibrated prediction, when it carries a calibration
  (``bench lut calibrate``);
- ``predictor``: a learned predictor (``.costmodel``), when given, side by side.

Metrics per row (:mod:`costmeter.predictors.estimators.evaluate`): bias (median relative error, %), MAPE
(%), share within +-10 % (%), Spearman rho, RMSE (ms). Large bias with high rho means the table
ranks well but misses a constant factor (fusion across blocks, cache effects); low rho means it
cannot be trusted on this device.

Two references: the networks' median latency (what ``bench run`` reports), and their 10th
percentile. On a shared machine a whole network (milliseconds) is preempted during many runs
while a block (tens of microseconds) rarely is, which inflates the networks' medians but not
the table; the p10 comparison separates that from the table's own (additivity) error.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.predictors.lut.table import LatencyTable

REPORT_COLUMNS = ("n", "bias_pct", "mape_pct", "within_10_pct", "spearman", "rmse_ms")
MeasureFn = Callable[[Sequence[str]], np.ndarray]  # architectures -> median latency (ms)


@dataclass
class CheckReport:
    """Measured and predicted latencies (ms) of the sampled networks, and their metrics."""

    space: str
    device: str
    runtime: str
    archs: list[str]
    measured_ms: np.ndarray
    predictions: dict[str, np.ndarray]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (arch, reason)
    measured_p10_ms: np.ndarray | None = None

    def metrics(self, reference: str = "median") -> Any:
        """DataFrame: one row per predictor (``lut``, ``lut_raw``, ``predictor``), the columns
        of :data:`REPORT_COLUMNS`, against the networks' ``median`` or ``p10`` latency."""
        import pandas as pd

        from costmeter.predictors.estimators.evaluate import metrics

        if reference not in ("median", "p10"):
            raise ConfigError(f"reference must be median or p10, got {reference!r}")
        measured = self.measured_ms if reference == "median" else self.measured_p10_ms
        if measured is None:
            raise ConfigError("this report holds no p10 latencies (measured outside the harness)")
        ok = np.isfinite(measured)
        rows = {name: metrics(measured[ok], pred[ok]) for name, pred in self.predictions.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")[list(REPORT_COLUMNS)]
        frame["n"] = frame["n"].astype("int64")
        frame.index.name = "predictor"
        return frame

    def table(self) -> Any:
        """Per network: architecture, measured ms and each prediction in ms."""
        import pandas as pd

        frame = pd.DataFrame({"arch": self.archs, "measured_ms": self.measured_ms})
        if self.measured_p10_ms is not None:
            frame["measured_p10_ms"] = self.measured_p10_ms
        for name, pred in self.predictions.items():
            frame[f"{name}_ms"] = pred
        return frame

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of the ``lut`` row (stored in a table's manifest by ``update``)."""
        row = self.metrics().loc["lut"]
        ok = np.isfinite(self.measured_ms)
        rel = self.predictions["lut"][ok] / self.measured_ms[ok] - 1.0
        return {"n": int(row["n"]), "bias_pct": float(row["bias_pct"]),
                "mape_pct": float(row["mape_pct"]), "within_10_pct": float(row["within_10_pct"]),
                "spearman": float(row["spearman"]),
                "rms_rel_error": float(np.sqrt(np.mean(rel ** 2))) if rel.size else None,
                "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sample_archs(space: str, n: int, resolutions: Sequence[int], seed: int = 0) -> list[str]:
    """``n`` random architectures of ``space`` whose resolution is one of ``resolutions``."""
    if n < 2:
        raise ConfigError(f"--networks must be >= 2 to compare rankings (got {n})")
    from costmeter.models.spaces import lut_blocks

    return lut_blocks(space).sample_at(n, resolutions, seed=seed)


def measure_networks(space: str, archs: Sequence[str], device: str = "cpu",
                     runtime: str = "onnxruntime", workdir: Path | str = ".costmeter",
                     threads: int | None = 1, min_time_s: float = 0.5, store: Any = None,
                     tag: str | None = None, progress: Any = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Export and measure whole networks through the harness runner (one worker each);
    returns (median ms, 10th percentile ms -- NaN where failed -- and error or None per arch)."""
    from dataclasses import replace

    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import Runner, validate
    from costmeter.predictors.workflows.collect import CollectItem, collect_protocol
    from costmeter.harness.batch import check_local_onnx_runtime as check_runtime
    from costmeter.predictors.sampling.micro_measure import median_ms
    from costmeter.models.spaces import get_space

    check_runtime(device, runtime)
    module = get_space(space)
    items = [CollectItem(space, a, tuple(module.input_shape(a, batch=1))) for a in archs]
    base = RunConfig(model="placeholder", device=device, runtime=runtime, threads=threads,
                     protocol=collect_protocol(min_time_s), check_outputs=False,
                     workdir=str(workdir), tag=tag or f"lut-check:{space}")
    jobs = validate([replace(base, model=item.model_id) for item in items])
    results = Runner(store, Path(workdir), progress=progress).run(jobs, tag=base.tag)
    medians = np.asarray([median_ms(r) for r in results], dtype=np.float64)
    p10 = np.asarray([np.percentile(r.measurement.all_samples_ns(), 10) / 1e6
                      if np.isfinite(m) else np.nan for m, r in zip(medians, results)])
    errors = [None if np.isfinite(m) else (r.error or str(r.status)) for m, r in zip(medians, results)]
    return medians, p10, errors


def check_lut(table: LatencyTable, networks: int = 30, predictor: Any = None, seed: int = 0,
              workdir: Path | str = ".costmeter", min_time_s: float = 0.5, store: Any = None,
              measure: MeasureFn | None = None, progress: Any = None) -> CheckReport:
    """Measure ``networks`` sampled architectures and compare the table (and ``predictor``:
    a path or a loaded batch predictor) against them; see the module docstring.

    ``measure`` replaces the harness (architectures -> median ms), for tests.
    """
    from costmeter.predictors.api import load_predictor

    learned = None
    if predictor is not None:  # validated before anything is measured
        learned = (load_predictor(predictor, device=table.device, runtime=table.runtime,
                                  space=table.space) if isinstance(predictor, (str, Path))
                   else predictor)
    archs = sample_archs(table.space, networks, table.resolutions, seed)
    predictions = {"lut": table.estimate_batch(archs),
                   "lut_raw": table.estimate_batch(archs, corrected=False)}
    if table.calibrated:  # the calibrated prediction, side by side with the plain sum
        predictions["lut_calibrated"] = table.predict(archs)[0]
    if learned is not None:
        predictions["predictor"] = learned.predict(archs)[0]
    errors: list[str | None]
    p10 = None
    if measure is None:
        measured, p10, errors = measure_networks(
            table.space, archs, table.device, table.runtime, workdir,
            table.manifest.get("threads"), min_time_s, store, progress=progress)
    else:
        measured = np.asarray(measure(archs), dtype=np.float64)
        errors = [None if np.isfinite(m) else "failed" for m in measured]
    failed = [(a, e) for a, e in zip(archs, errors) if e is not None]
    if len(failed) > len(archs) - 2:
        raise ConfigError(f"{len(failed)} of {len(archs)} networks failed to measure (first: "
                          f"{failed[0][1]}); check the runtime with `bench run`")
    return CheckReport(table.space, table.device, table.runtime, list(archs), measured,
                       predictions, failed, p10)


def record_check(table: LatencyTable, report: CheckReport, path: str | Path) -> Path:
    """Store the report's summary in the table's manifest (``check``) and save the table;
    the batch API then widens its uncertainty by the measured RMS relative error."""
    table.manifest["check"] = report.summary()
    return table.save(path)[0]
