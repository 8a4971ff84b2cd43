"""The project's error classes. Each message names the problem and the fix.

Vendor exceptions are translated into these at the boundary; only ``cli.py`` turns them
into exit codes (2 for all of them).
"""
from __future__ import annotations


class CostmeterError(Exception):
    """Base class: a one-line message that says what is wrong and how to fix it."""


class ConfigError(CostmeterError, ValueError):
    """Bad user input: unknown device/runtime/model, malformed option, bad file."""


class UnavailableError(CostmeterError):
    """A runtime, device or counter is not usable here (missing extra, no hardware)."""


class UnsupportedError(CostmeterError):
    """A converter or runtime cannot handle this model; the run records `unsupported`."""


class StoreError(CostmeterError):
    """The results store cannot be opened, read or written, or its schema is unknown."""


class MeasurementError(CostmeterError):
    """A benchmark failed while running (crash, timeout, invalid output)."""
