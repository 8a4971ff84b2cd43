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
- ``logs/`` -- what libraries printed while ``bench`` commands ran (``bench.log``);
- ``build/`` -- the state of ``bench predictor build`` runs (settings, time spent, plans, the
  networks measured for calibration), so an interrupted build resumes.

Caches derived by content hash, each safe to delete: ``cache/onnx`` (exports), ``cache/ids``
(content hashes and size figures of built-in models, per version of the model code),
``cache/reference`` (torch eager outputs for parity), ``cache/graphs`` (a model's kernel
features and network terms under a rule set) and ``cache/predictions`` (answers of one
predictor file for one model). :data:`KINDS` groups every path by what it is, for
``bench workdir du`` and ``bench workdir clean``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "COSTMETER_HOME"
DEFAULT_NAME = ".costmeter"
# what lives in a working folder, by kind: (description, removed by a plain `bench workdir clean`)
KINDS: dict[str, tuple[str, bool]] = {
    "caches": ("exports, converted models, graph analyses, answers (rebuilt on demand)", True),
    "micro": ("micro-benchmark models kept after measuring", True),
    "tmp": ("temporary files of workers", True),
    "samples": ("kernel samples, fusion rules, build state, machine probes", False),
    "lut": ("latency lookup tables", False),
    "logs": ("what libraries printed while bench commands ran (rotated at 2 MiB)", False),
    "store": ("the results store and results waiting for it", False),
    "other": ("anything else", False),
}


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

    def cache_curve(self, device: str) -> Path:
        """The measured cache curve of ``device`` (JSON)."""
        return self.probes / f"cache-curve-{_safe(device)}.json"

    # -- content-addressed analyses
    @property
    def id_cache(self) -> Path:
        """Model id -> content hash of built-in models, one file per version of the model code."""
        return self.cache("ids")

    @property
    def graph_cache(self) -> Path:
        """Kernel features and network terms of a model under a rule set, by content hash."""
        return self.cache("graphs")

    @property
    def prediction_cache(self) -> Path:
        """Answers of a predictor file for a model, by both content hashes."""
        return self.cache("predictions")

    # -- predictor builds
    @property
    def builds(self) -> Path:
        return self.root / "build"

    def build_state(self, device: str, runtime: str) -> Path:
        """State of the ``bench predictor build`` of ``runtime`` on ``device`` (JSON)."""
        return self.builds / f"state-{_safe(device)}-{_safe(runtime)}.json"

    def build_prior(self, device: str, runtime: str) -> Path:
        """The kernel prior of that build: configs seen in real models, folded kernels (JSON)."""
        return self.builds / f"prior-{_safe(device)}-{_safe(runtime)}.json"

    def build_lock(self, device: str, runtime: str) -> Path:
        """Held while a build of ``runtime`` on ``device`` runs."""
        return self.builds / f"lock-{_safe(device)}-{_safe(runtime)}"

    # -- disk use
    def kind_of(self, path: Path) -> str:
        """The :data:`KINDS` entry a path under ``root`` belongs to."""
        parts = Path(path).relative_to(self.root).parts
        top = parts[0] if parts else ""
        if top == "cache":
            return "caches"
        if top == "kernels":
            return "micro" if len(parts) > 1 and parts[1] in ("micro", "detect") else "samples"
        if top in ("build", "probes"):
            return "samples"
        if top == "tmp":
            return "tmp"
        if top == "lut":
            return "lut"
        if top == "logs":
            return "logs"
        if top == "spool" or top.startswith(self.store_path.name):
            return "store"
        return "other"

    def usage(self) -> dict[str, tuple[int, int]]:
        """Bytes and files per kind (every kind of :data:`KINDS`, zero when absent)."""
        out = {kind: (0, 0) for kind in KINDS}
        if not self.root.is_dir():
            return out
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = Path(folder) / name
                try:
                    size = path.lstat().st_size
                except OSError:  # removed while walking
                    continue
                kind = self.kind_of(path)
                out[kind] = (out[kind][0] + size, out[kind][1] + 1)
        return out

    def remove(self, kinds: set[str] | frozenset[str]) -> tuple[int, int]:
        """Delete every file of ``kinds`` (then empty folders); returns (bytes, files) freed."""
        freed, count = 0, 0
        if not self.root.is_dir():
            return 0, 0
        for folder, _, files in os.walk(self.root, topdown=False):
            for name in files:
                path = Path(folder) / name
                if self.kind_of(path) not in kinds:
                    continue
                try:
                    size = path.lstat().st_size
                    path.unlink()
                except OSError:
                    continue
                freed, count = freed + size, count + 1
            if Path(folder) != self.root and not any(Path(folder).iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        return freed, count
