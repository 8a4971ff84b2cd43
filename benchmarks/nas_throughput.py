"""Architectures predicted per second by the batch API (issue 6 target: >= 100,000 a second on one
core for NB201 and OFA-MobileNetV3, featurisation included, for the lookup table and the
forest; FBNet measured alike), and the same figure for the path that exports every model to
ONNX, for comparison.

Rates are architectures per CPU-second of this process (``time.process_time``: one core, not
inflated when other processes share the machine) and per wall-clock second; best of
``--repeats``. Inputs: canonical encodings as numpy arrays (NB201 op codes, OFA ``(n, 46)``
rows, FBNet ``(n, 22)`` op codes) and as strings. Neither rate depends on the latency values,
so the table holds MAC-proportional entries and the forest (64 trees, the default
``ModelForest``) is fitted on a MAC-derived target with noise over ``--train`` architectures;
pass ``--lut FILE`` or ``--predictor FILE`` to time real ones.

    python benchmarks/nas_throughput.py [--space fbnet] [--n 100000] [--repeats 3] [--export 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET = 100_000


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
    return LatencyTable(manifest, entries)


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
    print(f"{'space':<9} {'predictor':<10} {'input':<8} {'archs/s (1 core)':>17} "
          f"{'archs/s (wall)':>15} {'vs 100k':>8}")
    for space in spaces:
        array, strings = space_inputs(space, args.n)
        models = {"lut": real_luts.get(space) or synthetic_table(space),
                  "forest": real_forests.get(space) or synthetic_forest(space, args.train)}
        for name, model in models.items():
            model.predict(strings[:100])  # build caches (dense tables, NB201 space table)
            for kind, data in (("array", array), ("strings", strings)):
                cpu, wall = timed(lambda m=model, d=data: m.predict(d), args.n, args.repeats)
                print(f"{space:<9} {name:<10} {kind:<8} {cpu:>17,.0f} {wall:>15,.0f} "
                      f"{cpu / TARGET:>7.1f}x")
        if args.export > 0:
            rate = export_path_rate(space, args.export)
            print(f"{space:<9} {'export':<10} {'torch':<8} {'':>17} {rate:>15,.2f} "
                  f"{rate / TARGET:>8.0e}x")


if __name__ == "__main__":
    main()
