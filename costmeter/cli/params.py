"""Parameter types of the ``bench`` commands: each checks a value before the command body runs.

Numbers are finite and within bounds, lists are not empty, files to read exist, and paths to
write lie in a folder that exists and can be written (no folder is ever created for them). A
refused value raises click's UsageError with one message that names the option, what it takes
and an example; ``bench`` prints it as one line with exit code 2.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import click

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
            usage_error(param, ctx, f"{_flag(param)} {value!r} must be {self.accepts()}, e.g. {self.example}")
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
            usage_error(param, ctx, f"malformed {_flag(param)} {value!r}: expected comma-separated whole numbers, "
                               f"e.g. {example}")
        numbers = [int(p) for p in parts]
        bad = [n for n in numbers if not self.minimum <= n <= self.maximum]
        if bad:
            usage_error(param, ctx, f"malformed {_flag(param)} {value!r}: {bad[0]} is outside "
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
            usage_error(param, ctx, f"malformed {_flag(param)} {value!r}: expected comma-separated numbers strictly "
                               f"between {self.low:g} and {self.high:g}, e.g. {self.example}")
        return numbers


def _flag(param: click.Parameter | None) -> str:
    """The option's long name (``--batch``), or the argument's name."""
    if param is None:
        return "value"
    return max(param.opts, key=len) if param.opts else str(param.name)


def usage_error(param: click.Parameter | None, ctx: click.Context | None, message: str) -> None:
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
            usage_error(param, ctx, f"{_flag(param)} is empty; give a path")
        out = super().convert(value, param, ctx)
        problem = writable_problem(os.fsdecode(out), self.folder, self.what)
        if problem:
            usage_error(param, ctx, f"{_flag(param)}: {problem}")
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
