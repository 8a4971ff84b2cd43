"""Model ids of store layout version 1, mapped to the stable ids of version 2.

Version 1 named every model measured from an ONNX file ``onnx:<file stem>``. ``bench collect``
exported architectures to files named ``<space>-<readable arch>-<8 hex>`` and kept a manifest
(``<workdir>/collect/manifest.jsonl``) to map them back; ``bench lut check`` used
``<space>-<12 hex>``, the hex digits being the start of SHA-256 of ``"<space>|<arch>"``. Version
2 ids say what was measured without any local file: ``space:<canonical arch>``, the canonical
family variant, or ``onnx:<content hash>`` for other ONNX files.

:func:`legacy_id_map` resolves a stem through the manifest when one is found, else by matching
the digest against every architecture of the finite spaces (all NB201 cells, every family
variant on the sampling grid). A stem that neither resolves (an OFA architecture collected
without its manifest) keeps its old id and is reported, never guessed.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

_COLLECT_STEM = re.compile(r"^(?P<space>[a-z0-9_]+)-(?P<readable>.*)-(?P<digest>[0-9a-f]{8})$")
_CHECK_STEM = re.compile(r"^(?P<space>[a-z0-9_]+)-(?P<digest>[0-9a-f]{12})$")


def _digest(space: str, arch: str, chars: int) -> str:
    return hashlib.sha256(f"{space}|{arch}".encode()).hexdigest()[:chars]


def _new_id(space: str, arch: str) -> str:
    from costmeter.models import families

    return families.canonical(arch) if space in families.FAMILIES else f"{space}:{arch}"


@lru_cache(maxsize=None)
def _finite_archs(space: str) -> tuple[str, ...]:
    """Every architecture of a space small enough to search by digest (empty otherwise)."""
    from costmeter.models import families
    from costmeter.models.spaces import has_capability, space_names

    if space in families.FAMILIES:
        return tuple(families.grid(space))
    if space in space_names() and has_capability(space, "enumerate"):
        from costmeter.models.spaces import get_space

        return tuple(get_space(space).enumerate_archs())  # type: ignore[attr-defined]
    return ()


@lru_cache(maxsize=None)
def _digest_index(space: str, chars: int) -> dict[str, str]:
    return {_digest(space, a, chars): a for a in _finite_archs(space)}


def read_manifest(path: Path) -> dict[str, str]:
    """``onnx:<stem>`` -> version-2 id from a version-1 collect manifest (empty if absent or
    unreadable: the manifest is a hint, the digests are checked either way)."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
            space, arch, stem = str(record["space"]), str(record["arch"]), str(record["stem"])
        except (ValueError, KeyError, TypeError):
            continue
        if _digest(space, arch, 8) == stem[-8:]:
            out[f"onnx:{stem}"] = _new_id(space, arch)
    return out


def resolve_stem(model_id: str, manifest: dict[str, str]) -> str | None:
    """The version-2 id of a version-1 ``onnx:<stem>`` id from ``bench collect`` or ``bench lut
    check``, or None when it is not such a stem or cannot be resolved."""
    if model_id in manifest:
        return manifest[model_id]
    stem = model_id.removeprefix("onnx:")
    for pattern, chars in ((_COLLECT_STEM, 8), (_CHECK_STEM, 12)):
        match = pattern.match(stem)
        if match is None:
            continue
        space = match.group("space")
        arch = _digest_index(space, chars).get(match.group("digest"))
        if arch is not None:
            return _new_id(space, arch)
    return None


def legacy_id_map(rows: Iterable[tuple[str, str]], manifest_paths: Iterable[Path] = ()
                  ) -> tuple[dict[str, str], list[str]]:
    """(old id -> new id, unresolved collect stems) for ``(model_id, model_hash)`` rows.

    Collect and lut-check stems become ``space:arch`` / family ids; any other ``onnx:`` id
    becomes ``onnx:<model_hash>`` (the content hash the key already carried). Ids that are not
    ``onnx:`` ids are left out of the map (they are stable already)."""
    manifest: dict[str, str] = {}
    for path in manifest_paths:
        manifest.update(read_manifest(Path(path)))
    mapping: dict[str, str] = {}
    unresolved: list[str] = []
    for model_id, model_hash in rows:
        if not model_id.startswith("onnx:") or model_id in mapping:
            continue
        new = resolve_stem(model_id, manifest)
        if new is not None:
            mapping[model_id] = new
        elif _COLLECT_STEM.match(model_id[5:]) and model_id[5:].split("-", 1)[0] in _known():
            unresolved.append(model_id)
        else:
            mapping[model_id] = f"onnx:{model_hash}"
    return mapping, sorted(set(unresolved))


def _known() -> set[str]:
    from costmeter.models import families
    from costmeter.models.spaces import space_names

    return set(space_names()) | set(families.FAMILIES)
