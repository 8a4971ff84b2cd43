"""Checks that every benchmark of a run can start, made before anything runs or is written.

:func:`costmeter.harness.runner.validate` calls these on the whole list of configs: settings
first (runtime options, threads), then every model once, then every batch against its model's
inputs and the memory free here. Each check raises ConfigError with one line that says what is
wrong and how to fix it; one bad item stops the whole run before its first benchmark.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from costmeter.devices.options import MAX_THREADS, check_options
from costmeter.errors import ConfigError
from costmeter.harness.config import RunConfig

# The parent writes a benchmark's inputs once and the worker loads its own copy (the parity
# check a third), so the inputs of one benchmark may take at most this share of free memory.
INPUT_MEMORY_SHARE = 0.5
MAX_BATCH = 2**31 - 1  # runtimes hold dims as 32-bit integers in places
_PY_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

MemoryReader = Callable[[], int]


def available_memory_bytes() -> int:
    """Memory this machine can give a new process without swapping (bytes)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_settings(cfg: RunConfig) -> None:
    """ConfigError unless ``cfg``'s runtime options are ones its runtime declares (names,
    types, values) and its thread count is plausible."""
    if cfg.threads is not None and cfg.threads > MAX_THREADS:
        raise ConfigError(f"--threads {_num(cfg.threads)} is more than any machine has (at most {MAX_THREADS}); "
                          "give the number of threads to use, e.g. 1,4")
    if cfg.batch > MAX_BATCH:
        raise ConfigError(f"--batch {_num(cfg.batch)} is too large (at most {MAX_BATCH}, and what fits in "
                          "memory); give a batch size such as 1,8,32")
    check_options(cfg.device_kind, cfg.runtime, dict(cfg.options))


def check_model_spec(spec: str) -> None:
    """ConfigError unless a ``package.module:function`` spec is written as one (dotted
    identifiers, a colon, an identifier). The callable itself is not imported here."""
    from costmeter.models.source import python_target

    text = str(spec).strip()
    if not text:
        raise ConfigError("empty model spec; give a zoo name, an .onnx path or pkg.module:function")
    target = python_target(text)
    if target is not None and not _PY_TARGET.fullmatch(target):
        raise ConfigError(f"malformed python model {text[:80]!r}; write it as package.module:function "
                          "(dotted names, one colon), or give a zoo name or an .onnx path")


def input_bytes(source: Any, batch: int) -> int:
    """Bytes of one benchmark's inputs at ``batch`` (``source`` None: the artifact-less
    runtimes' single float32 per item)."""
    import numpy as np

    if source is None:
        return 4 * batch
    total = 0
    for spec in source.inputs:
        total += math.prod(max(int(d), 1) for d in spec.shape) * np.dtype(spec.dtype).itemsize
    return total * batch


def check_batch(source: Any, cfg: RunConfig, free_bytes: int) -> None:
    """ConfigError unless ``source`` can run at ``cfg.batch``: no unknown input dims, the batch
    its ONNX file pins (if any), and inputs that fit in memory (see INPUT_MEMORY_SHARE)."""
    if source is not None:
        for spec in source.inputs:
            if any(int(d) < 0 for d in spec.shape):
                raise ConfigError(
                    f"input {spec.name!r} of {_name(source)} has unknown dims {tuple(spec.shape)} besides "
                    "the batch; export the model with fixed non-batch dimensions")
        if source.fixed_batch is not None and cfg.batch != source.fixed_batch:
            raise ConfigError(
                f"{_name(source)} has a fixed batch of {source.fixed_batch} in its ONNX file, not "
                f"{cfg.batch}; use --batch {source.fixed_batch} or re-export it with a dynamic batch dim")
    need = input_bytes(source, cfg.batch)
    budget = int(free_bytes * INPUT_MEMORY_SHARE)
    if need > budget:
        per_item = max(input_bytes(source, 1), 1)
        largest = max(budget // per_item, 0)
        hint = f"use --batch {largest} or less" if largest >= 1 else "free some memory"
        raise ConfigError(
            f"--batch {cfg.batch} needs {format_bytes(need)} for the inputs of {_name(source, cfg)} alone, "
            f"more than half of the {format_bytes(free_bytes)} free here; {hint}")


def _name(source: Any, cfg: RunConfig | None = None) -> str:
    if source is None:
        return str(cfg.model if cfg is not None else "the model")
    return str(source.display_name or source.model_id)


def _num(n: int) -> str:
    """``n`` in full, or its order of magnitude when it has too many digits to print."""
    return str(n) if n < 10**20 else f"~2^{n.bit_length()}"


def format_bytes(n: int) -> str:
    """``1.5 GiB`` (sizes past 1024 PiB as ``more than 1024 PiB``)."""
    if n >= 1024**6:
        return "more than 1024 PiB"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} PiB"
