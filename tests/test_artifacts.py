"""Predictor files: round trip with manifest, refusal of tampered, foreign-version,
foreign-schema and untrusted files, never plain pickle."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.estimators.arch import ArchPredictor
from costmeter.predictors.artifacts import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    TRUSTED_TYPES,
    load_predictor,
    read_manifest,
    save_predictor,
    training_set_hash,
)
from costmeter.predictors.estimators.forest import FlopsLinear, KernelForest, ModelForest
from costmeter.models.spaces import nb201
from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"


@pytest.fixture(scope="module")
def fitted() -> tuple[ArchPredictor, list[str], np.ndarray]:
    data = pd.read_csv(FIXTURE)
    archs, y = list(data["arch"]), data["1080ti_1_ms"].to_numpy()
    pred = ArchPredictor("nb201", regressor=ModelForest(n_estimators=16), device="1080ti_1",
                         runtime="pytorch").fit(archs, y)
    return pred, archs, y


def rewrite(path: Path, manifest: dict | None = None, payload: bytes | None = None) -> None:
    with zipfile.ZipFile(path) as zf:
        old_manifest = json.loads(zf.read(MANIFEST_NAME))
        old_payload = zf.read(PAYLOAD_NAME)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest if manifest is not None else old_manifest))
        zf.writestr(PAYLOAD_NAME, payload if payload is not None else old_payload)


def test_round_trip_with_manifest(tmp_path: Path, fitted) -> None:
    pred, archs, y = fitted
    path = tmp_path / "m.costmodel"
    digest = training_set_hash(nb201.features(archs), y)
    manifest = save_predictor(pred, path, training_hash=digest, metrics={"spearman": 0.98})
    loaded = load_predictor(path, device="1080ti_1", runtime="pytorch")
    np.testing.assert_array_equal(loaded.predict(archs), pred.predict(archs))
    on_disk = read_manifest(path)
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["device"] == "1080ti_1" and on_disk["runtime"] == "pytorch"
    assert on_disk["feature_schema"] == "nb201/v1" and on_disk["space"] == "nb201"
    assert on_disk["training_set"] == {"rows": 300, "sha256": digest}
    assert on_disk["metrics"] == {"spearman": 0.98}
    assert {"scikit-learn", "numpy", "skops", "costmeter"} <= set(on_disk["library_versions"])
    assert on_disk["trusted_types"] == list(TRUSTED_TYPES)
    assert not list(tmp_path.glob(".*.tmp"))


def test_other_estimators_round_trip(tmp_path: Path) -> None:
    X = pd.DataFrame({"flops": np.linspace(1, 100, 40), "bytes": np.linspace(5, 9, 40)})
    y = 0.1 + 0.02 * X["flops"]
    kernels = KernelForest(forest=ModelForest(n_estimators=4)).fit({"conv": X}, {"conv": y})
    for est in (FlopsLinear(feature="flops").fit(X, y), kernels):
        path = tmp_path / f"{type(est).__name__}.costmodel"
        save_predictor(est, path, device="cpu", runtime="onnxruntime", feature_schema=f"kernels/v{FEATURE_SCHEMA_VERSION}")
        again = load_predictor(path)
        if isinstance(est, KernelForest):
            np.testing.assert_allclose(again.predict({"conv": X}), est.predict({"conv": X}))
        else:
            np.testing.assert_allclose(again.predict(X), est.predict(X))


def test_tampered_payload_is_refused(tmp_path: Path, fitted) -> None:
    path = tmp_path / "m.costmodel"
    save_predictor(fitted[0], path)
    with zipfile.ZipFile(path) as zf:
        payload = bytearray(zf.read(PAYLOAD_NAME))
    payload[len(payload) // 2] ^= 0xFF
    rewrite(path, payload=bytes(payload))
    with pytest.raises(StoreError, match="modified or corrupted") as info:
        load_predictor(path)
    assert "\n" not in str(info.value)


def test_pickle_payload_with_fixed_hash_is_refused(tmp_path: Path, fitted) -> None:
    """A stranger's file with a consistent hash but a pickle inside must not execute."""
    import hashlib

    path = tmp_path / "m.costmodel"
    manifest = save_predictor(fitted[0], path)
    evil = pickle.dumps(ModelForest())
    manifest["payload"].update(sha256=hashlib.sha256(evil).hexdigest(), bytes=len(evil))
    rewrite(path, manifest=manifest, payload=evil)
    with pytest.raises(StoreError, match="not a zip file"):
        load_predictor(path)


def test_untrusted_types_are_refused(tmp_path: Path) -> None:
    import hashlib
    import os

    import skops.io as sio
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = np.arange(10.0).reshape(-1, 1), np.arange(10.0)
    odd = Pipeline([("f", FunctionTransformer(os.getcwd)), ("m", LinearRegression())])
    with pytest.raises(ConfigError, match="outside the trusted list"):
        save_predictor(odd, tmp_path / "odd.costmodel")
    path = tmp_path / "m.costmodel"
    manifest = save_predictor(FlopsLinear().fit(X, y), path)
    payload = sio.dumps(odd)
    manifest["payload"].update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
    rewrite(path, manifest=manifest, payload=payload)
    with pytest.raises(StoreError, match="outside the trusted list.*getcwd"):
        load_predictor(path)


def test_other_format_or_schema_version_is_refused(tmp_path: Path, fitted) -> None:
    path = tmp_path / "m.costmodel"
    manifest = save_predictor(fitted[0], path)
    rewrite(path, manifest={**manifest, "format_version": 99})
    with pytest.raises(StoreError, match="format version 99"):
        load_predictor(path)
    rewrite(path, manifest={**manifest, "feature_schema": "nb201/v0"})
    with pytest.raises(StoreError, match="feature schema nb201/v0, this costmeter computes nb201/v1"):
        load_predictor(path)


def test_wrong_device_missing_or_foreign_file(tmp_path: Path, fitted) -> None:
    path = tmp_path / "m.costmodel"
    save_predictor(fitted[0], path)
    with pytest.raises(ConfigError, match="predicts for device '1080ti_1', not 'pixel3'"):
        load_predictor(path, device="pixel3")
    with pytest.raises(ConfigError, match="not found"):
        load_predictor(tmp_path / "absent.costmodel")
    junk = tmp_path / "junk.costmodel"
    junk.write_bytes(b"not a zip")
    with pytest.raises(StoreError, match="not a zip file"):
        load_predictor(junk)
