"""Checks a predictor file passes before it is used: sizes (:mod:`.container`), manifest schema
(:mod:`.manifest`) and the structure of every tree in the loaded estimator (:mod:`.structure`).

Each check raises a one-line StoreError (ConfigError for a bad limit setting) that says what is
wrong; nothing here imports scikit-learn or skops at import time.
"""
from __future__ import annotations

from costmeter.predictors.artifact_checks.container import (
    MANIFEST_MAX_BYTES,
    MAX_MEMBERS,
    PAYLOAD_MAX_BYTES,
    PAYLOAD_MAX_ENV,
    Limits,
    check_payload_zip,
    open_zip,
    read_member,
)
from costmeter.predictors.artifact_checks.manifest import manifest_schema, parse_manifest

__all__ = ["MANIFEST_MAX_BYTES", "MAX_MEMBERS", "PAYLOAD_MAX_BYTES", "PAYLOAD_MAX_ENV", "Limits", "check_payload_zip",
           "manifest_schema", "open_zip", "parse_manifest", "read_member"]
