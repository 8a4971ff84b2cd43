"""Apache TVM (Relax virtual machine) on the CPU, from a compiled library.

The harness converts ONNX -> Relax and compiles it for target ``llvm`` with this host's
``-mcpu`` (optionally after MetaSchedule tuning) into a folder holding ``lib.so`` and
``meta.json`` (target, compile and tuning times); this adapter loads the library and runs its
``main`` through the Relax VM with the inputs set once.

Threads: TVM sizes its thread pool from ``TVM_NUM_THREADS`` when the runtime starts; the adapter
sets it before the first import, and re-configures the pool when TVM is already loaded.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from costmeter.devices.base import Artifact, SessionOptions
from costmeter.errors import UnsupportedError

LIBRARY_NAME = "lib.so"
META_NAME = "meta.json"


class TvmSession:
    """A Relax VM with ``main``'s inputs set; ``run_once`` is one stateful invoke."""

    synchronous = True

    def __init__(self, vm: Any, tensors: list[Any], target: str) -> None:
        self._vm = vm
        self._tensors = tensors
        self._target = target
        vm.set_input("main", *tensors)

    def run_once(self) -> None:
        """One call of ``main`` on the bound inputs."""
        self._vm.invoke_stateful("main")

    def synchronize(self) -> None:
        """CPU execution is synchronous."""

    def outputs(self) -> list[Any]:
        """Outputs of one run as numpy arrays (a tuple result is flattened in order)."""
        self._vm.invoke_stateful("main")
        return _flatten(self._vm.get_outputs("main"))

    def info(self) -> dict[str, Any]:
        """The target the library was compiled for."""
        return {"tvm_target": self._target}

    def close(self) -> None:
        """Drop the VM."""
        self._vm = None


def _flatten(value: Any) -> list[Any]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    flat: list[Any] = []
    for item in value:
        flat.extend(_flatten(item))
    return flat


class TvmCPU:
    """Runtime ``tvm`` on ``cpu``. Options (used by the converter, recorded in the key):
    ``tuning_trials`` (MetaSchedule trial budget; 0 = untuned, the default), ``mcpu`` (LLVM CPU
    name; default: this host's, detected)."""

    name = "tvm"
    device_kind = "cpu"
    artifact_kind = "tvm"
    option_names = ("tuning_trials", "mcpu")
    precisions = ("fp32",)
    precision_unsupported = {
        "int8": ("TVM 0.27 has no int8 path here: its Relax ONNX importer reads a quantized (QDQ) model "
                 "as dequantize + float32 conv2d/matmul, so the compute would stay fp32, and costmeter "
                 "builds no quantized Relax pipeline; measure int8 with onnxruntime, openvino, "
                 "executorch or litert"),
    }

    def is_available(self) -> tuple[bool, str]:
        """Available when ``tvm`` imports with its Relax frontend and a pinned tvm-ffi."""
        try:
            import tvm
            from tvm import relax  # noqa: F401
        except ImportError as exc:
            return False, f"apache-tvm is not installed ({exc}); install it with: pip install 'costmeter[tvm]'"
        except Exception as exc:  # a mismatched tvm-ffi raises at import in various ways
            return False, f"apache-tvm fails to import ({type(exc).__name__}: {exc}); pip install 'costmeter[tvm]'"
        if not hasattr(tvm, "compile"):
            return False, f"apache-tvm {tvm.__version__} is too old (no tvm.compile); pip install 'costmeter[tvm]'"
        return True, ""

    def prepare(self, artifact: Artifact, options: SessionOptions) -> TvmSession:
        """Load the compiled library into a Relax VM and bind the inputs."""
        if options.threads is not None:
            os.environ["TVM_NUM_THREADS"] = str(options.threads)
        already_loaded = "tvm" in sys.modules
        import tvm
        from tvm import relax

        if options.threads is not None and already_loaded:
            tvm.get_global_func("runtime.config_threadpool")(0, int(options.threads))
        folder = Path(str(artifact.path))
        library_path = folder / LIBRARY_NAME if folder.is_dir() else folder
        meta_path = folder / META_NAME
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        try:
            library = tvm.runtime.load_module(str(library_path))
            vm = relax.VirtualMachine(library, tvm.cpu())
        except Exception as exc:  # vendor boundary: tvm-ffi raises its own error types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UnsupportedError(f"TVM cannot load {artifact.path}: {first}") from exc
        tensors = [tvm.runtime.tensor(v, tvm.cpu()) for v in artifact.inputs.values()]
        return TvmSession(vm, tensors, str(meta.get("target", "")))
