"""``bench run --precision/--calibration/--accuracy-data``: checking them before anything runs, and
the precision comparison printed under the results table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from costmeter.errors import ConfigError
from costmeter.results.schema import RunResult, Status, Validity


def precision_configs(configs: list[Any], precision: str | None, calibration: str | None,
                      accuracy_data: str | None, workdir: Path, all_runtimes: bool = False) -> list[Any]:
    """The run configs with their precisions, after checking every input against every model:
    ConfigError (exit 2, nothing written) for a precision a runtime cannot run, a calibration or
    accuracy file that does not fit a model, ``random:0``, or ``--calibration`` without int8. With
    ``all_runtimes`` (``--runtime all``) runtimes lacking a precision are skipped with a note."""
    from costmeter.devices.base import get_runtime
    from costmeter.harness.quantize.data import RANDOM_WARNING, calibration_option, load_npz_set
    from costmeter.harness.quantize.precision import expand_precisions, parse_precision_list
    from costmeter.models.source import python_target, resolve_model

    wanted = parse_precision_list(precision) if precision else ["fp32"]
    if calibration and wanted is not None and "int8" not in wanted:
        raise ConfigError("--calibration is for int8; add --precision int8 (or all)")
    sources: dict[str, Any] = {}
    if calibration or accuracy_data:  # python models: checked by check_inspected_sets, in no import here
        sources = {c.model: resolve_model(c.model) for c in configs if python_target(c.model) is None}
    for source in sources.values() if accuracy_data else ():
        load_npz_set(accuracy_data, source, "accuracy data", with_labels=True)
    calib = calibration_option(calibration, list(sources.values()), workdir) if calibration else None
    if not precision:
        return configs
    skipped: list[str] | None = [] if all_runtimes else None
    expanded = expand_precisions(configs, wanted, calib, get_runtime, skipped)
    for note in dict.fromkeys(skipped or []):
        click.echo(f"note: skipping: {note}", err=True)
    if not expanded:
        raise ConfigError(f"no runtime here runs {precision}; see `bench env` and the README's runtime table")
    if any(dict(c.options).get("calibration", "").startswith("random:") for c in expanded):
        click.echo(f"warning: {RANDOM_WARNING}", err=True)
    return expanded


def check_inspected_sets(jobs: list[Any], calibration: str | None, accuracy_data: str | None,
                         workdir: Path) -> list[Any]:
    """The jobs of python models, whose inputs are known only once ``validate`` inspected them in
    a child, checked against ``--accuracy-data`` and ``--calibration`` (ConfigError, before
    anything runs or is written) and keyed by their own calibration set; other jobs unchanged."""
    from dataclasses import replace

    from costmeter.harness.quantize.data import calibration_option, load_npz_set
    from costmeter.harness.worker import InspectedSource

    out = []
    for job in jobs:
        if isinstance(job.source, InspectedSource):
            if accuracy_data:
                load_npz_set(accuracy_data, job.source, "accuracy data", with_labels=True)
            options = dict(job.config.options)
            if calibration and "calibration" in options:
                options["calibration"] = calibration_option(calibration, [job.source], workdir)
                job = replace(job, config=replace(job.config, options=tuple(sorted(options.items()))))
        out.append(job)
    return out


def _median_ns(r: RunResult) -> float | None:
    if r.status is not Status.OK or r.measurement is None or not r.measurement.count:
        return None
    return r.measurement.summary(percentiles=(50.0,)).median


def _peer_key(r: RunResult) -> tuple[Any, ...]:
    k = r.key
    options = tuple((n, v) for n, v in k.options if n not in ("precision", "calibration", "quant"))
    return (k.model_id, k.model_hash, k.device, k.runtime, k.batch, k.threads, options)


def precision_rows(results: list[RunResult]) -> list[dict[str, str]]:
    """One row per result: model, runtime, precision, p50, speed-up against the same runtime's
    fp32 result of the run, what ran (effective precision), fidelity and accuracy figures."""
    fp32: dict[tuple[Any, ...], float] = {}
    for r in results:
        if dict(r.key.options).get("precision", "fp32") == "fp32" and _median_ns(r):
            fp32[_peer_key(r)] = _median_ns(r)  # type: ignore[assignment]
    rows = []
    for r in results:
        precision = dict(r.key.options).get("precision", "fp32")
        e = r.extra
        row = {"model": r.key.model_id, "runtime": r.key.runtime, "precision": precision}
        median = _median_ns(r)
        if median is None:
            row["p50 ms"] = "-"
            row["status"] = r.status.value.upper()  # the reason is in the results table's notes
            rows.append(row)
            continue
        row["p50 ms"] = f"{median / 1e6:.3g}"
        base = fp32.get(_peer_key(r))
        row["× fp32"] = f"{base / median:.2f}x" if base and precision != "fp32" else ("1.00x" if base else "-")
        row["ran"] = str(e.get("precision_effective", precision if precision == "fp32" else "unverified"))
        row["quantize s"] = "-" if e.get("quantize_s") is None else f"{e['quantize_s']:.1f}"
        row["max |Δ|"] = _fmt(e.get("fidelity_max_abs_diff"), "{:.2e}")
        row["mean |Δ|"] = _fmt(e.get("fidelity_mean_abs_diff"), "{:.2e}")
        row["cosine"] = _fmt(e.get("fidelity_cosine"), "{:.4f}")
        row["top-1 agree"] = _fmt(e.get("fidelity_top1_agreement"), "{:.1%}")
        if e.get("accuracy_top1") is not None:
            row["top-1 acc"] = f"{e['accuracy_top1']:.1%}"
            row["Δ acc pp"] = f"{e['accuracy_delta_pp']:+.1f}"
        row["status"] = r.validity.value if r.validity is Validity.VALID else "INVALID"
        rows.append(row)
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def print_precision_table(results: list[RunResult]) -> None:
    """The precision comparison: per model and runtime, each precision's p50, speed-up against
    fp32, what really ran and how far its outputs are from fp32."""
    from rich.console import Console
    from rich.table import Table

    rows = precision_rows(results)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = Table(title="precision comparison (fidelity against fp32 torch on held-out inputs)")
    for c in columns:
        table.add_column(c, no_wrap=c in ("model", "runtime"),
                         justify="left" if c in ("model", "runtime", "precision", "ran", "status") else "right")
    for row in sorted(rows, key=lambda r: (r["model"], r["runtime"])):
        table.add_row(*[row.get(c, "") for c in columns])
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)
    console.print(table)
