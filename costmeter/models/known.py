"""What a working folder remembers about built-in models, so a model seen before costs no torch.

A built-in model's content hash (zoo names, ``space:arch``, family variants) is computed from
its torch module, and its size figures (params, MACs) from a forward pass under torch's FLOP
counter: seconds of torch import and model building in the parent process, on every run, even
when the exported artifact is already cached. :func:`remembered` fills both in from
``cache/ids/<fingerprint>.json``, where the fingerprint covers the model-building code
(``costmeter/models/**.py``) and the installed torch version, so an edited zoo or another
torch never reuses a stale entry; :func:`remember` writes them after they were computed.

ONNX files hash their bytes (no torch) and python callables may change at any time: neither is
remembered.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from costmeter.models.source import ModelSource
from costmeter.workdir import Workdir

_BUILT_IN = ("zoo", "space", "family")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits over the model-building code and the installed torch version."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    try:
        digest.update(version("torch").encode())
    except PackageNotFoundError:
        digest.update(b"no torch")
    return digest.hexdigest()[:16]


def _index_path(workdir: Workdir | Path | str) -> Path:
    return Workdir.of(workdir).id_cache / f"{code_fingerprint()}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or unreadable: a cache miss
    return data if isinstance(data, dict) else {}


def remembered(source: ModelSource, workdir: Workdir | Path | str) -> ModelSource:
    """``source`` with its content hash and size figures filled in where the working folder
    knows them (built-in models only); otherwise ``source`` unchanged (computed on demand)."""
    if source.kind not in _BUILT_IN:
        return source
    entry = _read(_index_path(workdir)).get(source.model_id)
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
        return source
    info = entry.get("info")
    return replace(source, _hash=entry["hash"], _info=dict(info) if isinstance(info, dict) else None)


def builds_torch_for(source: ModelSource, what: str) -> bool:
    """Whether computing ``source``'s ``what`` ("hash" or "info") will build its torch module
    (not known yet, and not an ONNX file)."""
    known = source._hash if what == "hash" else source._info
    return known is None and source.has_torch()


def remember(source: ModelSource, workdir: Workdir | Path | str) -> None:
    """Record ``source``'s content hash and size figures (those already computed) for the next
    run; a built-in model only. Written atomically; a lost race is only a later cache miss."""
    if source.kind not in _BUILT_IN or source._hash is None:
        return
    path = _index_path(workdir)
    index = _read(path)
    entry = {"hash": source._hash}
    if source._info is not None:
        entry["info"] = dict(source._info)
    elif isinstance(index.get(source.model_id), dict) and index[source.model_id].get("hash") == source._hash:
        entry = {**index[source.model_id], **entry}
    if index.get(source.model_id) == entry:
        return
    index[source.model_id] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(index, sort_keys=True))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
