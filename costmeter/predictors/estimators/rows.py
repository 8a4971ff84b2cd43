"""What a prediction reads from a network: :class:`NetworkRows`, per-kernel features and network
terms as plain JSON, so a working folder can keep them by content hash and answer again without
loading the model (this module imports no scikit-learn, onnx or torch)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from costmeter.errors import ConfigError

ROWS_VERSION = 2  # bump when NetworkRows' content changes meaning (2: shape arithmetic is "shape")


@dataclass(frozen=True)
class NetworkRows:
    """What a prediction reads from one network: each executed kernel's (name, type, named
    features) and the network terms of :func:`~costmeter.predictors.estimators.calibration.
    network_terms` (MB, counts)."""

    kernels: tuple[tuple[str, str, dict[str, float]], ...]
    terms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, kernel_graph: Any) -> NetworkRows:
        """The rows of a fused kernel graph."""
        from costmeter.predictors.estimators.calibration import network_terms
        from costmeter.predictors.kernels.features import kernel_features

        return cls(tuple((k.name, k.kernel_type, kernel_features(k)) for k in kernel_graph.kernels),
                   network_terms(kernel_graph))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {"version": ROWS_VERSION, "kernels": [list(k) for k in self.kernels],
                "terms": dict(self.terms)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkRows:
        """Inverse of :meth:`to_dict`; ConfigError for another version."""
        if data.get("version") != ROWS_VERSION:
            raise ConfigError(f"cached network rows of version {data.get('version')!r}; this "
                              f"costmeter reads {ROWS_VERSION} (clear the cache: `bench workdir clean`)")
        return cls(tuple((str(n), str(t), {k: float(v) for k, v in f.items()})
                         for n, t, f in data["kernels"]),
                   {k: float(v) for k, v in data["terms"].items()})


def as_rows(network: Any) -> NetworkRows:
    """A network's rows, from its rows or its kernel graph."""
    return network if isinstance(network, NetworkRows) else NetworkRows.of(network)


def stack_rows(networks: Mapping[str, Any]) -> dict[str, Any]:
    """Feature tables of many networks (kernel graphs or rows): ``kernel_type -> DataFrame``
    with index levels ``model`` and ``kernel``, as :func:`~costmeter.predictors.kernels.
    features.stack_tables` gives."""
    import pandas as pd

    from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION, KERNEL_FEATURES, KERNEL_TYPES

    rows: dict[str, list[dict[str, float]]] = {}
    keys: dict[str, list[tuple[str, str]]] = {}
    for model, network in networks.items():
        for name, kernel_type, values in as_rows(network).kernels:
            rows.setdefault(kernel_type, []).append(values)
            keys.setdefault(kernel_type, []).append((model, name))
    tables = {}
    for kernel_type in (t for t in KERNEL_TYPES if t in rows):
        frame = pd.DataFrame(rows[kernel_type], columns=list(KERNEL_FEATURES[kernel_type]),
                             index=pd.MultiIndex.from_tuples(keys[kernel_type], names=["model", "kernel"]),
                             dtype="float64")
        frame.attrs.update(feature_schema_version=FEATURE_SCHEMA_VERSION, kernel_type=kernel_type)
        tables[kernel_type] = frame
    return tables
