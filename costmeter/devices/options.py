"""Runtime option schemas: what ``-o NAME=VALUE`` each runtime takes, with types and allowed values.

Every runtime declares its options here, keyed by (device kind, runtime), so that a run is
checked before anything is measured: an unknown name or a value outside what the runtime takes
is refused with one line that lists what it accepts, instead of a failed row (a bad value) or a
benchmark key that silently carries an option nobody reads (a bad name). The adapters keep their
own checks at ``prepare``: these schemas are the early, complete statement of the same rules.

Options the harness itself reads (``cpus``, CPU pinning) are valid for every runtime.
``precision`` is declared for every CPU runtime, with the precisions its adapter runs (and their
spellings); the runtimes that quantize also take ``calibration`` (the int8 calibration set that
``--calibration`` records) and ``quant`` (static or dynamic int8).

This module imports nothing from the harness, results, predictors or reports, and no vendor
library: checking options costs nothing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from costmeter.errors import ConfigError

MAX_THREADS = 4096  # more threads than any supported machine has hardware threads
MAX_CPU_INDEX = 65535
_FLAG_VALUES = ("0", "1", "true", "false")
_ON_OFF = ("on", "off", "true", "false", "1", "0", "yes", "no")
_OPT_LEVELS = ("disable", "basic", "extended", "all")
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_FP32 = ("fp32", "float32", "f32")


@dataclass(frozen=True)
class OptionSpec:
    """One runtime option: its ``name``, its ``kind`` and what it accepts.

    ``kind`` is ``choice`` (one of ``choices``, compared case-insensitively when ``fold_case``),
    ``int`` or ``float`` (within ``minimum``..``maximum``, finite), or ``text`` (matching
    ``pattern``). ``help`` says what the option does, for messages and ``bench env``.
    """

    name: str
    kind: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    fold_case: bool = False
    help: str = ""

    def accepted(self) -> str:
        """What the option accepts, in words: ``disable|basic|extended|all``, ``an integer >= 1``."""
        if self.kind == "choice":
            return "|".join(self.choices)
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            low = "" if self.minimum is None else f"{self.minimum:g}"
            high = "" if self.maximum is None else f"{self.maximum:g}"
            return f"{what} in [{low}, {high}]" if low and high else (
                f"{what} >= {low}" if low else f"{what} <= {high}" if high else what)
        return self.help or "text"

    def problem(self, value: str) -> str | None:
        """Why ``value`` is not accepted (None when it is)."""
        text = str(value).strip()
        if self.kind == "choice":
            wanted = text.lower() if self.fold_case else text
            return None if wanted in self.choices else "not one of its values"
        if self.kind == "int":
            if not re.fullmatch(r"[+-]?\d{1,30}", text):
                return "not an integer"
            return self._range_problem(int(text))
        if self.kind == "float":
            try:
                number = float(text)
            except ValueError:
                return "not a number"
            if not math.isfinite(number):
                return "not a finite number"
            return self._range_problem(number)
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            return "malformed"
        return None

    def _range_problem(self, number: float) -> str | None:
        if self.minimum is not None and number < self.minimum:
            return "too small"
        if self.maximum is not None and number > self.maximum:
            return "too large"
        return None


def _choice(name: str, choices: Iterable[str], help: str = "", fold_case: bool = False) -> OptionSpec:
    return OptionSpec(name, "choice", tuple(choices), fold_case=fold_case, help=help)


def _int(name: str, minimum: int, maximum: int, help: str = "") -> OptionSpec:
    return OptionSpec(name, "int", minimum=minimum, maximum=maximum, help=help)


def _precision(*names: str, help: str = "compute precision") -> OptionSpec:
    """The precisions an adapter runs, as its ``precision`` option spells them (what
    ``--precision`` sets, after its aliases are resolved)."""
    return _choice("precision", names, help, fold_case=True)


# int8 runs: the calibration set (random:N, sha:HASH or an .npz file) and the quantization mode
_QUANT = (
    OptionSpec("calibration", "text", pattern=r"[^\x00-\x1f]{1,4096}",
               help="int8 calibration inputs: random:N, sha:HASH or FILE.npz (set by --calibration)"),
    _choice("quant", ("auto", "static", "dynamic"), "int8 quantization mode", fold_case=True),
)

# Read by the harness for every runtime on every device.
HARNESS_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("cpus", "text", pattern=r"\d{1,5}(-\d{1,5})?(,\d{1,5}(-\d{1,5})?)*",
               help="CPU numbers and ranges, e.g. 4-7 or 0,2 (set by --cpus)"),
    OptionSpec("machine", "text", pattern=r"[A-Za-z0-9._-]{1,64}",
               help="which machine's device, e.g. lab-xeon (a farm device's label: cpu@lab-xeon)"),
)

_ORT_CPU = (
    _choice("opt_level", _OPT_LEVELS, "graph optimisation level"),
    _int("inter_op_threads", 1, MAX_THREADS, "threads between independent nodes"),
    _choice("execution_mode", ("sequential", "parallel"), "node scheduling"),
    _precision("fp32", "int8"),
    *_QUANT,
)
_TORCH_CUDA = (
    _choice("precision", ("fp32", "fp16", "bf16"), "module and input precision"),
    _choice("cuda_graph", _FLAG_VALUES, "capture the model in a CUDA graph", fold_case=True),
    _choice("l2_flush", _FLAG_VALUES, "flush the L2 cache between iterations", fold_case=True),
)

SCHEMAS: dict[tuple[str, str], tuple[OptionSpec, ...]] = {
    ("cpu", "onnxruntime"): _ORT_CPU,
    ("cpu", "torch"): (
        _int("interop_threads", 1, MAX_THREADS, "torch's inter-op thread pool"),
        _precision("fp32", "fp16", "bf16", "int8"),
        *_QUANT,
    ),
    ("cpu", "torch_compile"): (
        _choice("mode", _COMPILE_MODES, "torch.compile mode"),
        _choice("dynamic", ("1", "0", "true", "false", "yes", "no"), "dynamic shapes", fold_case=True),
        _choice("precision", _FP32, "compute precision"),
    ),
    ("cpu", "openvino"): (
        _precision("f32", "float32", "fp32", "bf16", "bfloat16", "f16", "fp16", "default", "int8",
                   help="inference precision hint"),
        _choice("hint", ("latency", "throughput"), "performance hint", fold_case=True),
        *_QUANT,
    ),
    ("cpu", "tvm"): (
        _int("tuning_trials", 0, 10_000_000, "MetaSchedule tuning trials (0: none)"),
        OptionSpec("mcpu", "text", pattern=r"[A-Za-z0-9._-]{1,64}",
                   help="an LLVM CPU name such as cortex-a76 or znver4"),
        _precision("fp32", "int8", help="compute precision (int8 is refused as unsupported)"),
    ),
    ("cpu", "litert"): (
        _choice("xnnpack", _ON_OFF, "the XNNPACK delegate", fold_case=True),
        _precision("fp32", "int8"),
        *_QUANT,
    ),
    ("cpu", "executorch"): (_precision("fp32", "int8"), *_QUANT),
    ("cuda", "torch"): _TORCH_CUDA,
    ("cuda", "torch_compile"): (*_TORCH_CUDA, _choice("compile_mode", _COMPILE_MODES, "torch.compile mode")),
    ("cuda", "onnxruntime"): (
        _choice("provider", ("cuda", "tensorrt"), "execution provider"),
        _choice("precision", ("fp32", "fp16"), "precision (fp16 needs provider=tensorrt)"),
        _choice("cuda_graph", _FLAG_VALUES, "capture the model in a CUDA graph", fold_case=True),
        _choice("opt_level", _OPT_LEVELS, "graph optimisation level"),
    ),
    ("adb", "litert"): (_choice("delegate", ("xnnpack", "gpu", "none"), "benchmark_model delegate"),),
    ("fake", "fake"): (
        OptionSpec("latency_us", "float", minimum=1e-3, maximum=1e9, help="simulated latency (us)"),
        OptionSpec("jitter", "float", minimum=0.0, maximum=10.0, help="relative jitter"),
        _int("seed", 0, 2**32 - 1, "random seed"),
        _choice("fault", ("segfault", "kill", "hang", "oom", "raise"), "failure to simulate"),
        _choice("fault_when", ("prepare", "run"), "when the fault happens"),
    ),
}

_RUNTIME_KIND_OF = {"ssh": "cpu"}  # an SSH board runs the cpu adapters


def option_specs(device_kind: str, runtime: str) -> dict[str, OptionSpec]:
    """Every option ``runtime`` takes on ``device_kind`` (the harness's included), by name.

    ConfigError when no schema is declared for the runtime (a runtime registered without one)."""
    kind = _RUNTIME_KIND_OF.get(device_kind, device_kind)
    declared = SCHEMAS.get((kind, runtime))
    if declared is None:
        raise ConfigError(f"runtime {runtime!r} on {device_kind!r} declares no options; "
                          "declare them in costmeter.devices.options.SCHEMAS")
    return {spec.name: spec for spec in (*declared, *HARNESS_OPTIONS)}


def describe_options(device_kind: str, runtime: str) -> str:
    """``opt_level=disable|basic|extended|all, inter_op_threads=an integer in [1, 4096], ...``."""
    return ", ".join(f"{s.name}={s.accepted()}" for s in option_specs(device_kind, runtime).values())


def check_options(device_kind: str, runtime: str, options: Mapping[str, str]) -> None:
    """ConfigError (one line, naming what is accepted) unless every option is declared by
    ``runtime`` on ``device_kind`` and its value is one the runtime takes."""
    specs = option_specs(device_kind, runtime)
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            f"for {runtime} on {device_kind}; it takes: {', '.join(specs)} (-o NAME=VALUE)")
    for name, value in options.items():
        spec = specs[name]
        problem = spec.problem(value)
        if problem is not None:
            raise ConfigError(f"option {name}={_short(value)} for {runtime} on {device_kind} is {problem}; "
                              f"use {name}={spec.accepted()}")


def _short(value: str, limit: int = 40) -> str:
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"
