"""Fitting a whole-model predictor of peak memory (or energy, or latency) from stored results
whose models have an ONNX graph: zoo-family variants and search-space architectures (exported
through the content-addressed cache), or imported ONNX traces (their ``onnx_path``).

What ``bench predictor fit --target peak_memory`` runs when no ``--space`` is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError


def result_value(result: Any, target: str) -> float | None:
    """A result's value of ``target`` in its unit (ms, bytes, J), or None when it has none."""
    if target == "latency":
        if result.measurement is None or not result.measurement.count:
            return None
        return float(np.median(result.measurement.all_samples_ns())) / 1e6
    if target == "peak_memory":
        value = result.memory.peak_memory_bytes()
    else:
        value = result.energy.energy_per_inference_j
    return None if value is None or not np.isfinite(value) or value <= 0 else float(value)


def _graph_file(result: Any, workdir: Path) -> Path | None:
    from costmeter.predictors.workflows.collect import export_item, item_of

    item = item_of(result.key.model_id)
    if item is not None:
        return export_item(item, workdir)
    onnx_path = result.extra.get("onnx_path")
    return Path(onnx_path) if onnx_path and Path(onnx_path).is_file() else None


def graph_target_table(store: Any, *, device: str, runtime: str | None, target: str,
                       workdir: Path | str) -> tuple[Any, np.ndarray, list[str]]:
    """(memory-feature table indexed by model id, target values, families) of every model of
    ``device``/``runtime`` in ``store`` with a graph and a ``target`` value (the median of its
    repeats). ConfigError naming the targets the results hold when none has this one."""
    import pandas as pd

    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.estimators.evaluate import family_of
    from costmeter.predictors.estimators.graph_target import memory_features
    from costmeter.predictors.targets import get_target, held_targets

    get_target(target)
    values: dict[str, list[float]] = {}
    files: dict[str, tuple[Path, int]] = {}
    for result in store.results(device=device, runtime=runtime, status="ok"):
        value = result_value(result, target)
        if value is None:
            continue
        if result.key.model_id not in files:
            path = _graph_file(result, Path(workdir))
            if path is None:
                continue
            files[result.key.model_id] = (path, result.key.batch)
        values.setdefault(result.key.model_id, []).append(value)
    if not values:
        frame = store.query(device=device, runtime=runtime, status="ok")
        held = held_targets(frame) if len(frame) else []
        raise ConfigError(f"the stored results of device {device!r}"
                          f"{f' runtime {runtime!r}' if runtime else ''} with an ONNX graph hold no "
                          f"{target} values; targets they hold: {', '.join(held) if held else 'none'}")
    rows = {m: memory_features(load_graph(path, batch=batch)) for m, (path, batch) in files.items()
            if m in values}
    table = pd.DataFrame.from_dict(rows, orient="index")
    y = np.array([np.median(values[m]) for m in table.index], dtype=np.float64)
    return table, y, [family_of(str(m)) for m in table.index]


def fit_graph_target(store: Any, *, device: str, runtime: str | None, target: str,
                     workdir: Path | str, holdout: float = 0.2,
                     seed: int = 0) -> tuple[Any, dict[str, Any], str]:
    """(GraphTargetPredictor fitted on every model, held-out metrics, training-set hash)."""
    from sklearn.base import clone

    from costmeter.predictors.artifacts import training_set_hash
    from costmeter.predictors.estimators.evaluate import metrics, random_split
    from costmeter.predictors.estimators.graph_target import GraphTargetPredictor

    table, y, _ = graph_target_table(store, device=device, runtime=runtime, target=target,
                                     workdir=workdir)
    if len(y) < 5:
        raise ConfigError(f"only {len(y)} models with a graph hold {target} values for device "
                          f"{device!r}; a graph-level predictor needs at least 5: measure more "
                          "(`bench collect --space FAMILY`)")
    template = GraphTargetPredictor(target=target, device=device, runtime=runtime)
    scores: dict[str, Any] = {}
    if holdout > 0:
        tr, te = random_split(len(y), train=1.0 - holdout, seed=seed)
        probe = clone(template).fit(table.iloc[tr], y[tr])
        scores = {"holdout": holdout, "seed": seed, **metrics(y[te], probe.predict(table.iloc[te]))}
    predictor = clone(template).fit(table, y)
    return predictor, scores, training_set_hash(table.to_numpy(dtype=np.float64), y)
