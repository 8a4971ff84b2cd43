"""Named metrics over result frames, and the row selection every report starts from.

A *metric* maps a short name used on the command line (``latency_p50``, ``energy_per_inference``,
``top1``) to a column of the results frame, a goal (``min`` or ``max``), a label and a unit, and,
for latency percentiles, the columns of its confidence interval. Accuracy metrics come from
:mod:`costmeter.reports.accuracy`, which adds ``acc_<metric>`` columns to the frame.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError

ACCURACY_PREFIX = "acc_"
GOALS = ("min", "max")


@dataclass(frozen=True)
class Metric:
    """One plottable, comparable quantity.

    ``column`` is the source column; ``derive`` (when set) computes the values from the frame
    instead. ``ci_low``/``ci_high`` name the columns of the value's confidence interval.
    """

    name: str
    column: str
    goal: str
    label: str
    unit: str = ""
    ci_low: str | None = None
    ci_high: str | None = None
    derive: Callable[[pd.DataFrame], pd.Series] | None = None

    def with_goal(self, goal: str | None) -> Metric:
        """This metric with ``goal`` (``min``/``max``) instead of its default; None keeps it."""
        if goal is None:
            return self
        if goal not in GOALS:
            raise ConfigError(f"goal {goal!r} is not one of {', '.join(GOALS)}; pass min or max")
        return replace(self, goal=goal)

    @property
    def axis_label(self) -> str:
        """Label with unit, for plot axes and table headers."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def values(self, frame: pd.DataFrame) -> pd.Series:
        """The metric's values for each row of ``frame`` (float, NaN where missing)."""
        if self.derive is not None:
            return self.derive(frame).astype(float)
        if self.column not in frame.columns:
            return pd.Series(np.nan, index=frame.index, dtype=float)
        return pd.to_numeric(frame[self.column], errors="coerce").astype(float)

    def interval(self, frame: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
        """Lower and upper CI bounds per row, or None when the metric has no interval."""
        if not self.ci_low or not self.ci_high:
            return None
        if self.ci_low not in frame.columns or self.ci_high not in frame.columns:
            return None
        low = pd.to_numeric(frame[self.ci_low], errors="coerce").astype(float)
        high = pd.to_numeric(frame[self.ci_high], errors="coerce").astype(float)
        return low, high


def _inferences_per_joule(frame: pd.DataFrame) -> pd.Series:
    energy = pd.to_numeric(frame.get("energy_per_inference_j"), errors="coerce")
    if energy is None:
        return pd.Series(np.nan, index=frame.index)
    return 1.0 / energy.where(energy > 0)


def _percent_of(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A fraction column (0..1) as percent; NaN where the frame lacks it."""
    def derive(frame: pd.DataFrame) -> pd.Series:
        if column not in frame.columns:
            return pd.Series(np.nan, index=frame.index, dtype=float)
        return 100.0 * pd.to_numeric(frame[column], errors="coerce")
    return derive


def _latency(pct: str) -> Metric:
    return Metric(
        name=f"latency_{pct}",
        column=f"latency_{pct}_ms",
        goal="min",
        label=f"latency {pct}",
        unit="ms",
        ci_low=f"latency_{pct}_low_ms",
        ci_high=f"latency_{pct}_high_ms",
    )


BUILTIN_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _latency("p50"),
        _latency("p90"),
        _latency("p95"),
        _latency("p99"),
        Metric("latency_mean", "latency_mean_ms", "min", "latency mean", "ms"),
        Metric("throughput", "throughput_items_per_s", "max", "throughput", "items/s"),
        Metric(
            "energy_per_inference", "energy_per_inference_j", "min", "energy per inference", "J"
        ),
        Metric(
            "inferences_per_joule", "energy_per_inference_j", "max", "inferences per joule", "1/J",
            derive=_inferences_per_joule,
        ),
        Metric("peak_memory", "peak_rss_bytes", "min", "peak memory", "bytes"),
        Metric(
            "peak_memory_above_baseline", "peak_rss_above_baseline_bytes", "min",
            "peak memory above baseline", "bytes",
        ),
        Metric("params", "params", "min", "parameters"),
        Metric("macs", "macs", "min", "MACs"),
        Metric("artifact_size", "artifact_bytes", "min", "artifact size", "bytes"),
        # measured by `bench run --accuracy-data` / fidelity against fp32 (results/fidelity.py)
        Metric("measured_top1", "accuracy_top1", "max", "measured top-1", "%",
               derive=_percent_of("accuracy_top1")),
        Metric("accuracy_delta", "accuracy_delta_pp", "max", "top-1 change vs fp32", "pp"),
        Metric("top1_agreement", "fidelity_top1_agreement", "max", "top-1 agreement with fp32", "%",
               derive=_percent_of("fidelity_top1_agreement")),
        Metric("fidelity_cosine", "fidelity_cosine", "max", "output cosine similarity to fp32"),
        Metric("fidelity_max_abs_diff", "fidelity_max_abs_diff", "min", "max |output - fp32|"),
        Metric("quantize_time", "quantize_s", "min", "quantization time", "s"),
    )
}


def accuracy_metric_names(frame: pd.DataFrame) -> list[str]:
    """Accuracy metrics attached to ``frame`` (columns ``acc_<name>``), e.g. ``['top1']``."""
    return sorted(
        c[len(ACCURACY_PREFIX):]
        for c in frame.columns
        if c.startswith(ACCURACY_PREFIX) and not c.endswith("_source")
    )


def available_metrics(frame: pd.DataFrame) -> list[str]:
    """Every metric name :func:`resolve_metric` accepts for ``frame``."""
    return list(BUILTIN_METRICS) + accuracy_metric_names(frame)


def resolve_metric(name: str, frame: pd.DataFrame, goal: str | None = None) -> Metric:
    """The metric called ``name`` (or named by its column, e.g. ``latency_p50_ms``).

    Accuracy metrics (``top1``, or any metric of a user CSV) are maximised by default.
    Raises ConfigError listing the available names when ``name`` is unknown.
    """
    if name in BUILTIN_METRICS:
        return BUILTIN_METRICS[name].with_goal(goal)
    for metric in BUILTIN_METRICS.values():
        if metric.derive is None and metric.column == name:
            return metric.with_goal(goal)
    accuracy_column = ACCURACY_PREFIX + name
    if accuracy_column in frame.columns:
        return Metric(name, accuracy_column, "max", name).with_goal(goal)
    raise ConfigError(
        f"unknown metric {name!r}; available: {', '.join(available_metrics(frame))}"
        " (accuracy metrics need built-in references or --accuracy CSV)"
    )


def require_results(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` itself, or ConfigError when the store holds no results at all."""
    if frame is None or len(frame) == 0:
        raise ConfigError("the results store is empty; run `bench run` first, or pass --store")
    return frame


def _filter_one(frame: pd.DataFrame, column: str, wanted: str | None) -> pd.DataFrame:
    if wanted is None:
        return frame
    kept = frame[frame[column].astype(str) == wanted]
    if kept.empty:
        present = sorted(frame[column].dropna().astype(str).unique())
        raise ConfigError(
            f"no results for {column} {wanted!r}; present: {', '.join(present) or 'none'}"
        )
    return kept


def usable_results(
    frame: pd.DataFrame,
    *,
    device: str | None = None,
    runtime: str | None = None,
    include_invalid: bool = True,
    latest_only: bool = True,
) -> pd.DataFrame:
    """Finished (``status == 'ok'``) results, filtered by device and runtime.

    With ``latest_only`` each benchmark key (``key_digest``) keeps its most recent result only.
    INVALID results stay unless ``include_invalid`` is False (renderers mark them).
    Raises ConfigError when the frame is empty or a filter matches nothing (naming what exists).
    """
    require_results(frame)
    kept = _filter_one(frame, "device", device)
    kept = _filter_one(kept, "runtime", runtime)
    kept = kept[kept["status"] == "ok"]
    if not include_invalid:
        kept = kept[kept["validity"] == "VALID"]
    if kept.empty:
        statuses = frame["status"].value_counts().to_dict()
        raise ConfigError(
            f"no finished{'' if include_invalid else ' VALID'} results to report "
            f"(statuses in store: {statuses}); rerun the benchmarks"
        )
    if latest_only:
        order = "finished_at" if "finished_at" in kept.columns else "started_at"
        kept = kept.sort_values(order, kind="stable").drop_duplicates("key_digest", keep="last")
    return kept.reset_index(drop=True)


def key_label(row: pd.Series) -> str:
    """Short label of the benchmark key of a result row, e.g. ``resnet18/onnxruntime@cpu b1 t4``."""
    threads = row.get("threads")
    thr = "auto" if threads is None or pd.isna(threads) else str(int(threads))
    label = f"{row['model_id']}/{row['runtime']}@{row['device']} b{int(row['batch'])} t{thr}"
    options = row.get("options")
    if isinstance(options, str) and options.strip() not in ("", "{}", "null"):
        try:
            parsed = json.loads(options)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            label += "".join(f",{k}={v}" for k, v in sorted(parsed.items()))
    return label
