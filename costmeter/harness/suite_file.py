"""Suite files: TOML read with :mod:`tomllib`, checked against a JSON Schema (jsonschema), then
the names in it (devices, runtimes, models, options) checked against what costmeter knows.
Every problem is one line that names the file, the line and the key, e.g.
``nightly.toml line 14: [protocol] unknown key 'warmpu'; allowed: max_cv, ...``.

A suite file::

    [suite]
    id = "nightly-cpu"          # the suite's name in the store (default: the file's stem)
    tag = "nightly"             # stored with every result (--tag wins)
    repository = "."            # git checkout of the code under test (--sha wins)
    python_path = ["models"]    # folders workers may import pkg.module:function models from
    timeout_s = 600             # per worker process (s)

    [protocol]                  # bench run's protocol options
    warmup = 10
    min_time_s = 2.0
    max_time_s = 60.0
    percentiles = [50, 90, 99]

    [matrix]
    devices = ["cpu"]
    runtimes = ["onnxruntime", "torch"]
    batches = [1, 8]
    threads = [1]               # omit for each runtime's default

    [options.onnxruntime]       # runtime options, per runtime
    opt_level = "all"

    [store]
    retry_window_s = 120        # retry a busy store this long, then spool the result
    busy_timeout_s = 30         # SQLite: wait this long for a lock within each try

    [[models]]
    zoo = ["tiny_mlp", "mobilenet_v2"]
    [[models]]
    onnx = ["models/bert.onnx"] # relative to the suite file
    [[models]]
    space = "nb201"
    samples = 4                 # architectures drawn with `seed`
    seed = 0
    [[models]]
    python = ["mypkg.models:build"]   # imported and executed in worker processes
    runtimes = ["torch"]              # an entry may override devices/runtimes/batches/threads

Paths are relative to the suite file's folder.
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, UnavailableError
from costmeter.harness.config import ModelGroup, ProtocolConfig, SuiteConfig

_POSITIVE_INTS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}}
_STRINGS = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
_NUMBER = {"type": "number"}
_AXES = {"devices": _STRINGS, "runtimes": _STRINGS, "batches": _POSITIVE_INTS,
         "threads": _POSITIVE_INTS}
_OPTION_VALUE = {"type": ["string", "integer", "number", "boolean"]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["models"],
    "properties": {
        "suite": {"type": "object", "additionalProperties": False, "properties": {
            "id": {"type": "string"}, "tag": {"type": "string"},
            "repository": {"type": "string"}, "python_path": _STRINGS,
            "timeout_s": _NUMBER, "processes": {"type": "integer"}, "parity": {"type": "boolean"},
        }},
        "protocol": {"type": "object", "additionalProperties": False, "properties": {
            "warmup": {"type": "integer"}, "warmup_time_s": _NUMBER,
            "min_count": {"type": "integer"}, "min_time_s": _NUMBER, "max_time_s": _NUMBER,
            "percentiles": {"type": "array", "minItems": 1, "items": _NUMBER},
            "max_rel_ci": _NUMBER, "max_cv": _NUMBER,
        }},
        "matrix": {"type": "object", "additionalProperties": False, "properties": _AXES},
        "options": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": _OPTION_VALUE}},
        "store": {"type": "object", "additionalProperties": False, "properties": {
            "retry_window_s": _NUMBER, "busy_timeout_s": _NUMBER}},
        "models": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "zoo": _STRINGS, "onnx": _STRINGS, "python": _STRINGS, "spec": _STRINGS,
                "space": {"type": "string"}, "samples": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer", "minimum": 0}, "archs": _STRINGS, **_AXES,
            },
        }},
    },
}
_SOURCES = ("zoo", "onnx", "python", "spec", "space")
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


class _Lines:
    """Where each key of a TOML document is, by its path (``("models", 1, "seed")``)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")

    def __init__(self, text: str) -> None:
        self.at: dict[tuple[Any, ...], int] = {}
        counts: dict[tuple[str, ...], int] = {}
        table: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                names = tuple(p.strip().strip("\"'") for p in header.group(2).split("."))
                if header.group(1) == "[[":
                    self.at.setdefault(names, number)
                    counts[names] = counts.get(names, -1) + 1
                    table = (*names[:-1], names[-1], counts[names])
                else:
                    table = names
                self.at.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key and not line.lstrip().startswith("#"):
                names = tuple(p.strip().strip("\"'") for p in key.group(1).split("."))
                self.at.setdefault((*table, *names), number)

    def line(self, path: tuple[Any, ...]) -> int:
        """The line of ``path``, else of its nearest enclosing key or table (1 if none)."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.at:
                return self.at[path[:end]]
        return 1


def _where(path: tuple[Any, ...]) -> str:
    """``("models", 1, "seed")`` -> ``[[models]] #2 key 'seed'``."""
    if not path:
        return "top level"
    parts = [f"[[{path[0]}]] #{path[1] + 1}" if len(path) > 1 and isinstance(path[1], int)
             else f"[{path[0]}]"]
    rest = path[2:] if len(path) > 1 and isinstance(path[1], int) else path[1:]
    keys = [str(p) for p in rest if not isinstance(p, int)]
    return parts[0] + (f" key '{'.'.join(keys)}'" if keys else "")


def _schema_message(error: Any) -> tuple[tuple[Any, ...], str]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = _where(path)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return (*path, extra[0]), f"{where} unknown key '{extra[0]}'{hint}"
    if error.validator == "required":
        return path, f"{_where(path)} is missing: {error.message}"
    if error.validator == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return path, f"{_where(path)} must be {' or '.join(kinds)}, not {type(error.instance).__name__} {error.instance!r}"
    return path, f"{_where(path)}: {error.message}"


def load_suite(path: str | Path) -> SuiteConfig:
    """Read, check and build the suite at ``path``; ConfigError with file, line and key."""
    try:
        import jsonschema
    except ImportError:
        raise UnavailableError("suite files are checked with jsonschema, which is not installed; "
                               "install it with: pip install 'costmeter[predict]'") from None

    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read suite file {file} ({exc.strerror or exc}); check the path") from exc
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        where = f" line {found.group(1)}" if found else ""
        reason = _TOML_AT.sub("", str(exc)).strip()
        raise ConfigError(f"{file.name}{where}: not valid TOML ({reason}); fix the syntax") from None
    lines = _Lines(text)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: lines.line(tuple(e.absolute_path)))
    if errors:
        where, message = _schema_message(errors[0])
        raise ConfigError(f"{file.name} line {lines.line(where)}: {message}")
    return _build(data, file, lines, hashlib.sha256(raw).hexdigest())


def _fail(file: Path, lines: _Lines, path: tuple[Any, ...], message: str) -> ConfigError:
    return ConfigError(f"{file.name} line {lines.line(path)}: {_where(path)}: {message}")


def _check_devices(devices: list[str], file: Path, lines: _Lines, path: tuple[Any, ...]) -> list[str]:
    from costmeter.harness.config import DeviceSpec

    kinds = []
    for device in devices:
        try:
            kinds.append(DeviceSpec.parse(device).kind)
        except ConfigError as exc:
            raise _fail(file, lines, path, str(exc)) from None
    return kinds


def _check_runtimes(runtimes: list[str], kinds: list[str], file: Path, lines: _Lines,
                    path: tuple[Any, ...]) -> None:
    from costmeter.devices.base import runtime_names

    for runtime in runtimes:
        if not any(runtime in runtime_names(kind) for kind in kinds):
            known = sorted({n for kind in kinds for n in runtime_names(kind)})
            raise _fail(file, lines, path, f"unknown runtime {runtime!r} for device kind(s) "
                        f"{', '.join(sorted(set(kinds)))}; choose from {', '.join(known)}")


def _model_specs(entry: dict[str, Any], index: int, file: Path, lines: _Lines) -> tuple[str, ...]:
    from costmeter.models.source import zoo_names
    from costmeter.models.spaces import sample_model_ids, space_names

    path = ("models", index)
    given = [k for k in _SOURCES if k in entry]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise _fail(file, lines, path, f"give exactly one of {', '.join(_SOURCES)} (found {what})")
    kind = given[0]
    if kind != "space" and any(k in entry for k in ("samples", "seed", "archs")):
        raise _fail(file, lines, path, "samples, seed and archs go with space = \"...\"")
    if kind == "zoo":
        unknown = [m for m in entry["zoo"] if m not in zoo_names()]
        if unknown:
            raise _fail(file, lines, (*path, "zoo"), f"unknown zoo model {unknown[0]!r}; "
                        f"choose from {', '.join(zoo_names())} (see `bench models`)")
        return tuple(entry["zoo"])
    if kind == "onnx":
        found = [(file.parent / p).resolve() for p in entry["onnx"]]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise _fail(file, lines, (*path, "onnx"), f"ONNX file {missing[0]} not found; "
                        "paths are relative to the suite file")
        return tuple(str(p) for p in found)
    if kind == "python":
        bad = [t for t in entry["python"] if not re.fullmatch(r"[\w.]+:[\w.]+", t.removeprefix("py:"))]
        if bad:
            raise _fail(file, lines, (*path, "python"), f"{bad[0]!r} is not pkg.module:function")
        return tuple(f"py:{t.removeprefix('py:')}" for t in entry["python"])
    if kind == "spec":
        return tuple(entry["spec"])
    space = entry["space"]
    if space not in space_names():
        raise _fail(file, lines, (*path, "space"), f"unknown space {space!r}; choose from "
                    f"{', '.join(space_names())}")
    if ("samples" in entry) == ("archs" in entry):
        raise _fail(file, lines, path, "a space entry needs samples (with seed) or archs, not both")
    if "archs" in entry:
        return tuple(f"{space}:{a}" for a in entry["archs"])
    return tuple(sample_model_ids(space, int(entry["samples"]), seed=int(entry.get("seed", 0))))


def _build(data: dict[str, Any], file: Path, lines: _Lines, digest: str) -> SuiteConfig:
    suite = data.get("suite", {})
    matrix = data.get("matrix", {})
    proto = data.get("protocol", {})
    store = data.get("store", {})
    names = {"warmup": "warmup_count", "warmup_time_s": "warmup_s"}
    try:
        protocol = ProtocolConfig(**{names.get(k, k): (tuple(v) if k == "percentiles" else v)
                                     for k, v in proto.items()})
    except ConfigError as exc:
        raise _fail(file, lines, ("protocol",), str(exc)) from None
    devices = list(matrix.get("devices", ["cpu"]))
    kinds = _check_devices(devices, file, lines, ("matrix", "devices"))
    _check_runtimes(list(matrix.get("runtimes", ["onnxruntime"])), kinds, file, lines,
                    ("matrix", "runtimes"))
    groups = []
    all_kinds = list(kinds)
    for index, entry in enumerate(data["models"]):
        path = ("models", index)
        group_kinds = _check_devices(entry["devices"], file, lines, (*path, "devices")) \
            if "devices" in entry else kinds
        all_kinds += group_kinds
        if "runtimes" in entry:
            _check_runtimes(entry["runtimes"], group_kinds, file, lines, (*path, "runtimes"))
        groups.append(ModelGroup(
            specs=_model_specs(entry, index, file, lines),
            devices=tuple(entry["devices"]) if "devices" in entry else None,
            runtimes=tuple(entry["runtimes"]) if "runtimes" in entry else None,
            batches=tuple(entry["batches"]) if "batches" in entry else None,
            threads=tuple(entry["threads"]) if "threads" in entry else None,
            line=lines.line(path)))
    options = tuple(sorted((rt, tuple(sorted((k, str(v).lower() if isinstance(v, bool) else str(v))
                                             for k, v in opts.items())))
                           for rt, opts in data.get("options", {}).items()))
    _check_options(options, all_kinds, file, lines)
    repository = suite.get("repository")
    try:
        return SuiteConfig(
            suite_id=str(suite.get("id", file.stem)), models=tuple(groups),
            devices=tuple(devices), runtimes=tuple(matrix.get("runtimes", ["onnxruntime"])),
            batches=tuple(matrix.get("batches", [1])),
            threads=tuple(matrix.get("threads", [None])), options=options, protocol=protocol,
            tag=suite.get("tag"),
            repository=str((file.parent / repository).resolve()) if repository else None,
            python_path=tuple(str((file.parent / p).resolve()) for p in suite.get("python_path", [])),
            processes=int(suite.get("processes", 1)), timeout_s=float(suite.get("timeout_s", 600.0)),
            parity=bool(suite.get("parity", True)),
            retry_window_s=float(store.get("retry_window_s", 120.0)),
            busy_timeout_s=float(store.get("busy_timeout_s", 30.0)),
            path=str(file.resolve()), sha256=digest)
    except ConfigError as exc:
        raise _fail(file, lines, ("suite",), str(exc)) from None


def _check_options(options: tuple[tuple[str, tuple[tuple[str, str], ...]], ...], kinds: list[str],
                   file: Path, lines: _Lines) -> None:
    """Runtime options must be ones the runtime declares (names only; values are the
    runtime's business when it prepares)."""
    from costmeter.devices.base import get_runtime, runtime_names
    from costmeter.devices.options import HARNESS_OPTIONS

    for runtime, pairs in options:
        declared: set[str] = {spec.name for spec in HARNESS_OPTIONS}
        known = False
        for kind in set(kinds):
            if runtime in runtime_names(kind):
                known = True
                declared |= set(getattr(get_runtime(kind, runtime), "option_names", ()) or ())
        if not known:
            raise _fail(file, lines, ("options", runtime), f"runtime {runtime!r} is not one the "
                        "suite's devices run; remove it or fix its name")
        for name, _value in pairs:
            if name not in declared:
                raise _fail(file, lines, ("options", runtime, name), f"unknown option {name!r} for "
                            f"{runtime}; it takes {', '.join(sorted(declared))}")
