"""``bench lut build|check|calibrate``: latency lookup tables for NAS, how far they can be
trusted, and their calibration on measured whole networks."""
from __future__ import annotations

import math
from pathlib import Path

import click

from costmeter.cli.common import (IntList, OutputPath, check_target, count, input_file, open_store, seconds,
                                  store_option, with_run_progress, workdir_option)
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import default_workdir


@click.group()
def lut() -> None:
    """Per-block latency lookup tables (OFA-style keys) for search spaces."""


@lut.command()
@click.option("--space", required=True,
              help="A search space that declares lookup-table blocks (nb201, ofa_mbv3, fbnet)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--resolution", type=IntList(1, 4096), default=None,
              help="Comma-separated input resolutions (default: all the space has)")
@click.option("--predicted", is_flag=True, help="Predict entries with --predictor instead of measuring")
@click.option("--predictor", "predictor_path", type=input_file(), default=None,
              help="Kernel-level .costmodel used with --predicted")
@click.option("--threads", type=count(1, MAX_THREADS, "1"), default=1, show_default=True)
@click.option("--precision", default="fp32", show_default=True,
              help="fp32, or int8: every block quantized as `bench run --precision int8` does (onnxruntime)")
@click.option("--min-time", type=seconds(min_open=True, example="0.05"), default=0.05, show_default=True,
              help="Sampling seconds per block")
@click.option("--interleave", type=count(1, example="8"), default=None,
              help="Blocks measured round-robin in groups of N")
@click.option("--output", "-o", type=OutputPath(), default=None)
@store_option
@workdir_option
def build(space: str, device: str, runtime: str, resolution: list[int] | None, predicted: bool,
          predictor_path: str | None, threads: int, precision: str, min_time: float, interleave: int | None,
          output: str | None, store_url: str | None, workdir: Path | None) -> None:
    """Measure (or predict) every block configuration at every input shape; write JSON + CSV.
    Measured blocks are also stored as judged results (model ``lut:<block>``, tag ``lut``)."""
    from costmeter.errors import ConfigError
    from costmeter.predictors import build_lut, default_lut_path

    if predicted and not predictor_path:
        raise ConfigError("--predicted needs --predictor FILE.costmodel (a kernel-level cost model)")
    if predictor_path and not predicted:
        raise ConfigError("--predictor is used only with --predicted; add --predicted or drop --predictor")
    if not predicted:
        check_target(device, runtime)
    wd = workdir or default_workdir()
    res = resolution
    from costmeter.harness.quantize.precision import normalize_precision

    precision = normalize_precision(precision)
    out = output or default_lut_path(wd, space, device, runtime, res, predicted, precision)
    predictor = None
    if predicted:
        from costmeter.predictors import load_artifact as load_predictor

        predictor = load_predictor(predictor_path)
    store = None if predicted else open_store(store_url, wd)
    try:
        table = with_run_progress(lambda cb: build_lut(
            space, device, runtime, res, predictor=predictor, workdir=wd, threads=threads,
            min_time_s=min_time, interleave=interleave, output=out, progress=cb, precision=precision,
            sink=store))
    finally:
        if store is not None:
            store.close()
    json_path = Path(out).with_suffix(".json")
    invalid = table.manifest.get("invalid_entries") or []
    stored = "" if predicted else "; every block's samples and verdict stored (tag lut)"
    click.echo(f"{len(table.entries)} entries, per-run overhead {table.overhead_ms * 1e3:.1f} us; "
               f"wrote {json_path} and {json_path.with_suffix('.csv')}{stored}")
    click.echo(table.calibration_note())
    if invalid:
        click.echo(f"{len(invalid)} of {len(table.entries)} entries INVALID (median not pinned "
                   f"within the time limit), e.g. {invalid[0]}; raise --min-time")


@lut.command()
@click.argument("table_path", type=input_file())
@click.option("--networks", type=count(1, example="30"), default=30, show_default=True,
              help="Whole sampled networks to measure")
@click.option("--predictor", "predictor_path", type=input_file(), default=None,
              help="A .costmodel to compare side by side")
@click.option("--device", default=None, help="Refuse the table unless it was built for this device")
@click.option("--runtime", default=None, help="Refuse the table unless it was built for this runtime")
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True)
@click.option("--min-time", type=seconds(min_open=True, example="0.5"), default=0.5, show_default=True,
              help="Sampling seconds per network")
@click.option("--update", is_flag=True, help="Record the check in the table's manifest")
@store_option
@workdir_option
def check(table_path: str, networks: int, predictor_path: str | None, device: str | None, runtime: str | None,
          seed: int, min_time: float, update: bool, store_url: str | None, workdir: Path | None) -> None:
    """Measure sampled networks; report LUT-sum (and predictor) bias, MAPE, ±10% share, Spearman."""
    from costmeter.predictors import load_table
    from costmeter.predictors import check_lut, record_check

    table = load_table(table_path, device=device, runtime=runtime)
    store = open_store(store_url, workdir)
    try:
        report = with_run_progress(lambda cb: check_lut(table, networks, predictor_path, seed=seed,
                                                     workdir=workdir or default_workdir(), min_time_s=min_time,
                                                     store=store, progress=cb))
    finally:
        store.close()
    fmt = {"float_format": lambda v: f"{v:.3f}"}
    click.echo(f"table: {table.calibration_note()}")
    click.echo("against each network's median latency:")
    click.echo(report.metrics("median").to_string(**fmt))
    if report.measured_p10_ms is not None:
        click.echo("against each network's 10th-percentile latency (less preemption noise):")
        click.echo(report.metrics("p10").to_string(**fmt))
    if update:
        click.echo(f"recorded the check in {record_check(table, report, table_path)}")


@lut.command()
@click.argument("table_path", type=input_file())
@click.option("--networks", type=count(10, example="30"), default=30, show_default=True,
              help="Whole networks measured (nested seeded draws), each between two passes of a reference network")
@click.option("--seed", type=count(0, 2**32 - 1, "1000"), default=1000, show_default=True,
              help="Seed of the first draw (network i: seed + i)")
@click.option("--min-time", type=seconds(min_open=True, example="0.5"), default=0.5, show_default=True,
              help="Sampling seconds per network")
@click.option("--output", "-o", type=OutputPath(), default=None,
              help="Write the calibrated table here (default: in place)")
@store_option
@workdir_option
def calibrate(table_path: str, networks: int, seed: int, min_time: float, output: str | None,
              store_url: str | None, workdir: Path | None) -> None:
    """Measure whole networks interleaved with a reference network, fit what the table's sums miss
    (per-run and traffic terms, non-negative) and conformal residuals; store them in the table."""
    from costmeter.predictors import load_table
    from costmeter.predictors import calibrate_lut
    from costmeter.predictors import conformal_min_rows as min_rows

    table = load_table(table_path)
    store = open_store(store_url, workdir)
    try:
        calibration, run = with_run_progress(lambda cb: calibrate_lut(
            table, networks, seed, workdir or default_workdir(), min_time, store, progress=cb))
    finally:
        store.close()
    path = table.save(output or table_path)[0]
    info = calibration.info
    click.echo(run.describe())
    click.echo(f"table sum: bias {info['sum_bias_pct']:+.1f} % against the {info['networks']} "
               f"measured medians; calibrated (each network predicted without its group): "
               f"{info['calibrated_bias_pct']:+.1f} %")
    click.echo(calibration.describe())
    bound = float(calibration.conformal.upper([1.0], [0.0], 0.9)[0]) - 1
    low, high = calibration.conformal.quantiles(0.9)
    two_sided = (f"{math.expm1(low):+.1%} .. {math.expm1(high):+.1%} of the prediction"
                 if math.isfinite(low) and math.isfinite(high) else
                 f"needs at least {min_rows(0.9)} networks")
    click.echo(f"90% upper bound: {bound:+.1%} over the prediction (two-sided 90% interval: "
               f"{two_sided}); wrote {path}")
