"""Property: whatever bytes a predictor file holds, loading it either succeeds or raises a
StoreError/ConfigError, and `bench predict` exits 0 or 2 with one line -- never another
exception, never a crash.

Random bytes, random zips and random manifests stop before the payload is rebuilt, so they
run in this process. Mutated payloads (tree arrays, widths, flipped bytes, all with a matching
hash) reach scikit-learn, where a miss would be a segfault: those examples run in a child
process (this file run as a script), and the test asserts the child's exit status.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from crafted_predictors import ARCH, MANIFEST, PAYLOAD, REPO, Parts, small_predictor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmeter.cli import main
from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.artifacts import load_predictor

ALLOWED = (StoreError, ConfigError)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_ORIGINAL: dict[str, Any] = {}


def _original() -> tuple[Path, dict[str, Any], bytes]:
    """A real predictor file (made once per process), its manifest and payload."""
    if not _ORIGINAL:
        folder = Path(tempfile.mkdtemp(prefix="costmeter-prop-"))
        path = small_predictor(folder / "orig.costmodel")
        with zipfile.ZipFile(path) as zf:
            _ORIGINAL.update(path=path, manifest=json.loads(zf.read(MANIFEST)), payload=zf.read(PAYLOAD))
    return _ORIGINAL["path"], _ORIGINAL["manifest"], _ORIGINAL["payload"]


def _load_and_predict(path: Path) -> bool:
    """True if the file loaded (and then predicted); False if refused with an allowed error.
    Any other exception propagates and fails the property. A crafted file may load and predict
    nonsense (a leaf of 2,803 log-ms predicts infinity, with numpy's overflow warning): that
    is not a crash, and not what these checks promise to catch."""
    try:
        pred = load_predictor(path)
    except ALLOWED:
        return False
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["predict", str(path), "--model", ARCH])
    lines = err.getvalue().strip().splitlines()
    assert rc in (0, 2) and "Traceback" not in err.getvalue(), (rc, err.getvalue())
    assert rc == 0 or len(lines) == 1, lines
    if rc == 0:
        assert pred.predict([ARCH]).shape == (1,)
    return rc == 0


def _check_cli_refuses(path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["predict", str(path), "--model", "tiny_mlp"])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in lines[0], (rc, lines)


# ------------------------------------------------------------------------- in this process
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@SETTINGS
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]))
def test_random_bytes_are_refused(data: bytes, prefix: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.costmodel"
        path.write_bytes(prefix + data)
        try:
            load_predictor(path)
        except ALLOWED:
            pass
        else:
            raise AssertionError("random bytes loaded as a predictor")
        _check_cli_refuses(path)


member_names = st.sampled_from([MANIFEST, PAYLOAD, "schema.json", "../evil", "x" * 300]) \
    | st.text(min_size=1, max_size=12)  # zipfile cannot write an empty name


@SETTINGS
@given(members=st.lists(st.tuples(member_names, st.sampled_from(["bytes", "manifest", "payload"]),
                                  st.binary(max_size=512)), max_size=10),
       compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]))
def test_random_zips_load_or_are_refused(members: list[tuple[str, str, bytes]], compression: int) -> None:
    _, manifest, payload = _original()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "z.costmodel"
        with zipfile.ZipFile(path, "w", compression=compression) as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the game
            for name, kind, data in members:
                body = {"bytes": data, "manifest": json.dumps(manifest).encode(), "payload": payload}[kind]
                zf.writestr(name, body)
        if not _load_and_predict(path):
            _check_cli_refuses(path)


@SETTINGS
@given(replace=st.dictionaries(st.sampled_from(["format", "format_version", "payload", "device", "space",
                                                "feature_schema", "metrics", "extra", "training_set",
                                                "library_versions", "trusted_types", "created_at", "new"]),
                               json_values, max_size=3),
       drop=st.sets(st.sampled_from(["payload", "metrics", "extra", "device", "estimator"]), max_size=2))
def test_random_manifests_load_or_are_refused(replace: dict[str, Any], drop: set[str]) -> None:
    _, manifest, payload = _original()
    edited = {**manifest, **replace}
    for key in drop:
        edited.pop(key, None)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.costmodel"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(edited))
            zf.writestr(PAYLOAD, payload)
        loaded = _load_and_predict(path)
        untouched = not drop and all(manifest.get(k) == v for k, v in replace.items() if k != "new")
        if untouched and not isinstance(replace.get("new"), (list, dict)):
            assert loaded, "an intact manifest was refused"
        if not loaded:
            _check_cli_refuses(path)


# ------------------------------------------------------------------- mutated payloads (child)
_INTS = st.sampled_from([-2**63, -2**31, -3, -2, -1, 0, 1, 2, 30, 31, 32, 50, 51, 52, 2**31 - 1, 2**63 - 1]) \
    | st.integers(-100, 100)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_TREE = st.integers(0, 3)
_OPS = st.one_of(
    st.tuples(st.just("node"), _TREE, st.integers(0, 64), st.sampled_from(
        ["left_child", "right_child", "feature", "threshold", "n_node_samples", "missing_go_to_left"]),
        _INTS | _FLOATS),
    st.tuples(st.just("value"), _TREE, st.integers(0, 64), _FLOATS),
    st.tuples(st.just("scalar"), _TREE, st.sampled_from(["node_count", "max_depth", "n_features", "n_outputs"]), _INTS),
    st.tuples(st.just("columns"), st.integers(0, 64), _INTS),
    st.tuples(st.just("width"), st.sampled_from(["DecisionTreeRegressor", "RandomForestRegressor", "ModelForest"]),
              st.sampled_from(["n_features_in_", "n_outputs_"]), _INTS),
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 255)),
)


def _apply(parts: Parts, op: tuple) -> None:
    import numpy as np

    kind = op[0]
    if kind == "node":
        _, tree, node, field, value = op
        nodes = parts.nodes(tree)
        column = nodes[field]
        if column.dtype.kind in "iu":
            if not (isinstance(value, int) or np.isfinite(value)):
                return
            value = int(value) % 256 if column.dtype.kind == "u" else max(min(int(value), 2**63 - 1), -2**63)
        column[node % len(nodes)] = value
        parts.set_nodes(nodes, tree)
    elif kind == "value":
        _, tree, node, value = op
        target = parts.attr(parts.tree(tree), "values")
        values = parts.array(target)
        values[node % len(values)] = value
        parts.set_array(target, values)
    elif kind == "scalar":
        _, tree, name, value = op
        if name in ("n_features", "n_outputs"):
            parts.tree_arg(0 if name == "n_features" else 2, value, tree)
        else:
            parts.set_json(parts.attr(parts.tree(tree), name), value)
    elif kind == "columns":
        _, index, value = op
        target = parts.attr(parts.objects("ArchPredictor")[0], "columns_")
        columns = parts.array(target)
        columns[index % len(columns)] = max(min(value, 2**63 - 1), -2**63)
        parts.set_array(target, columns)
    elif kind == "width":
        _, cls, name, value = op
        for obj in parts.objects(cls):
            if name in obj["content"]["content"]:
                parts.set_json(parts.attr(obj, name), value)
    elif kind == "flip":
        _, offset, byte = op
        payload = bytearray(parts.raw_payload if parts.raw_payload is not None else parts.payload())
        payload[offset % len(payload)] = byte
        parts.raw_payload = bytes(payload)


def fuzz_payloads(original: Path, folder: Path, examples: int) -> tuple[int, int]:
    """Run the payload property ``examples`` times; (loaded, refused) counts."""
    counts = [0, 0]

    @settings(SETTINGS, max_examples=examples)
    @given(ops=st.lists(_OPS, min_size=1, max_size=3))
    def prop(ops: list[tuple]) -> None:
        parts = Parts.read(original)
        for op in sorted(ops, key=lambda o: o[0] == "flip"):  # byte flips last, on the packed payload
            _apply(parts, op)
        path = parts.write(folder / "f.costmodel")
        counts[0 if _load_and_predict(path) else 1] += 1

    prop()
    return counts[0], counts[1]


def test_mutated_payloads_never_crash_the_reader(tmp_path: Path) -> None:
    import subprocess

    from crafted_predictors import _no_core_dumps

    original = small_predictor(tmp_path / "orig.costmodel")
    done = subprocess.run([sys.executable, "-X", "faulthandler", __file__, str(original), str(tmp_path), "150"],
                          cwd=REPO, capture_output=True, text=True, timeout=540, preexec_fn=_no_core_dumps,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, f"child exited {done.returncode}:\n{done.stderr[-3000:]}"
    loaded, refused = (int(x) for x in done.stdout.split()[-2:])
    assert loaded + refused >= 100 and loaded > 0 and refused > 0, done.stdout  # both paths exercised


if __name__ == "__main__":
    good, bad = fuzz_payloads(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    print(good, bad)
