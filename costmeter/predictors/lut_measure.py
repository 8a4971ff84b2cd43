"""Measure many blocks per isolated worker process (for latency lookup tables).

Cost model of the choice: a harness worker process per benchmark pays ~1-2 s of start-up
(interpreter, numpy, ONNX Runtime, environment capture) before it times anything; a table of
~1,250 blocks (ofa_mbv3 at all 25 resolutions) would spend most of its time starting processes.
So blocks are measured in *chunks* (:data:`DEFAULT_CHUNK` blocks): one child process
(``python -m costmeter.predictors.lut_measure``) prepares the blocks with the device's runtime
adapter and samples them, writing one JSON line per block as it finishes. A child that dies
(crash, timeout) loses nothing measured so far: the parent reruns the rest of the chunk one
block at a time in a fresh process and reports the block that killed it as failed.

Sampling: a block timed alone, run after run, keeps its weights and activations in cache,
which the same block inside a network does not (other blocks run in between and evict them),
so isolated blocks sum to less than the network. Blocks can be *interleaved*: groups of
``interleave`` blocks (default per space: :data:`DEFAULT_INTERLEAVE`) (shuffled, so a group mixes large and small ones) are
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

import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, MeasurementError
from costmeter.predictors.lut_blocks import (
    BlockSpec,
    block_input_count,
    build_block_module,
)

OPSET = 17
OVERHEAD_KEY = "__overhead__"
DEFAULT_CHUNK = 160
# round-robin group size per space: the best additivity of the sizes tried (1, 4, 20) on an x86 CPU
DEFAULT_INTERLEAVE: dict[str, int] = {"ofa_mbv3": 4, "nb201": 1}
Progress = Callable[[int, int], None]  # (blocks done, blocks total)


@dataclass(frozen=True)
class BlockTiming:
    """What one block measurement gives: median and robust spread (ms), sample count."""

    key: str
    median_ms: float
    spread_ms: float
    samples: int
    error: str | None = None


def lut_protocol(min_time_s: float = 0.05, min_count: int = 15) -> Any:
    """A short protocol for table entries: median-oriented, no percentile CIs."""
    from costmeter.harness.config import ProtocolConfig

    return ProtocolConfig(warmup_count=5, warmup_s=min(0.05, min_time_s), min_count=min_count,
                          min_time_s=min_time_s, max_time_s=max(2.0, 10 * min_time_s),
                          percentiles=(50.0,), auto_min_count=False, max_cv=0.5)


# ----------------------------------------------------------------------------- export
def export_block(spec: BlockSpec, workdir: Path | str) -> Path:
    """ONNX file of the block's module with symbolic batch/H/W, cached by module identity."""
    from costmeter.harness.export import cached_artifact

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.module_key)
    return cached_artifact(workdir, "lut", f"{safe}-opset{OPSET}", ".onnx",
                           lambda path: _export(spec, path))


def _export(spec: BlockSpec, path: Path) -> None:
    import torch

    module = build_block_module(spec)
    n_inputs = block_input_count(spec)
    names = ["input"] if n_inputs == 1 else [f"input_{i}" for i in range(n_inputs)]
    args = tuple(torch.randn(*spec.input_shape()) for _ in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    axes["output"] = {0: "batch"} if spec.output_hwc[:2] == (1, 1) else {
        0: "batch", 2: "out_height", 3: "out_width"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["output"], dynamic_axes=axes,
                          do_constant_folding=True)
    path.write_bytes(buffer.getvalue())


def pinned_model(onnx_bytes: bytes, shape: Sequence[int]) -> Any:
    """The ONNX model in ``onnx_bytes`` with every graph input pinned to ``shape``."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for dim, size in zip(value.type.tensor_type.shape.dim, shape):
            dim.dim_value = int(size)
    return model


def trim_output(model: Any) -> Any:
    """Return only the first element of the model's output (a Slice appended): the runtime still
    computes the whole block, but does not copy a large output back on every run, a cost that
    the same block inside a network does not pay."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    out = model.graph.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    for name, value in (("trim_starts", 0), ("trim_ends", 1)):
        model.graph.initializer.append(numpy_helper.from_array(np.full(rank, value, np.int64), name))
    model.graph.node.append(helper.make_node("Slice", [out.name, "trim_starts", "trim_ends"],
                                             ["trimmed_output"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("trimmed_output", TensorProto.FLOAT,
                                                            [1] * rank))
    return model


def static_copy(onnx_bytes: bytes, shape: Sequence[int], target: Path) -> Path:
    """Write the model with its inputs pinned to ``shape`` (see :func:`pinned_model`) and its
    output trimmed (see :func:`trim_output`), ready to be timed."""
    target.write_bytes(trim_output(pinned_model(onnx_bytes, shape)).SerializeToString())
    return target


def overhead_model_bytes() -> bytes:
    """An almost empty model: one Relu on a (1, 1) float tensor."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "overhead",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()


# ----------------------------------------------------------------------------- parent side
def measure_blocks(specs: Sequence[BlockSpec], device: str = "cpu", runtime: str = "onnxruntime",
                   workdir: Path | str = ".costmeter", threads: int | None = 1,
                   protocol: Any = None, options: Sequence[tuple[str, str]] = (),
                   chunk_size: int = DEFAULT_CHUNK, interleave: int = 1,
                   timeout_s: float = 600.0,
                   progress: Progress | None = None) -> tuple[dict[str, BlockTiming], dict[str, Any]]:
    """Measure every block; returns (key -> BlockTiming, facts: overhead_ms, environment, ...).

    ``interleave``: blocks sampled round-robin in groups of this size (1 = each block alone).
    The device and runtime are checked before anything is exported (ConfigError or
    UnavailableError with the fix). Blocks that fail carry ``error`` and NaN latencies.
    """
    import random

    check_runtime(device, runtime)
    if interleave < 1 or chunk_size < 1:
        raise ConfigError(f"--interleave and the chunk size must be >= 1 (got {interleave}, "
                          f"{chunk_size})")
    protocol = protocol or lut_protocol()
    workdir = Path(workdir)
    entries = [{"key": spec.key, "onnx": str(export_block(spec, workdir)),
                "shape": list(spec.input_shape()), "inputs": block_input_count(spec)}
               for spec in specs]
    random.Random(0).shuffle(entries)  # groups mix large and small blocks, as networks do
    overhead_path = workdir / "cache" / "lut" / "overhead.onnx"
    overhead_path.parent.mkdir(parents=True, exist_ok=True)
    overhead_path.write_bytes(overhead_model_bytes())
    overhead = {"key": OVERHEAD_KEY, "onnx": str(overhead_path), "shape": [1, 1], "inputs": 1}
    base = {"device": device, "runtime": runtime, "threads": threads, "overhead": overhead,
            "options": [list(kv) for kv in options], "protocol": _protocol_dict(protocol)}
    timings: dict[str, BlockTiming] = {}
    overheads: list[float] = []
    environment: dict[str, Any] = {}
    for start in range(0, len(entries), chunk_size):
        pending = entries[start:start + chunk_size]
        group = interleave
        while pending:
            lines, started, env, failure = _run_chunk({**base, "interleave": group}, pending,
                                                      timeout_s)
            environment = environment or env
            for line in lines:
                if line["key"] == OVERHEAD_KEY:
                    overheads.append(line["median_ms"])
                else:
                    timings[line["key"]] = BlockTiming(**line)
            pending = [e for e in pending if e["key"] not in timings]
            if failure is None or not pending:
                break
            if group > 1:  # find the culprit: run the rest one block at a time
                group = 1
                continue
            culprit = next((e for e in pending if e["key"] == started), pending[0])
            timings[culprit["key"]] = BlockTiming(culprit["key"], float("nan"), float("nan"), 0,
                                                  failure)
            pending = [e for e in pending if e is not culprit]
        if progress:
            progress(min(start + chunk_size, len(entries)), len(entries))
    if not overheads:
        raise MeasurementError("the per-run overhead model could not be measured; "
                               "check the runtime with `bench run --model <file.onnx>`")
    overheads.sort()
    facts = {"overhead_ms": overheads[len(overheads) // 2], "environment": environment,
             "protocol": base["protocol"], "chunk_size": chunk_size, "interleave": interleave}
    return timings, facts


def check_runtime(device: str, runtime: str) -> None:
    """Fail early unless ``runtime`` on ``device`` is installed, local and takes ONNX files."""
    from costmeter.devices.base import get_runtime, require_available
    from costmeter.harness.config import parse_device

    kind = parse_device(device)[0]
    if kind in ("ssh", "adb"):
        raise ConfigError(f"lookup tables are measured on local devices; {device!r} is remote -- "
                          "build the table on the board itself, or use --predicted")
    rt = get_runtime(kind, runtime)
    require_available(rt)
    if rt.artifact_kind != "onnx":
        raise ConfigError(f"lookup tables measure ONNX blocks; runtime {runtime!r} takes "
                          f"{rt.artifact_kind} artifacts; use an ONNX runtime such as onnxruntime")


def _protocol_dict(protocol: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(protocol)
    d["percentiles"] = list(protocol.percentiles)
    return d


def _run_chunk(base: dict[str, Any], entries: list[dict[str, Any]], timeout_s: float
               ) -> tuple[list[dict[str, Any]], str | None, dict[str, Any], str | None]:
    """Run one child on ``entries``: (result lines, key of the last block it started,
    environment, failure reason or None)."""
    with tempfile.TemporaryDirectory(prefix="costmeter-lut-") as tmp:
        job_path, out_path, err_path = (Path(tmp) / n for n in ("job.json", "out.jsonl", "err.txt"))
        job_path.write_text(json.dumps({**base, "entries": entries}))
        failure = None
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "costmeter.predictors.lut_measure",
                                     str(job_path), str(out_path)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc, failure = -9, f"timed out after {timeout_s:g} s"
        records = [json.loads(line) for line in out_path.read_text().splitlines()
                   if line.strip()] if out_path.exists() else []
        env = next((r["environment"] for r in records if "environment" in r), {})
        started = next((r["started"] for r in reversed(records) if "started" in r), None)
        lines = [r for r in records if "key" in r]
        if failure is None and rc != 0:
            tail = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
            failure = f"worker exited with code {rc}" + (f": {tail[-1][:200]}" if tail else "")
        return lines, started, env, failure


# ----------------------------------------------------------------------------- predicted
def predict_blocks(specs: Sequence[BlockSpec], predictor: Any, device: str, runtime: str,
                   workdir: Path | str) -> tuple[dict[str, BlockTiming], dict[str, Any], dict[str, Any]]:
    """Price every block with a kernel-level predictor instead of timing it.

    ``predictor`` is a fitted ``KernelForest`` or the path of a ``.costmodel`` file holding one
    (refused when fitted for another device or runtime). Each block's ONNX graph is fused into
    kernels with the runtime's rules (the detected set in ``workdir`` if any, else built-in)
    and the kernels' predictions are summed. Returns (timings, facts, predictor description).
    """
    from costmeter.predictors.features import stack_tables
    from costmeter.predictors.graph import load_graph
    from costmeter.predictors.kernel_rules import load_rules
    from costmeter.predictors.kernels import fuse

    estimator, info = _kernel_predictor(predictor, device, runtime)
    rules = load_rules(runtime, device, workdir)
    graphs = {}
    cache: dict[str, bytes] = {}
    for spec in specs:
        path = str(export_block(spec, workdir))
        if path not in cache:
            cache[path] = Path(path).read_bytes()
        graphs[spec.key] = fuse(load_graph(pinned_model(cache[path], spec.input_shape())), rules)
    frame = estimator.predict_with_uncertainty(stack_tables(graphs))
    timings = {}
    for spec in specs:  # a block without any kernel (an identity) costs nothing
        mean, std = ((float(frame.at[spec.key, "latency_ms"]), float(frame.at[spec.key, "std_ms"]))
                     if spec.key in frame.index else (0.0, 0.0))
        timings[spec.key] = BlockTiming(spec.key, mean, std, 0)
    info["fusion_rules"] = rules.runtime
    return timings, {"overhead_ms": 0.0, "environment": {}}, info


def _kernel_predictor(predictor: Any, device: str, runtime: str) -> tuple[Any, dict[str, Any]]:
    from costmeter.predictors.forest import KernelForest

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
    if not isinstance(estimator, KernelForest):
        raise ConfigError(f"--predicted needs a kernel-level predictor (KernelForest); got "
                          f"{type(estimator).__name__}; fit a KernelForest on kernel micro-benchmarks "
                          "and save it with predictors.artifacts.save_predictor")
    info["estimator"] = type(estimator).__name__
    info["kernel_types"] = list(getattr(estimator, "kernel_types_", ()))
    return estimator, info


# ----------------------------------------------------------------------------- child side
def _child(job_path: str, out_path: str) -> int:
    import numpy as np

    from costmeter.devices.base import Artifact, SessionOptions, get_runtime
    from costmeter.harness.config import ProtocolConfig, parse_device
    from costmeter.harness.environment import capture

    job = json.loads(Path(job_path).read_text())
    proto = dict(job["protocol"])
    proto["percentiles"] = tuple(proto["percentiles"])
    protocol = ProtocolConfig(**proto)
    kind, index = parse_device(job["device"])
    runtime = get_runtime(kind, job["runtime"])
    options = SessionOptions(threads=job["threads"], device_index=index,
                             options=tuple(tuple(kv) for kv in job["options"]))
    rng = np.random.default_rng(0)
    entries = job["entries"]
    group = max(1, int(job.get("interleave", 1)))
    with open(out_path, "a") as out, tempfile.TemporaryDirectory(prefix="lut-block-") as tmp:
        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        def prepare(entry: dict[str, Any], n: int) -> Any:
            data = Path(entry["onnx"]).read_bytes()
            path = static_copy(data, entry["shape"], Path(tmp) / f"b{n}.onnx")
            names = ["input"] if entry["inputs"] == 1 else [f"input_{i}" for i in range(entry["inputs"])]
            feeds = {name: rng.standard_normal(entry["shape"], dtype=np.float32) for name in names}
            return runtime.prepare(Artifact(kind="onnx", inputs=feeds, path=str(path)), options)

        emit({"environment": capture(threads=job["threads"])})
        overhead = job.get("overhead")
        plan = [[overhead]] if overhead else []
        plan += [entries[i:i + group] for i in range(0, len(entries), group)]
        plan += [[overhead]] if overhead else []
        for number, members in enumerate(plan):
            sessions = []
            try:
                for k, entry in enumerate(members):
                    emit({"started": entry["key"]})
                    sessions.append(prepare(entry, number * group + k))
                samples = _sample_group(sessions, protocol)
            finally:
                for session in sessions:
                    session.close()
            for entry, ns in zip(members, samples):
                emit(_summary(entry["key"], ns))
    return 0


def _summary(key: str, samples_ns: list[int]) -> dict[str, Any]:
    import numpy as np

    ns = np.asarray(samples_ns, dtype=np.float64)
    median = float(np.median(ns))
    mad = float(np.median(np.abs(ns - median)))
    return {"key": key, "median_ms": median / 1e6, "spread_ms": 1.4826 * mad / 1e6,
            "samples": int(ns.size)}


def _sample_group(sessions: list[Any], protocol: Any) -> list[list[int]]:
    """Samples (ns) per session. One session: the harness protocol as is. Several: the
    protocol's rules applied round-robin -- warm-up runs, then rounds in which every session
    runs once, timed alone, until every session has ``min_count`` samples and the rounds took
    ``min_time_s`` per session, stopping at ``max_time_s`` per session."""
    from costmeter.harness.protocol import sample

    if len(sessions) == 1:
        return [sample(sessions[0], protocol).samples_ns]
    clock = time.perf_counter_ns
    runs = [(s.run_once, None if getattr(s, "synchronous", False) else s.synchronize)
            for s in sessions]
    warm_until = clock() + int(protocol.warmup_s * 1e9)
    rounds = 0
    while rounds < protocol.warmup_count or clock() < warm_until:
        for run, sync in runs:
            run()
            if sync is not None:
                sync()
        rounds += 1
    samples: list[list[int]] = [[] for _ in sessions]
    min_ns = int(protocol.min_time_s * 1e9) * len(sessions)
    max_ns = int(protocol.max_time_s * 1e9) * len(sessions)
    start = clock()
    while True:
        for (run, sync), out in zip(runs, samples):
            t0 = clock()
            run()
            if sync is not None:
                sync()
            out.append(clock() - t0)
        elapsed = clock() - start
        if (len(samples[0]) >= protocol.min_count and elapsed >= min_ns) or elapsed >= max_ns:
            return samples


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1], sys.argv[2]))
