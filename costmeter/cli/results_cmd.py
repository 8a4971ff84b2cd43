"""``bench results list|show|export``: read the store."""
from __future__ import annotations

import json
from pathlib import Path

import click

from costmeter.cli.common import OutputPath, open_store, store_option, workdir_option

FILTERS = ("run_id", "tag", "model_id", "device", "runtime")


def _filters(f):
    for name in reversed(FILTERS):
        f = click.option(f"--{name.replace('_', '-')}", name, default=None, help=f"Only results with this {name}")(f)
    return f


@click.group()
def results() -> None:
    """Inspect and export stored results."""


@results.command("list")
@_filters
@click.option("--runs", is_flag=True, help="List runs instead of results")
@store_option
@workdir_option
def list_(runs: bool, store_url: str | None, workdir: Path | None, **filters: str | None) -> None:
    """One line per stored result (or per run with --runs)."""
    store = open_store(store_url, workdir)
    try:
        df = store.runs() if runs else store.query(**{k: v for k, v in filters.items() if v is not None})
    finally:
        store.close()
    if df.empty:
        click.echo("no results in the store; run `bench run --model mobilenet_v2` first")
        return
    cols = list(df.columns) if runs else [c for c in (
        "result_id", "run_id", "model_id", "runtime", "device", "batch", "threads", "status", "validity",
        "latency_p50_ms", "latency_p99_ms", "latency_cv") if c in df.columns]
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for c in cols:
        table.add_column(c.replace("latency_", "").replace("_", " "), overflow="fold",
                         no_wrap=c in ("result_id", "model_id", "runtime"))
    for _, row in df[cols].iterrows():
        table.add_row(*[_cell(row[c]) for c in cols])
    console = Console()
    Console(width=200).print(table) if not console.is_terminal else console.print(table)


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4g}"
    return str(v)


@results.command("show")
@click.argument("result_id", type=click.IntRange(min=1, max=2**63 - 1))
@click.option("--samples", "with_samples", is_flag=True, help="Include the raw samples (ns)")
@store_option
@workdir_option
def show(result_id: int, with_samples: bool, store_url: str | None, workdir: Path | None) -> None:
    """Print one result as JSON with its summary (the table's figures); raw samples with --samples."""
    from costmeter.cli.render import result_json

    store = open_store(store_url, workdir)
    try:
        result = store.get(result_id)
    finally:
        store.close()
    click.echo(json.dumps(result_json(result, samples=with_samples), indent=1, default=str))


@results.command("export")
@_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), required=True)
@click.option("--output", "-o", type=OutputPath(path_type=Path), required=True,
              help="File to write, in a folder that exists")
@store_option
@workdir_option
def export(fmt: str, output: Path, store_url: str | None, workdir: Path | None, **filters: str | None) -> None:
    """Export results as CSV, JSON (full, with samples) or Parquet."""
    from costmeter.results.io import export_results

    store = open_store(store_url, workdir)
    try:
        chosen = {k: v for k, v in filters.items() if v is not None}
        data = store.results(**chosen) if fmt == "json" else store.query(**chosen)
        export_results(data, output, fmt)
    finally:
        store.close()
    click.echo(f"wrote {output}")


@results.command("replay")
@store_option
@workdir_option
def replay(store_url: str | None, workdir: Path | None) -> None:
    """Store the results that wait in the spool (a busy or unreachable store could not take
    them), exactly once; a spool file of another schema version is refused whole."""
    from costmeter.harness.config import default_workdir
    from costmeter.results.spool import replay as replay_spool
    from costmeter.workdir import Workdir

    folder = Workdir.of(workdir or default_workdir()).spool
    store = open_store(store_url, workdir)
    try:
        report = replay_spool(folder, store)
    finally:
        store.close()
    click.echo(report.summary())


@results.command("check")
@store_option
@workdir_option
def check(store_url: str | None, workdir: Path | None) -> None:
    """Check the store: samples, key digests, result UUIDs, the suite journal and the import
    ledger. Exit code 1 when a problem is found."""
    from costmeter.cli import GateFailed
    from costmeter.results.integrity import check_store

    store = open_store(store_url, workdir)
    try:
        report = check_store(store)
    finally:
        store.close()
    if not report.ok:
        raise GateFailed(report.summary())
    click.echo(report.summary())
