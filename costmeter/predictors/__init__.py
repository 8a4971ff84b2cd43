"""The learned cost model: its public API (what the CLI, examples and users import).

Building a predictor (``sampling``: kernel micro-benchmarks, fusion detection; ``workflows``:
collecting architectures, fitting from a working folder) is kept apart from using one
(``estimators``, ``lut``, ``api``). Names resolve lazily (PEP 562), so importing this package
loads no scikit-learn, onnx or torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {
    # batch prediction for NAS
    "load_predictor": "costmeter.predictors.api",
    "load_lut": "costmeter.predictors.api",
    "ForestPredictor": "costmeter.predictors.api",
    # artifacts
    "save_predictor": "costmeter.predictors.artifacts",
    "load_artifact": "costmeter.predictors.artifacts",
    "read_manifest": "costmeter.predictors.artifacts",
    "training_set_hash": "costmeter.predictors.artifacts",
    # estimators
    "ArchPredictor": "costmeter.predictors.estimators.arch",
    "fit_from_results": "costmeter.predictors.estimators.arch",
    "ModelForest": "costmeter.predictors.estimators.forest",
    "KernelForest": "costmeter.predictors.estimators.forest",
    "FlopsLinear": "costmeter.predictors.estimators.forest",
    "FewShotTransfer": "costmeter.predictors.estimators.fewshot",
    "reference_architectures": "costmeter.predictors.estimators.fewshot",
    "NetworkPredictor": "costmeter.predictors.estimators.network",
    "TrafficCalibration": "costmeter.predictors.estimators.calibration",
    "GraphTargetPredictor": "costmeter.predictors.estimators.graph_target",
    "memory_features": "costmeter.predictors.estimators.graph_target",
    "metrics": "costmeter.predictors.estimators.evaluate",
    "metrics_table": "costmeter.predictors.estimators.evaluate",
    "family_of": "costmeter.predictors.estimators.evaluate",
    "family_split": "costmeter.predictors.estimators.evaluate",
    "random_split": "costmeter.predictors.estimators.evaluate",
    # what a predictor learns
    "TARGETS": "costmeter.predictors.targets",
    "get_target": "costmeter.predictors.targets",
    # kernels
    "fuse": "costmeter.predictors.kernels.fuse",
    "builtin_rules": "costmeter.predictors.kernels.rules",
    "load_rules": "costmeter.predictors.kernels.rules",
    "rules_path": "costmeter.predictors.kernels.rules",
    "model_features": "costmeter.predictors.kernels.features",
    "model_feature_table": "costmeter.predictors.kernels.features",
    # lookup tables
    "LatencyTable": "costmeter.predictors.lut.table",
    "build_lut": "costmeter.predictors.lut.table",
    "load_table": "costmeter.predictors.lut.table",
    "default_lut_path": "costmeter.predictors.lut.table",
    "check_budget": "costmeter.predictors.lut.table",
    "check_lut": "costmeter.predictors.lut.check",
    "record_check": "costmeter.predictors.lut.check",
    "calibrate_lut": "costmeter.predictors.lut.calibrate",
    # building: sampling and workflows
    "KernelSamples": "costmeter.predictors.sampling.measure",
    "measure_kernels": "costmeter.predictors.sampling.measure",
    "samples_path": "costmeter.predictors.sampling.measure",
    "sample_kernels": "costmeter.predictors.sampling.prior",
    "DEFAULT_COUNTS": "costmeter.predictors.sampling.prior",
    "detect_fusion": "costmeter.predictors.sampling.fusion_detect",
    "parse_pairs": "costmeter.predictors.sampling.fusion_detect",
    "collect": "costmeter.predictors.workflows.collect",
    "collect_protocol": "costmeter.predictors.workflows.collect",
    "collect_strategy": "costmeter.predictors.workflows.collect",
    "export_item": "costmeter.predictors.workflows.collect",
    "measured_latencies": "costmeter.predictors.workflows.collect",
    "fit_network_predictor": "costmeter.predictors.workflows.network",
    "fit_graph_target": "costmeter.predictors.workflows.graph_target",
    # bring-up: one resumable build under a time budget
    "BuildSpec": "costmeter.predictors.workflows.build",
    "build_predictor": "costmeter.predictors.workflows.build",
    "check_build": "costmeter.predictors.workflows.build",
    "pinned": "costmeter.predictors.workflows.build",
    "parse_duration": "costmeter.predictors.workflows.budget",
    "format_duration": "costmeter.predictors.workflows.budget",
    # predicting and evaluating saved files
    "predict_models": "costmeter.predictors.workflows.predict",
    "is_network_predictor": "costmeter.predictors.workflows.predict",
    "manifest_of": "costmeter.predictors.workflows.predict",
    "interval_of": "costmeter.predictors.workflows.predict",
    "conformal_min_rows": "costmeter.predictors.estimators.conformal",
    "network_rows": "costmeter.predictors.workflows.graphs",
    "training_digests": "costmeter.predictors.workflows.evaluate",
    "evaluate_arch_predictor": "costmeter.predictors.workflows.evaluate",
    "evaluate_network_predictor": "costmeter.predictors.workflows.evaluate",
}
_ALIASES = {"load_artifact": "load_predictor", "conformal_min_rows": "min_rows"}  # public name -> name inside its module

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Resolve a public name on first use."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), _ALIASES.get(name, name))
    raise AttributeError(f"module 'costmeter.predictors' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
