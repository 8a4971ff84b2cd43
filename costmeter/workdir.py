"""The working folder: where stores, caches, samples, tables and temporary files go.

One object names every path under it, so no module spells folder names of its own::

    wd = Workdir.default()              # $COSTMETER_HOME, else ./.costmeter
    wd.onnx_cache / f"{hash}-opset17.onnx"
    wd.kernel_samples("cpu", "onnxruntime")

Layout (all relative to ``root``):

- ``results.db`` -- the default SQLite store;
- ``cache/<kind>/`` -- content-addressed artifacts (``onnx``, ``inputs``, ``lut`` blocks,
  converted ``tflite``/``pte``/``tvm`` models); safe to delete, rebuilt on demand;
- ``kernels/`` -- detected fusion rules, kernel samples (kept) and micro-benchmark models
  (``micro``, ``detect``: deleted after measuring unless asked to keep them);
- ``lut/`` -- latency lookup tables;
- ``tmp/`` -- per-run temporary folders of worker processes (removed when a run ends);
- ``spool/`` -- results a busy or unreachable store could not take yet;
- ``probes/`` -- machine probes (cache curve, roofline peaks);
- ``logs/`` -- what libraries printed while ``bench`` commands ran (``bench.log``).

Cache kinds besides converted artifacts: ``ids`` (content hashes and size figures of built-in
models, per version of the model code) and ``reference`` (torch eager outputs for parity).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "COSTMETER_HOME"
DEFAULT_NAME = ".costmeter"


def _safe(text: str) -> str:
    """A file-name-safe spelling of a device or runtime name (``cuda:0`` -> ``cuda_0``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


@dataclass(frozen=True)
class Workdir:
    """A working folder rooted at ``root`` (nothing is created until something is written)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def default(cls) -> Workdir:
        """``$COSTMETER_HOME``, else ``./.costmeter``."""
        return cls(Path(os.environ.get(ENV_HOME, "").strip() or DEFAULT_NAME))

    @classmethod
    def of(cls, value: Workdir | Path | str | None) -> Workdir:
        """A Workdir from a path, an existing Workdir, or None (the default)."""
        if isinstance(value, Workdir):
            return value
        return cls.default() if value is None else cls(Path(value))

    # -- the store
    @property
    def store_path(self) -> Path:
        """The default SQLite store file."""
        return self.root / "results.db"

    @property
    def store_url(self) -> str:
        """SQLAlchemy URL of the default store (absolute, so workers elsewhere find it)."""
        return f"sqlite:///{self.store_path.absolute()}"

    @property
    def spool(self) -> Path:
        """Results waiting for a store that could not take them."""
        return self.root / "spool"

    # -- caches
    def cache(self, kind: str) -> Path:
        """Content-addressed artifacts of one kind (``onnx``, ``inputs``, ``lut``, ...)."""
        return self.root / "cache" / kind

    @property
    def onnx_cache(self) -> Path:
        return self.cache("onnx")

    @property
    def inputs_cache(self) -> Path:
        return self.cache("inputs")

    @property
    def tmp(self) -> Path:
        """Per-run temporary folders."""
        return self.root / "tmp"

    # -- kernels
    @property
    def kernels(self) -> Path:
        return self.root / "kernels"

    def kernel_rules(self, device: str, runtime: str) -> Path:
        """Detected fusion rules of ``runtime`` on ``device`` (JSON)."""
        return self.kernels / f"rules-{_safe(device)}-{_safe(runtime)}.json"

    def kernel_samples(self, device: str, runtime: str) -> Path:
        """Kernel micro-benchmark samples of ``runtime`` on ``device`` (CSV)."""
        return self.kernels / f"samples-{_safe(device)}-{_safe(runtime)}.csv"

    @property
    def micro_models(self) -> Path:
        """Micro-benchmark ONNX models written while sampling kernels."""
        return self.kernels / "micro"

    @property
    def detect_models(self) -> Path:
        """Micro-benchmark ONNX models written while detecting fusion."""
        return self.kernels / "detect"

    # -- tables and probes
    @property
    def lut(self) -> Path:
        return self.root / "lut"

    @property
    def probes(self) -> Path:
        return self.root / "probes"

    # -- logs
    @property
    def logs(self) -> Path:
        """Log files of ``bench`` commands."""
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        """Where libraries' messages go while a ``bench`` command runs (rotated at 2 MiB)."""
        return self.logs / "bench.log"
