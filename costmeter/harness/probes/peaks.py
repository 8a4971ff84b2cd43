"""Roofline peaks measured through the protocol: GEMM FLOP/s per backend, copy bandwidth.

A roofline's compute roof must be the fastest this machine can multiply matrices, or a network
run by a better library than the calibration's lands above 100% of "peak". So the GEMM is timed
with every backend that is installed -- torch (oneDNN/MKL), ONNX Runtime's MatMul (MLAS, the
weights prepacked as in a model) and numpy (its BLAS) -- at the thread count the runs use (None:
each library's default, as ``bench run`` without ``--threads``), and the fastest is the roof.
Each backend is one probe (:mod:`costmeter.harness.probes.session`): warmed up, sampled until
its median is within ``max_rel_ci`` or ``max_time_s``, judged, and stored with raw samples and
environment. The roof is the highest *best-run* rate (other load only adds time, so the fastest
run is the rate the machine demonstrated), with every backend's median and interval beside it.

- FLOP/s = 2 n^3 / time of an n x n by n x n product;
- bandwidth = 2 x buffer bytes / time of copying the buffer (read + write, the STREAM "copy"
  convention; write-allocate traffic is not counted, so it is a slight underestimate), the best
  of numpy's copy and torch's (several threads).

On CPU the theoretical peak (:func:`costmeter.harness.probes.isa.theoretical_peak`: cores x
clock x FLOP/cycle from the ISA flags) is returned beside the measured one; a measured peak
above it is a calibration error (a wrong clock or FMA-unit assumption) and is said so.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from costmeter.errors import ConfigError, UnavailableError
from costmeter.harness.config import ProtocolConfig
from costmeter.harness.probes.session import ProbeSession, ProbeSpec, failed_probe, measure_probe, probe_protocol

DEFAULT_GEMM_SIZE = {"cpu": 2048, "cuda": 8192}
DEFAULT_COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}
DTYPES = ("float32", "float64", "float16", "bfloat16")
GEMM_BACKENDS = {"cpu": ("torch", "onnxruntime", "numpy"), "cuda": ("torch",)}
BACKEND_DTYPES = {"numpy": ("float32", "float64"), "onnxruntime": ("float32",), "torch": DTYPES}
CALIBRATE_TAG = "calibrate"

Built = tuple[ProbeSession, dict[str, str]]  # the session and library versions


def _numpy_gemm(size: int, dtype: str, threads: int | None) -> Built:
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    out = np.empty((size, size), dtype=dtype)
    limits = threadpool_limits(limits=threads, user_api="blas") if threads else None
    return (ProbeSession(lambda: np.matmul(a, b, out=out),
                         close=None if limits is None else limits.restore_original_limits),
            {"numpy": np.__version__})


def _torch_gemm(size: int, dtype: str, threads: int | None, device: str = "cpu") -> Built:
    try:
        import torch
    except ImportError as err:
        raise UnavailableError("torch is not installed; pip install 'costmeter[torch]'") from err
    if device == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("CUDA is not available here; calibrate --device cpu instead")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=getattr(torch, dtype))
            for _ in range(2))
    out = torch.empty_like(a)
    versions = {"torch": torch.__version__}
    if device == "cuda":
        versions["gpu"] = torch.cuda.get_device_name(0)

    def gemm() -> None:
        with torch.inference_mode():
            torch.matmul(a, b, out=out)

    return (ProbeSession(gemm, synchronize=torch.cuda.synchronize if device == "cuda" else None,
                         close=lambda: torch.set_num_threads(before)), versions)


def _onnxruntime_gemm(size: int, dtype: str, threads: int | None) -> Built:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise UnavailableError("onnxruntime is not installed; pip install 'costmeter[onnx]'") from err
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(b, "B")])  # a constant weight, prepacked as in a model
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # the operand and a preallocated output bound once (no output allocated per run); the
    # OrtValues own their memory and live as long as the kernel
    held = (ort.OrtValue.ortvalue_from_numpy(a),
            ort.OrtValue.ortvalue_from_numpy(np.empty((size, size), dtype=np.float32)))
    binding = session.io_binding()
    binding.bind_ortvalue_input("A", held[0])
    binding.bind_ortvalue_output("Y", held[1])

    def gemm(kept: tuple[Any, ...] = held) -> None:
        session.run_with_iobinding(binding)

    return ProbeSession(gemm), {"onnxruntime": ort.__version__}


def _copy(backend: str, nbytes: int, threads: int | None, device: str) -> Built:
    """Copying a buffer of ``nbytes`` (a multiple of 8) with numpy or torch."""
    if backend == "numpy":
        import numpy as np

        src = np.ones(nbytes // 8, dtype=np.float64)
        dst = np.empty_like(src)
        return ProbeSession(lambda: np.copyto(dst, src)), {"numpy": np.__version__}
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    session = ProbeSession(lambda: dst.copy_(src), close=lambda: torch.set_num_threads(before),
                           synchronize=torch.cuda.synchronize if device == "cuda" else None)
    return session, {"torch": torch.__version__}


def _gemm(backend: str, size: int, dtype: str, threads: int | None, device: str) -> Built:
    if backend == "torch":
        return _torch_gemm(size, dtype, threads, device)
    if backend == "onnxruntime":
        return _onnxruntime_gemm(size, dtype, threads)
    return _numpy_gemm(size, dtype, threads)


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def _measure(spec: ProbeSpec, build: Callable[[], Built], protocol: ProtocolConfig, sink: Any,
             run_id: str, environment: dict[str, Any]) -> Any:
    """One probe, measured and stored; a backend that cannot build or run is stored as failed."""
    try:
        session, versions = build()
    except (ImportError, UnavailableError, RuntimeError, ValueError, MemoryError) as err:
        result = failed_probe(spec, f"{type(err).__name__}: {err}", run_id=run_id,
                              tag=CALIBRATE_TAG, environment=environment)
    else:
        try:
            result = measure_probe(spec, session, protocol, environment=environment, run_id=run_id,
                                   tag=CALIBRATE_TAG, extra={"versions": versions})
        finally:
            session.close()
    if sink is not None:
        sink.write(result)
    return result


def _figures(result: Any) -> dict[str, Any]:
    """What the calibration keeps of one probe's stored result."""
    if result.status.value != "ok":
        return {"status": result.status.value, "error": result.error}
    keep = ("best_rate_per_s", "median_rate_per_s", "median_rate_low_per_s", "median_rate_high_per_s",
            "versions")
    return {"status": "ok", "validity": result.validity.value, "reasons": list(result.reasons),
            "samples": result.measurement.count, "run_id": result.run_id,
            **{k: result.extra.get(k) for k in keep}}


def calibrate(device: str = "cpu", *, backends: Sequence[str] | None = None,
              gemm_size: int | None = None, copy_bytes: int | None = None, dtype: str = "float32",
              threads: int | None = None, protocol: ProtocolConfig | None = None,
              sink: Any = None) -> dict[str, Any]:
    """Measure the GEMM peak (FLOP/s) with every backend in ``backends`` (default: every one
    installed for ``device``) and the copy bandwidth (B/s); each probe is stored through
    ``sink`` (the store) with tag ``calibrate``. Returns the JSON-ready calibration:
    ``peak_flops_per_s`` (the fastest backend's best run), ``peak_backend``,
    ``bandwidth_bytes_per_s``, per-backend figures, the theoretical peak (CPU) and ``problems``
    (sentences; a measured peak above the theoretical one is one)."""
    from costmeter.harness.environment import capture
    from costmeter.harness.runner import new_run_id

    if device not in DEFAULT_GEMM_SIZE:
        raise ConfigError(f"cannot calibrate device {device!r}; use one of: cpu, cuda")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    known = GEMM_BACKENDS[device]
    if backends:
        unknown = [b for b in backends if b not in known]
        if unknown:
            raise ConfigError(f"backend {unknown[0]!r} cannot calibrate {device}; use "
                              f"{', '.join(known)}")
    chosen = [b for b in (backends or known) if dtype in BACKEND_DTYPES[b]
              and (backends or _installed(b))]
    if not chosen:
        raise ConfigError(f"no installed backend multiplies {dtype} on {device}; install torch "
                          "(pip install 'costmeter[torch]') or use --dtype float32")
    size = int(gemm_size or DEFAULT_GEMM_SIZE[device])
    buffer = int(copy_bytes or DEFAULT_COPY_BYTES[device]) // 8 * 8
    if size < 16 or buffer < 2**16:
        raise ConfigError("gemm size must be >= 16 and copy buffer >= 64 KiB")
    protocol = protocol or probe_protocol()
    run_id = new_run_id()
    environment = capture(threads=threads)
    flops = 2.0 * size**3
    gemm: dict[str, Any] = {}
    for backend in chosen:
        spec = ProbeSpec("gemm", backend, flops, "FLOP", device, dtype, threads, (size, size),
                         (("size", str(size)),), size**3)
        gemm[backend] = _figures(_measure(
            spec, lambda b=backend: _gemm(b, size, dtype, threads, device), protocol, sink, run_id,
            environment))
    copies: dict[str, Any] = {}
    for backend in [b for b in ("numpy", "torch") if (device == "cpu" or b == "torch") and _installed(b)]:
        spec = ProbeSpec("copy", backend, 2.0 * buffer, "B", device, "float32", threads, (buffer,),
                         (("buffer_bytes", str(buffer)),))
        copies[backend] = _figures(_measure(
            spec, lambda b=backend: _copy(b, buffer, threads, device), protocol, sink, run_id,
            environment))
    return _calibration(device, dtype, threads, size, buffer, gemm, copies, environment, run_id)


def _fastest(figures: dict[str, Any]) -> tuple[str | None, float | None]:
    rates = {b: f["best_rate_per_s"] for b, f in figures.items() if f.get("best_rate_per_s")}
    if not rates:
        return None, None
    backend = max(rates, key=rates.__getitem__)
    return backend, float(rates[backend])


def _calibration(device: str, dtype: str, threads: int | None, size: int, buffer: int,
                 gemm: dict[str, Any], copies: dict[str, Any], environment: dict[str, Any],
                 run_id: str) -> dict[str, Any]:
    peak_backend, peak = _fastest(gemm)
    copy_backend, bandwidth = _fastest(copies)
    if peak is None or bandwidth is None:
        failed = {**{f"gemm/{b}": f for b, f in gemm.items()}, **{f"copy/{b}": f for b, f in copies.items()}}
        first = next(iter(failed.items()), ("-", {"error": "no backend"}))
        raise UnavailableError(f"calibration failed: no {'GEMM' if peak is None else 'copy'} probe "
                               f"ran ({first[0]}: {first[1].get('error')}); install torch or numpy")
    problems = [f"{what} {b} is INVALID: {'; '.join(f['reasons'])}"
                for what, group in (("GEMM", gemm), ("copy", copies)) for b, f in group.items()
                if f.get("validity") == "INVALID"]
    theoretical = None
    if device == "cpu":
        from costmeter.harness.probes.isa import theoretical_peak

        estimate = theoretical_peak(dtype, threads)
        theoretical = {**estimate.to_dict(), "describe": estimate.describe()}
        if estimate.flops_per_s and peak > estimate.flops_per_s:
            problems.append(
                f"the measured peak ({peak / 1e9:.1f} GFLOP/s with {peak_backend}) is above the "
                f"theoretical one ({estimate.flops_per_s / 1e9:.1f} GFLOP/s): the theoretical figure "
                f"is too low for this CPU -- its clock ({estimate.clock.ghz:.3g} GHz from "
                f"{estimate.clock.source}) is below the running one, or it has more FMA units than assumed")
    return {
        "device": device, "dtype": dtype, "threads": threads,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "backend": peak_backend, "peak_backend": peak_backend, "peak_flops_per_s": peak,
        "bandwidth_backend": copy_backend, "bandwidth_bytes_per_s": bandwidth,
        "peak_rule": "the fastest backend's fastest run (other load only adds time)",
        "gemm": {"size": size, "flops": 2.0 * size**3, "backends": gemm},
        "copy": {"buffer_bytes": buffer, "bytes_moved": 2 * buffer, "backends": copies},
        "theoretical": theoretical, "problems": problems, "run_id": run_id,
        "host": platform.node(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "environment_cpu": environment.get("cpu"),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
