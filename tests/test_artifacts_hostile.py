"""Crafted predictor files: inconsistent trees, oversized members, malformed manifests.

Each is refused with one line and exit 2 before anything predicts. The files are built from a
real predictor and rewritten with a matching payload hash, as an attacker would; runs that
could crash (a corrupt tree reaching scikit-learn's predict) happen in a child process.
"""
from __future__ import annotations

import json
import re
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from crafted_predictors import ARCH, MANIFEST, PAYLOAD, Parts, bench, small_predictor, write_zip

from costmeter.cli import main
from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.artifact_checks import MANIFEST_MAX_BYTES, PAYLOAD_MAX_ENV
from costmeter.predictors.artifacts import load_predictor, read_manifest


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_predictor(tmp_path_factory.mktemp("orig") / "small.costmodel")


def _first_internal(nodes: np.ndarray) -> int:
    return int(np.flatnonzero(nodes["left_child"] != -1)[0])


def _set_node(field: str, value: float | Callable[[Parts, np.ndarray], float]) -> Callable[[Parts], None]:
    def mutate(parts: Parts) -> None:
        nodes = parts.nodes()
        nodes[field][_first_internal(nodes)] = value(parts, nodes) if callable(value) else value
        parts.set_nodes(nodes)
    return mutate


def _one_child(parts: Parts) -> None:
    nodes = parts.nodes()
    nodes["left_child"][_first_internal(nodes)] = -1
    parts.set_nodes(nodes)


def _shared_child(parts: Parts) -> None:
    nodes = parts.nodes()
    i = _first_internal(nodes)
    nodes["right_child"][i] = nodes["left_child"][i]
    parts.set_nodes(nodes)


def _detached_cycle(parts: Parts) -> None:
    """Every node keeps exactly one parent, but an internal node x below the root is cut
    off and made its own left child: in-degree checks pass, only the cycle check refuses it."""
    nodes = parts.nodes()
    left, right = nodes["left_child"], nodes["right_child"]
    parent = {int(c): p for p in np.flatnonzero(left != -1) for c in (left[p], right[p])}
    x = next(int(c) for c in left[left != -1] if left[c] != -1)
    p = parent[x]
    left[p], left[x] = left[x], x
    parts.set_nodes(nodes)


def _node_count(value: int) -> Callable[[Parts], None]:
    return lambda parts: parts.set_json(parts.attr(parts.tree(), "node_count"), value)


def _values_inf(parts: Parts) -> None:
    node = parts.attr(parts.tree(), "values")
    values = parts.array(node)
    values[-1] = np.inf
    parts.set_array(node, values)


def _fitted(parts: Parts, cls: str) -> dict:
    return next(o for o in parts.objects(cls) if "n_features_in_" in o["content"]["content"])


def _owner_width(cls: str) -> Callable[[Parts], None]:
    return lambda parts: parts.set_json(parts.attr(_fitted(parts, cls), "n_features_in_"), 7)


def _columns_out_of_space(parts: Parts) -> None:
    node = parts.attr(parts.objects("ArchPredictor")[0], "columns_")
    columns = parts.array(node)
    columns[0] = 10_000
    parts.set_array(node, columns)


def _foreign_root(parts: Parts) -> None:
    import skops.io as sio
    from sklearn.tree import DecisionTreeRegressor

    tree = DecisionTreeRegressor(max_depth=2).fit(np.arange(8.0).reshape(-1, 1), np.arange(8.0))
    parts.raw_payload = sio.dumps(tree)


TREE_CASES = {
    # name: (mutation, message fragment)
    "child index far out of range": (_set_node("left_child", 10**9), "child index 1000000000 out of range"),
    "child index = node_count": (_set_node("right_child", lambda p, n: len(n)), r"out of range \[1, (\d+)\)"),
    "child index negative": (_set_node("left_child", -7), "child index -7 out of range"),
    "child is the root": (_set_node("left_child", 0), "child index 0 out of range"),
    "one child": (_one_child, "has one child"),
    "node reached twice": (_shared_child, "is the child of"),
    "detached cycle": (_detached_cycle, "lies on a cycle"),
    "feature index = n_features": (_set_node("feature", lambda p, n: p.n_features()), r"feature index (\d+) out of range \[0, \1\)"),
    "feature index far out": (_set_node("feature", 10**6), "feature index 1000000 out of range"),
    "feature index negative": (_set_node("feature", -1), "feature index -1 out of range"),
    "threshold NaN": (_set_node("threshold", float("nan")), "threshold is not finite"),
    "threshold infinite": (_set_node("threshold", float("inf")), "threshold is not finite"),
    "value infinite": (_values_inf, "a node value is not finite"),
    # (a node_count beyond the arrays is clamped to their length by scikit-learn itself)
    "node_count short of the arrays": (_node_count(5), r"node_count 5 does not match its \d+ stored nodes"),
    "node_count zero": (_node_count(0), "node_count 0 does not match"),
    "tree n_features smaller": (lambda p: p.tree_arg(0, 5), r"its tree's 5 features|out of range \[0, 5\)"),
    "tree n_outputs 2": (lambda p: p.tree_arg(2, 2), "could not be rebuilt"),
    "tree estimator width": (_owner_width("DecisionTreeRegressor"), r"n_features_in_ 7 differs|n_features_in_ 7, its owner's"),
    "forest width": (_owner_width("ModelForest"), r"its owner's 7|names for 7 features|expects 7 features"),
    "space columns out of range": (_columns_out_of_space, "outside the space's"),
    "not a costmeter predictor": (_foreign_root, "not a costmeter predictor"),
}


def _craft(original: Path, target: Path, mutate: Callable[[Parts], None]) -> Path:
    parts = Parts.read(original)
    parts.raw_payload = None
    mutate(parts)
    return parts.write(target, payload=parts.raw_payload)


def test_the_original_loads_and_predicts(original: Path) -> None:
    pred = load_predictor(original)
    assert np.isfinite(pred.predict([ARCH])).all()
    assert main(["predict", str(original), "--model", ARCH]) == 0


@pytest.mark.parametrize("case", list(TREE_CASES))
def test_inconsistent_tree_is_refused_on_load(case: str, original: Path, tmp_path: Path) -> None:
    mutate, pattern = TREE_CASES[case]
    path = _craft(original, tmp_path / "bad.costmodel", mutate)
    with pytest.raises(StoreError) as info:
        load_predictor(path)
    message = str(info.value)
    assert re.search(pattern, message) and "\n" not in message, message


@pytest.mark.slow
def test_crafted_tree_crashes_scikit_learn_without_the_checks(original: Path, tmp_path: Path) -> None:
    """The reproduction: skops rebuilds the tree with a child index out of range without
    complaint, and predicting with it fails: scikit-learn's tree code dies of a signal, and the
    compiled pass, which reorders the nodes first, reads past them (IndexError). The checks
    below are what stop it before either runs."""
    path = _craft(original, tmp_path / "bad.costmodel", TREE_CASES["child index far out of range"][0])
    code = ("import sys, zipfile, skops.io as sio; from costmeter.predictors.artifacts import TRUSTED_TYPES; "
            "est = sio.loads(zipfile.ZipFile(sys.argv[1]).read('model.skops'), trusted=list(TRUSTED_TYPES)); "
            "est.predict([sys.argv[2]]); print('predicted')")
    import subprocess
    import sys

    from crafted_predictors import REPO, _no_core_dumps

    done = subprocess.run([sys.executable, "-c", code, str(path), ARCH], cwd=REPO, capture_output=True,
                          text=True, timeout=300, preexec_fn=_no_core_dumps,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    crashed = done.returncode < 0 or "IndexError" in done.stderr
    assert done.returncode != 0 and crashed and "predicted" not in done.stdout, (done.returncode, done.stderr[-500:])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["child index far out of range", "feature index far out"])
def test_bench_predict_on_a_crafted_tree_exits_2_in_a_child(case: str, original: Path, tmp_path: Path) -> None:
    path = _craft(original, tmp_path / "bad.costmodel", TREE_CASES[case][0])
    done = bench("predict", str(path), "--model", ARCH)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-800:])
    assert len(lines) == 1 and "Traceback" not in done.stderr and re.search(TREE_CASES[case][1], lines[0])


# ------------------------------------------------------------------------------------- sizes
def _write_streamed(path: Path, name: str, size: int, chunk: bytes = b" " * (1 << 20)) -> None:
    """A zip whose member ``name`` unpacks to ``size`` bytes, written without holding it."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(name, "w", force_zip64=False) as out:
            out.write(b'{"format": "costmeter-predictor", "pad": "')
            written = 0
            while written < size:
                out.write(chunk[:size - written])
                written += len(chunk)
            out.write(b'"}')
        zf.writestr(PAYLOAD, b"")


def test_huge_manifest_is_refused_without_allocating_it(tmp_path: Path) -> None:
    path = tmp_path / "big-manifest.costmodel"
    _write_streamed(path, MANIFEST, 300 << 20)
    assert path.stat().st_size < 1 << 20  # ~300 KB on disk
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"manifest.json unpacks to 3145728\d\d bytes, beyond the 1048576"):
            load_predictor(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"refusing took {peak / 2**20:.0f} MiB"


def test_member_lying_about_its_size_stops_at_the_declared_size(tmp_path: Path) -> None:
    """The central directory says 1,000 bytes; the stream inflates to 300 MB. Reading stops
    at the declared size and the CRC check refuses it."""
    path = tmp_path / "liar.costmodel"
    _write_streamed(path, MANIFEST, 300 << 20)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02", 0, data.rindex(b"PK\x01\x02"))  # the manifest's entry
    assert data[entry + 46:entry + 46 + len(MANIFEST)] == MANIFEST.encode()
    data[entry + 24:entry + 28] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match="manifest.json is unreadable"):
            load_predictor(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_payload_limit_argument_and_environment(original: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = read_manifest(original)["payload"]["bytes"]
    with pytest.raises(StoreError, match=f"model.skops unpacks to {size} bytes, beyond the 1000-byte limit"):
        load_predictor(original, max_payload_bytes=1000)
    monkeypatch.setenv(PAYLOAD_MAX_ENV, "1000")
    with pytest.raises(StoreError, match="beyond the 1000-byte limit"):
        read_manifest(original)
    assert load_predictor(original, max_payload_bytes=size) is not None  # the argument wins
    monkeypatch.setenv(PAYLOAD_MAX_ENV, "lots")
    with pytest.raises(ConfigError, match=f"\\${PAYLOAD_MAX_ENV} must be a positive number of bytes"):
        load_predictor(original)
    assert main(["predict", str(original), "--model", ARCH]) == 2


def test_zip_directory_bounds(original: Path, tmp_path: Path) -> None:
    parts = Parts.read(original)
    manifest = json.dumps(parts.manifest).encode()
    crowded = write_zip(tmp_path / "crowded.costmodel", [(f"m{i}", b"") for i in range(20)])
    with pytest.raises(StoreError, match="20 zip members, more than the 8 allowed"):
        load_predictor(crowded)
    twice = tmp_path / "twice.costmodel"
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_zip(twice, [(MANIFEST, manifest), (MANIFEST, manifest), (PAYLOAD, parts.payload())])
    with pytest.raises(StoreError, match="repeated member names"):
        load_predictor(twice)
    bomb = tmp_path / "bomb.costmodel"
    write_zip(bomb, [(MANIFEST, manifest), (PAYLOAD, b"\0" * (64 << 20))])
    with pytest.raises(StoreError, match="more than 100:1"):
        load_predictor(bomb)
    assert MANIFEST_MAX_BYTES == 1 << 20


def test_payload_zip_and_array_headers_are_checked(original: Path, tmp_path: Path) -> None:
    parts = Parts.read(original)
    node = parts.attr(parts.tree(), "values")
    header = np.lib.format.header_data_from_array_1_0(parts.array(node))
    header["shape"] = (10**10, 1, 1)  # 80 GB claimed by a member of a few hundred bytes
    from io import BytesIO

    old = BytesIO(parts.files[node["file"]])
    np.lib.format.read_magic(old)
    np.lib.format.read_array_header_1_0(old)
    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    parts.files[node["file"]] = buf.getvalue() + parts.files[node["file"]][old.tell():]
    with pytest.raises(StoreError, match=r"declares shape \(10000000000, 1, 1\)"):
        load_predictor(parts.write(tmp_path / "shape.costmodel"))
    parts = Parts.read(original)
    inner = BytesIO()
    with zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.files.items():
            zf.writestr(name, data)
        zf.writestr("pad.bin", b"\0" * (32 << 20))
    with pytest.raises(StoreError, match="pad.bin claims to unpack"):
        load_predictor(parts.write(tmp_path / "inner-bomb.costmodel", payload=inner.getvalue()))


# ---------------------------------------------------------------------------------- manifests
def _deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


MANIFEST_CASES = {
    # name: (edit of the manifest dict, or raw JSON text; message fragment)
    "format_version a string": ({"format_version": "1"}, "format version '1' (a JSON string, not an integer)"),
    "format_version true": ({"format_version": True}, "format version True (a JSON boolean"),
    "format_version missing": ({"format_version": None}, "format version None (a JSON null"),
    "payload sha256 a number": ({"payload": {"name": PAYLOAD, "bytes": 1, "sha256": 123}}, "payload.sha256"),
    "payload bytes a string": ({"payload": {"name": PAYLOAD, "bytes": "big", "sha256": "0" * 64}}, "payload.bytes"),
    "payload missing": ({"payload": None}, "'payload' is a required property"),
    "payload names another member": ({"payload": {"name": "../x", "bytes": 1, "sha256": "0" * 64}}, "payload.name"),
    "metrics a list": ({"metrics": [1, 2]}, "field metrics"),
    "device an object": ({"device": {"a": 1}}, "field device"),
    "space a number": ({"space": 5}, "field space"),
    "training rows negative": ({"training_set": {"rows": -1, "sha256": None}}, "training_set.rows"),
    "library versions a string": ({"library_versions": "x"}, "library_versions"),
    "string too long": ({"device": "x" * 10_000}, "field device"),
    "extra nested 50 deep": ({"extra": json.loads(_deep(50))}, "field extra.a"),
    "required field dropped": ({"trusted_types": "<drop>"}, "'trusted_types' is a required property"),
    "not an object": ("[1, 2, 3]", "not a costmeter predictor file"),
    "nested 10,000 deep": ('{"format": "costmeter-predictor", "extra": ' + _deep(10_000) + "}", "nested too deeply"),
    "invalid JSON": ('{"format": ', "not valid JSON"),
    "not UTF-8": (b'{"format": "\xff\xfe"}', "not valid JSON"),
    "5,000-digit integer": ('{"format": "costmeter-predictor", "format_version": ' + "9" * 5000 + "}", "not valid JSON"),
}


def _manifest_file(original: Path, target: Path, edit: dict | str | bytes) -> Path:
    parts = Parts.read(original)
    payload = parts.payload()
    parts.write(target, payload=payload)
    if isinstance(edit, dict):
        manifest = read_manifest(target)
        for key, value in edit.items():
            if value == "<drop>":
                manifest.pop(key)
            elif value is None:
                manifest.pop(key, None)
            else:
                manifest[key] = value
        raw: bytes = json.dumps(manifest).encode()
    else:
        raw = edit.encode() if isinstance(edit, str) else edit
    return write_zip(target, [(MANIFEST, raw), (PAYLOAD, payload)])


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_malformed_manifest_exits_2_with_one_line(case: str, original: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    edit, fragment = MANIFEST_CASES[case]
    path = _manifest_file(original, tmp_path / "m.costmodel", edit)
    assert main(["predict", str(path), "--model", "tiny_mlp"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400 and fragment in err, err
    store = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["predictor", "eval", str(path), "--store", store]) == 2
    assert capsys.readouterr().err.strip() == err


@pytest.mark.slow
def test_deeply_nested_manifest_in_a_child_prints_no_traceback(original: Path, tmp_path: Path) -> None:
    path = _manifest_file(original, tmp_path / "deep.costmodel", MANIFEST_CASES["nested 10,000 deep"][0])
    done = bench("predict", str(path), "--model", "tiny_mlp")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and "nested too deeply" in done.stderr
