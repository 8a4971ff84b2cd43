"""``bench results list|show|export``: read the store."""
from __future__ import annotations

import json
from pathlib import Path

import click

from costmeter.cli.common import OutputPath, open_store, store_option, workdir_option
from costmeter.cli.table_options import table_columns, table_options

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
@table_options
@store_option
@workdir_option
def list_(runs: bool, wide: bool, columns: str | None, store_url: str | None, workdir: Path | None,
          **filters: str | None) -> None:
    """One line per stored result (or per run with --runs), fitted to the terminal."""
    from costmeter.cli.render import make_console, print_rows, robust_dispersion, row_of_record
    from costmeter.results.tables import PERCENTILES

    pct = tuple(float(q) for q in PERCENTILES)
    picked = None if runs else table_columns(wide, columns, pct, listing=True)
    store = open_store(store_url, workdir)
    try:
        df = store.runs() if runs else store.query(**{k: v for k, v in filters.items() if v is not None})
        if df.empty:
            click.echo("no results in the store; run `bench run --model mobilenet_v2` first")
            return
        if runs:
            _print_frame(df)
            return
        rows = [row_of_record(rec, pct) for rec in df.to_dict("records")]
        from costmeter.cli.columns import choose_columns

        if "mad" in {c.name for c in choose_columns(rows, pct, wide=wide, names=picked, listing=True)}:
            for row in rows:
                if row.measured:
                    row.mad_rel = robust_dispersion(store.samples(row.result_id))
    finally:
        store.close()
    print_rows(rows, pct, wide=wide, columns=picked, listing=True, notes=False, console=make_console())
    flagged = sum(1 for r in rows if r.status != "VALID")
    if flagged:
        click.echo(f"{flagged} result{'s' if flagged > 1 else ''} not VALID; `bench results show ID --wide` "
                   "says why")


def _print_frame(df) -> None:
    """A frame as a plain table (the runs list)."""
    from rich.table import Table

    from costmeter.cli.render import make_console

    table = Table()
    for c in df.columns:
        table.add_column(c.replace("_", " "), overflow="fold", no_wrap=c in ("run_id",))
    for _, row in df.iterrows():
        table.add_row(*[_cell(row[c]) for c in df.columns])
    make_console().print(table)


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4g}"
    return str(v)


@results.command("show")
@click.argument("result_id", type=click.IntRange(min=1, max=2**63 - 1))
@click.option("--samples", "with_samples", is_flag=True, help="Include the raw samples (ns)")
@table_options
@store_option
@workdir_option
def show(result_id: int, with_samples: bool, wide: bool, columns: str | None, store_url: str | None,
         workdir: Path | None) -> None:
    """Print one result as JSON with its summary (the table's figures); raw samples with
    --samples. With --wide or --columns: as a table, with its reasons and warnings."""
    from costmeter.cli.render import print_results, result_json

    store = open_store(store_url, workdir)
    try:
        result = store.get(result_id)
    finally:
        store.close()
    if wide or columns is not None:
        pct = tuple(float(q) for q in (result.extra.get("protocol") or {}).get("percentiles", (50, 90, 95, 99)))
        print_results([result], pct, wide=wide, columns=table_columns(wide, columns, pct))
        return
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
