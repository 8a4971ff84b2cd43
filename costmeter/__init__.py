"""costmeter: hardware-aware benchmarking and learned cost models.

Importing this package loads no torch, onnxruntime or tvm; heavy libraries are imported
inside the functions that need them. ``load_predictor`` and ``load_lut`` (the batch latency
API for NAS, see :mod:`costmeter.predictors.api`) are resolved on first use.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_lut", "load_predictor"]

_LAZY = {"load_predictor": "costmeter.predictors.api", "load_lut": "costmeter.predictors.api"}


def __getattr__(name: str) -> Any:
    """Resolve the lazily imported public functions (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'costmeter' has no attribute {name!r}")
