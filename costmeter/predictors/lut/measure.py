"""Measure many blocks per isolated worker process (for latency lookup tables).

Cost model of the choice: a harness worker process per benchmark pays ~1-2 s of start-up
(interpreter, numpy, ONNX Runtime, environment capture) before it times anything; a table of
~1,250 blocks (ofa_mbv3 at all 25 resolutions) would spend most of its time starting processes.
So blocks are measured in *chunks* (:data:`DEFAULT_CHUNK` blocks): one child process
(``costmeter.harness.batch``) prepares the blocks with the device's runtime
adapter and samples them, writing one JSON line per block as it finishes. A child that dies
(crash, timeout) loses nothing measured so far: the parent reruns the rest of the chunk one
block at a time in a fresh process and reports the block that killed it as failed.

Sampling: a block timed alone, run after run, keeps its weights and activations in cache,
which the same block inside a network does not (other blocks run in between and evict them),
so isolated blocks sum to less than the network. Blocks can be *interleaved*: groups of
``interleave`` blocks (default per space: its ``lut.INTERLEAVE``) (shuffled, so a group mixes large and small ones) are
sampled round-robin, each run timed alone, with the harness protocol's rules (warm-up count
and time, minimum count and time, maximum time). Too large a group overshoots (every block's
input is then cold, while in a network it was just written by the previous block): against
the measured medians of 20 ofa_mbv3 networks (ONNX Runtime, one thread, x86 CPU), the table's
median error was -13 % with blocks alone, -9 % with groups of 4 and +25 % with groups of 20
(Spearman rho 0.98 in all three). NB201's blocks are single ops of tens of microseconds whose
weights stay in cache anyway; interleaving them only added cold-input cost (+21 % against
+14 % alone), so its default is 1. ``interleave=1`` samples each block alone with
:func:`costmeter.harness.protocol.sample`.

Each torch block module is exported to ONNX once with symbolic H/W (content-addressed cache
under ``<workdir>/cache/lut``); the child pins the input to the block's size before loading,
so ONNX Runtime sees static shapes as in a whole exported network, and trims the output to
one element (:func:`trim_output`) so that no run pays for copying a large output back.

Per-run overhead: an almost empty model (one Relu on one element) is measured at the start
and at the end of every chunk; its median is the fixed cost of one ``run`` call, which a table
subtracts from every block and adds back once per network.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError
from costmeter.workdir import Workdir
from costmeter.harness.batch import (  # noqa: F401  (re-exported for callers and tests)
    OPSET,
    OVERHEAD_KEY,
    Progress,
    check_local_onnx_runtime,
    measure_entries,
    overhead_model_bytes,
    pinned_model,
    run_batch,
    static_copy,
    trim_output,
)
from costmeter.predictors.lut.blocks import (
    BlockSpec,
    block_input_count,
    build_block_module,
)

DEFAULT_CHUNK = 160
# round-robin group size per space: the best additivity of the sizes tried (1, 4, 20) on an x86 CPU


@dataclass(frozen=True)
class BlockTiming:
    """What one block measurement gives: median and robust spread (ms), sample count, and the
    protocol's verdict on it (``validity`` VALID/INVALID, None when predicted, with reasons)."""

    key: str
    median_ms: float
    spread_ms: float
    samples: int
    error: str | None = None
    validity: str | None = None
    reasons: tuple[str, ...] = ()
    hit_max_time: bool = False

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> BlockTiming:
        """From a judged batch line (:func:`costmeter.harness.batch.judged_line`)."""
        return cls(line["key"], float(line["median_ms"]), float(line["spread_ms"]),
                   int(line["samples"]), line.get("error"), line.get("validity"),
                   tuple(line.get("reasons") or ()), bool(line.get("hit_max_time")))


def lut_protocol(min_time_s: float = 0.05, min_count: int = 15) -> Any:
    """A short protocol for table entries: median-oriented, no percentile CIs. Sampling goes on
    past the minimums until the median is within +-2%: enough for a cost model whose own errors
    are several percent."""
    from costmeter.harness.config import ProtocolConfig

    return ProtocolConfig(warmup_count=5, warmup_s=min(0.05, min_time_s), min_count=min_count,
                          min_time_s=min_time_s, max_time_s=max(2.0, 10 * min_time_s),
                          percentiles=(50.0,), auto_min_count=False, max_cv=0.5, max_rel_ci=0.02)


# ----------------------------------------------------------------------------- export
def export_block(spec: BlockSpec, workdir: Path | str) -> Path:
    """ONNX file of the block's module with symbolic batch/H/W, cached by module identity."""
    from costmeter.models.export import cached_artifact

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.module_key)
    return cached_artifact(workdir, "lut", f"{safe}-opset{OPSET}", ".onnx",
                           lambda path: _export(spec, path))


def _export(spec: BlockSpec, path: Path) -> None:
    import torch

    from costmeter.models.export import export_module

    module = build_block_module(spec)
    n_inputs = block_input_count(spec)
    names = ["input"] if n_inputs == 1 else [f"input_{i}" for i in range(n_inputs)]
    args = tuple(torch.randn(*spec.input_shape()) for _ in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    axes["output"] = {0: "batch"} if spec.output_hwc[:2] == (1, 1) else {
        0: "batch", 2: "out_height", 3: "out_width"}
    export_module(module, args, path, OPSET, names, ["output"], axes, spec.key)


# ----------------------------------------------------------------------------- parent side
def measure_blocks(specs: Sequence[BlockSpec], device: str = "cpu", runtime: str = "onnxruntime",
                   workdir: Path | str = ".costmeter", threads: int | None = 1,
                   protocol: Any = None, options: Sequence[tuple[str, str]] = (),
                   chunk_size: int = DEFAULT_CHUNK, interleave: int = 1,
                   timeout_s: float = 600.0,
                   progress: Progress | None = None,
                   precision: str = "fp32", sink: Any = None,
                   tag: str | None = "lut") -> tuple[dict[str, BlockTiming], dict[str, Any]]:
    """Measure every block; returns (key -> BlockTiming, facts: overhead_ms, environment, ...).

    ``precision`` int8 quantizes every block's ONNX file as ``bench run --precision int8`` does
    for ONNX Runtime (:func:`costmeter.harness.convert.quantize.quantize_block_onnx`).

    ``interleave``: blocks sampled round-robin in groups of this size (1 = each block alone).
    The device and runtime are checked before anything is exported (ConfigError or
    UnavailableError with the fix). Blocks that fail carry ``error`` and NaN latencies.
    ``sink`` (the store: anything with ``write(result)``) receives every block's judged result (raw samples, verdict,
    environment) under ``tag``, as model ``lut:<block key>``.
    """
    import random

    check_local_onnx_runtime(device, runtime)
    if interleave < 1 or chunk_size < 1:
        raise ConfigError(f"--interleave and the chunk size must be >= 1 (got {interleave}, "
                          f"{chunk_size})")
    protocol = protocol or lut_protocol()
    workdir = Path(workdir)
    if precision not in ("fp32", "int8"):
        raise ConfigError(f"lookup tables are built in fp32 or int8, not {precision!r}")
    entries = [{"key": spec.key, "onnx": str(_block_file(spec, workdir, precision)),
                "shape": list(spec.input_shape()), "model_id": f"lut:{spec.key}"}
               for spec in specs]
    random.Random(0).shuffle(entries)  # groups mix large and small blocks, as networks do
    overhead_path = Workdir.of(workdir).cache("lut") / "overhead.onnx"
    overhead_path.parent.mkdir(parents=True, exist_ok=True)
    overhead_path.write_bytes(overhead_model_bytes())
    overhead = {"key": OVERHEAD_KEY, "onnx": str(overhead_path), "shape": [1, 1]}
    base = {"device": device, "runtime": runtime, "threads": threads, "overhead": overhead,
            "options": [list(kv) for kv in options], "protocol": _protocol_dict(protocol)}
    lines, overheads, environment = measure_entries(
        {**base, "interleave": interleave}, entries, chunk_size, timeout_s, progress,
        sink=sink, tag=tag)
    timings = {key: BlockTiming.from_line(line) for key, line in lines.items()}
    facts = {"overhead_ms": overheads[len(overheads) // 2], "environment": environment,
             "protocol": base["protocol"], "chunk_size": chunk_size, "interleave": interleave}
    return timings, facts


def _block_file(spec: BlockSpec, workdir: Path, precision: str) -> Path:
    """The block's ONNX file, quantized for int8 tables."""
    path = export_block(spec, workdir)
    if precision == "int8":
        from costmeter.harness.convert.quantize import quantize_block_onnx

        return quantize_block_onnx(path, tuple(spec.input_shape()), workdir)
    return path


def _protocol_dict(protocol: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(protocol)
    d["percentiles"] = list(protocol.percentiles)
    return d


# ----------------------------------------------------------------------------- predicted
def predict_blocks(specs: Sequence[BlockSpec], predictor: Any, device: str, runtime: str,
                   workdir: Path | str) -> tuple[dict[str, BlockTiming], dict[str, Any], dict[str, Any]]:
    """Price every block with a kernel-level predictor instead of timing it.

    ``predictor`` is a fitted ``KernelForest`` or the path of a ``.costmodel`` file holding one
    (refused when fitted for another device or runtime). Each block's ONNX graph is fused into
    kernels with the runtime's rules (the detected set in ``workdir`` if any, else built-in)
    and the kernels' predictions are summed. Returns (timings, facts, predictor description).
    """
    from costmeter.predictors.kernels.features import stack_tables

    estimator, info = _kernel_predictor(predictor, device, runtime)
    graphs, rules = block_graphs(specs, device, runtime, workdir)
    frame = estimator.predict_with_uncertainty(stack_tables(graphs))
    timings = {}
    for spec in specs:  # a block without any kernel (an identity) costs nothing
        mean, std = ((float(frame.at[spec.key, "latency_ms"]), float(frame.at[spec.key, "std_ms"]))
                     if spec.key in frame.index else (0.0, 0.0))
        timings[spec.key] = BlockTiming(spec.key, mean, std, 0)
    info["fusion_rules"] = rules.runtime
    return timings, {"overhead_ms": 0.0, "environment": {}}, info


def block_graphs(specs: Sequence[BlockSpec], device: str, runtime: str,
                 workdir: Path | str) -> tuple[dict[str, Any], Any]:
    """(key -> fused kernel graph of the block's ONNX file at its input size, fusion rules):
    the runtime's rules detected in ``workdir`` if any, else the built-in ones."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.kernels.rules import load_rules

    rules = load_rules(runtime, device, workdir)
    graphs = {}
    cache: dict[str, bytes] = {}
    for spec in specs:
        path = str(export_block(spec, workdir))
        if path not in cache:
            cache[path] = Path(path).read_bytes()
        graphs[spec.key] = fuse(load_graph(pinned_model(cache[path], spec.input_shape())), rules)
    return graphs, rules


def _kernel_predictor(predictor: Any, device: str, runtime: str) -> tuple[Any, dict[str, Any]]:
    from costmeter.predictors.estimators.forest import KernelForest
    from costmeter.predictors.estimators.network import NetworkPredictor

    info: dict[str, Any] = {"path": None}
    if isinstance(predictor, (str, Path)):
        from costmeter.predictors.artifacts import load_predictor, read_manifest

        manifest = read_manifest(predictor)
        estimator = load_predictor(predictor, device=device, runtime=runtime)
        info.update(path=str(predictor), device=manifest.get("device"),
                    runtime=manifest.get("runtime"), feature_schema=manifest.get("feature_schema"),
                    created_at=manifest.get("created_at"))
    else:
        estimator = predictor
    if isinstance(estimator, NetworkPredictor):  # block sums use its kernel forests alone
        estimator = estimator.kernel_forest_
    if not isinstance(estimator, KernelForest):
        raise ConfigError(f"--predicted needs a kernel-level predictor (KernelForest); got "
                          f"{type(estimator).__name__}; fit a KernelForest on kernel micro-benchmarks "
                          "and save it with predictors.artifacts.save_predictor")
    info["estimator"] = type(estimator).__name__
    info["kernel_types"] = list(getattr(estimator, "kernel_types_", ()))
    return estimator, info
