"""Measuring kernel micro-benchmarks, and keeping the results.

:func:`measure_kernels` writes each :class:`~costmeter.predictors.sampling.configs.KernelConfig` as a
tiny ONNX file, checks with the rule set that it forms exactly one kernel of its type (a config
that a runtime's rules split is reported, not measured), times it and returns
:class:`KernelSamples`: per kernel type, the named feature table and the latencies that
:class:`~costmeter.predictors.estimators.forest.KernelForest` fits.

Two ways to time a kernel. *Alone* (the default, nn-Meter's way): the kernel by itself, ``A``,
minus the per-run overhead ``O`` of an almost empty model. *In context* (``context=True``, for
image kernels, :data:`CONTEXT_TYPES` on 4-D tensors): the kernel between context ops (``A``: a
1x1 depthwise conv on every image input and on the output, see
:func:`~costmeter.models.onnx.microbench.context_chain`) and, for every boundary tensor ``T``, a
baseline of the context ops alone (``B_T``):

    latency = A - sum_T B_T / 2 + (|T| / 2 - 1) * O

What differs, on ONNX Runtime's x86 CPU provider: a kernel alone also pays a blocked-layout
(NCHWc) conversion of its input and output that a network pays only at a few places, so summed
kernels timed alone over-predict small networks; in context that cost is gone, but so is what
a network adds -- weights that stay in cache when one kernel runs again and again come from
memory when other kernels ran in between (a 960x1000 fully connected layer: 56 us warm, 248 us
after the caches were written over). Neither sum is right for every network:
``benchmarks/predictor_cpu_families.py`` compares both, raw and with correction terms fitted
on training networks. Token kernels (matmul, attention, softmax, layer norm, fc) are timed
alone either way.

Local runtimes that take ONNX files time the files in batch workers, a kernel and its baselines
sampled round-robin in one process, so slow drift of a shared machine cancels in their
difference; other runtimes and remote devices run each file through the harness runner in its
own worker, results optionally stored. Almost empty models timed at the start, middle and end
give ``O``.

Kernels the runtime folds at load time (kernel type ``constant``: ops computing only from
constants) never run; :meth:`KernelSamples.add_folded` gives them rows at
:data:`FOLDED_LATENCY_MS` so they are priced (at ~0) rather than dropped.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.predictors.kernels.features import kernel_features
from costmeter.predictors.kernels.fuse import fuse
from costmeter.predictors.kernels.rules import RuleSet
from costmeter.predictors.sampling.configs import KernelConfig, config_from_kernel
from costmeter.predictors.sampling.samples import (  # noqa: F401  (re-exported)
    CLOCKS, FOLDED_LATENCY_MS, FOLDED_TYPES, METHODS, KernelSamples, setting)
from costmeter.workdir import Workdir

MIN_KERNEL_MS = 1e-4  # floor of an overhead-corrected kernel latency (0.1 us)
OVERHEAD_REPEATS = 3

# groups of ONNX files (each group timed together) -> their median latencies (ms)
GroupMeasureFn = Callable[[list[list[Path]]], list[list[float]]]
CONTEXT_TYPES: tuple[str, ...] = ("conv", "dwconv", "conv_transpose", "pool", "global_pool",
                                  "elementwise", "activation", "concat", "norm", "se")
BATCH_CHUNK = 240  # files per batch worker
# in context, a kernel with at least this much weight is timed as copies with their own weights,
# round-robin, so that its weights come from memory as in a network (whose other kernels evict
# them): a 960x1000 fully connected layer took 56 us with its weights in cache, 248 us without
COLD_WEIGHT_BYTES = 256 * 1024
COLD_FOOTPRINT_BYTES = 64 * 1024 * 1024
MAX_COLD_COPIES = 12
BATCH_TIMEOUT_S = 1800.0


def _runner_measure(device: str, runtime: str, workdir: Path, threads: int | None,
                    min_time_s: float, sink: Any, progress: Any) -> GroupMeasureFn:
    """Each file in its own harness worker (any runtime the runner knows, remote devices too)."""
    from costmeter.predictors.sampling.micro_measure import measure_onnx, median_ms, micro_protocol

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        paths = [p for group in groups for p in group]
        results = measure_onnx(paths, device, runtime, workdir, micro_protocol(min_time_s),
                               threads, sink, tag="kernels-sample", progress=progress)
        medians = iter(median_ms(r) for r in results)
        return [[next(medians) for _ in group] for group in groups]

    return measure


def time_files(entries: list[dict[str, Any]], device: str, runtime: str, threads: int | None,
               protocol: Any, clock: str = "wall", progress: Any = None, sink: Any = None,
               tag: str = "kernels-sample") -> dict[str, dict[str, Any]]:
    """Time ONNX files in batch workers (local runtimes taking ONNX files): ``entries`` are
    ``{"key", "onnx", optional "group" and "shape"}``; returns key -> the worker's line
    (``median_ms``, ``min_ms``, ``spread_ms``, ``samples``; a NaN median when a run failed).
    ``sink`` receives every file's judged harness result (raw samples, verdict, environment),
    tagged ``tag``.

    ``clock="thread_cpu"`` times each run by the worker thread's CPU clock, so that time spent
    descheduled by other work on a shared core is not counted; ONNX Runtime runs a session on
    the calling thread at 1 intra-op thread, so this needs ``threads == 1``."""
    import tempfile
    from dataclasses import asdict

    from costmeter.harness.batch import OVERHEAD_KEY, measure_entries, overhead_model_bytes

    if clock not in CLOCKS:
        raise ConfigError(f"unknown clock {clock!r}; use one of {', '.join(CLOCKS)}")
    if clock == "thread_cpu" and threads != 1:
        raise ConfigError(f"the thread CPU clock times one intra-op thread; got threads={threads} "
                          "(time several threads by the wall clock)")
    with tempfile.TemporaryDirectory(prefix="costmeter-timing-") as tmp:
        overhead_path = Path(tmp) / "overhead.onnx"
        overhead_path.write_bytes(overhead_model_bytes())
        base = {"device": device, "runtime": runtime, "threads": threads, "options": [],
                "protocol": {**asdict(protocol), "percentiles": [50.0]}, "clock": clock,
                "overhead": {"key": OVERHEAD_KEY, "onnx": str(overhead_path), "shape": [1, 1]}}
        lines, _, _ = measure_entries(base, entries, BATCH_CHUNK, BATCH_TIMEOUT_S, progress,
                                      sink=sink, tag=tag)
    return lines


def _batch_measure(device: str, runtime: str, threads: int | None, min_time_s: float,
                   progress: Any, sink: Any = None, clock: str = "wall") -> GroupMeasureFn:
    """Every group sampled round-robin in a batch worker (local runtimes taking ONNX files)."""
    from costmeter.predictors.sampling.micro_measure import micro_protocol

    def measure(groups: list[list[Path]]) -> list[list[float]]:
        entries = [{"key": f"{g}/{i}", "onnx": str(path), "group": g}
                   for g, group in enumerate(groups) for i, path in enumerate(group)]
        lines = time_files(entries, device, runtime, threads, micro_protocol(min_time_s), clock,
                           progress, sink)
        by_key = {k: float(line["median_ms"]) for k, line in lines.items()}
        return [[by_key.get(f"{g}/{i}", float("nan")) for i in range(len(group))]
                for g, group in enumerate(groups)]

    return measure


def _default_measure(device: str, runtime: str, workdir: Path, threads: int | None,
                     min_time_s: float, sink: Any, progress: Any, clock: str) -> GroupMeasureFn:
    from costmeter.harness.batch import check_local_onnx_runtime

    try:
        check_local_onnx_runtime(device, runtime)
    except ConfigError:
        if clock != "wall":
            raise ConfigError(f"{runtime} on {device} is timed through the harness runner, by the "
                              "wall clock only; leave the thread CPU clock out") from None
        return _runner_measure(device, runtime, workdir, threads, min_time_s, sink, progress)
    return _batch_measure(device, runtime, threads, min_time_s, progress, sink, clock)


def measure_kernels(configs: Sequence[KernelConfig], rules: RuleSet, device: str = "cpu",
                    workdir: Path | str = ".costmeter", threads: int | None = 1,
                    min_time_s: float = 0.2, sink: Any = None,
                    measure: GroupMeasureFn | None = None, progress: Any = None,
                    context: bool = False, keep_artifacts: bool = False,
                    cpus: str = "", clock: str = "wall", precision: str = "fp32") -> KernelSamples:
    """Measure ``configs`` on ``device`` with ``rules.runtime``; see the module docstring.

    ``precision="int8"``: every micro-benchmark and baseline is quantized first
    (:mod:`costmeter.predictors.sampling.quantized`), and its kernel's features are those of the
    quantized kernel; the per-run overhead stays a float model.

    ``context``: image kernels measured between context ops, minus their baselines (default:
    alone, minus the per-run overhead). Failed runs are left out of the rows (their configs are
    neither split nor measured); ``measure`` replaces the measuring (groups of ONNX files ->
    their medians in ms), for tests. ``sink`` receives every kernel's judged harness result (raw
    samples, verdict, environment), from the batch children or, where each file runs in its own
    worker (runtimes that do not take ONNX files, remote devices), from the runner.

    The micro-benchmark files go to a folder of their own under the working folder's
    ``kernels/micro``, removed once they are measured (or when measuring fails) unless
    ``keep_artifacts``. ``threads``, ``cpus`` (the pinning of this process, inherited by
    the workers; recorded only) and ``clock`` (see :func:`time_files`) are kept with the samples.
    """
    import shutil
    import uuid

    from costmeter.predictors.sampling.quantized import check_micro_precision

    check_micro_precision(precision, rules.runtime)
    workdir = Path(workdir)
    folder = Workdir.of(workdir).micro_models / f"run-{uuid.uuid4().hex[:12]}"
    measure = measure or _default_measure(device, rules.runtime, workdir, threads, min_time_s,
                                          sink, progress, clock)
    try:
        samples = _measure_in(folder, configs, rules, measure, device, threads, cpus, context,
                              precision)
        samples.clock = clock
        return samples
    finally:
        if not keep_artifacts:
            shutil.rmtree(folder, ignore_errors=True)


def _measure_in(folder: Path, configs: Sequence[KernelConfig], rules: RuleSet,
                measure: GroupMeasureFn, device: str, threads: int | None, cpus: str,
                context: bool, precision: str = "fp32") -> KernelSamples:
    from costmeter.models.onnx.graph import load_graph
    from costmeter.models.onnx.microbench import chain_model, write_model
    from costmeter.predictors.sampling.quantized import quantize_model, sampled_kernels

    quantize = quantize_model if precision == "int8" else None

    samples = KernelSamples(device=device, runtime=rules.runtime,
                            method="context" if context else "isolated", threads=threads,
                            cpus=cpus)
    planned: list[tuple[KernelConfig, dict[str, float], list[list[Path]], list[int]]] = []
    queue, seen = list(configs), {c.key for c in configs}
    while queue:
        config = queue.pop(0)
        try:
            model = config.build() if quantize is None else quantize(config.build())
            kernels = sampled_kernels(fuse(load_graph(model), rules),
                                      {i.name for i in model.graph.input}, FOLDED_TYPES)
            if len(kernels) != 1 or kernels[0].kernel_type != config.kernel_type:
                samples.split.append(config)
                if quantize is not None:  # measure the kernels a quantized network runs instead
                    pieces = [p for p in map(config_from_kernel, kernels) if p and p.key not in seen]
                    seen.update(p.key for p in pieces)
                    queue += pieces
                continue
            values = kernel_features(kernels[0])
            kernel_groups, weights = _kernel_files(config, model, folder, context, rules,
                                                   values["weight_bytes"], quantize)
        except UnsupportedError:  # a quantizer that fails on the micro-benchmark: not measurable
            samples.split.append(config)
            continue
        planned.append((config, values, kernel_groups, weights))
    if not planned:
        return samples
    overhead_file = write_model(chain_model([("Relu", {})], (1, 1), "overhead"), folder, "overhead")
    step = max(1, len(planned) // (OVERHEAD_REPEATS - 1))
    groups: list[list[Path]] = []
    for index, (_, _, kernel_groups, _) in enumerate(planned):
        if index % step == 0:
            groups.append([overhead_file])
        groups += kernel_groups
    groups.append([overhead_file])
    medians = measure(groups)
    overhead_values = [m[0] for g, m in zip(groups, medians) if g == [overhead_file] and m[0] == m[0]]
    overhead = statistics.median(overhead_values) if overhead_values else 0.0
    kernel_medians = iter(m for g, m in zip(groups, medians) if g != [overhead_file])
    for config, values, kernel_groups, weights in planned:
        timed = [next(kernel_medians) for _ in kernel_groups]
        if any(t != t for group in timed for t in group):  # NaN: a run failed
            continue
        # in context: A - sum(B)/2 + (|B|/2 - 1) * overhead; alone: A - overhead
        raw, baseline = _corrected(timed[0], weights, overhead)
        row = {"key": config.key, "kernel_type": config.kernel_type,
               "config": json.dumps(config.to_dict(), sort_keys=True), "features": values,
               "raw_ms": raw, "overhead_ms": overhead, "baseline_ms": baseline,
               "latency_ms": max(raw - baseline, MIN_KERNEL_MS), "cold_ms": float("nan"),
               "source": "measured", "rounds": 1}
        if context:
            cold_raw, cold_baseline = _corrected(timed[-1], weights, overhead)
            row["cold_ms"] = max(cold_raw - cold_baseline, MIN_KERNEL_MS)
        samples.rows.append(row)
    return samples


def _corrected(timed: list[float], weights: list[int], overhead: float) -> tuple[float, float]:
    """(kernel median, baseline) of one timed group: the kernel copies, then the baselines."""
    copies = len(timed) - len(weights)
    boundaries = sum(weights)
    baseline = (sum(w * t for w, t in zip(weights, timed[copies:])) / 2
                + (1 - boundaries / 2) * overhead)
    return statistics.median(timed[:copies]), baseline


def _kernel_files(config: KernelConfig, model: Any, folder: Path, context: bool,
                  rules: RuleSet, weight_bytes: float,
                  quantize: Callable[[Any], Any] | None = None) -> tuple[list[list[Path]], list[int]]:
    """The groups of files timed for one kernel and how many boundaries each baseline stands
    for. Alone: the kernel (``model``, already quantized when ``quantize`` is given). In
    context: the kernel and one baseline per distinct boundary shape; when its weights are large
    (:func:`cold_copies`), a second group with copies of the kernel that have their own weights,
    and the baselines again. ``quantize`` (a model -> its int8 model) is applied to every file
    built here."""
    from costmeter.models.onnx.microbench import (
        chain_model,
        context_baseline,
        context_chain,
        write_model,
    )

    def q(built: Any) -> Any:
        return quantize(built) if quantize is not None else built

    if not context:
        return [[write_model(model, folder, config.kernel_type)]], []
    ops = [(op, dict(p)) for op, p in config.ops]
    name = f"{config.kernel_type}_{config.key}"
    seeds = range(cold_copies(weight_bytes) + 1)
    if config.kernel_type not in CONTEXT_TYPES or len(config.input_shape) != 4:
        files = [write_model(q(chain_model(ops, config.input_shape, name, seed)), folder,
                             config.kernel_type) for seed in seeds]
        return ([files[:1], files[1:]] if len(files) > 2 else [files[:1]]), []
    barrier = _fuses_into_edge(config, rules)
    files = []
    for seed in seeds:
        in_context, boundary = context_chain(ops, config.input_shape, name, barrier, seed)
        files.append(write_model(q(in_context), folder, f"{config.kernel_type}_ctx"))
    shapes = sorted(set(boundary))
    baselines = [write_model(q(context_baseline(shape, barrier)), folder, "baseline")
                 for shape in shapes]
    groups = [[files[0], *baselines]] + ([[*files[1:], *baselines]] if len(files) > 2 else [])
    return groups, [boundary.count(shape) for shape in shapes]


def cold_copies(weight_bytes: float) -> int:
    """Copies of a kernel, each with its own weights, timed round-robin so that each finds its
    weights evicted by the others' (:data:`COLD_FOOTPRINT_BYTES` in all, at most
    :data:`MAX_COLD_COPIES`); none for kernels with less than :data:`COLD_WEIGHT_BYTES` of
    weights (their cold latency is the warm one)."""
    if weight_bytes < COLD_WEIGHT_BYTES:
        return 0
    return max(2, min(MAX_COLD_COPIES, math.ceil(COLD_FOOTPRINT_BYTES / weight_bytes)))


def _fuses_into_edge(config: KernelConfig, rules: RuleSet) -> bool:
    """Whether the rules fuse the kernel's first op into a conv right before it."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.models.onnx.microbench import EDGE_OP, chain_model

    model = chain_model([EDGE_OP, *[(op, dict(p)) for op, p in config.ops]], config.input_shape)
    first = fuse(load_graph(model), rules).kernels[0]
    return len(first.ops) > 1


def samples_path(workdir: Path | str, device: str, runtime: str, precision: str = "fp32") -> Path:
    """Where the kernel samples of ``runtime`` on ``device`` at ``precision`` are kept."""
    return Workdir.of(workdir).kernel_samples(device, precision_slot(runtime, precision))


def precision_slot(runtime: str, precision: str = "fp32") -> str:
    """The name a runtime's files at ``precision`` go under (``onnxruntime``, ``onnxruntime-int8``)."""
    return runtime if precision == "fp32" else f"{runtime}-{precision}"
