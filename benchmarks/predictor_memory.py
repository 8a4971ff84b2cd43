"""Held-out-family peak-memory prediction on this CPU with ONNX Runtime (1 thread).

Target (issue 16): the peak memory of models of families never trained on within +-10% for
at least 90% of them. Every figure is measured here, through the harness runner (one isolated
worker per model, ONNX Runtime, 1 thread, the process pinned with ``taskset``): the stored
``peak_rss_above_baseline_bytes`` of a run is the worker's resident-set high-water mark minus
its size before the runtime was loaded, i.e. what loading the runtime and the model and running
it cost. Train on ResNet and MobileNetV2 variants and NB201 cells; test on MobileNetV3 and
EfficientNet variants and OFA-MobileNetV3 networks.

Rows printed, each scored on the held-out families (share within +-10%, MAPE):

- ``analytic live set``: the largest live set of activation tensors in graph order
  (:func:`costmeter.models.onnx.live_memory.peak_live_set`), unfitted;
- ``analytic live set + weights``: the same plus the weight bytes, unfitted;
- ``fitted: linear``: :class:`~costmeter.predictors.estimators.graph_target.GraphTargetPredictor`
  (non-negative linear model: a fixed footprint plus bytes per convolution weight byte, per
  matrix-product weight byte and per byte of the analytic live set) fitted on the training
  families;
- ``fitted: forest``: a forest on the same features (it cannot extrapolate past the training
  range, shown for comparison).

Measurements are cached in the working folder (``COSTMETER_BENCH_DIR``, default
``.costmeter/bench-memory``), so a rerun only fits and prints. ``--fresh SEED`` also draws
new models of the held-out families with SEED into ``<workdir>-fresh<SEED>`` and scores the
same predictors (fitted on the training families) on those not in the main test set: a check
on models nobody looked at while choosing the features.

    taskset -c 1 python benchmarks/predictor_memory.py [--per-family 8] [--fresh 11]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

TRAIN = ("resnet", "mobilenet_v2", "nb201")
TEST = ("mobilenet_v3", "efficientnet", "ofa_mbv3")
THREADS = 1


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure(workdir: Path, store: Any, families: tuple[str, ...], per_family: int, seed: int) -> None:
    """``per_family`` models of each family through the harness (cached in ``store``)."""
    from costmeter.predictors.workflows.collect import collect, collect_protocol

    for family in families:
        started = time.perf_counter()
        results = collect(family, per_family, device="cpu", runtime="onnxruntime", workdir=workdir,
                          store=store, seed=seed, threads=THREADS,
                          protocol=collect_protocol(0.2, min_count=10), tag="bench:memory")
        _log(f"measured {len(results)} {family} models in {time.perf_counter() - started:.0f} s")


def measured_memory(store: Any, families: tuple[str, ...]) -> dict[str, tuple[Any, float]]:
    """model_id -> (CollectItem, peak RSS above baseline in bytes), the median over repeats."""
    import numpy as np

    from costmeter.predictors.workflows.collect import item_of

    values: dict[str, list[float]] = {}
    items: dict[str, Any] = {}
    for result in store.results(device="cpu", runtime="onnxruntime", status="ok"):
        item = item_of(result.key.model_id)
        peak = result.memory.peak_rss_above_baseline_bytes
        if item is None or item.space not in families or result.key.threads != THREADS or not peak:
            continue
        items[result.key.model_id] = item
        values.setdefault(result.key.model_id, []).append(float(peak))
    return {m: (items[m], float(np.median(v))) for m, v in values.items()}


def feature_frame(workdir: Path, measured: dict[str, tuple[Any, float]]) -> Any:
    """Analytic memory features (one row per model) of the measured models' ONNX graphs."""
    import pandas as pd

    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.estimators.graph_target import memory_features
    from costmeter.predictors.workflows.collect import export_item

    rows = {m: memory_features(load_graph(export_item(item, workdir))) for m, (item, _) in measured.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def evaluate(features: Any, train: dict[str, Any], test: dict[str, Any]) -> Any:
    import numpy as np
    import pandas as pd

    from costmeter.predictors.estimators.evaluate import metrics
    from costmeter.predictors.estimators.forest import ModelForest
    from costmeter.predictors.estimators.graph_target import GraphTargetPredictor

    x_train, x_test = features.loc[list(train)], features.loc[list(test)]
    y_train = np.array([v for _, v in train.values()])
    y_test = np.array([v for _, v in test.values()])
    linear = GraphTargetPredictor(target="peak_memory").fit(x_train, y_train)
    _log(f"fitted: {linear.describe()}")
    fixed = float(linear.regressor_.intercept_)
    above = np.abs((linear.predict(x_test) - fixed) / (y_test - fixed) - 1) <= 0.10
    _log(f"the fitted fixed footprint ({fixed / 2**20:.1f} MiB) is {fixed / np.median(y_test):.0%} of the "
         f"median held-out measurement; the model-dependent part (measured minus fixed) is "
         f"predicted within +-10% for {above.mean():.0%} of held-out models")
    forest = GraphTargetPredictor(target="peak_memory", regressor=ModelForest(n_estimators=200))
    predictions = {
        "analytic live set": x_test["peak_activation_bytes"].to_numpy(dtype=float),
        "analytic live set + weights": (x_test["peak_activation_bytes"]
                                        + x_test["param_bytes"]).to_numpy(dtype=float),
        "fitted: linear": linear.predict(x_test),
        "fitted: forest": forest.fit(x_train, y_train).predict(x_test),
    }
    families = np.array([item.space for item, _ in test.values()])
    rows = []
    for name, predicted in predictions.items():
        predicted = np.maximum(predicted, 1.0)
        scores = metrics(y_test, predicted)
        row = {"predictor": name, "within_10_pct": scores["within_10_pct"],
               "mape_pct": scores["mape_pct"], "spearman": scores["spearman"]}
        for family in sorted(set(families)):
            mask = families == family
            row[f"{family} ±10%"] = metrics(y_test[mask], predicted[mask])["within_10_pct"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("predictor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=8, help="models measured per family")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--measure-only", action="store_true")
    parser.add_argument("--fresh", type=int, default=None, metavar="SEED",
                        help="also score on new held-out-family models drawn with SEED")
    args = parser.parse_args()

    import pandas as pd

    from costmeter.results.store import ResultStore

    workdir = Path(os.environ.get("COSTMETER_BENCH_DIR", ".costmeter/bench-memory"))
    workdir.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "sched_getaffinity"):
        _log(f"pinned to CPUs {sorted(os.sched_getaffinity(0))} (use taskset to pin)")
    with ResultStore(f"sqlite:///{(workdir / 'store.db').resolve()}") as store:
        measure(workdir, store, TRAIN + TEST, args.per_family, args.seed)
        train = measured_memory(store, TRAIN)
        test = measured_memory(store, TEST)
    if args.measure_only:
        return
    _log(f"{len(train)} training models, {len(test)} held-out models")
    features = feature_frame(workdir, {**train, **test})
    measured = pd.Series({m: v for m, (_, v) in {**train, **test}.items()})
    _log("measured peak RSS above baseline (MiB): min {:.1f}, median {:.1f}, max {:.1f}".format(
        measured.min() / 2**20, measured.median() / 2**20, measured.max() / 2**20))
    table = evaluate(features, train, test)
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.to_string())
    if args.fresh is None:
        return
    fresh_dir = workdir.with_name(f"{workdir.name}-fresh{args.fresh}")
    fresh_dir.mkdir(parents=True, exist_ok=True)
    with ResultStore(f"sqlite:///{(fresh_dir / 'store.db').resolve()}") as store:
        measure(fresh_dir, store, TEST, args.per_family, args.fresh)
        fresh = {m: v for m, v in measured_memory(store, TEST).items() if m not in test}
    _log(f"{len(fresh)} fresh held-out models (seed {args.fresh}), none in the main test set")
    features = pd.concat([features.loc[list(train)], feature_frame(fresh_dir, fresh)])
    table = evaluate(features, train, fresh)
    print(f"fresh held-out models (seed {args.fresh}):")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.to_string())


if __name__ == "__main__":
    main()
