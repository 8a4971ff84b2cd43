"""Architectures predicted per second by the batch API, with and without conformal intervals
(issue 16 target: >= 1,000,000 a second from array encodings and >= 300,000 from strings, on
one core, for every space and predictor kind, intervals included), and the path that exports
every model to ONNX, for comparison.

Rates are architectures per CPU-second of this process (``time.process_time``: one core, not
inflated when other processes share the machine; pin it with ``taskset -c 0``), best of
``--repeats``; the load average is printed before and after, since a shared core still slows
a run through its caches. Inputs: canonical encodings as numpy arrays (NB201 op codes, OFA
``(n, 46)`` rows, FBNet ``(n, 22)`` op codes) and as strings. "intervals" rows call
``predict(archs, coverage=0.9)``: the mean and the conformal bounds, all computed in the timed
call. Neither rate depends on the latency values, so the table holds MAC-proportional entries
and the forest (the space's default ``ArchPredictor``, with its cross-conformal calibration) is
fitted on a MAC-derived target with noise over ``--train`` architectures; pass ``--lut FILE``
or ``--predictor FILE`` to time real ones. A predictor that cannot give intervals (a table
without a calibration) says so in its row.

    python benchmarks/nas_throughput.py [--space fbnet] [--n 100000] [--repeats 3] [--export 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARRAY_TARGET = 1_000_000
STRING_TARGET = 300_000
COVERAGE = 0.9


def timed(fn: Callable[[], Any], n: int, repeats: int) -> tuple[float, float]:
    """(archs per CPU-second, archs per wall-second), best of ``repeats``."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return n / max(best_cpu, 1e-9), n / max(best_wall, 1e-9)


def synthetic_table(space: str) -> Any:
    """A lookup table over every block of ``space`` with MAC-proportional entries."""
    from costmeter.predictors.lut import blocks as lut_blocks
    from costmeter.predictors.lut.table import LatencyTable, LutEntry

    entries = []
    for spec in lut_blocks.space_blocks(space):
        h, w, c = spec.input_hwc
        ms = 1e-3 + h * w * c * max(spec.expand, 1) * max(spec.kernel, 1) ** 2 * 1e-8
        entries.append(LutEntry(spec.key, spec.kind, ms, ms, 0.01 * ms, 20, "measured"))
    manifest = {"space": space, "device": "cpu", "runtime": "onnxruntime",
                "resolutions": list(lut_blocks.space_resolutions(space)), "overhead_ms": 0.005}
    table = LatencyTable(manifest, entries)
    synthetic_calibration(table, {e.key: (e.latency_ms, 2 * e.latency_ms) for e in entries})
    return table


def synthetic_calibration(table: Any, terms: dict[str, tuple[float, float]]) -> None:
    """Calibrate ``table`` as ``bench lut calibrate`` does, on 30 networks whose "measured"
    latency is the table's sum x 1.2 with 5% lognormal noise, a made-up cache curve and block
    terms (weight, activation MB) proportional to the entries: the rate of calibrated
    predictions and intervals does not depend on these values."""
    import numpy as np

    from costmeter.predictors.lut.calibrate import calibrate_lut

    rng = np.random.default_rng(1)

    def measure(archs: Any) -> Any:
        return table.predict(list(archs), calibrated=False)[0] * 1.2 * rng.lognormal(0, 0.05, len(archs))

    calibrate_lut(table, networks=30, measure=measure, curve=((1.0, 10.0, 100.0), (50.0, 60.0, 120.0)),
                  terms=terms)


def synthetic_forest(space: str, train: int) -> Any:
    """A batch predictor: the default forest fitted on a MAC-derived target with noise."""
    import numpy as np

    from costmeter.predictors.api import ForestPredictor
    from costmeter.predictors.estimators.arch import ArchPredictor
    from costmeter.models.spaces import get_space

    module = get_space(space)
    archs = module.sample(train, seed=123)
    macs = module.features(archs)["macs_total"].to_numpy()
    noise = np.random.default_rng(0).lognormal(0.0, 0.05, len(archs))
    estimator = ArchPredictor(space, device="cpu", runtime="onnxruntime").fit(
        archs, (0.1 + macs / 5e7) * noise)
    return ForestPredictor(estimator)


def export_path_rate(space: str, count: int) -> float:
    """Architectures per second when each is built in torch, exported to ONNX and featurised
    from its graph (kernels with the ONNX Runtime rules, then model-level features)."""
    from costmeter.predictors.workflows.collect import CollectItem, export_item
    from costmeter.predictors.kernels.features import model_features
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.models.spaces import get_space

    module = get_space(space)
    rules = builtin_rules("onnxruntime")
    archs = module.sample(count, seed=77)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for arch in archs:
            item = CollectItem(space, arch, tuple(module.input_shape(arch, 1)))
            model_features(fuse(load_graph(export_item(item, Path(tmp))), rules))
        return count / (time.perf_counter() - start)


def space_inputs(space: str, n: int) -> tuple[Any, list[str]]:
    """(array encodings, canonical strings) of ``n`` random architectures of ``space``."""
    from costmeter.models.spaces import get_space

    module = get_space(space)
    strings = module.sample(n, seed=5)
    return module.to_array(strings), strings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="architectures per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", type=int, default=2000, help="forest training archs")
    parser.add_argument("--export", type=int, default=3, help="archs timed on the export path")
    parser.add_argument("--space", action="append", default=[],
                        help="a space with lookup tables (repeatable; default: all of them)")
    parser.add_argument("--lut", action="append", default=[], help="a real table (repeatable)")
    parser.add_argument("--predictor", action="append", default=[],
                        help="a real .costmodel (repeatable)")
    args = parser.parse_args()

    from costmeter import load_lut, load_predictor
    from costmeter.models.spaces import require_capability, spaces_with

    spaces = args.space or list(spaces_with("lut"))
    for space in spaces:
        require_capability(space, "lut")

    real_luts = {t.space: t for t in map(load_lut, args.lut)}
    real_forests = {p.space: p for p in map(load_predictor, args.predictor)}
    print(f"load average {os.getloadavg()[0]:.2f}; CPU affinity {sorted(os.sched_getaffinity(0))}; "
          f"tree kernel: {kernel_description()}")
    print(f"{'space':<9} {'predictor':<10} {'intervals':<9} {'arrays/s':>11} {'vs 1M':>6} "
          f"{'strings/s':>11} {'vs 300k':>7}")
    for space in spaces:
        array, strings = space_inputs(space, args.n)
        models = {"lut": real_luts.get(space) or synthetic_table(space),
                  "forest": real_forests.get(space) or synthetic_forest(space, args.train)}
        for name, model in models.items():
            model.predict(strings[:100])  # build caches (dense tables, NB201 space table)
            model.predict(array[:2048])  # compile the tree kernel (cached on disk after the first run)
            for coverage in (None, COVERAGE):
                label = "no" if coverage is None else f"{coverage:.0%}"
                reason = interval_gap(model, strings[:100], coverage)
                if reason:
                    print(f"{space:<9} {name:<10} {label:<9} unavailable: {reason}")
                    continue
                rates = [timed(lambda m=model, d=data, c=coverage: call(m, d, c), args.n,
                               args.repeats)[0] for data in (array, strings)]
                print(f"{space:<9} {name:<10} {label:<9} {rates[0]:>11,.0f} "
                      f"{rates[0] / ARRAY_TARGET:>5.2f}x {rates[1]:>11,.0f} "
                      f"{rates[1] / STRING_TARGET:>6.2f}x")
        if args.export > 0:
            rate = export_path_rate(space, args.export)
            print(f"{space:<9} {'export':<10} {'no':<9} torch -> ONNX -> features: {rate:,.2f} "
                  "archs/s (wall)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def call(model: Any, data: Any, coverage: float | None) -> Any:
    """One timed batch prediction (with ``coverage``: mean, lower and upper bounds)."""
    return model.predict(data) if coverage is None else model.predict(data, coverage=coverage)


def interval_gap(model: Any, probe: Any, coverage: float | None) -> str:
    """Why ``model`` cannot give intervals (empty when it can, or none are asked for)."""
    if coverage is None:
        return ""
    try:
        model.predict(probe, coverage=coverage)
    except TypeError:
        return f"{type(model).__name__}.predict takes no coverage here"
    except ValueError as exc:  # ConfigError: no calibration
        return str(exc).split(";")[0]
    return ""


def kernel_description() -> str:
    """Which path evaluates forests: the compiled kernel (numba version) or scikit-learn."""
    from costmeter.predictors.estimators.tree_kernel import kernel_available

    if not kernel_available():
        return "scikit-learn per-tree predict (numba not installed or switched off)"
    import numba

    return f"compiled (numba {numba.__version__})"

if __name__ == "__main__":
    main()
