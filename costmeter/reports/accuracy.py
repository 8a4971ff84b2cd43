"""Accuracy sources: published references for the zoo's architectures, and a user CSV.

Accuracy is attached to a results frame as ``acc_<metric>`` columns (with ``acc_<metric>_source``
saying where each value comes from), so any accuracy metric can be used by the Pareto front and
the tables like any other metric.

The built-in figures are the published ImageNet-1k top-1 accuracies (single 224 crop) of the
*reference* architectures with their trained weights. The zoo builds the same architectures with
seeded random weights, which do not reach these figures: reports say so in a footnote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.metrics import ACCURACY_PREFIX

TORCHVISION_DOCS = "https://pytorch.org/vision/stable/models.html"


@dataclass(frozen=True)
class PublishedAccuracy:
    """One published figure: value (percent), the weights it belongs to, and where it is stated."""

    architecture: str
    metric: str
    value: float
    weights: str
    source: str


PUBLISHED_ACCURACY: tuple[PublishedAccuracy, ...] = (
    PublishedAccuracy(
        "resnet18", "top1", 69.758, "torchvision ResNet18_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); He et al. 2016, arXiv:1512.03385",
    ),
    PublishedAccuracy(
        "resnet50", "top1", 76.130, "torchvision ResNet50_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); He et al. 2016, arXiv:1512.03385",
    ),
    PublishedAccuracy(
        "mobilenet_v2", "top1", 71.878, "torchvision MobileNet_V2_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); Sandler et al. 2018, arXiv:1801.04381",
    ),
    PublishedAccuracy(
        "mobilenet_v3_small", "top1", 67.668,
        "torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); Howard et al. 2019, arXiv:1905.02244",
    ),
    PublishedAccuracy(
        "mobilenet_v3_large", "top1", 74.042,
        "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); Howard et al. 2019, arXiv:1905.02244",
    ),
    PublishedAccuracy(
        "efficientnet_b0", "top1", 77.692, "torchvision EfficientNet_B0_Weights.IMAGENET1K_V1",
        f"torchvision model docs ({TORCHVISION_DOCS}); Tan & Le 2019, arXiv:1905.11946",
    ),
    PublishedAccuracy(
        "vit_tiny", "top1", 72.2, "DeiT-Tiny (DeiT-Ti), trained without distillation",
        "Touvron et al. 2021, Training data-efficient image transformers, arXiv:2012.12877",
    ),
    # bert_tiny is a language model: it has no ImageNet metric.
)

PUBLISHED_FOOTNOTE = (
    "Published ImageNet-1k top-1 (%) of the reference architecture with its trained weights "
    "(torchvision model docs and the original papers; DeiT-Tiny from Touvron et al. 2021). "
    "The zoo's models have the same architecture but random weights and do not reach these "
    "figures: they describe the reference architectures, not the measured models."
)
BUILTIN_SOURCE = "published"
CSV_SOURCE = "csv"
MEASURED_SOURCE = "measured"  # top-1 on the labelled set of `bench run --accuracy-data`


def architecture_of(model_id: str) -> str:
    """The architecture name in a model id: ``zoo:resnet18`` or ``models/ResNet18.onnx`` ->
    ``resnet18``. Lowercase, without a scheme, folders or file extension."""
    name = str(model_id).strip().lower()
    name = re.split(r"[:/\\]", name)[-1]
    name = re.sub(r"\.(onnx|tflite|pte|pt|pth|so|tar)$", "", name)
    return name


def published_table() -> pd.DataFrame:
    """The built-in references as a long frame: model, metric, value, source."""
    return pd.DataFrame(
        {
            "model": [p.architecture for p in PUBLISHED_ACCURACY],
            "metric": [p.metric for p in PUBLISHED_ACCURACY],
            "value": [p.value for p in PUBLISHED_ACCURACY],
            "source": [BUILTIN_SOURCE] * len(PUBLISHED_ACCURACY),
        }
    )


def load_accuracy_csv(path: str | Path, known_models: Iterable[str]) -> pd.DataFrame:
    """Read a user accuracy CSV into a long frame (model, metric, value, source='csv').

    Two layouts are accepted: long, with columns ``model,metric,value``; or wide, with a
    ``model`` column and one column per metric (e.g. ``model,top1,top5``). ``model`` is a model id
    as stored or an architecture name (see :func:`architecture_of`). Rows whose model matches
    neither a known model id nor its architecture raise ConfigError naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"accuracy CSV {str(path)!r} does not exist; pass the path of a CSV file")
    try:
        raw = pd.read_csv(path, dtype={"model": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"accuracy CSV {str(path)!r} cannot be read ({err}); write columns model,metric,value"
        ) from err
    raw.columns = [str(c).strip() for c in raw.columns]
    if "model" not in raw.columns:
        raise ConfigError(
            f"accuracy CSV {str(path)!r} has no 'model' column (columns: {', '.join(raw.columns)});"
            " write columns model,metric,value or model,<metric>,..."
        )
    if {"metric", "value"} <= set(raw.columns):
        long = raw[["model", "metric", "value"]].copy()
    else:
        metric_columns = [c for c in raw.columns if c not in ("model", "source")]
        if not metric_columns:
            raise ConfigError(
                f"accuracy CSV {str(path)!r} has no metric columns; add e.g. a 'top1' column"
            )
        long = raw.melt(id_vars=["model"], value_vars=metric_columns, var_name="metric")
    long["model"] = long["model"].astype(str).str.strip()
    long["metric"] = long["metric"].astype(str).str.strip()
    values = pd.to_numeric(long["value"], errors="coerce")
    bad = long.loc[values.isna() & long["value"].notna(), "model"]
    if len(bad):
        raise ConfigError(
            f"accuracy CSV {str(path)!r} has non-numeric values for {', '.join(sorted(set(bad)))};"
            " write plain numbers"
        )
    long["value"] = values
    long = long.dropna(subset=["value"])
    known = set(map(str, known_models))
    known_names = known | {architecture_of(m) for m in known}
    unknown = sorted(
        {m for m in long["model"] if m not in known_names and architecture_of(m) not in known_names}
    )
    if unknown:
        raise ConfigError(
            f"accuracy CSV {str(path)!r} names unknown models: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    long["source"] = CSV_SOURCE
    return long.reset_index(drop=True)


def attach_accuracy(
    results: pd.DataFrame, user: pd.DataFrame | None = None, *, use_published: bool = True
) -> pd.DataFrame:
    """A copy of ``results`` with ``acc_<metric>`` and ``acc_<metric>_source`` columns.

    A row matches an accuracy entry by exact model id first, then by architecture. User CSV
    entries take precedence over the published references, and a result's own measured top-1
    (``accuracy_top1`` from ``bench run --accuracy-data``, in percent) over both: it is the only
    figure that belongs to that result's precision and runtime rather than to the model.
    """
    sources = [published_table()] if use_published else []
    if user is not None and len(user):
        sources.append(user[["model", "metric", "value", "source"]])
    out = results.copy()
    if sources:
        _attach_tables(out, pd.concat(sources, ignore_index=True))
    _attach_measured(out)
    return out


def _attach_measured(out: pd.DataFrame) -> None:
    """Overwrite ``acc_top1`` with each row's measured top-1 (percent) where it has one."""
    if "accuracy_top1" not in out.columns:
        return
    measured = 100.0 * pd.to_numeric(out["accuracy_top1"], errors="coerce")
    has = measured.notna()
    if not has.any():
        return
    column = ACCURACY_PREFIX + "top1"
    if column not in out.columns:
        out[column] = np.nan
        out[column + "_source"] = None
    out[column] = pd.to_numeric(out[column], errors="coerce").astype(float).where(~has, measured)
    out[column + "_source"] = out[column + "_source"].astype(object).where(~has, MEASURED_SOURCE)


def _attach_tables(out: pd.DataFrame, table: pd.DataFrame) -> None:
    """Add ``acc_<metric>`` (+ ``_source``) columns to ``out`` from a long accuracy table."""
    model_ids = out["model_id"].astype(str)
    architectures = model_ids.map(architecture_of)
    for metric, entries in table.groupby("metric", sort=True):
        values = pd.Series(np.nan, index=out.index, dtype=float)
        origin = pd.Series(None, index=out.index, dtype=object)
        # applied in rising precedence: published, then CSV; within each, architecture, then id
        for source in (BUILTIN_SOURCE, CSV_SOURCE):
            for match_exact in (False, True):
                for _, entry in entries[entries["source"] == source].iterrows():
                    if match_exact:
                        match = model_ids == entry["model"]
                    else:
                        match = architectures == architecture_of(entry["model"])
                    values[match] = float(entry["value"])
                    origin[match] = source
        out[ACCURACY_PREFIX + str(metric)] = values
        out[ACCURACY_PREFIX + str(metric) + "_source"] = origin


def uses_published(frame: pd.DataFrame) -> bool:
    """Whether any accuracy value in ``frame`` comes from the built-in published references."""
    source_columns = [
        c for c in frame.columns if c.startswith(ACCURACY_PREFIX) and c.endswith("_source")
    ]
    return any((frame[c] == BUILTIN_SOURCE).any() for c in source_columns)
