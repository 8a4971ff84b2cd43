"""PyTorch eager mode on the CPU, in inference mode."""
from __future__ import annotations

from typing import Any

from costmeter.devices.base import Artifact, SessionOptions, flatten_outputs


class TorchSession:
    """A module in eval + inference mode with its inputs bound as tensors."""

    synchronous = True

    def __init__(self, module: Any, args: tuple[Any, ...]) -> None:
        import torch

        self._torch = torch
        self._module = module
        self._args = args
        self._guard = torch.inference_mode()
        self._guard.__enter__()

    def run_once(self) -> None:
        """One forward pass."""
        self._module(*self._args)

    def synchronize(self) -> None:
        """CPU execution is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one forward pass as numpy arrays (nested tuples/lists flattened)."""
        return [t.detach().cpu().numpy() for t in flatten_outputs(self._module(*self._args))]

    def close(self) -> None:
        """Leave inference mode."""
        self._guard.__exit__(None, None, None)


class TorchCPURuntime:
    """Runtime ``torch`` on ``cpu``: eager execution in ``torch.inference_mode``.

    ``threads`` sets ``torch.set_num_threads``; option ``interop_threads`` sets the inter-op pool.
    """

    name = "torch"
    device_kind = "cpu"
    artifact_kind = "torch"
    option_names = ("interop_threads",)

    def is_available(self) -> tuple[bool, str]:
        """Available when torch imports."""
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch is not installed ({exc}); install it with: pip install 'costmeter[torch]'"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> TorchSession:
        """Bind the module and its inputs; set thread counts."""
        import torch

        if options.threads is not None:
            torch.set_num_threads(options.threads)
        inter = options.get("interop_threads")
        if inter is not None:
            torch.set_num_interop_threads(int(inter))
        module = artifact.module.eval()
        args = tuple(torch.from_numpy(v) for v in artifact.inputs.values())
        return TorchSession(module, args)
