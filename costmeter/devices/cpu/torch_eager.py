"""PyTorch eager mode on the CPU, in inference mode.

Precisions: ``fp32``; ``bf16`` and ``fp16`` through ``torch.autocast("cpu")`` (conv, linear and
matmul run in the lower type; checked on the first forward pass with hooks on those layers);
``int8`` through dynamic quantization of ``nn.Linear`` layers
(``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantized per run). Eager
torch has no int8 convolution path for a float model, so for CNNs int8 covers the classifier
only: the share of conv/linear layers that run int8 is recorded, and a model without a single
``nn.Linear`` is ``unsupported``.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

from costmeter.devices.base import Artifact, SessionOptions, flatten_outputs
from costmeter.errors import ConfigError, UnsupportedError

_AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}


class TorchSession:
    """A module in eval + inference mode with its inputs bound as tensors; ``autocast`` (a torch
    dtype or None) runs it under ``torch.autocast("cpu", dtype)``."""

    synchronous = True

    def __init__(self, module: Any, args: tuple[Any, ...], autocast: Any = None,
                 facts: dict[str, Any] | None = None) -> None:
        import torch

        self._torch = torch
        self._module = module
        self._args = args
        self._facts = facts or {}
        self._guard = contextlib.ExitStack()
        self._guard.enter_context(torch.inference_mode())
        if autocast is not None:
            self._guard.enter_context(torch.autocast("cpu", dtype=autocast))

    def run_once(self) -> None:
        """One forward pass."""
        self._module(*self._args)

    def synchronize(self) -> None:
        """CPU execution is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one forward pass as float32/int numpy arrays (nested tuples/lists flattened)."""
        return [_numpy(t) for t in flatten_outputs(self._module(*self._args))]

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs of one forward pass on other inputs."""
        args = tuple(self._torch.from_numpy(v) for v in inputs.values())
        return [_numpy(t) for t in flatten_outputs(self._module(*args))]

    def info(self) -> dict[str, Any]:
        """Facts of a reduced-precision session (quantization time, share of layers reduced)."""
        return dict(self._facts)

    def close(self) -> None:
        """Leave inference mode (and autocast)."""
        self._guard.close()


def _numpy(tensor: Any) -> Any:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


class TorchCPURuntime:
    """Runtime ``torch`` on ``cpu``: eager execution in ``torch.inference_mode``.

    ``threads`` sets ``torch.set_num_threads``; option ``interop_threads`` sets the inter-op pool;
    ``precision`` (fp32 | bf16 | fp16 | int8; see the module docstring).
    """

    name = "torch"
    device_kind = "cpu"
    artifact_kind = "torch"
    option_names = ("interop_threads", "precision", "calibration", "quant")
    precisions = ("fp32", "fp16", "bf16", "int8")

    def is_available(self) -> tuple[bool, str]:
        """Available when torch imports."""
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch is not installed ({exc}); install it with: pip install 'costmeter[torch]'"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> TorchSession:
        """Bind the module and its inputs; set thread counts; quantize or autocast as asked."""
        import torch

        if options.threads is not None:
            torch.set_num_threads(options.threads)
        inter = options.get("interop_threads")
        if inter is not None:
            torch.set_num_interop_threads(int(inter))
        precision = (options.get("precision") or "fp32").lower()
        if precision not in self.precisions:
            raise ConfigError(f"torch on cpu runs {', '.join(self.precisions)}, not {precision!r}")
        module = artifact.module.eval()
        args = tuple(torch.from_numpy(v) for v in artifact.inputs.values())
        if precision == "int8":
            module, facts = quantize_linear_dynamic(module)
            return TorchSession(module, args, facts=facts)
        if precision in _AUTOCAST:
            dtype = getattr(torch, _AUTOCAST[precision])
            return TorchSession(module, args, autocast=dtype, facts=autocast_census(module, args, dtype))
        return TorchSession(module, args)


def _compute_layers(module: Any) -> list[Any]:
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [m for m in module.modules() if isinstance(m, kinds)]


def quantize_linear_dynamic(module: Any) -> tuple[Any, dict[str, Any]]:
    """``module`` with its ``nn.Linear`` layers dynamically quantized to int8, and facts: seconds
    taken (``quantize_s``), the share of conv/linear layers now int8. UnsupportedError when the
    model has no ``nn.Linear``."""
    import torch

    layers = _compute_layers(module)
    linear = [m for m in layers if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise UnsupportedError("torch eager int8 is dynamic quantization of nn.Linear layers and this model "
                               "has none; measure int8 with onnxruntime, openvino, executorch or litert")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    facts = {
        "quantize_s": time.perf_counter() - started,
        "quant_recipe": {"method": "dynamic", "format": "torch.ao dynamic quantization (nn.Linear)",
                         "weights": "int8 per-tensor", "activations": "quantized per run",
                         "tool": f"torch {torch.__version__} quantize_dynamic",
                         "engine": torch.backends.quantized.engine},
        "precision_compute_share": len(linear) / len(layers),
        "precision_evidence": f"torch modules: {len(linear)}/{len(layers)} conv/linear layers dynamically quantized",
    }
    return quantized, facts


def autocast_census(module: Any, args: tuple[Any, ...], dtype: Any) -> dict[str, Any]:
    """One forward pass under autocast with hooks on conv/linear layers: the share whose output
    came out in ``dtype``."""
    import torch

    layers = _compute_layers(module)
    seen: list[bool] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(getattr(out, "dtype", None) == dtype))
             for m in layers]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            module(*args)
    finally:
        for hook in hooks:
            hook.remove()
    hits = sum(seen)
    name = str(dtype).replace("torch.", "")
    return {"precision_compute_share": hits / len(seen) if seen else 0.0,
            "precision_evidence": f"autocast: {hits}/{len(seen)} conv/linear outputs in {name}"}
