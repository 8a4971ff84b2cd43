"""Options, parameter types and helpers shared by the ``bench`` subcommands.

The parameter types check what a command is given before its body runs: numbers are finite and
within bounds, lists are not empty, files to read exist, and paths to write lie in a folder that
exists and can be written (no folder is ever created for them). Their errors are click's usage
errors, which ``bench`` prints as one line with exit code 2.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from costmeter.harness.config import default_workdir

MAX_COUNT = 10**9  # counts of runs, samples, rounds, architectures
MAX_SECONDS = 7 * 24 * 3600.0  # durations and timeouts: a week
MAX_INT_DIGITS = 18


class _Bounded:
    """Mixin for click's range types: a refused value gets one message naming the option, the
    accepted range and an example (``--max-rel-ci 0 must lie in (0, 1), e.g. 0.01``)."""

    example: str

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = super().convert(value, param, ctx)  # type: ignore[misc]
        except click.BadParameter:
            number = None
        if number is None or (isinstance(number, float) and not math.isfinite(number)):
            _usage(param, ctx, f"{_flag(param)} {value!r} must be {self.accepts()}, e.g. {self.example}")
        return number

    def accepts(self) -> str:
        """``a number in (0, 1)``, ``a whole number in [1, 1000000000]``."""
        low = "(" if self.min_open else "["  # type: ignore[attr-defined]
        high = ")" if self.max_open else "]"  # type: ignore[attr-defined]
        what = "a whole number" if isinstance(self, click.IntRange) else "a number"
        return f"{what} in {low}{self.min:g}, {self.max:g}{high}"  # type: ignore[attr-defined]


class FiniteRange(_Bounded, click.FloatRange):
    """click's FloatRange that also refuses nan and infinities."""

    def __init__(self, min: float, max: float, min_open: bool = False, max_open: bool = False,
                 example: str = "1") -> None:
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.example = example


class CountRange(_Bounded, click.IntRange):
    """click's IntRange with the one-line message of :class:`_Bounded`."""

    def __init__(self, min: int, max: int, example: str) -> None:
        super().__init__(min=min, max=max)
        self.example = example


def seconds(minimum: float = 0.0, min_open: bool = False, example: str = "2") -> FiniteRange:
    """A duration in seconds: finite, at least ``minimum`` (above it with ``min_open``), at most a week."""
    return FiniteRange(minimum, MAX_SECONDS, min_open=min_open, example=example)


def fraction(example: str, min_open: bool = True, max_open: bool = True, maximum: float = 1.0) -> FiniteRange:
    """A share or probability in (0, 1) (bounds open or closed as asked)."""
    return FiniteRange(0.0, maximum, min_open=min_open, max_open=max_open, example=example)


def count(minimum: int = 0, maximum: int = MAX_COUNT, example: str | None = None) -> CountRange:
    """A whole number of runs, samples, rounds or items within ``minimum``..``maximum``."""
    return CountRange(minimum, maximum, example or str(max(minimum, 10)))


class IntList(click.ParamType):
    """``1,8,32`` -> ``[1, 8, 32]``: ASCII digits only, each within ``minimum``..``maximum``."""

    name = "list"

    def __init__(self, minimum: int = 1, maximum: int = 2**31 - 1) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        example = ",".join(str(self.minimum * k) for k in (1, 2, 8)) if self.minimum else "0,1,8"
        if not any(parts) or not all(p.isascii() and p.isdigit() and len(p) <= MAX_INT_DIGITS for p in parts):
            _usage(param, ctx, f"malformed {_flag(param)} {value!r}: expected comma-separated whole numbers, "
                               f"e.g. {example}")
        numbers = [int(p) for p in parts]
        bad = [n for n in numbers if not self.minimum <= n <= self.maximum]
        if bad:
            _usage(param, ctx, f"malformed {_flag(param)} {value!r}: {bad[0]} is outside "
                               f"{self.minimum}..{self.maximum}; e.g. {example}")
        return numbers


class FloatList(click.ParamType):
    """``50,90,99`` -> ``[50.0, 90.0, 99.0]``: finite numbers strictly between ``low`` and ``high``."""

    name = "list"

    def __init__(self, low: float, high: float, example: str) -> None:
        self.low, self.high, self.example = low, high, example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            numbers = [float(p) for p in str(value).split(",")]
        except ValueError:
            numbers = []
        if not numbers or not all(math.isfinite(n) and self.low < n < self.high for n in numbers):
            _usage(param, ctx, f"malformed {_flag(param)} {value!r}: expected comma-separated numbers strictly "
                               f"between {self.low:g} and {self.high:g}, e.g. {self.example}")
        return numbers


def _flag(param: click.Parameter | None) -> str:
    """The option's long name (``--batch``), or the argument's name."""
    if param is None:
        return "value"
    return max(param.opts, key=len) if param.opts else str(param.name)


def _usage(param: click.Parameter | None, ctx: click.Context | None, message: str) -> None:
    """Raise a usage error whose message is ``message`` as it is (it names the option itself)."""
    raise click.UsageError(message, ctx)


def writable_problem(path: str | os.PathLike[str], folder: bool = False, what: str | None = None) -> str | None:
    """Why ``path`` cannot be written as a file (or, with ``folder``, created or filled as a
    folder) without creating any other folder; None when it can. ``what`` names it in the
    message (default "the file" / "the folder"). Nothing is left behind: the folder is probed
    with an unnamed temporary file."""
    target = Path(os.path.abspath(os.fspath(path)))
    head = f"cannot write {what or ('the folder' if folder else 'the file')} at {os.fspath(path)}"
    if target.exists() and folder != target.is_dir():
        return f"{head}: it is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path"
    if folder and target.is_dir():
        problem = _folder_problem(target)
        return f"{head}: {problem}" if problem else None
    parent = target.parent
    if not parent.is_dir():
        blocker = next((a for a in parent.parents if a.exists()), None) if not parent.exists() else parent
        if blocker is not None and not blocker.is_dir():
            return f"{head}: {blocker} is a file, not a folder"
        return f"{head}: folder {parent} does not exist; create it first (mkdir -p {parent}) or choose another path"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{head}: it is not writable; choose another path or change its permissions"
    problem = _folder_problem(parent)
    return f"{head}: {problem}" if problem else None


def _folder_problem(folder: Path) -> str | None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"folder {folder} cannot be written ({exc.strerror or exc}); choose a folder you can write"
    return None


class OutputPath(click.Path):
    """A file this command writes (a folder with ``folder=True``): its folder must exist and be
    writable; no folder is created for it. ``what`` names it in messages ("the site")."""

    def __init__(self, folder: bool = False, path_type: type | None = None, what: str | None = None) -> None:
        super().__init__(file_okay=not folder, dir_okay=folder, path_type=path_type)
        self.folder, self.what = folder, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not str(value).strip():
            _usage(param, ctx, f"{_flag(param)} is empty; give a path")
        out = super().convert(value, param, ctx)
        problem = writable_problem(os.fsdecode(out), self.folder, self.what)
        if problem:
            _usage(param, ctx, f"{_flag(param)}: {problem}")
        return out


def fits_in_memory(nbytes: int, what: str, fix: str) -> None:
    """ConfigError unless ``nbytes`` fit in half the memory free here (``what`` needs them)."""
    from costmeter.errors import ConfigError
    from costmeter.harness.validation import INPUT_MEMORY_SHARE, available_memory_bytes, format_bytes

    free = available_memory_bytes()
    if nbytes > free * INPUT_MEMORY_SHARE:
        raise ConfigError(f"{what} needs {format_bytes(nbytes)}, more than half of the {format_bytes(free)} "
                          f"free here; use {fix}")


def input_file(path_type: type | None = None) -> click.Path:
    """A file this command reads: it must exist, be a file and be readable."""
    return click.Path(exists=True, dir_okay=False, readable=True, path_type=path_type)


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--store URL``: any SQLAlchemy URL; default $COSTMETER_STORE or the working folder's SQLite."""
    return click.option(
        "--store", "store_url", envvar="COSTMETER_STORE", default=None, metavar="URL",
        help="Results store (SQLAlchemy URL). Default: $COSTMETER_STORE or sqlite:///<workdir>/results.db",
    )(f)


def workdir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--workdir DIR``: caches, stores and reports go here (created, in a folder that exists)."""
    return click.option(
        "--workdir", type=OutputPath(folder=True, path_type=Path), default=None,
        help="Working folder for caches and the default store. Default: $COSTMETER_HOME or ./.costmeter",
    )(f)


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


def _check_cpus(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
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
    return click.option("--cpus", default=None, metavar="LIST", callback=_check_cpus,
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
