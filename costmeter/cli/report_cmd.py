"""``bench report ...`` and ``bench calibrate``: turn stored results into what people look at."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import (OutputPath, count, fits_in_memory, fraction, input_file, open_store, query_frame,
                                  seconds, store_option, subset_options, workdir_option)
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import default_workdir

# reports.pareto.SERIES_CHOICES, spelled here so that `bench --help` loads no pandas
PARETO_SERIES = ("device", "runtime", "device_runtime", "precision", "runtime_precision")


def _selection(f):
    f = click.option("--device", default=None, help="Only this device")(f)
    f = click.option("--runtime", default=None, help="Only this runtime")(f)
    f = click.option("--run", default=None, metavar="SELECTOR",
                     help="run:ID, tag:NAME, sha:PREFIX, date:D[..D], latest[~N]")(f)
    f = click.option("--accuracy", "accuracy_csv", type=input_file(), default=None,
                     help="CSV of model_id/arch -> metric -> value")(f)
    f = click.option("--no-published", is_flag=True, help="Do not use the zoo's published ImageNet top-1")(f)
    return f


def _frame(store_url: str | None, workdir: Path | None):
    store = open_store(store_url, workdir)
    try:
        return store.query(), store
    except Exception:
        store.close()
        raise


@click.group()
def report() -> None:
    """Pareto plots, efficiency tables, regression reports, the history site, nightly subsets,
    predictor and roofline reports."""


@report.command()
@click.option("--x", default="latency_p50", show_default=True, help="Metric on the x axis")
@click.option("--y", default="top1", show_default=True, help="Metric on the y axis")
@click.option("--x-goal", type=click.Choice(["min", "max"]), default=None)
@click.option("--y-goal", type=click.Choice(["min", "max"]), default=None)
@click.option("--series", "series_by", type=click.Choice(PARETO_SERIES),
              default="device_runtime", show_default=True,
              help="What one colour is: device, runtime, both, precision (fp32/fp16/bf16/int8) or runtime and precision")
@click.option("--ref", "reference", default=None, metavar="X,Y", help="Hypervolume reference point")
@click.option("--valid-only", is_flag=True, help="Leave INVALID results out")
@click.option("--out", type=OutputPath(), default=None, help="Plot file (.png/.svg/.pdf)")
@_selection
@store_option
@workdir_option
def pareto(store_url, workdir, no_published, valid_only, **kw) -> None:
    """The Pareto front of two metrics, its hypervolume, and a plot."""
    from costmeter.reports.commands import report_pareto

    frame = query_frame(store_url, workdir)
    _, text = report_pareto(frame, use_published=not no_published, include_invalid=not valid_only, **kw)
    click.echo(text)


@report.command()
@click.option("--metric", "accuracy_metric", default="top1", show_default=True)
@click.option("--format", "format_name", type=click.Choice(["md", "html", "csv", "tex"]), default="md",
              show_default=True)
@click.option("--out", type=OutputPath(), default=None)
@_selection
@store_option
@workdir_option
def table(store_url, workdir, no_published, out, **kw) -> None:
    """Efficiency-vs-accuracy table per device and runtime."""
    from costmeter.reports.commands import report_table

    frame = query_frame(store_url, workdir)
    text = report_table(frame, use_published=not no_published, out=out, **kw)
    click.echo(f"wrote {out}" if out else text)


@report.command()
@click.option("--baseline", required=True, metavar="SELECTOR")
@click.option("--current", required=True, metavar="SELECTOR")
@click.option("--threshold", type=fraction("0.05"), default=0.05, show_default=True,
              help="Practical threshold (fraction)")
@click.option("--alpha", type=fraction("0.05"), default=0.05, show_default=True, help="False discovery rate")
@click.option("--min-samples", type=count(1, example="10"), default=10, show_default=True)
@click.option("--history-runs", type=count(0, example="20"), default=20, show_default=True,
              help="Stored runs per key that measure its run-to-run noise (0: none)")
@click.option("--min-history", type=count(0, example="5"), default=5, show_default=True,
              help="Fewer stored runs than this: assume --assumed-noise at least")
@click.option("--assumed-noise", "assumed_run_sd", type=fraction("0.01"), default=0.01, show_default=True,
              help="Run-to-run SD (fraction) assumed for keys without enough history")
@click.option("--no-history", is_flag=True, help="Skip step detection over each key's history")
@click.option("--out", "out_dir", type=OutputPath(folder=True), default=None,
              help="Write regression.html/.md/.json here")
@store_option
@workdir_option
def regress(store_url, workdir, no_history, **kw) -> None:
    """Compare two runs (or --baseline window:N) key by key; exit code 1 on a regression."""
    from costmeter.cli import GateFailed
    from costmeter.reports.commands import report_regress
    from costmeter.reports.regression import per_process_samples

    frame, store = _frame(store_url, workdir)
    try:
        outcome = report_regress(frame, per_process_samples(store), with_history=not no_history,
                                 **kw)
    finally:
        store.close()
    click.echo(outcome.markdown)
    for path in outcome.paths.values():
        click.echo(f"wrote {path}")
    if outcome.significant_regression:
        raise GateFailed("significant regression found (see the report above)")


@report.command("predictor")
@click.option("--input", "predictions", type=input_file(), required=True,
              help="Output of `bench predictor eval` (.csv/.json/.parquet)")
@click.option("--band", type=fraction("0.1"), default=0.10, show_default=True)
@click.option("--out", "out_dir", type=OutputPath(folder=True), default=None)
@click.option("--image-format", type=click.Choice(["png", "svg"]), default="png", show_default=True)
def predictor_report(**kw) -> None:
    """Predicted-vs-measured scatter, error histogram and per-family table."""
    from costmeter.reports.commands import report_predictor

    click.echo(report_predictor(**kw))


@report.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default=None)
@click.option("--run", default=None, metavar="SELECTOR")
@click.option("--calibration", type=click.Path(exists=True), default=None,
              help="File or folder (default: the working folder)")
@click.option("--kernels", type=input_file(), default=None, help="Kernel breakdown CSV")
@click.option("--out", type=OutputPath(), default=None)
@store_option
@workdir_option
def roofline(store_url, workdir, calibration, **kw) -> None:
    """Place each model (and kernel) against this machine's measured roofline."""
    from costmeter.reports.commands import report_roofline

    frame = query_frame(store_url, workdir)
    click.echo(report_roofline(frame, calibration=calibration or (workdir or default_workdir()), **kw))


@click.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "numpy"]), multiple=True,
              help="GEMM backend(s) to time (repeatable; default: every one installed, the fastest is the roof)")
@click.option("--gemm-size", type=count(16, 2**16, "2048"), default=None, help="Square GEMM side (elements)")
@click.option("--copy-mib", type=count(1, 2**20, "256"), default=None, help="Copied buffer (MiB)")
@click.option("--repeats", type=count(1, 10_000, "10"), default=10, show_default=True,
              help="Fewest timed runs per probe (sampling goes on until the median is within 1%)")
@click.option("--max-time", type=seconds(min_open=True, example="20"), default=20.0, show_default=True,
              help="Seconds of sampling per probe at most")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--threads", type=count(1, MAX_THREADS, "4"), default=None,
              help="Threads, as the runs use them (default: each library's default, as bench run)")
@store_option
@workdir_option
def calibrate(store_url, workdir, **kw) -> None:
    """Measure the roofline's peaks: GEMM FLOP/s with every installed backend (the fastest is the
    roof), copy bandwidth; the CPU's theoretical peak beside them. Every probe is stored as a
    judged result (tag calibrate); the calibration file goes to the working folder."""
    from costmeter.harness.probes.peaks import calibrate as measure_peaks
    from costmeter.harness.probes.session import probe_protocol
    from costmeter.reports.calibrate import save_calibration
    from costmeter.reports.commands import calibration_summary

    if kw["device"] == "cpu":  # two GEMM operands and an output per backend, two copy buffers
        if kw["gemm_size"]:
            fits_in_memory(3 * 8 * kw["gemm_size"] ** 2, f"--gemm-size {kw['gemm_size']}", "a smaller --gemm-size")
        if kw["copy_mib"]:
            fits_in_memory(2 * kw["copy_mib"] * 2**20, f"--copy-mib {kw['copy_mib']}", "a smaller --copy-mib")
    protocol = probe_protocol(min_count=kw["repeats"], min_time_s=min(1.0, kw["max_time"]),
                              max_time_s=kw["max_time"])
    wd = workdir or default_workdir()
    wd.mkdir(parents=True, exist_ok=True)
    store = open_store(store_url, wd)
    try:
        calibration = measure_peaks(
            kw["device"], backends=kw["backend"] or None, gemm_size=kw["gemm_size"], dtype=kw["dtype"],
            copy_bytes=None if kw["copy_mib"] is None else kw["copy_mib"] * 2**20,
            threads=kw["threads"], protocol=protocol, sink=store)
    finally:
        store.close()
    click.echo(calibration_summary(calibration, save_calibration(calibration, wd)))


@report.command("history")
@click.option("--out", required=True, type=OutputPath(folder=True, what="the site"),
              help="Folder for the site (created; a site written here before is replaced)")
@click.option("--baseline", default="window:20", show_default=True, metavar="SELECTOR|window:N",
              help="What the current run is compared with")
@click.option("--current", default="latest", show_default=True, metavar="SELECTOR")
@click.option("--tag", default=None, help="Only runs with this tag (e.g. nightly)")
@click.option("--device", default=None, help="Only this device")
@click.option("--runtime", default=None, help="Only this runtime")
@click.option("--threshold", type=fraction("0.05"), default=0.05, show_default=True,
              help="Practical threshold of verdicts and steps (fraction)")
@click.option("--alpha", type=fraction("0.05"), default=0.05, show_default=True, help="False discovery rate")
@store_option
@workdir_option
def history(store_url, workdir, **kw) -> None:
    """A static site of every key's history: trends with intervals, steps, runs, verdicts."""
    from costmeter.reports.nightly_commands import report_history
    from costmeter.reports.regression import per_process_samples

    frame, store = _frame(store_url, workdir)
    try:
        outcome = report_history(frame, per_process_samples(store), **kw)
    finally:
        store.close()
    click.echo(outcome.summary())


@report.command("subset")
@subset_options
@click.option("--nights", type=click.Choice(["run", "date"]), default="run", show_default=True,
              help="A night is one run, or one date")
@click.option("--held-out", type=fraction("0.33"), default=1 / 3, show_default=True,
              help="Share of the latest nights kept for scoring")
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Write the subset report as JSON here")
@store_option
@workdir_option
def subset(store_url, workdir, rank_by, **kw) -> None:
    """Choose a cheap nightly subset; Kendall tau and alarm recall on held-out nights."""
    from costmeter.cli.common import split_list
    from costmeter.reports.nightly_commands import report_subset

    frame = query_frame(store_url, workdir)
    _, text = report_subset(frame, rank_by=split_list(rank_by), **kw)
    click.echo(text)
