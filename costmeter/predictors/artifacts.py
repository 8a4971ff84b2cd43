"""Save and load fitted predictors safely: a zip with a JSON manifest and a skops payload.

A ``.costmodel`` file holds ``manifest.json`` (device, runtime, feature schema, library
versions, training-set hash, metrics, the interval calibration's data and method, SHA-256 of
the payload) and ``model.skops``. Loading
never runs plain pickle: the payload is read by ``skops.io`` with an explicit list of trusted
types (:data:`TRUSTED_TYPES`); a file naming any other type is refused before anything is
built. The hash detects modification and corruption; it is not a signature (anyone can
rewrite both) -- safety against hostile files comes from the checks around loading, each a
one-line StoreError (:mod:`costmeter.predictors.artifact_checks`):

1. sizes, from the zip's central directory before any member is read: manifest <= 1 MiB,
   payload <= 512 MiB (``max_payload_bytes=`` or ``$COSTMETER_PREDICTOR_MAX_BYTES``, bytes),
   at most 8 members, compression ratio <= 100:1;
2. the manifest against its JSON Schema (types, required fields, string lengths, nesting depth),
   its format version, the payload's hash and size, and the feature schema's version;
3. the payload's own zip (members, sizes) and every array header against its member's size;
4. skops' trusted-type list, then the rebuilt object: a fitted costmeter estimator whose every
   tree is well formed (node counts, child and feature indices, acyclic, value shapes, widths).
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
from costmeter.predictors.artifact_checks import (
    MAX_MEMBERS,
    Limits,
    check_payload_zip,
    open_zip,
    parse_manifest,
    read_member,
)

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
    "costmeter.predictors.estimators.graph_target.GraphTargetPredictor",
    "sklearn.linear_model._base.LinearRegression",
    "costmeter.predictors.estimators.additive.AdditiveForest",
    "costmeter.predictors.estimators.conformal.ConformalCalibration",
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


def interval_calibration(estimator: Any) -> dict[str, Any] | None:
    """What the estimator's conformal intervals were calibrated on and how (method, rows, folds,
    spread floor, score quantiles), for the manifest; None when it carries no calibration."""
    conformal = getattr(estimator, "conformal_", None)
    return conformal.describe() if conformal is not None else None


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
        "interval": interval_calibration(estimator),
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


def peek_manifest(path: str | Path, *, max_payload_bytes: int | None = None) -> dict[str, Any]:
    """The manifest of a predictor file, its sizes (on the zip's central directory) and schema
    checked, without reading the payload: its hash is checked when the payload is loaded
    (:func:`load_predictor`). StoreError/ConfigError (one line) as :func:`read_manifest`."""
    return _open(path, Limits.resolve(max_payload_bytes), payload=False)[0]


def _open(path: str | Path, limits: Limits, payload: bool = True) -> tuple[dict[str, Any], bytes]:
    """(validated manifest, payload bytes): sizes checked on the zip's central directory first,
    then the manifest against its schema, then the payload's hash and size (without
    ``payload``: the manifest alone, and empty bytes)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"predictor file {p} not found; fit one with `bench predictor fit`")
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            with open_zip(fh, size, str(p), max_members=MAX_MEMBERS,
                          max_bytes=limits.manifest_bytes + limits.payload_bytes) as zf:
                raw = read_member(zf, MANIFEST_NAME, limits.manifest_bytes, str(p))
                manifest = parse_manifest(raw, str(p), format_name=FORMAT,
                                          format_version=FORMAT_VERSION, payload_name=PAYLOAD_NAME)
                if not payload:
                    return manifest, b""
                data = read_member(zf, PAYLOAD_NAME, limits.payload_bytes, str(p))
    except OSError as exc:
        raise StoreError(f"cannot read predictor file {p}: {exc.strerror or exc}; check the path "
                         "and its permissions") from exc
    _check(manifest, data, p)
    return manifest, data


def read_manifest(path: str | Path, *, max_payload_bytes: int | None = None) -> dict[str, Any]:
    """The manifest of a predictor file (checks sizes, schema and payload hash; builds nothing).

    ``max_payload_bytes`` overrides the payload limit (default ``$COSTMETER_PREDICTOR_MAX_BYTES``
    or 512 MiB; see :mod:`costmeter.predictors.artifact_checks.container`).
    """
    return _open(path, Limits.resolve(max_payload_bytes))[0]


def _check(manifest: dict[str, Any], payload: bytes, path: Path) -> None:
    expected = manifest["payload"]
    if len(payload) != expected["bytes"] or hashlib.sha256(payload).hexdigest() != expected["sha256"]:
        raise StoreError(f"{path} was modified or corrupted (payload hash does not match the "
                         "manifest); refusing to load it -- refit or fetch the original file")
    schema = manifest.get("feature_schema")
    current = current_feature_schema(schema)
    if schema and current and schema != current:
        raise StoreError(f"{path} was fitted on feature schema {schema}, this costmeter computes "
                         f"{current}; refit it with `bench predictor fit`")


def _space_width(space: str) -> int | None:
    """Number of analytic features of search space ``space`` (None if unknown)."""
    from costmeter.models.spaces import get_space, space_names

    return len(get_space(space).feature_names()) if space in space_names() else None


def _check_loaded(estimator: Any, path: Path) -> None:
    """The root must be a fitted costmeter estimator named in TRUSTED_TYPES, and every tree in
    it well formed (see :mod:`costmeter.predictors.artifact_checks.structure`)."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from costmeter.predictors.artifact_checks.structure import check_structure

    kind = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if kind not in TRUSTED_TYPES or not kind.startswith("costmeter."):
        raise StoreError(f"{path} holds a {type(estimator).__name__}, not a costmeter predictor; "
                         "refit it with `bench predictor fit`")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise StoreError(f"{path} holds an unfitted {type(estimator).__name__}; refit it with "
                         "`bench predictor fit`") from exc
    try:
        check_structure(estimator, space_width=_space_width)
    except StoreError as exc:
        raise StoreError(f"{path} is inconsistent: {exc}; refusing to use it -- refit it with "
                         "`bench predictor fit` or fetch the original file") from exc


def load_predictor(path: str | Path, *, device: str | None = None, runtime: str | None = None,
                   max_payload_bytes: int | None = None) -> Any:
    """Load a predictor file safely (trusted types only); optionally insist on device/runtime.

    Before skops builds anything: member sizes (manifest <= 1 MiB, payload <= 512 MiB or
    ``max_payload_bytes`` / ``$COSTMETER_PREDICTOR_MAX_BYTES``, bytes), the manifest's schema,
    the payload hash, and the payload's own zip and array headers. After: the root is a fitted
    costmeter estimator and every tree in it is well formed. Raises StoreError for oversized,
    malformed, tampered, foreign-version, foreign-schema, untrusted or inconsistent files and
    ConfigError when ``device``/``runtime`` differ from the manifest's.
    """
    p = Path(path)
    limits = Limits.resolve(max_payload_bytes)
    manifest, payload = _open(p, limits)
    for field, wanted in (("device", device), ("runtime", runtime)):
        if wanted is not None and manifest.get(field) not in (None, wanted):
            raise ConfigError(f"{p} predicts for {field} {manifest.get(field)!r}, not {wanted!r}; "
                              f"fit a predictor for {wanted!r}")
    check_payload_zip(payload, limits, str(p))
    import skops.io as sio  # only now: a file refused above never loads scikit-learn

    try:
        untrusted = [t for t in sio.get_untrusted_types(data=payload) if t not in TRUSTED_TYPES]
    except Exception as exc:  # skops raises assorted errors on a malformed payload
        raise StoreError(f"{p}: unreadable payload ({type(exc).__name__}); refit it") from exc
    if untrusted:
        shown = ", ".join(" ".join(t[:80].split()) for t in untrusted[:5]) + (", ..." if len(untrusted) > 5 else "")
        raise StoreError(f"{p} contains types outside the trusted list ({shown}); "
                         "refusing to load it")
    try:
        estimator = sio.loads(payload, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # version skew in scikit-learn internals shows up here
        saved = manifest["library_versions"].get("scikit-learn")
        now = library_versions().get("scikit-learn")
        raise StoreError(f"{p} could not be rebuilt ({type(exc).__name__}; saved with "
                         f"scikit-learn {saved}, running {now}); refit it with "
                         "`bench predictor fit`") from exc
    _check_loaded(estimator, p)
    return estimator
