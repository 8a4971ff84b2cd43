"""Harness overhead: costmeter's timed loop against a bare ``session.run`` loop.

Builds a tiny ONNX model (a few MatMul+Relu layers; tens of microseconds a run), opens one
ONNX Runtime session, and alternates rounds of (a) the harness protocol (``harness.protocol.sample``
through the ``onnxruntime`` adapter) and (b) a bare loop timed with ``time.perf_counter_ns``.
Prints both medians and their ratio (target: <= 1.02).

Usage: python benchmarks/overhead.py [--rounds 10] [--seconds 1.0] [--width 256] [--depth 4]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_model(path: Path, width: int, depth: int) -> None:
    """Write an ONNX graph: ``depth`` x (MatMul width x width, Relu) on a [1, width] input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) / width**0.5, f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def bare_loop(sess, feeds, seconds: float) -> list[int]:
    """The reference: nothing but ``run`` between two clock reads."""
    samples = []
    clock = time.perf_counter_ns
    end = clock() + seconds * 1e9
    while True:
        t0 = clock()
        sess.run(None, feeds)
        t1 = clock()
        samples.append(t1 - t0)
        if t1 >= end:
            return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per round and side")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from costmeter.devices.base import Artifact, SessionOptions
    from costmeter.devices.cpu.onnxruntime_cpu import OnnxRuntimeCPU
    from costmeter.harness.config import ProtocolConfig
    from costmeter.harness.protocol import sample

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        build_model(path, args.width, args.depth)
        x = np.random.default_rng(1).standard_normal((1, args.width)).astype(np.float32)
        session = OnnxRuntimeCPU().prepare(Artifact("onnx", {"x": x}, str(path)), SessionOptions(threads=args.threads))
        bare_sess, feeds = session._session, {"x": x}
        cfg = ProtocolConfig(warmup_count=100, warmup_s=0.2, min_count=100, min_time_s=args.seconds,
                             max_time_s=args.seconds * 2, percentiles=(50.0,))
        harness_all: list[int] = []
        bare_all: list[int] = []
        bare_loop(bare_sess, feeds, 0.5)  # warm the bare path too
        ratios = []
        for _ in range(args.rounds):
            h = sample(session, cfg).samples_ns
            b = bare_loop(bare_sess, feeds, args.seconds)
            harness_all += h
            bare_all += b
            ratios.append(statistics.median(h) / statistics.median(b))
        session.close()
    mh, mb = statistics.median(harness_all), statistics.median(bare_all)
    print(f"model: {args.depth} x MatMul {args.width}x{args.width} + Relu, onnxruntime CPU, {args.threads} thread(s)")
    print(f"rounds: {args.rounds} x {args.seconds:g} s per side, interleaved")
    print(f"harness median: {mh / 1e3:.2f} us over {len(harness_all)} runs")
    print(f"bare    median: {mb / 1e3:.2f} us over {len(bare_all)} runs")
    print(f"per-round ratios: min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")
    print(f"overhead ratio (harness / bare, pooled medians): {mh / mb:.4f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
