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
    """``--workdir DIR``: caches, stores, reports and the log file go here."""
    return click.option(
        "--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
        callback=_log_under, help="Working folder for caches and the default store. Default: $COSTMETER_HOME or ./.costmeter",
    )(f)


def _log_under(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Libraries' messages go to this working folder's log file."""
    from costmeter.cli.logging_setup import LIBRARY_LOG

    LIBRARY_LOG.use_workdir(value)
    return value


def open_store(store_url: str | None, workdir: Path | None):
    """Open the results store (StoreError with a fix when it cannot be opened)."""
    from costmeter.results.store import ResultStore, default_store_url

    return ResultStore(store_url or default_store_url(workdir or default_workdir()))


def split_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [p.strip() for p in str(text).split(",") if p.strip()]


MODEL_HELP = ("Repeatable. One model per value: a zoo name, FILE.onnx, space:arch, a family variant "
              "(resnet:w=0.5,d=18,r=160) or pkg.mod:func; a value without ':' may list zoo names "
              "or .onnx files separated by commas; @FILE reads one model per line ('#' comments)")


def model_specs(values: tuple[str, ...] | list[str]) -> list[str]:
    """Model specs from repeatable ``--model`` values, unambiguous for every grammar.

    A value that contains ``:`` is one model (search-space architectures and family variants
    contain commas: ``ofa_mbv3:r160|k3e4,k5e6|...``); a value without ``:`` may list several
    zoo names or ``.onnx`` files separated by commas; ``@FILE`` reads one model per line, blank
    lines and ``#`` comments skipped. ConfigError when nothing is left or a file is unreadable.
    """
    from costmeter.errors import ConfigError

    out: list[str] = []
    for value in values:
        value = str(value).strip()
        if value.startswith("@"):
            try:
                lines = Path(value[1:]).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read model list {value[1:]!r} ({exc.strerror or exc}); "
                                  "give a readable file with one model per line") from exc
            out += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
        elif ":" in value:
            out.append(value)
        else:
            out += split_list(value)
    if not out:
        raise ConfigError("no model given; pass --model NAME (repeatable) or --model @FILE")
    return out


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
