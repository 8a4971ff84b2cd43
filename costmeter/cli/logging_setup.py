"""Libraries' messages go to a log file in the working folder, not to the user's terminal.

Importing torch, ONNX Runtime, executorch and their friends prints things a user cannot act on:
torchao's "Failed to load ....so" lines, torch's pytree deprecation warnings, the ONNX
exporter's progress. While a ``bench`` command runs, :class:`LibraryLog` sends every log record
(warnings included, through :func:`logging.captureWarnings`) to ``<workdir>/logs/bench.log``
instead: the file is created on the first record only, and the command says once, at its end,
how many records went there. costmeter's own warnings are printed on stderr as well. Torch installs its own stderr handlers when it is imported; they
are taken off right after that import, so its records reach the same file.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any, Callable

from costmeter.workdir import Workdir

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 2 * 2**20  # per file; two older files are kept beside it
KEPT_LEVELS = {"costmeter": logging.INFO}  # our own notes (e.g. the exporter's output); others WARNING+


class _CountingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that opens its file on the first record and counts records."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=2, delay=True, encoding="utf-8")
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:  # first record of this command: make the folder
            try:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                self.handleError(record)
                return
        self.count += 1
        super().emit(record)


class _OwnWarnings(logging.StreamHandler):
    """costmeter's own warnings (e.g. results left in the spool) on the terminal's stderr, as
    one line each; looked up at each record, so a replaced ``sys.stderr`` is honoured."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("warning: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback`` right after module ``name`` is first imported (once)."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        callback = self.callback

        def exec_then_call(module: Any) -> None:
            try:
                exec_module(module)
            finally:
                callback()

        spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]
        return spec


def quiet_torch_handlers() -> None:
    """Take torch's own stderr handlers off its loggers and let their records propagate (to
    the log file while a command runs)."""
    try:
        from torch._logging._internal import _is_torch_handler
    except ImportError:  # another torch: take off every plain stream handler on its loggers
        def _is_torch_handler(handler: logging.Handler) -> bool:
            return type(handler) is logging.StreamHandler

    names = [n for n in list(logging.root.manager.loggerDict) if n == "torch" or n.startswith("torch.")]
    for name in names:
        logger = logging.getLogger(name)
        stream_handlers = [h for h in logger.handlers if _is_torch_handler(h)]
        for handler in stream_handlers:
            logger.removeHandler(handler)
        if stream_handlers:
            logger.propagate = True


class LibraryLog:
    """Routes log records and warnings to ``<workdir>/logs/bench.log`` for one command."""

    def __init__(self) -> None:
        self.handler: _CountingFileHandler | None = None
        self.own: logging.Handler | None = None
        self.workdir: Path | str | None = None
        self._saved: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return Workdir.of(self.workdir).log_file

    def use_workdir(self, workdir: Path | str | None) -> None:
        """Log under ``workdir`` (None: the default working folder); before anything is logged."""
        self.workdir = workdir
        if self.handler is not None and self.handler.stream is None:
            self.handler.baseFilename = os.path.abspath(self.path)

    def install(self) -> None:
        """Start routing: a root handler to the (not yet created) file, warnings captured."""
        root = logging.getLogger()
        self.handler = _CountingFileHandler(self.path)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._saved = {"root_level": root.level, "levels": {n: logging.getLogger(n).level for n in KEPT_LEVELS}}
        root.addHandler(self.handler)
        root.setLevel(logging.WARNING)
        self.own = _OwnWarnings()
        logging.getLogger("costmeter").addHandler(self.own)
        for name, level in KEPT_LEVELS.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(True)
        if "torch" in sys.modules:
            quiet_torch_handlers()
        elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport("torch", quiet_torch_handlers))

    def uninstall(self) -> int:
        """Stop routing and close the file; returns how many records were written."""
        if self.handler is None:
            return 0
        root = logging.getLogger()
        root.removeHandler(self.handler)
        logging.getLogger("costmeter").removeHandler(self.own)
        root.setLevel(self._saved.get("root_level", logging.WARNING))
        for name, level in self._saved.get("levels", {}).items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]
        count = self.handler.count
        self.handler.close()
        self.handler = None
        return count

    def display_path(self) -> str:
        """The log file's path, relative to the current folder when it lies below it."""
        path = Path(os.path.abspath(self.path))
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


LIBRARY_LOG = LibraryLog()
