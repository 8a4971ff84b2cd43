"""ExecuTorch on the CPU: a ``.pte`` program (XNNPACK-delegated by the converter) run by the
ExecuTorch runtime's Python bindings.

Precision ``int8`` runs a program the harness quantized with PT2E and the XNNPACK quantizer; the
delegate is opaque at run time, so the int8 census comes from the converter (quantized conv and
linear nodes before lowering) and is stored with the result.
"""
from __future__ import annotations

from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import UnsupportedError


class ExecuTorchSession:
    """A loaded ``forward`` method with its inputs bound; ``run_once`` is one ``execute``."""

    synchronous = True

    def __init__(self, program: Any, method: Any, args: list[Any]) -> None:
        self._program = program  # the method refers to the program: keep it alive
        self._method = method
        self._args = args

    def run_once(self) -> None:
        """One execution of ``forward``."""
        self._method.execute(self._args)

    def synchronize(self) -> None:
        """``execute`` is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays."""
        return [o.detach().numpy().copy() if hasattr(o, "detach") else o
                for o in self._method.execute(self._args)]

    def outputs_for(self, inputs: dict[str, Any]) -> list[Any]:
        """Outputs of one run on other inputs (same shapes as the bound ones)."""
        import torch

        args = [torch.from_numpy(v) for v in inputs.values()]
        return [o.detach().numpy().copy() if hasattr(o, "detach") else o for o in self._method.execute(args)]

    def close(self) -> None:
        """Drop the method and program."""
        self._method = None
        self._program = None


class ExecuTorchCPU:
    """Runtime ``executorch`` on ``cpu``. ``threads`` resizes the XNNPACK thread pool."""

    name = "executorch"
    device_kind = "cpu"
    artifact_kind = "pte"
    option_names: tuple[str, ...] = ("precision", "calibration", "quant")
    precisions = ("fp32", "int8")

    def is_available(self) -> tuple[bool, str]:
        """Available when the ExecuTorch runtime and its XNNPACK partitioner import."""
        try:
            import executorch.runtime  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
        except ImportError as exc:
            return False, f"executorch is not installed ({exc}); install it with: pip install 'costmeter[edge]'"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> ExecuTorchSession:
        """Load the program and its ``forward`` method; bind the inputs as torch tensors."""
        import torch
        from executorch.runtime import Runtime

        if options.threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(options.threads))
        try:
            program = Runtime.get().load_program(str(artifact.path))
            method = program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UnsupportedError(f"ExecuTorch cannot load {artifact.path}: {first}") from exc
        args = [torch.from_numpy(v) for v in artifact.inputs.values()]
        return ExecuTorchSession(program, method, args)
