"""Machine calibration for the roofline: peak FLOP/s (a large GEMM) and memory bandwidth (a
large copy), each the median of a few timed repeats after one warm-up.

- FLOP/s = 2 n^3 / time of an n x n by n x n matrix product;
- bandwidth = 2 x buffer bytes / time of copying the buffer (read + write, the STREAM "copy"
  convention; write-allocate traffic is not counted, so this is a slight underestimate).

On CPU the default backend is numpy (its BLAS); ``backend="torch"`` uses torch instead (and
``threads`` sets torch's thread count). ``device="cuda"`` uses torch on the GPU, timed with CUDA
events. The result is a JSON-ready dict; :func:`save_calibration` / :func:`load_calibration`
keep it as ``calibration-<device>.json`` in the working folder.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from costmeter.errors import ConfigError, UnavailableError

DEFAULT_GEMM_SIZE = {"cpu": 2048, "cuda": 8192}
DEFAULT_COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}
DTYPES = ("float32", "float64", "float16", "bfloat16")


def calibration_path(folder: str | Path, device: str) -> Path:
    """Where the calibration of ``device`` lives in ``folder``."""
    return Path(folder) / f"calibration-{device}.json"


def _median_seconds(run: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    run()  # warm-up: page faults, BLAS thread start, CUDA context and kernels
    seconds = [run() for _ in range(repeats)]
    return statistics.median(seconds), seconds


def _numpy_runners(size: int, copy_bytes: int, dtype: str, timer: Callable[[], float]):
    import numpy as np

    if dtype not in ("float32", "float64"):
        raise ConfigError(f"numpy calibration supports float32 and float64, not {dtype}; "
                          "use --backend torch")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)
    src = np.ones(copy_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)

    def gemm() -> float:
        start = timer()
        np.matmul(a, b, out=out)
        return timer() - start

    def copy() -> float:
        start = timer()
        np.copyto(dst, src)
        return timer() - start

    return gemm, copy, int(src.nbytes), {"numpy": np.__version__}


def _torch_runners(device: str, size: int, copy_bytes: int, dtype: str,
                   timer: Callable[[], float], threads: int | None):
    try:
        import torch
    except ImportError as err:
        raise UnavailableError("torch is not installed; pip install 'costmeter[torch]'") from err
    if device == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("CUDA is not available here; calibrate --device cpu instead")
    if threads is not None:
        torch.set_num_threads(threads)
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    out = torch.empty(size, size, device=device, dtype=torch_dtype)
    src = torch.ones(copy_bytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)

    def timed(action: Callable[[], Any]) -> Callable[[], float]:
        if device != "cuda":
            def run_cpu() -> float:
                start = timer()
                action()
                return timer() - start
            return run_cpu

        def run_cuda() -> float:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            begin.record()
            action()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3

        return run_cuda

    versions = {"torch": torch.__version__}
    if device == "cuda":
        versions["gpu"] = torch.cuda.get_device_name(0)
    return (timed(lambda: torch.matmul(a, b, out=out)), timed(lambda: dst.copy_(src)),
            int(src.numel() * src.element_size()), versions)


def calibrate(
    device: str = "cpu",
    *,
    backend: str | None = None,
    gemm_size: int | None = None,
    copy_bytes: int | None = None,
    repeats: int = 5,
    dtype: str = "float32",
    threads: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Measure peak FLOP/s and memory bandwidth of ``device`` ('cpu' or 'cuda').

    Returns a dict with ``peak_flops_per_s`` and ``bandwidth_bytes_per_s`` (medians), the raw
    timings in seconds, the sizes used, and where/when it was measured.
    """
    if device not in DEFAULT_GEMM_SIZE:
        raise ConfigError(f"cannot calibrate device {device!r}; use one of: cpu, cuda")
    backend = backend or ("numpy" if device == "cpu" else "torch")
    if backend not in ("numpy", "torch") or (device == "cuda" and backend != "torch"):
        raise ConfigError(f"backend {backend!r} cannot calibrate {device}; use numpy or torch "
                          "on cpu, torch on cuda")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    size = int(gemm_size or DEFAULT_GEMM_SIZE[device])
    buffer = int(copy_bytes or DEFAULT_COPY_BYTES[device])
    if size < 16 or buffer < 2**16:
        raise ConfigError("gemm size must be >= 16 and copy buffer >= 64 KiB")
    if backend == "numpy":
        gemm, copy, nbytes, versions = _numpy_runners(size, buffer, dtype, timer)
    else:
        gemm, copy, nbytes, versions = _torch_runners(device, size, buffer, dtype, timer, threads)
    gemm_s, gemm_all = _median_seconds(gemm, repeats)
    copy_s, copy_all = _median_seconds(copy, repeats)
    flops = 2.0 * size**3
    return {
        "device": device,
        "backend": backend,
        "dtype": dtype,
        "peak_flops_per_s": flops / gemm_s,
        "bandwidth_bytes_per_s": 2.0 * nbytes / copy_s,
        "gemm": {"size": size, "flops": flops, "seconds": gemm_all},
        "copy": {"buffer_bytes": nbytes, "bytes_moved": 2 * nbytes, "seconds": copy_all},
        "repeats": repeats,
        "threads": threads,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "versions": versions,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_calibration(calibration: dict[str, Any], folder: str | Path) -> Path:
    """Write ``calibration`` as ``calibration-<device>.json`` under ``folder``; returns the path."""
    path = calibration_path(folder, calibration["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(source: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Read a calibration: ``source`` is the JSON file itself or the folder holding
    ``calibration-<device>.json``. ConfigError (with the command to run) when absent or bad."""
    path = Path(source)
    if path.is_dir() or not path.suffix:
        path = calibration_path(path, device)
    if not path.is_file():
        raise ConfigError(
            f"no calibration at {str(path)!r}; run `bench calibrate --device {device}` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"calibration {str(path)!r} is not valid JSON ({err}); "
                          f"run `bench calibrate --device {device}` again") from err
    for field in ("peak_flops_per_s", "bandwidth_bytes_per_s"):
        value = data.get(field) if isinstance(data, dict) else None
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"calibration {str(path)!r} lacks a positive {field}; "
                              f"run `bench calibrate --device {device}` again")
    return data
