"""Save and load fitted predictors safely: a zip with a JSON manifest and a skops payload.

A ``.costmodel`` file holds ``manifest.json`` (device, runtime, feature schema, library
versions, training-set hash, metrics, SHA-256 of the payload) and ``model.skops``. Loading
never runs plain pickle: the payload is read by ``skops.io`` with an explicit list of trusted
types (:data:`TRUSTED_TYPES`); a file naming any other type is refused before anything is
built. A payload whose hash differs from the manifest's (tampered or corrupted), a manifest
of another format version, or a feature schema other than the one this costmeter computes is
refused with a one-line StoreError. The hash detects modification and corruption; it is not
a signature (anyone can rewrite both) -- safety against hostile files comes from skops'
trusted-type loading.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, StoreError

FORMAT = "costmeter-predictor"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "model.skops"

# Every type a predictor file may contain beyond skops' defaults (numpy arrays, builtins and
# scikit-learn's own estimators, which skops trusts by default).
TRUSTED_TYPES: tuple[str, ...] = (
    "costmeter.predictors.estimators.arch.ArchPredictor",
    "costmeter.predictors.estimators.forest.ModelForest",
    "costmeter.predictors.estimators.forest.FlopsLinear",
    "costmeter.predictors.estimators.forest.KernelForest",
    "costmeter.predictors.estimators.fewshot.FewShotTransfer",
    "costmeter.predictors.estimators.network.NetworkPredictor",
    "costmeter.predictors.estimators.calibration.TrafficCalibration",
    "sklearn.tree._tree.Tree",
)


def training_set_hash(X: Any, y: Any) -> str:
    """SHA-256 (hex) of a training set: column names, feature values (float64) and targets."""
    import numpy as np

    h = hashlib.sha256()
    if hasattr(X, "columns"):
        h.update(json.dumps([str(c) for c in X.columns]).encode())
    h.update(np.ascontiguousarray(np.asarray(X, dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, dtype=np.float64)).tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries a payload depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import costmeter

    out = {"costmeter": costmeter.__version__, "python": platform.python_version()}
    for dist in ("scikit-learn", "numpy", "scipy", "skops"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def current_feature_schema(schema: str | None) -> str | None:
    """The schema id this costmeter computes for the family of ``schema`` (``nb201/v1`` ->
    ``nb201/v<current>``; ``kernels/v1`` -> kernel features' version); None if unknown."""
    if not schema or "/" not in schema:
        return None
    family = schema.split("/", 1)[0]
    if family == "kernels":
        from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION

        return f"kernels/v{FEATURE_SCHEMA_VERSION}"
    from costmeter.models.spaces import feature_schema, space_names

    return feature_schema(family) if family in space_names() else None


def save_predictor(estimator: Any, path: str | Path, *, device: str | None = None,
                   runtime: str | None = None, feature_schema: str | None = None,
                   training_hash: str | None = None, training_rows: int | None = None,
                   metrics: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``estimator`` to ``path`` (zip: manifest + skops payload); returns the manifest.

    ``device``/``runtime``/``feature_schema`` default to the estimator's own (an
    ArchPredictor knows them). The file is written to a temporary name and renamed.
    """
    import skops.io as sio

    payload = sio.dumps(estimator)
    untrusted = [t for t in sio.get_untrusted_types(data=payload) if t not in TRUSTED_TYPES]
    if untrusted:
        raise ConfigError(f"cannot save {type(estimator).__name__}: it contains types outside "
                          f"the trusted list ({', '.join(untrusted)}); save a costmeter predictor")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
        "space": getattr(estimator, "space", None),
        "feature_schema": feature_schema or getattr(estimator, "feature_schema_", None),
        "device": device or getattr(estimator, "device", None),
        "runtime": runtime or getattr(estimator, "runtime", None),
        "library_versions": library_versions(),
        "training_set": {"rows": training_rows if training_rows is not None
                         else getattr(estimator, "n_train_", None), "sha256": training_hash},
        "metrics": dict(metrics or {}),
        "payload": {"name": PAYLOAD_NAME, "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest()},
        "trusted_types": list(TRUSTED_TYPES),
        "extra": dict(extra or {}),
    }
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, default=str))
            zf.writestr(PAYLOAD_NAME, payload)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write predictor file {target}: {exc.strerror or exc}; "
                         "check the directory exists and is writable") from exc
    return manifest


def _open(path: str | Path) -> tuple[dict[str, Any], bytes]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"predictor file {p} not found; fit one with `bench predictor fit`")
    try:
        with zipfile.ZipFile(p) as zf:
            manifest = json.loads(zf.read(MANIFEST_NAME))
            payload = zf.read(PAYLOAD_NAME)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise StoreError(f"{p} is not a readable costmeter predictor file ({type(exc).__name__}); "
                         "refit it with `bench predictor fit`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{p} is not a costmeter predictor file (no '{FORMAT}' manifest)")
    return manifest, payload


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a predictor file (checks format and payload hash, builds nothing)."""
    manifest, payload = _open(path)
    _check(manifest, payload, Path(path))
    return manifest


def _check(manifest: dict[str, Any], payload: bytes, path: Path) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path} has predictor format version {version!r}; this costmeter reads "
                         f"version {FORMAT_VERSION}; refit it with `bench predictor fit`")
    expected = (manifest.get("payload") or {}).get("sha256")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise StoreError(f"{path} was modified or corrupted (payload hash does not match the "
                         "manifest); refusing to load it -- refit or fetch the original file")
    schema = manifest.get("feature_schema")
    current = current_feature_schema(schema)
    if schema and current and schema != current:
        raise StoreError(f"{path} was fitted on feature schema {schema}, this costmeter computes "
                         f"{current}; refit it with `bench predictor fit`")


def load_predictor(path: str | Path, *, device: str | None = None,
                   runtime: str | None = None) -> Any:
    """Load a predictor file safely (trusted types only); optionally insist on device/runtime.

    Raises StoreError for tampered, foreign-version, foreign-schema or untrusted files and
    ConfigError when ``device``/``runtime`` differ from the manifest's.
    """
    import skops.io as sio

    p = Path(path)
    manifest, payload = _open(p)
    _check(manifest, payload, p)
    for field, wanted in (("device", device), ("runtime", runtime)):
        if wanted is not None and manifest.get(field) not in (None, wanted):
            raise ConfigError(f"{p} predicts for {field} {manifest.get(field)!r}, not {wanted!r}; "
                              f"fit a predictor for {wanted!r}")
    try:
        untrusted = [t for t in sio.get_untrusted_types(data=payload) if t not in TRUSTED_TYPES]
    except Exception as exc:  # skops raises assorted errors on a malformed payload
        raise StoreError(f"{p}: unreadable payload ({type(exc).__name__}); refit it") from exc
    if untrusted:
        raise StoreError(f"{p} contains types outside the trusted list ({', '.join(untrusted)}); "
                         "refusing to load it")
    try:
        return sio.loads(payload, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # version skew in scikit-learn internals shows up here
        saved = (manifest.get("library_versions") or {}).get("scikit-learn")
        now = library_versions().get("scikit-learn")
        raise StoreError(f"{p} could not be rebuilt ({type(exc).__name__}; saved with "
                         f"scikit-learn {saved}, running {now}); refit it with "
                         "`bench predictor fit`") from exc

