"""One function per ``bench report ...`` / ``bench calibrate`` subcommand.

Each takes the whole results frame (``ResultStore.query()``) and plain options, does the
selection, computes, writes the requested files and returns the text to print. They raise
ConfigError/UnavailableError for bad input; ``cli.py`` maps those to exit code 2, and
:func:`report_regress`'s ``significant_regression`` to exit code 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.accuracy import attach_accuracy, load_accuracy_csv
from costmeter.reports.metrics import require_results, usable_results
from costmeter.reports.selectors import select_results


def prepare_results(
    results: pd.DataFrame,
    *,
    device: str | None = None,
    runtime: str | None = None,
    run: str | None = None,
    accuracy_csv: str | Path | None = None,
    use_published: bool = True,
    include_invalid: bool = True,
) -> pd.DataFrame:
    """The rows a table or plot shows: optional selector ``run``, device/runtime filters,
    finished results only, latest per key, accuracy attached (published and/or CSV)."""
    require_results(results)
    user = None
    if accuracy_csv is not None:
        user = load_accuracy_csv(accuracy_csv, results["model_id"].astype(str).unique())
    chosen = select_results(results, run) if run else results
    rows = usable_results(chosen, device=device, runtime=runtime, include_invalid=include_invalid)
    return attach_accuracy(rows, user, use_published=use_published)


def parse_reference(text: str | None) -> tuple[float, float] | None:
    """``"X,Y"`` -> (X, Y); None passes through. ConfigError on anything else."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as err:
        raise ConfigError(f"reference point {text!r} must be two numbers, e.g. 50,60") from err
    if len(values) != 2:
        raise ConfigError(f"reference point {text!r} must be two numbers, e.g. 50,60")
    return values[0], values[1]


def report_pareto(
    results: pd.DataFrame,
    *,
    x: str = "latency_p50",
    y: str = "top1",
    x_goal: str | None = None,
    y_goal: str | None = None,
    series_by: str = "device_runtime",
    reference: str | None = None,
    out: str | Path | None = None,
    **selection: Any,
):
    """``bench report pareto``: front, hypervolume and (when ``out`` is given) the plot.
    ``selection`` takes :func:`prepare_results`' options. Returns (ParetoResult, text)."""
    from costmeter.reports.pareto import pareto_analysis, plot_pareto

    rows = prepare_results(results, **selection)
    result = pareto_analysis(rows, x, y, x_goal=x_goal, y_goal=y_goal, series_by=series_by,
                             reference=parse_reference(reference))
    text = result.summary()
    if out is not None:
        text += f"\nwrote {plot_pareto(result, out)}"
    return result, text


def report_table(
    results: pd.DataFrame,
    *,
    format_name: str = "md",
    accuracy_metric: str = "top1",
    out: str | Path | None = None,
    **selection: Any,
) -> str:
    """``bench report table``: the efficiency-vs-accuracy table rendered as md/html/csv/tex;
    written to ``out`` when given. Returns the rendered text."""
    from costmeter.reports.tables import efficiency_table, render_table

    rows = prepare_results(results, **selection)
    table = efficiency_table(rows, accuracy_metric=accuracy_metric)
    text = render_table(table, format_name, accuracy_metric=accuracy_metric)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text


@dataclass
class RegressOutcome:
    """What ``bench report regress`` produced: the report, its Markdown summary, the files
    written and whether CI should fail (exit code 1)."""

    report: Any
    markdown: str
    paths: dict[str, Path]

    @property
    def significant_regression(self) -> bool:
        return bool(self.report.significant_regression)


def report_regress(
    results: pd.DataFrame,
    samples_for: Callable[[Any], Any],
    *,
    baseline: str,
    current: str,
    threshold: float = 0.05,
    alpha: float = 0.05,
    min_samples: int = 10,
    history_runs: int = 20,
    min_history: int = 5,
    assumed_run_sd: float = 0.01,
    with_history: bool = True,
    out_dir: str | Path | None = None,
) -> RegressOutcome:
    """``bench report regress``: compare two selections (or ``--baseline window:N``); writes
    regression.html/.md/.json into ``out_dir`` when given. ``samples_for(result_id)`` returns
    latencies in ns, one array per process where there are several. The CLI exits 1 when
    ``outcome.significant_regression``."""
    from costmeter.reports.regression import RegressionSettings, regression_report
    from costmeter.reports.regression_render import render_markdown, write_reports

    settings = RegressionSettings(threshold=threshold, alpha=alpha, min_samples=min_samples,
                                  history_runs=history_runs, min_history=min_history,
                                  assumed_run_sd=assumed_run_sd)
    report = regression_report(results, baseline, current, samples_for, settings,
                               with_history=with_history)
    paths = write_reports(report, out_dir) if out_dir is not None else {}
    return RegressOutcome(report=report, markdown=render_markdown(report), paths=paths)


def report_predictor(
    predictions: str | Path | pd.DataFrame,
    *,
    band: float = 0.10,
    out_dir: str | Path | None = None,
    image_format: str = "png",
) -> str:
    """``bench report predictor``: per-family error table (Markdown, returned) and, with
    ``out_dir``, the scatter, histogram, Markdown and CSV files."""
    from costmeter.reports.predictor import (
        family_table, load_predictions, render_markdown, write_predictor_report,
    )

    if not 0 < band < 1:
        raise ConfigError(f"band {band} must be in (0, 1), e.g. 0.1 for ±10%")
    frame = predictions if isinstance(predictions, pd.DataFrame) else load_predictions(predictions)
    if out_dir is None:
        return render_markdown(family_table(frame, band), band)
    written = write_predictor_report(frame, out_dir, band=band, image_format=image_format)
    listing = "\n".join(f"wrote {p}" for p in written["paths"].values())
    return render_markdown(written["table"], band) + listing + "\n"


def report_roofline(
    results: pd.DataFrame,
    *,
    calibration: str | Path,
    device: str = "cpu",
    runtime: str | None = None,
    run: str | None = None,
    kernels: str | Path | None = None,
    out: str | Path | None = None,
) -> str:
    """``bench report roofline``: place each model (and, with a kernel breakdown CSV, each
    kernel) against the calibrated roofline of ``device``; plot to ``out`` when given."""
    from costmeter.reports.calibrate import load_calibration
    from costmeter.reports.roofline import (
        kernel_items, model_items, plot_roofline, render_markdown, roofline_table,
    )

    machine = load_calibration(calibration, device.split(":")[0])
    peak, bandwidth = machine["peak_flops_per_s"], machine["bandwidth_bytes_per_s"]
    rows = prepare_results(results, device=device, runtime=runtime, run=run, use_published=False)
    items, skipped = model_items(rows)
    tables = [roofline_table(items, peak, bandwidth)]
    if kernels is not None:
        path = Path(kernels)
        if not path.is_file():
            raise ConfigError(f"kernel breakdown {str(path)!r} does not exist")
        try:
            breakdown = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ConfigError(f"kernel breakdown {str(path)!r} cannot be read as CSV ({err}); "
                              "write columns kernel,flops,bytes_read,bytes_written,latency_ms") from err
        tables.append(roofline_table(kernel_items(breakdown), peak, bandwidth))
    table = pd.concat(tables, ignore_index=True)
    if table.empty:
        raise ConfigError(
            "no result has MACs, param_bytes and a latency; store model info with the runs"
        )
    text = render_markdown(table, peak, bandwidth, machine)
    threads = pd.to_numeric(rows["threads"], errors="coerce") if "threads" in rows else pd.Series(dtype=float)
    run_threads = sorted({str(int(t)) for t in threads.dropna()})
    if run_threads and str(machine.get("threads")) not in run_threads:
        text += (f"note: the calibration ran with threads {machine.get('threads') or 'default'}, the runs "
                 f"with {', '.join(run_threads)}; calibrate at the runs' thread count\n")
    if skipped:
        text += f"skipped (no MACs/weights/latency): {', '.join(skipped)}\n"
    if out is not None:
        text += f"wrote {plot_roofline(table, peak, bandwidth, out)}\n"
    return text


def calibration_summary(calibration: dict[str, Any], path: Path) -> str:
    """The terminal's lines: every backend's GEMM rate, the roof chosen, the bandwidth, the
    theoretical peak beside it, and what went wrong (a measured peak above the theoretical one
    is a calibration error)."""
    threads = calibration.get("threads") or f"default ({calibration.get('usable_cpus', '?')} CPUs)"
    lines = [f"{calibration['device']} ({calibration['dtype']}, threads {threads}): peak "
             f"{calibration['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({calibration.get('peak_backend')}, "
             f"fastest run), bandwidth {calibration['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
             f"({calibration.get('bandwidth_backend')}); saved to {path}"]
    for backend, figures in (calibration.get("gemm", {}).get("backends") or {}).items():
        if figures.get("status") != "ok":
            lines.append(f"  GEMM {backend}: failed ({figures.get('error')})")
            continue
        low, high = figures.get("median_rate_low_per_s"), figures.get("median_rate_high_per_s")
        interval = "" if low is None or high is None else f" [{low / 1e9:.1f}, {high / 1e9:.1f}]"
        lines.append(f"  GEMM {backend}: best {figures['best_rate_per_s'] / 1e9:.1f} GFLOP/s, median "
                     f"{(figures.get('median_rate_per_s') or 0) / 1e9:.1f}{interval} GFLOP/s, "
                     f"{figures.get('samples')} runs, {figures.get('validity')}")
    theoretical = calibration.get("theoretical")
    if theoretical:
        share = ""
        if theoretical.get("flops_per_s"):
            share = f" (measured peak = {calibration['peak_flops_per_s'] / theoretical['flops_per_s']:.0%} of it)"
        lines.append(f"  {theoretical['describe']}{share}")
    lines += [f"  problem: {p}" for p in calibration.get("problems") or ()]
    return "\n".join(lines)


__all__ = [
    "prepare_results", "report_pareto", "report_table", "report_regress", "report_predictor",
    "report_roofline", "calibration_summary", "RegressOutcome",
]
