"""Options and helpers shared by the ``bench`` subcommands."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from costmeter.harness.config import default_workdir


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--store URL``: any SQLAlchemy URL; default $COSTMETER_STORE or the working folder's SQLite."""
    return click.option(
        "--store", "store_url", envvar="COSTMETER_STORE", default=None, metavar="URL",
        help="Results store (SQLAlchemy URL). Default: $COSTMETER_STORE or sqlite:///<workdir>/results.db",
    )(f)


def workdir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--workdir DIR``: caches, stores and reports go here."""
    return click.option(
        "--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Working folder for caches and the default store. Default: $COSTMETER_HOME or ./.costmeter",
    )(f)


def open_store(store_url: str | None, workdir: Path | None):
    """Open the results store (StoreError with a fix when it cannot be opened)."""
    from costmeter.results.store import ResultStore, default_store_url

    return ResultStore(store_url or default_store_url(workdir or default_workdir()))


def split_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [p.strip() for p in str(text).split(",") if p.strip()]


def query_frame(store_url: str | None, workdir: Path | None):
    """Every stored result as a DataFrame (``ResultStore.query()``); the store is closed after."""
    store = open_store(store_url, workdir)
    try:
        return store.query()
    finally:
        store.close()


def with_run_progress(call: Callable[[Callable[..., None]], Any], quiet: bool = False) -> Any:
    """Run ``call(progress)`` under a progress bar on stderr; ``progress`` takes the runner's
    ``(done, total, config, result)`` arguments."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=quiet) as bar:
        task = bar.add_task("benchmarks", total=None)

        def progress(done: int, total: int, cfg: Any = None, result: Any = None) -> None:
            desc = f"{Path(cfg.model).stem if cfg.model.endswith('.onnx') else cfg.model}/{cfg.runtime} " \
                   f"b{cfg.batch} t{cfg.threads or 'auto'}" if cfg is not None else "benchmarks"
            bar.update(task, completed=done, total=total, description=desc[:60])

        return call(progress)
