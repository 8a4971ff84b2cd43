"""A scriptable stand-in for the ``onnxruntime`` module with GPU providers, for CPU-only tests.

The fake "model" doubles its first input. Sessions report the providers they were given, unless
``fallback_to_cpu`` makes them report only the CPU provider (as ORT does when CUDA fails to load).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


class FakeOrtValue:
    def __init__(self, array: np.ndarray, device: str, device_id: int) -> None:
        self.array = array
        self.device = device
        self.device_id = device_id

    @classmethod
    def ortvalue_from_numpy(cls, array: np.ndarray, device: str = "cpu", device_id: int = 0) -> FakeOrtValue:
        return cls(np.array(array), device, device_id)

    def numpy(self) -> np.ndarray:
        return self.array


class FakeBinding:
    def __init__(self) -> None:
        self.inputs: dict[str, FakeOrtValue] = {}
        self.output_devices: dict[str, tuple[str, int]] = {}
        self.output_values: dict[str, FakeOrtValue] = {}
        self.rebound: list[str] = []

    def bind_ortvalue_input(self, name: str, value: FakeOrtValue) -> None:
        self.inputs[name] = value

    def bind_output(self, name: str, device: str = "cpu", device_id: int = 0) -> None:
        self.output_devices[name] = (device, device_id)

    def bind_ortvalue_output(self, name: str, value: FakeOrtValue) -> None:
        self.rebound.append(name)
        self.output_values[name] = value

    def get_outputs(self) -> list[FakeOrtValue]:
        return list(self.output_values.values())

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [v.array.copy() for v in self.output_values.values()]


class FakeOrtSession:
    def __init__(self, ort: FakeOrt, path: str, sess_options: Any, providers: list[Any]) -> None:
        self.ort = ort
        self.path = path
        self.sess_options = sess_options
        self.providers = providers
        self.runs = 0

    def get_providers(self) -> list[str]:
        names = [p[0] if isinstance(p, tuple) else p for p in self.providers]
        return ["CPUExecutionProvider"] if self.ort.fallback_to_cpu else names

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name="input")]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name="output")]

    def io_binding(self) -> FakeBinding:
        return FakeBinding()

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.runs += 1
        result = binding.inputs["input"].array * 2
        device, device_id = binding.output_devices["output"]
        if "output" in binding.output_values:
            binding.output_values["output"].array[...] = result  # a pre-bound buffer is written in place
        else:
            binding.output_values["output"] = FakeOrtValue(result, device, device_id)


class FakeOrt:
    """The ``onnxruntime`` module: providers, SessionOptions, InferenceSession, OrtValue."""

    GraphOptimizationLevel = SimpleNamespace(
        ORT_DISABLE_ALL=0, ORT_ENABLE_BASIC=1, ORT_ENABLE_EXTENDED=2, ORT_ENABLE_ALL=99
    )
    OrtValue = FakeOrtValue

    def __init__(self, providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider"),
                 fallback_to_cpu: bool = False, load_error: str | None = None) -> None:
        self.__version__ = "1.30.0"
        self.providers = providers
        self.fallback_to_cpu = fallback_to_cpu
        self.load_error = load_error
        self.sessions: list[FakeOrtSession] = []

    def get_available_providers(self) -> list[str]:
        return list(self.providers)

    def SessionOptions(self) -> Any:  # noqa: N802 - onnxruntime's name
        return SimpleNamespace(graph_optimization_level=None, intra_op_num_threads=0)

    def InferenceSession(  # noqa: N802 - onnxruntime's name
        self, path: str, sess_options: Any = None, providers: Any = None
    ) -> FakeOrtSession:
        if self.load_error:
            raise RuntimeError(self.load_error)
        session = FakeOrtSession(self, path, sess_options, list(providers or []))
        self.sessions.append(session)
        return session
