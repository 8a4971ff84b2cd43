"""costmeter: hardware-aware benchmarking and learned cost models.

Importing this package loads no torch, onnxruntime or tvm; heavy libraries are imported
inside the functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
