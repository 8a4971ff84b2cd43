"""NVIDIA GPU adapters: torch / torch.compile with CUDA events (``torch_cuda``), ONNX Runtime's CUDA
and TensorRT providers (``onnxruntime_cuda``), NVML readings (``nvml``), the throttle guard
(``guard``) and scriptable fakes for CPU-only tests (``fake``).

Nothing here imports torch, onnxruntime or pynvml at import time.
"""
