"""The manifest of a predictor file: parsed with bounded depth, validated by a JSON Schema.

:data:`MANIFEST_SCHEMA` (JSON Schema 2020-12, checked with ``jsonschema``) names every field
``save_predictor`` writes, with its type; strings are at most :data:`MAX_STRING` characters and
the free-form ``metrics`` and ``extra`` nest at most :data:`MAX_DEPTH` levels. A manifest
nested deeper than the JSON parser allows, of the wrong types, or missing fields is refused
with a one-line StoreError naming the first field at fault.
"""
from __future__ import annotations

import json
from typing import Any

from costmeter.errors import StoreError

MAX_DEPTH = 8
"""Deepest nesting of arrays/objects inside ``metrics`` and ``extra``."""
MAX_STRING = 4096
"""Longest string value, characters."""
MAX_ITEMS = 4096
"""Most items of one array or object."""
_NAME = {"type": "string", "maxLength": 256}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_LABEL = {"type": ["string", "null"], "maxLength": 256}


def _bounded_json(depth: int) -> dict[str, Any]:
    """``$defs`` for JSON values nested at most ``depth`` levels: ``json0`` is a scalar,
    ``jsonN`` a scalar or an array/object of ``json(N-1)``."""
    defs: dict[str, Any] = {"json0": {"type": ["string", "number", "boolean", "null"],
                                      "maxLength": MAX_STRING}}
    for level in range(1, depth + 1):
        inner = {"$ref": f"#/$defs/json{level - 1}"}
        defs[f"json{level}"] = {"anyOf": [
            {"$ref": "#/$defs/json0"},
            {"type": "array", "maxItems": MAX_ITEMS, "items": inner},
            {"type": "object", "maxProperties": MAX_ITEMS, "propertyNames": _NAME,
             "additionalProperties": inner},
        ]}
    return defs


def _schema(format_name: str, format_version: int, payload_name: str) -> dict[str, Any]:
    free = {"type": "object", "maxProperties": MAX_ITEMS, "propertyNames": _NAME,
            "additionalProperties": {"$ref": f"#/$defs/json{MAX_DEPTH - 1}"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["format", "format_version", "created_at", "estimator", "space", "feature_schema",
                     "device", "runtime", "library_versions", "training_set", "metrics", "payload",
                     "trusted_types", "extra"],
        "properties": {
            "format": {"const": format_name},
            "format_version": {"const": format_version},
            "created_at": {"type": "string", "maxLength": 64},
            "estimator": _NAME,
            "space": _LABEL,
            "feature_schema": _LABEL,
            "device": _LABEL,
            "runtime": _LABEL,
            "library_versions": {"type": "object", "maxProperties": 64, "propertyNames": _NAME,
                                 "additionalProperties": {"type": "string", "maxLength": 128}},
            "training_set": {
                "type": "object", "required": ["rows", "sha256"],
                "properties": {"rows": {"type": ["integer", "null"], "minimum": 0},
                               "sha256": {"anyOf": [_SHA256, {"type": "null"}]}},
                "additionalProperties": {"$ref": f"#/$defs/json{MAX_DEPTH - 1}"}},
            "metrics": free,
            "payload": {
                "type": "object", "required": ["name", "bytes", "sha256"],
                "properties": {"name": {"const": payload_name},
                               "bytes": {"type": "integer", "minimum": 0}, "sha256": _SHA256},
                "additionalProperties": {"$ref": f"#/$defs/json{MAX_DEPTH - 1}"}},
            "trusted_types": {"type": "array", "maxItems": 256, "items": _NAME},
            "extra": free,
            "interval": {"anyOf": [{"type": "null"}, free]},
        },
        "additionalProperties": {"$ref": f"#/$defs/json{MAX_DEPTH}"},
        "$defs": _bounded_json(MAX_DEPTH),
    }


_VALIDATORS: dict[tuple[str, int, str], Any] = {}


def _validator(format_name: str, format_version: int, payload_name: str) -> Any:
    key = (format_name, format_version, payload_name)
    if key not in _VALIDATORS:
        from jsonschema import Draft202012Validator

        _VALIDATORS[key] = Draft202012Validator(_schema(*key))
    return _VALIDATORS[key]


def manifest_schema(format_name: str, format_version: int, payload_name: str) -> dict[str, Any]:
    """The JSON Schema a manifest of this format must satisfy (a fresh dict)."""
    return _schema(format_name, format_version, payload_name)


def parse_manifest(raw: bytes, label: str, *, format_name: str, format_version: int,
                   payload_name: str) -> dict[str, Any]:
    """The manifest in ``raw`` (UTF-8 JSON bytes), validated; StoreError (one line) otherwise.

    The format and version are checked before the schema, so that a file of another version
    is told so rather than listed field by field.
    """
    try:
        manifest = json.loads(raw)
    except RecursionError as exc:
        raise StoreError(f"{label}: its manifest is nested too deeply to read; refusing to load it "
                         "-- refit it with `bench predictor fit`") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise StoreError(f"{label}: its manifest is not valid JSON ({type(exc).__name__}); refit it "
                         "with `bench predictor fit`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise StoreError(f"{label} is not a costmeter predictor file (no '{format_name}' manifest)")
    version = manifest.get("format_version")
    if type(version) is not int or version != format_version:
        shown = _brief(version) + ("" if type(version) is int else f" (a JSON {_json_type(version)}, not an integer)")
        raise StoreError(f"{label} has predictor format version {shown}; this costmeter reads "
                         f"version {format_version}; refit it with `bench predictor fit`")
    from jsonschema.exceptions import best_match

    try:
        error = best_match(_validator(format_name, format_version, payload_name).iter_errors(manifest))
    except RecursionError as exc:
        raise StoreError(f"{label}: its manifest is nested too deeply to check; refusing to load it "
                         "-- refit it with `bench predictor fit`") from exc
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise StoreError(f"{label}: manifest field {_brief(where, 80)} is invalid "
                         f"({_brief(error.message, 160)}); refusing to load it -- refit it with "
                         "`bench predictor fit`")
    return manifest


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _brief(value: Any, width: int = 40) -> str:
    """A one-line, width-bounded repr (or str) of a value from an untrusted file."""
    if isinstance(value, (dict, list)):  # a deep container's repr could itself recurse too far
        text = f"<a JSON {'object' if isinstance(value, dict) else 'array'}>"
    else:
        text = value if isinstance(value, str) and width > 40 else repr(value)
    text = " ".join(text[:width * 4].split())
    return text if len(text) <= width else text[:width - 3] + "..."
