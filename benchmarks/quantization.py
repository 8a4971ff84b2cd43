"""What int8 buys on this CPU: fp32 and int8 median latency of zoo models on every runtime that
runs int8, measured interleaved (fp32, int8, fp32, int8, ... per round), with the speed-up and the
fidelity of the int8 outputs against fp32 torch on held-out inputs.

Prints the CPU's int8/bf16 ISA features first (VNNI, AMX from /proc/cpuinfo): they decide much of
the speed-up. Calibration is ``random:N`` (the zoo has random weights and no data set): fidelity
figures are therefore a lower bound on what calibrated real data gives.

Usage: python benchmarks/quantization.py [--models mobilenet_v2,resnet18,efficientnet_b0,bert_tiny]
       [--runtimes onnxruntime,openvino,executorch,litert,torch] [--rounds 3] [--min-time 1.5]
       [--threads N] [--workdir .costmeter]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from costmeter.devices.base import get_runtime
from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.convert.artifacts import CONVERTED_KINDS, converter_problem
from costmeter.harness.quantize.precision import runtime_precisions, with_precision
from costmeter.harness.runner import Runner, validate
from costmeter.results.schema import Status

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_int8", "amx_bf16", "amx_fp16")


def isa_features(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """(CPU model name, the int8/bf16-relevant flags it has, in :data:`ISA_FLAGS` order)."""
    model, flags = "?", set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "?":
                model = value.strip()
            if name.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in ISA_FLAGS if f in flags]


def usable(runtime: str) -> str | None:
    """Why ``runtime`` cannot run int8 here, or None."""
    adapter = get_runtime("cpu", runtime)
    ok, reason = adapter.is_available()
    if not ok:
        return reason
    if "int8" not in runtime_precisions(adapter):
        return "declares no int8"
    return converter_problem(adapter.artifact_kind) if adapter.artifact_kind in CONVERTED_KINDS else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18,efficientnet_b0,bert_tiny")
    parser.add_argument("--runtimes", default="onnxruntime,openvino,executorch,litert,torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calibration", default="random:32")
    parser.add_argument("--workdir", default=".costmeter")
    args = parser.parse_args()
    model_name, flags = isa_features()
    print(f"CPU: {model_name}")
    print(f"int8/bf16 ISA features: {', '.join(flags) or 'none of ' + ', '.join(ISA_FLAGS)}")
    runtimes = []
    for name in args.runtimes.split(","):
        problem = usable(name)
        if problem:
            print(f"skipping {name}: {problem}")
        else:
            runtimes.append(name)
    protocol = ProtocolConfig(warmup_count=5, warmup_s=0.3, min_count=20, min_time_s=args.min_time,
                              max_time_s=max(10.0, 4 * args.min_time), percentiles=(50.0,), max_cv=1.0)
    base = RunConfig(model="-", protocol=protocol, threads=args.threads, workdir=args.workdir,
                     check_outputs=False, timeout_s=3600)
    pairs = []
    for model in args.models.split(","):
        for runtime in runtimes:
            fp32 = replace(base, model=model, runtime=runtime)
            pairs.append((fp32, with_precision(fp32, "int8", args.calibration)))
    jobs = {cfg: job for cfg, job in zip([c for p in pairs for c in p], validate([c for p in pairs for c in p]))}
    runner = Runner(None, Path(args.workdir))
    medians: dict[Any, list[float]] = {}
    last: dict[Any, Any] = {}
    started = time.perf_counter()
    for round_index in range(args.rounds):
        for fp32, int8 in pairs:
            for cfg in (fp32, int8):
                result = runner.run_one(jobs[cfg], run_id=f"quant-bench-{round_index}")
                last[cfg] = result
                if result.status is Status.OK and result.measurement and result.measurement.count:
                    medians.setdefault(cfg, []).append(result.measurement.summary(percentiles=(50.0,)).median)
        print(f"round {round_index + 1}/{args.rounds} done after {time.perf_counter() - started:.0f} s", flush=True)
        print_table(pairs, medians, last)  # after every round: a long run can be stopped early
        sys.stdout.flush()


def print_table(pairs: list[tuple[Any, Any]], medians: dict[Any, list[float]], last: dict[Any, Any]) -> None:
    """Markdown table: p50 per precision (median over rounds), speed-up (median of per-round
    ratios), what really ran, quantization time and fidelity."""
    head = ("| model | runtime | fp32 p50 ms | int8 p50 ms | speed-up | ran | int8 recipe | quantize s "
            "| max abs diff | mean abs diff | cosine | top-1 agree |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for fp32, int8 in pairs:
        r8 = last.get(int8)
        a, b = medians.get(fp32, []), medians.get(int8, [])
        if not a or not b:
            # the reason, without the artifact's path that errors name first ("cannot load PATH: why")
            why = (r8.error or "").split(": ", 1)[-1][:160] if r8 is not None and r8.status is not Status.OK \
                else "no samples"
            print(f"| {fp32.model} | {fp32.runtime} | {_ms(a)} | {r8.status.value if r8 else '-'} | - | - | {why} "
                  "| - | - | - | - | - |")
            continue
        ratios = [x / y for x, y in zip(a, b)]
        e = r8.extra
        recipe = e.get("quant_recipe", {})
        recipe_text = f"{recipe.get('method', '?')}, {recipe.get('weights', '?')}"
        print(f"| {fp32.model} | {fp32.runtime} | {_ms(a)} | {_ms(b)} | {statistics.median(ratios):.2f}x "
              f"| {e.get('precision_effective', '?')} | {recipe_text} | {_num(e.get('quantize_s'), '{:.1f}')} "
              f"| {_num(e.get('fidelity_max_abs_diff'), '{:.2e}')} | {_num(e.get('fidelity_mean_abs_diff'), '{:.2e}')} "
              f"| {_num(e.get('fidelity_cosine'), '{:.4f}')} | {_num(e.get('fidelity_top1_agreement'), '{:.0%}')} |")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) / 1e6:.3g}" if values else "-"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else spec.format(value)


if __name__ == "__main__":
    main()
