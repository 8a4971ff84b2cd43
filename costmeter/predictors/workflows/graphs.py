"""Kernel rows of models, kept by content hash in the working folder.

Asking about a model twice should cost neither a torch import nor an ONNX analysis. Built-in
models (zoo names, ``space:arch``, family variants) get their content hash from the model's
code, which needs the torch module; :func:`hashed_source` remembers it per model id in
``cache/ids/<code fingerprint>.json`` (:mod:`costmeter.models.known`, shared with ``bench run``),
where the fingerprint covers the model-building code and the installed torch, so an edited zoo or
another torch never reuses a stale hash.
:func:`network_rows` keeps each model's :class:`~costmeter.predictors.estimators.network.
NetworkRows` under a rule set in ``cache/graphs``; only a model seen for the first time is
exported and analysed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from costmeter.workdir import Workdir

_BUILT_IN = ("zoo", "space", "family")


def rules_digest(rules: Any) -> str:
    """16 hex digits identifying a fusion rule set."""
    text = json.dumps(rules.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable (a cache miss)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def hashed_source(spec: str, workdir: Path | str) -> Any:
    """The :class:`~costmeter.models.source.ModelSource` of ``spec`` with its content hash
    known: from the id cache for a built-in model seen before (no torch import), else computed
    (and remembered). The id cache is the one ``bench run`` keeps (:mod:`costmeter.models.known`),
    so a model run once is never hashed again by ``bench predict``, and the other way round."""
    from costmeter.models.known import remember, remembered
    from costmeter.models.source import resolve_model

    source = resolve_model(spec)
    if source.kind not in _BUILT_IN:
        return source
    source = remembered(source, workdir)
    if source._hash is None:
        source.content_hash()
        remember(source, workdir)
    return source


def rows_path(source: Any, workdir: Path | str, rules: Any, batch: int = 1,
              precision: str = "fp32") -> tuple[str, Path]:
    """(cache key, file) of a model source's kernel rows under ``rules`` at ``batch`` and
    ``precision`` (fp32: the exported graph; int8: its quantized graph)."""
    from costmeter.predictors.estimators.rows import ROWS_VERSION
    from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION

    text = (f"{source.content_hash()}|{rules_digest(rules)}|features{FEATURE_SCHEMA_VERSION}|"
            f"rows{ROWS_VERSION}|b{batch}") + ("" if precision == "fp32" else f"|{precision}")
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    return key, Workdir.of(workdir).graph_cache / f"{key}.json"


def remember_rows(source: Any, workdir: Path | str, rules: Any, graph: Any, batch: int = 1,
                  precision: str = "fp32") -> Any:
    """Keep the rows of an analysed kernel graph in the graph cache; returns them."""
    from costmeter.predictors.estimators.rows import NetworkRows

    rows = NetworkRows.of(graph)
    write_json(rows_path(source, workdir, rules, batch, precision)[1], rows.to_dict())
    return rows


def network_rows(spec: str, workdir: Path | str, rules: Any, batch: int = 1,
                 precision: str = "fp32") -> tuple[str, Any]:
    """(cache key, :class:`NetworkRows`) of the model ``spec`` under ``rules`` at ``batch`` and
    ``precision``; exported (and quantized) and analysed only when the working folder does not
    hold them yet."""
    from costmeter.predictors.estimators.rows import ROWS_VERSION, NetworkRows

    source = hashed_source(spec, workdir)
    key, path = rows_path(source, workdir, rules, batch, precision)
    cached = read_json(path)
    if cached is not None and cached.get("version") == ROWS_VERSION:
        return key, NetworkRows.from_dict(cached)
    graph = kernel_graph(source, workdir, rules, batch, precision)
    return key, remember_rows(source, workdir, rules, graph, batch, precision)


def cached_network_rows(spec: str, workdir: Path | str, rules: Any, batch: int = 1,
                        precision: str = "fp32") -> tuple[str, Any] | None:
    """:func:`network_rows` when the graph cache holds them already, else None (nothing exported)."""
    from costmeter.predictors.estimators.rows import ROWS_VERSION, NetworkRows

    key, path = rows_path(hashed_source(spec, workdir), workdir, rules, batch, precision)
    cached = read_json(path)
    if cached is None or cached.get("version") != ROWS_VERSION:
        return None
    return key, NetworkRows.from_dict(cached)


def drop_export(spec: str, workdir: Path | str) -> int:
    """Delete the cached ONNX export of a built-in model (its rows stay); returns bytes freed."""
    from costmeter.models.export import onnx_cache_path

    source = hashed_source(spec, workdir)
    if source.kind not in _BUILT_IN:
        return 0
    path = onnx_cache_path(source, workdir)
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


def model_file(source: Any, workdir: Path | str, precision: str = "fp32") -> Path:
    """The ONNX file a network runs at ``precision``: its export (fp32), or the export quantized
    by ONNX Runtime's recipe of ``bench run --precision int8`` (static QDQ, calibrated on
    ``random:32``), the very file that command measures; both cached in the working folder."""
    from costmeter.models.export import export_onnx

    if precision == "fp32":
        return export_onnx(source, workdir)
    from costmeter.harness.convert.quantize import precision_artifact
    from costmeter.predictors.sampling.quantized import check_micro_precision

    check_micro_precision(precision, "onnxruntime")
    converted = precision_artifact("onnxruntime", source, workdir, 1, {"precision": "int8"})
    return Path(converted.path)


def kernel_graph(source: Any, workdir: Path | str, rules: Any, batch: int = 1,
                 precision: str = "fp32") -> Any:
    """The fused kernel graph of a model source at ``precision`` (see :func:`model_file`)."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.fuse import fuse

    return fuse(load_graph(model_file(source, workdir, precision), batch=batch), rules)
