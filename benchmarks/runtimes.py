"""Every CPU runtime side by side: median latency of zoo models at batch 1, and the ratio to
ONNX Runtime, measured in one run (conversions cached in the working folder).

Models: mobilenet_v2, resnet18 and the BERT-Tiny transformer encoder (``bert_tiny``). Runtimes:
every installed one among torch, torch_compile, onnxruntime, openvino (f32, and the plugin's
default precision, which is bf16 on AMX/AVX512-BF16 CPUs), tvm (untuned unless --tvm-trials),
litert and executorch. With ``--rounds N`` the whole set runs N times, interleaved, and the
median of the per-round medians is printed (timings on shared machines drift between runs).

Usage: python benchmarks/runtimes.py [--models mobilenet_v2,resnet18,bert_tiny] [--threads N]
       [--rounds 1] [--min-time 2] [--tvm-trials 0] [--workdir .costmeter]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from costmeter.devices.base import get_runtime
from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.convert.artifacts import CONVERTED_KINDS, converter_problem
from costmeter.harness.runner import Runner, validate
from costmeter.results.schema import Status, Validity

RUNTIMES: list[tuple[str, dict[str, str]]] = [
    ("torch", {}), ("torch_compile", {}), ("onnxruntime", {}), ("openvino", {"precision": "f32"}),
    ("openvino", {"precision": "default"}), ("tvm", {}), ("litert", {}), ("executorch", {}),
]


def usable(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here, or None."""
    adapter = get_runtime("cpu", runtime)
    ok, reason = adapter.is_available()
    if not ok:
        return reason
    return converter_problem(adapter.artifact_kind) if adapter.artifact_kind in CONVERTED_KINDS else None


def label(runtime: str, options: dict[str, str]) -> str:
    """``openvino[precision=default]`` style label."""
    shown = {k: v for k, v in options.items() if k != "tuning_trials" or v != "0"}
    return runtime + (f"[{','.join(f'{k}={v}' for k, v in sorted(shown.items()))}]" if shown else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet18,bert_tiny")
    ap.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: each one's own)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=2.0, help="sampling seconds per benchmark")
    ap.add_argument("--tvm-trials", type=int, default=0, help="MetaSchedule trials for tvm (0 = untuned)")
    ap.add_argument("--workdir", type=Path, default=Path(".costmeter"))
    args = ap.parse_args()

    protocol = ProtocolConfig(warmup_count=10, warmup_s=0.5, min_count=50, min_time_s=args.min_time,
                              max_time_s=max(30.0, args.min_time * 5), percentiles=(50.0, 90.0))
    runtimes: list[tuple[str, dict[str, str]]] = []
    for name, options in RUNTIMES:
        why = usable(name)
        if why:
            print(f"skipping {name}: {why}", file=sys.stderr)
            continue
        if name == "tvm" and args.tvm_trials:
            options = {**options, "tuning_trials": str(args.tvm_trials)}
        runtimes.append((name, options))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [RunConfig(model=m, runtime=r, options=tuple(o.items()), threads=args.threads, protocol=protocol,
                         workdir=str(args.workdir), timeout_s=3600)
               for m in models for r, o in runtimes]
    jobs = validate(configs)
    runner = Runner(None, args.workdir)
    medians: dict[tuple[str, str], list[float]] = {}
    last: dict[tuple[str, str], Any] = {}
    started = time.perf_counter()
    for round_index in range(args.rounds):
        for job in jobs:
            result = runner.run([job])[0]
            key = (job.config.model, label(job.config.runtime, dict(job.config.options)))
            last[key] = result
            if result.status is Status.OK and result.measurement is not None:
                medians.setdefault(key, []).append(result.measurement.summary(percentiles=(50.0,)).median / 1e6)
            print(f"round {round_index + 1}/{args.rounds} {key[0]:<13} {key[1]:<28} "
                  f"{result.status.value}", file=sys.stderr, flush=True)
    print_table(models, [label(r, o) for r, o in runtimes], medians, last)
    print(f"\n{len(jobs)} benchmarks x {args.rounds} round(s) in {time.perf_counter() - started:.0f} s; "
          f"threads={args.threads or 'runtime default'}; ratio = median / ONNX Runtime median (lower is faster)")


def print_table(models: list[str], labels: list[str], medians: dict[tuple[str, str], list[float]],
                last: dict[tuple[str, str], Any]) -> None:
    """Median ms, ratio to ONNX Runtime, parity and preparation time per model and runtime."""
    header = f"{'model':<13} {'runtime':<28} {'median ms':>10} {'vs ORT':>7} {'max|Δ| torch':>12} " \
             f"{'prepare s':>9}  status"
    print(header)
    print("-" * len(header))
    for model in models:
        ort = medians.get((model, "onnxruntime"))
        ort_ms = statistics.median(ort) if ort else None
        for name in labels:
            result = last.get((model, name))
            if result is None:
                continue
            values = medians.get((model, name))
            if not values:
                print(f"{model:<13} {name:<28} {'-':>10} {'-':>7} {'-':>12} {'-':>9}  "
                      f"{result.status.value}: {result.error}")
                continue
            ms = statistics.median(values)
            ratio = f"{ms / ort_ms:.2f}" if ort_ms else "-"
            diff = result.extra.get("max_abs_diff")
            prepare = result.extra.get("prepare_s")
            status = "VALID" if result.validity is Validity.VALID else "INVALID: " + "; ".join(result.reasons)[:60]
            print(f"{model:<13} {name:<28} {ms:>10.3f} {ratio:>7} "
                  f"{'-' if diff is None else f'{diff:.1e}':>12} {'-' if prepare is None else f'{prepare:.1f}':>9}  "
                  f"{status}")


if __name__ == "__main__":
    main()
