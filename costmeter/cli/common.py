"""Options and helpers shared by the ``bench`` subcommands (parameter types: :mod:`.params`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from costmeter.cli.params import (  # noqa: F401  (re-exported for the command modules)
    MAX_COUNT, MAX_SECONDS, CountRange, FiniteRange, FloatList, IntList, OutputPath, count, fits_in_memory,
    fraction, input_file, seconds, usage_error, writable_problem,
)
from costmeter.harness.config import default_workdir


def _check_store(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A SQLite store named by ``--store`` (or $COSTMETER_STORE) lies in a folder that exists:
    no folder is created for it (the working folder's default store is, with the working folder)."""
    if value is None:
        return None
    if not str(value).strip():
        usage_error(param, ctx, "--store is empty; give a SQLAlchemy URL such as sqlite:///results.db")
    text = str(value).strip()
    if text.startswith("sqlite:///"):
        database = text[len("sqlite:///"):].partition("?")[0]
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(os.path.abspath(database)).parent
            if not folder.is_dir():
                problem = writable_problem(database, what="the store")
                usage_error(param, ctx, f"--store: {problem or f'folder {folder} does not exist'}")
    return text


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--store URL``: any SQLAlchemy URL; default $COSTMETER_STORE or the working folder's SQLite."""
    return click.option(
        "--store", "store_url", envvar="COSTMETER_STORE", default=None, metavar="URL", callback=_check_store,
        help="Results store (SQLAlchemy URL). Default: $COSTMETER_STORE or sqlite:///<workdir>/results.db",
    )(f)


def workdir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--workdir DIR``: caches, stores, reports and the log file go here (created, in a folder
    that exists)."""
    return click.option(
        "--workdir", type=OutputPath(folder=True, path_type=Path), default=None,
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


def non_empty_list(text: str, what: str, example: str) -> list[str]:
    """:func:`split_list`, or ConfigError naming ``what`` when nothing is left."""
    from costmeter.errors import ConfigError

    items = split_list(text)
    if not items:
        raise ConfigError(f"{what} is empty; give at least one, e.g. {example}")
    return items


def check_cpus(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--cpus 4-7,9``: CPU numbers and ascending ranges, each number at most MAX_CPU_INDEX."""
    from costmeter.devices.options import MAX_CPU_INDEX

    if value is None:
        return None
    parts = [p.strip().partition("-") for p in str(value).split(",")]
    for low, dash, high in parts:
        numbers = [low, high] if dash else [low]
        if not all(n.isascii() and n.isdigit() and len(n) <= 5 and int(n) <= MAX_CPU_INDEX for n in numbers) \
                or (dash and int(high) < int(low)):
            raise click.BadParameter(f"{value!r} is not a CPU list; give CPU numbers and ascending ranges, "
                                     "e.g. 4-7 or 0,2", ctx, param)
    return ",".join(f"{lo}{d}{hi}" for lo, d, hi in parts)


def cpus_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--cpus LIST``: pin the worker to these CPUs (recorded in the key)."""
    return click.option("--cpus", default=None, metavar="LIST", callback=check_cpus,
                        help="Pin the worker to CPUs (taskset), e.g. 4-7 or 0,2; recorded in the key")(f)


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


def check_target(device: str, runtime: str) -> None:
    """ConfigError/UnavailableError unless ``device`` parses and ``runtime`` is known there,
    installed and has its converter (before a command starts measuring anything)."""
    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import check_runtime

    check_runtime(RunConfig(model="-", device=device, runtime=runtime))


def with_run_progress(call: Callable[[Callable[..., None]], Any], quiet: bool = False) -> Any:
    """Run ``call(progress)`` under a progress bar on stderr; ``progress`` takes the runner's
    ``(done, total, config, result)`` arguments. The bar appears at the first progress report,
    so a command that refuses its input before measuring prints its one-line error alone."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=quiet)
    task = bar.add_task("benchmarks", total=None)
    started = False

    def progress(done: int, total: int, cfg: Any = None, result: Any = None) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        desc = f"{Path(cfg.model).stem if cfg.model.endswith('.onnx') else cfg.model}/{cfg.runtime} " \
               f"b{cfg.batch} t{cfg.threads or 'auto'}" if cfg is not None else "benchmarks"
        bar.update(task, completed=done, total=total, description=desc[:60])

    try:
        return call(progress)
    finally:
        if started:
            bar.stop()


def subset_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--history``, ``--budget``, ``--by`` and ``--rank-by``: what a cheap nightly subset is
    chosen from (``bench suite subset`` and ``bench report subset``)."""
    f = click.option("--rank-by", default="device,runtime", show_default=True,
                     help="Key fields that name what the suite ranks")(f)
    f = click.option("--by", "budget_by", type=click.Choice(["keys", "time"]), default="keys",
                     show_default=True, help="Budget as a share of keys or of measuring time")(f)
    f = click.option("--budget", required=True, type=fraction("0.1", max_open=False),
                     help="Share of the suite to keep, e.g. 0.1")(f)
    return click.option("--history", required=True, metavar="SELECTOR",
                        help="The suite's stored history, e.g. tag:nightly")(f)
