"""Precision as a benchmark setting: names, what each runtime declares, and the run configs.

A precision travels in the run's options (``precision=int8``), so it is part of the benchmark key
(``BenchKey.options`` and ``BenchKey.dtype``). fp32 is the default and adds no option, so an fp32
result has the same key with or without ``--precision fp32``. An int8 run also carries its
calibration set (``calibration=random:32`` or ``calibration=sha:<hash of the inputs>``), because a
different calibration set is a different quantized model.

Runtime adapters declare ``precisions`` (what they can run) and may declare
``precision_unsupported`` (precision -> why not): such a precision yields an ``unsupported``
result with that reason instead of a refusal, so tables show why it is missing.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from costmeter.errors import ConfigError
from costmeter.results.fidelity import DEFAULT_PRECISION, PRECISION_ALIASES, precision_name

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
ALIASES: dict[str, str] = PRECISION_ALIASES
DEFAULT_CALIBRATION = "random:32"


def normalize_precision(text: str) -> str:
    """``"float32"`` -> ``"fp32"``, ...; ConfigError naming the choices for anything else."""
    name = ALIASES.get(str(text).strip().lower())
    if name is None:
        raise ConfigError(f"unknown precision {text!r}; use one of {', '.join(PRECISIONS)} or all")
    return name


def config_precision(options: Any) -> str:
    """The precision of a run from its options (pairs or mapping); fp32 when none is set.

    Values that are not precision names (OpenVINO's ``precision=default``) read as fp32, the
    precision asked for when nothing is forced.
    """
    return precision_name(dict(options).get("precision"))


def runtime_precisions(runtime: Any) -> tuple[str, ...]:
    """What ``runtime`` (an adapter) declares it runs; adapters that declare nothing run fp32, and
    those with a ``precision`` option (the CUDA ones) also fp16 and bf16."""
    from costmeter.devices.base import PrecisionDeclaration

    if isinstance(runtime, PrecisionDeclaration) and runtime.precisions:
        return tuple(runtime.precisions)
    if "precision" in getattr(runtime, "option_names", ()):
        return ("fp32", "fp16", "bf16")
    return (DEFAULT_PRECISION,)


def unsupported_reason(runtime: Any, precision: str) -> str | None:
    """Why ``runtime`` cannot run ``precision``, when the adapter explains it (else None)."""
    return dict(getattr(runtime, "precision_unsupported", {}) or {}).get(precision)


def check_precision(runtime: Any, precision: str) -> None:
    """ConfigError (one line, naming what the runtime can run) unless the runtime declares
    ``precision`` or explains why it cannot (that becomes an ``unsupported`` result)."""
    if precision in runtime_precisions(runtime) or unsupported_reason(runtime, precision):
        return
    raise ConfigError(
        f"runtime {runtime.name} cannot run {precision}; it runs {', '.join(runtime_precisions(runtime))} "
        f"(pick one of those with --precision, or another runtime)")


def parse_precision_list(spec: str) -> list[str] | None:
    """``"int8"`` -> ["int8"], ``"fp32,int8"`` -> both, ``"all"`` -> None (each runtime's own)."""
    if spec.strip().lower() == "all":
        return None
    names = [normalize_precision(p) for p in spec.split(",") if p.strip()]
    if not names:
        raise ConfigError("--precision is empty; give fp32, fp16, bf16, int8 or all")
    return list(dict.fromkeys(names))


def with_precision(config: Any, precision: str, calibration: str | None) -> Any:
    """``config`` (a RunConfig) set to ``precision``: the option ``precision`` (absent for fp32)
    and, for int8 on a runtime that quantizes, ``calibration`` (the spec recorded in the key). A
    runtime that only explains why it has no int8 (TVM) takes no calibration: its result is
    ``unsupported`` and its key names no calibration set."""
    options = {k: v for k, v in config.options if k not in ("precision", "calibration")}
    if precision != DEFAULT_PRECISION:
        options["precision"] = precision
    if precision == "int8" and _takes_calibration(config):
        options["calibration"] = calibration or DEFAULT_CALIBRATION
    return replace(config, options=tuple(sorted(options.items())))


def _takes_calibration(config: Any) -> bool:
    """Whether ``config``'s runtime declares the ``calibration`` option (it quantizes)."""
    from costmeter.devices.options import option_specs

    try:
        return "calibration" in option_specs(config.device_kind, config.runtime)
    except ConfigError:  # a runtime without a schema: its options are refused later, with the fix
        return True


def expand_precisions(configs: list[Any], precisions: list[str] | None, calibration: str | None,
                      get_runtime: Any, skipped: list[str] | None = None) -> list[Any]:
    """One config per (config, precision). ``precisions`` None means each runtime's declared
    precisions plus those it explains it cannot run (fp32 first). ConfigError when a runtime was
    asked for a precision it neither runs nor explains, or when the options already force one;
    with a ``skipped`` list (``--runtime all``) such pairs are left out and named there instead."""
    out: list[Any] = []
    for config in configs:
        if "precision" in dict(config.options):
            raise ConfigError("give the precision once: --precision, or -o precision=..., not both")
        runtime = get_runtime(config.device_kind, config.runtime)
        if precisions is None:
            wanted = [p for p in PRECISIONS if p in runtime_precisions(runtime)
                      or unsupported_reason(runtime, p)]
        else:
            wanted = []
            for precision in precisions:
                try:
                    check_precision(runtime, precision)
                    wanted.append(precision)
                except ConfigError as error:
                    if skipped is None:
                        raise
                    skipped.append(str(error).split(" (")[0])
        out.extend(with_precision(config, p, calibration) for p in wanted)
    return out
