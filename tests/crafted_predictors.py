"""Helpers that craft hostile predictor files from a real one (used by the artifact tests).

A predictor file is a zip of ``manifest.json`` and ``model.skops``; the payload is a zip of
skops' ``schema.json`` (a tree of nodes naming classes, attributes and array files) and
``.npy`` arrays. :class:`Parts` opens both levels, lets a test edit the schema and arrays,
and writes the file back with a matching payload hash, as an attacker would.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"
ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
MANIFEST, PAYLOAD = "manifest.json", "model.skops"


def small_predictor(path: Path, rows: int = 60, trees: int = 4) -> Path:
    """Fit a small nb201 forest on the fixture slice and save it to ``path``."""
    import pandas as pd

    from costmeter.predictors.estimators.arch import ArchPredictor
    from costmeter.predictors.artifacts import save_predictor
    from costmeter.predictors.estimators.forest import ModelForest

    data = pd.read_csv(FIXTURE).head(rows)
    pred = ArchPredictor("nb201", regressor=ModelForest(n_estimators=trees), device="gold",
                         runtime="pytorch").fit(list(data["arch"]), data["gold_6240_ms"].to_numpy())
    save_predictor(pred, path)
    return path


def nodes_of(tree: Any) -> Iterator[dict[str, Any]]:
    """Every schema node (dict with ``__class__``) under ``tree``, depth first."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


class Parts:
    """The manifest, payload members and skops schema of a predictor file, editable."""

    def __init__(self, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
        self.manifest = manifest
        self.files = files
        self.schema = json.loads(files["schema.json"])
        self.raw_payload: bytes | None = None  # set to write these bytes instead of the edited parts

    @classmethod
    def read(cls, path: Path) -> Parts:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            payload = zf.read(PAYLOAD)
        with zipfile.ZipFile(io.BytesIO(payload)) as inner:
            files = {name: inner.read(name) for name in inner.namelist()}
        return cls(manifest, files)

    def payload(self) -> bytes:
        self.files["schema.json"] = json.dumps(self.schema).encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            for name, data in self.files.items():
                zf.writestr(name, data)
        return out.getvalue()

    def write(self, path: Path, payload: bytes | None = None) -> Path:
        """Write the file with the manifest's payload hash and size matching the payload."""
        if payload is None:
            payload = self.raw_payload if self.raw_payload is not None else self.payload()
        self.manifest["payload"].update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(self.manifest))
            zf.writestr(PAYLOAD, payload)
        return path

    def objects(self, cls: str) -> list[dict[str, Any]]:
        return [n for n in nodes_of(self.schema) if n.get("__class__") == cls and "content" in n]

    @staticmethod
    def attr(node: dict[str, Any], name: str) -> dict[str, Any]:
        return node["content"]["content"][name]

    def array(self, node: dict[str, Any]) -> np.ndarray:
        return np.load(io.BytesIO(self.files[node["file"]]))

    def set_array(self, node: dict[str, Any], arr: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, arr)
        self.files[node["file"]] = buf.getvalue()

    def tree(self, i: int = 0) -> dict[str, Any]:
        return self.objects("Tree")[i]

    def nodes(self, i: int = 0) -> np.ndarray:
        return self.array(self.attr(self.tree(i), "nodes"))

    def set_nodes(self, arr: np.ndarray, i: int = 0) -> None:
        self.set_array(self.attr(self.tree(i), "nodes"), arr)

    def n_features(self, i: int = 0) -> int:
        return int(json.loads(self.tree(i)["__reduce__"]["args"]["content"][0]["content"]))

    def tree_arg(self, position: int, value: Any, i: int = 0) -> None:
        """Set a constructor argument of tree ``i``: 0 n_features, 2 n_outputs."""
        self.set_json(self.tree(i)["__reduce__"]["args"]["content"][position], value)

    def set_json(self, node: dict[str, Any], value: Any) -> None:
        """Set a JSON leaf; it gets an id of its own, since skops reuses the object first
        loaded under an id for every node that repeats it."""
        node["content"] = json.dumps(value)
        node["__id__"] = max(n.get("__id__", 0) for n in nodes_of(self.schema)) + 1


def write_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def bench(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the ``bench`` CLI in a child process (a segfault there cannot take pytest down)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    code = "import sys; from costmeter.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          preexec_fn=_no_core_dumps)


def _no_core_dumps() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
