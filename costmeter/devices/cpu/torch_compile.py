"""PyTorch ``torch.compile`` (inductor) on the CPU, in inference mode.

Compilation happens in :meth:`TorchCompileCPURuntime.prepare` (one forward pass triggers it), so
the harness records it as preparation time, apart from inference latency. Inductor generates C++
and needs a C++ compiler (``g++``, or ``$CXX``) on the machine.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.devices.cpu.torch_eager import TorchSession
from costmeter.errors import ConfigError, UnsupportedError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchCompileSession(TorchSession):
    """A compiled module with its inputs bound; ``compile_s`` is the first call's time (seconds)."""

    def __init__(self, module: Any, args: tuple[Any, ...], compile_s: float, mode: str) -> None:
        super().__init__(module, args)
        self.compile_s = compile_s
        self.mode = mode

    def info(self) -> dict[str, Any]:
        """Facts recorded with the result: compile time (s) and mode."""
        return {"compile_s": self.compile_s, "torch_compile_mode": self.mode}


class TorchCompileCPURuntime:
    """Runtime ``torch_compile`` on ``cpu``: ``torch.compile(backend="inductor")``.

    ``threads`` sets ``torch.set_num_threads``. Options: ``mode`` (default | reduce-overhead |
    max-autotune | max-autotune-no-cudagraphs; default ``default``), ``dynamic`` (true|false,
    default false: shapes are fixed per benchmark).
    """

    name = "torch_compile"
    device_kind = "cpu"
    artifact_kind = "torch"
    option_names = ("mode", "dynamic")

    def __init__(self, which: Any = shutil.which) -> None:
        self._which = which

    def is_available(self) -> tuple[bool, str]:
        """Available when torch's inductor imports and a C++ compiler is on PATH."""
        try:
            import torch._inductor  # noqa: F401
        except ImportError as exc:
            return False, f"torch with inductor is not installed ({exc}); pip install 'costmeter[torch]'"
        compiler = os.environ.get("CXX") or "g++"
        if self._which(compiler) is None:
            return False, (f"torch.compile needs a C++ compiler and {compiler!r} is not on PATH; "
                           "install one (apt-get install g++) or set CXX")
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> TorchCompileSession:
        """Compile the module and run it once (the compilation), returning a bound session."""
        import torch

        mode = options.get("mode", "default") or "default"
        if mode not in MODES:
            raise ConfigError(f"unknown torch_compile mode {mode!r}; choose one of {', '.join(MODES)}")
        dynamic = (options.get("dynamic", "false") or "false").lower() in ("1", "true", "yes")
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        module = artifact.module.eval()
        args = tuple(torch.from_numpy(v) for v in artifact.inputs.values())
        compiled = torch.compile(module, backend="inductor", mode=None if mode == "default" else mode,
                                 dynamic=dynamic)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(*args)
        except Exception as exc:  # vendor boundary: dynamo/inductor raise many types
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            first = lines[0][:300] if lines else type(exc).__name__
            raise UnsupportedError(f"torch.compile cannot compile this model: {type(exc).__name__}: {first}") from exc
        return TorchCompileSession(compiled, args, time.perf_counter() - start, mode)
