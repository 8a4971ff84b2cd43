"""Many small ONNX benchmarks in one isolated child process (lookup-table blocks, kernels).

A worker process per benchmark pays ~1-2 s of start-up before it times anything, which dominates
when thousands of blocks of tens of microseconds are measured. ``run_batch`` starts one child
(``python -m costmeter.harness.batch JOB OUT``) that prepares each entry with the device's
runtime adapter and samples it with the protocol (alone, or interleaved round-robin in groups:
:func:`costmeter.harness.protocol.sample_group`, which samples until every entry's median is
pinned or the time limit is hit), writing one judged JSON line per entry as it finishes (raw
samples, flags and verdict: :func:`judged_line`), so a crash loses nothing measured before it.
Each entry's model is pinned to static input shapes and its output trimmed to one element before
it is timed (see :func:`static_copy`). Entries that carry the same ``group`` value, one after the
other, are sampled round-robin together (an in-context kernel measurement and its baselines, so
drift of the machine cancels in their difference); otherwise the job's ``interleave`` size groups them.
:func:`measure_entries` runs a list of entries in chunks, recovering from a child that dies.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, MeasurementError

OPSET = 17
OVERHEAD_KEY = "__overhead__"
Progress = Callable[[int, int], None]  # (entries done, entries total)


def pinned_model(onnx_bytes: bytes, shape: Sequence[int] | None) -> Any:
    """The ONNX model in ``onnx_bytes`` with every graph input pinned to ``shape``, or, when
    ``shape`` is None, with each input's symbolic dimensions (the batch) pinned to 1."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        sizes = shape if shape is not None else [d.dim_value or 1 for d in dims]
        for dim, size in zip(dims, sizes):
            dim.dim_value = int(size)
    return model


def input_shapes(model: Any) -> dict[str, list[int]]:
    """Static shape of every graph input (initializers excluded) of a pinned model."""
    initializers = {t.name for t in model.graph.initializer}
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in initializers}


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


def static_copy(onnx_bytes: bytes, shape: Sequence[int] | None, target: Path) -> dict[str, list[int]]:
    """Write the model with its inputs pinned (see :func:`pinned_model`) and its output trimmed
    (see :func:`trim_output`), ready to be timed; returns the input shapes."""
    model = pinned_model(onnx_bytes, shape)
    target.write_bytes(trim_output(model).SerializeToString())
    return input_shapes(model)


def overhead_model_bytes() -> bytes:
    """An almost empty model: one Relu on a (1, 1) float tensor."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "overhead",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()


def check_local_onnx_runtime(device: str, runtime: str) -> None:
    """Fail early unless ``runtime`` on ``device`` is installed, local and takes ONNX files."""
    from costmeter.devices.base import get_runtime, require_available
    from costmeter.harness.config import DeviceSpec

    kind = DeviceSpec.parse(device).kind
    if kind in ("ssh", "adb"):
        raise ConfigError(f"batches of blocks are measured on local devices; {device!r} is remote -- "
                          "build the table on the board itself, or use --predicted")
    rt = get_runtime(kind, runtime)
    require_available(rt)
    if rt.artifact_kind != "onnx":
        raise ConfigError(f"batches measure ONNX blocks; runtime {runtime!r} takes "
                          f"{rt.artifact_kind} artifacts; use an ONNX runtime such as onnxruntime")


def run_batch(base: dict[str, Any], entries: list[dict[str, Any]], timeout_s: float
               ) -> tuple[list[dict[str, Any]], str | None, dict[str, Any], str | None]:
    """Run one child on ``entries`` (each: key, onnx path, shape, inputs): (result lines, key of
    the last entry it started, environment, failure reason or None). Never raises for what the
    child does: a crash or timeout comes back as the failure reason."""
    from costmeter.harness.launcher import launch, scratch_dir

    with scratch_dir("batch-") as tmp:
        job_path, out_path, err_path = (tmp / n for n in ("job.json", "out.jsonl", "err.txt"))
        job_path.write_text(json.dumps({**base, "entries": entries}))
        done = launch([sys.executable, "-m", "costmeter.harness.batch", str(job_path), str(out_path)],
                      timeout_s=timeout_s, stderr_path=err_path)
        failure = f"timed out after {timeout_s:g} s" if done.timed_out else None
        rc = -9 if done.timed_out else done.returncode
        records = [json.loads(line) for line in out_path.read_text().splitlines()
                   if line.strip()] if out_path.exists() else []
        env = next((r["environment"] for r in records if "environment" in r), {})
        started = next((r["started"] for r in reversed(records) if "started" in r), None)
        lines = [r for r in records if "key" in r]
        if failure is None and rc != 0:
            failure = done.describe("worker")
        return lines, started, env, failure


def _child(job_path: str, out_path: str) -> int:
    import numpy as np

    from costmeter.devices.base import Artifact, SessionOptions, get_runtime
    from costmeter.harness.config import DeviceSpec, ProtocolConfig
    from costmeter.harness.environment import capture
    from costmeter.harness.protocol import sample_group

    job = json.loads(Path(job_path).read_text())
    proto = dict(job["protocol"])
    proto["percentiles"] = tuple(proto["percentiles"])
    protocol = ProtocolConfig(**proto)
    spec = DeviceSpec.parse(job["device"])
    kind, index = spec.kind, spec.index
    runtime = get_runtime(kind, job["runtime"])
    options = SessionOptions(threads=job["threads"], device_index=index,
                             options=tuple(tuple(kv) for kv in job["options"]))
    rng = np.random.default_rng(0)
    entries = job["entries"]
    group = max(1, int(job.get("interleave", 1)))
    # "thread_cpu": each run timed by this thread's CPU clock (1 intra-op thread only): time the
    # run spent descheduled by other work on a shared core is not counted
    clock = time.thread_time_ns if job.get("clock") == "thread_cpu" else time.perf_counter_ns
    with open(out_path, "a") as out, \
            tempfile.TemporaryDirectory(prefix="lut-block-", dir=Path(out_path).parent) as tmp:
        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        def prepare(entry: dict[str, Any], n: int) -> Any:
            data = Path(entry["onnx"]).read_bytes()
            path = Path(tmp) / f"b{n}.onnx"
            shapes = static_copy(data, entry.get("shape"), path)
            feeds = {name: rng.standard_normal(shape, dtype=np.float32)
                     for name, shape in shapes.items()}
            return runtime.prepare(Artifact(kind="onnx", inputs=feeds, path=str(path)), options)

        emit({"environment": capture(threads=job["threads"])})
        overhead = job.get("overhead")
        plan = [[overhead]] if overhead else []
        plan += _groups(entries, group)
        plan += [[overhead]] if overhead else []
        for number, members in enumerate(plan):
            sessions = []
            try:
                for k, entry in enumerate(members):
                    emit({"started": entry["key"]})
                    sessions.append(prepare(entry, number * group + k))
                outcomes = sample_group(sessions, protocol, clock)
            finally:
                for session in sessions:
                    session.close()
            for entry, outcome in zip(members, outcomes):
                emit(judged_line(entry["key"], outcome, protocol))
    return 0


def _groups(entries: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Consecutive entries with the same ``group`` value together; others in runs of ``size``."""
    if not any("group" in e for e in entries):
        return [entries[i:i + size] for i in range(0, len(entries), size)]
    plan: list[list[dict[str, Any]]] = []
    for entry in entries:
        if plan and "group" in entry and plan[-1][0].get("group") == entry["group"]:
            plan[-1].append(entry)
        else:
            plan.append([entry])
    return plan


def _chunks(entries: list[dict[str, Any]], size: int) -> list[tuple[int, int]]:
    """(start, stop) of chunks of about ``size`` entries; a group is never cut in two."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < len(entries):
        stop = min(start + size, len(entries))
        while 0 < stop < len(entries) and "group" in entries[stop] and \
                entries[stop]["group"] == entries[stop - 1].get("group"):
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def measure_entries(base: dict[str, Any], entries: list[dict[str, Any]], chunk_size: int,
                    timeout_s: float, progress: Progress | None = None, *,
                    sink: Any = None, tag: str | None = None
                    ) -> tuple[dict[str, dict[str, Any]], list[float], dict[str, Any]]:
    """Run ``entries`` (key, onnx path, optional shape, group and model_id) in children of
    ``chunk_size`` entries each; returns (key -> result line, per-run overhead medians in ms,
    environment). A result line is :func:`judged_line`'s (median, raw samples, flags, verdict).
    ``sink`` (anything with ``write(result)``: the store) receives each entry's RunResult under ``tag``, one run id
    for the whole call (:mod:`costmeter.harness.batch_results`).

    A child that dies loses nothing measured before: the rest of its chunk is rerun one
    entry (or one group) at a time, and the entry it was preparing or timing when it died is
    reported as failed (a line with ``error`` and a NaN median).
    """
    timings: dict[str, dict[str, Any]] = {}
    overheads: list[float] = []
    environment: dict[str, Any] = {}
    run_id: str | None = None
    for start, stop in _chunks(entries, chunk_size):
        pending = entries[start:stop]
        group = int(base.get("interleave", 1))
        while pending:
            lines, started, env, failure = run_batch({**base, "interleave": group}, pending,
                                                      timeout_s)
            environment = environment or env
            for line in lines:
                if line["key"] == OVERHEAD_KEY:
                    overheads.append(line["median_ms"])
                else:
                    timings[line["key"]] = line
            pending = [e for e in pending if e["key"] not in timings]
            if failure is None or not pending:
                break
            if group > 1 and not any("group" in e for e in pending):
                group = 1  # find the culprit: run the rest one entry at a time
                continue
            culprit = next((e for e in pending if e["key"] == started), pending[0])
            dead = [e for e in pending if e is culprit or
                    ("group" in e and e.get("group") == culprit.get("group"))]
            for entry in dead:
                timings[entry["key"]] = {"key": entry["key"], "median_ms": float("nan"),
                                         "spread_ms": float("nan"), "samples": 0, "error": failure}
            pending = [e for e in pending if e not in dead]
        if sink is not None:
            from costmeter.harness.batch_results import store_lines

            run_id = store_lines(sink, base, entries[start:stop], timings, environment, tag=tag,
                                 run_id=run_id)
        if progress:
            progress(stop, len(entries))
    if not overheads:
        raise MeasurementError("the per-run overhead model could not be measured; "
                               "check the runtime with `bench run --model <file.onnx>`")
    return timings, sorted(overheads), environment


def judged_line(key: str, outcome: Any, protocol: Any) -> dict[str, Any]:
    """The result line of one entry: median and robust spread (ms), the raw samples (ns), the
    warm-up and max-time flags, and the verdict of :func:`costmeter.harness.verdict.judge_process`
    (``validity``, ``reasons``, ``warnings``) with the median's interval (ms)."""
    import numpy as np

    from costmeter.harness.verdict import judge_process

    ns = np.asarray(outcome.samples_ns, dtype=np.float64)
    verdict = judge_process(outcome.samples_ns, protocol, outcome.hit_max_time,
                            warmup_cut_short=outcome.warmup_cut_short,
                            warmup=(outcome.warmup_count, outcome.warmup_s))
    p50 = None if verdict.summary is None else verdict.summary.percentiles.get(50.0)
    median = float(np.median(ns)) if ns.size else float("nan")
    mad = float(np.median(np.abs(ns - median))) if ns.size else float("nan")
    return {"key": key, "median_ms": median / 1e6, "spread_ms": 1.4826 * mad / 1e6,
            "min_ms": float(ns.min()) / 1e6 if ns.size else float("nan"),
            "samples": int(ns.size), "samples_ns": [int(v) for v in outcome.samples_ns],
            "p50_low_ms": None if p50 is None or p50.low is None else p50.low / 1e6,
            "p50_high_ms": None if p50 is None or p50.high is None else p50.high / 1e6,
            "hit_max_time": bool(outcome.hit_max_time), "warmup_count": int(outcome.warmup_count),
            "warmup_s": float(outcome.warmup_s), "warmup_cut_short": bool(outcome.warmup_cut_short),
            "sampling_s": float(outcome.sampling_s), "precision_checks": int(outcome.precision_checks),
            "validity": "VALID" if verdict.valid else "INVALID", "reasons": list(verdict.reasons),
            "warnings": list(verdict.warnings)}


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1], sys.argv[2]))
