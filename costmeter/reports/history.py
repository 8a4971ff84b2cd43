"""History of each benchmark key over runs, and step (change-point) detection with ``ruptures``.

Each key's series is its median latency per run, ordered by start time. Steps are found on the
log of the series (so a step is a relative change) with PELT and an L2 cost; the penalty is a
BIC-like ``penalty_scale * sigma^2 * log(n)`` where ``sigma`` is a robust estimate of the
run-to-run noise (MAD of successive differences), so the same settings work for fast and slow
models. Steps smaller than ``min_change`` are dropped.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from costmeter.reports.metrics import key_label

HISTORY_COLUMNS = ("key_digest", "label", "position", "run_id", "git_sha", "started_at", "value_ms")
STEP_COLUMNS = (
    "key_digest", "label", "position", "run_id", "git_sha", "started_at", "previous_run_id",
    "previous_git_sha", "before_ms", "after_ms", "change",
)
SIGMA_FLOOR = 1e-4  # relative noise floor (0.01%), keeps the penalty positive on flat series


def key_history(results: pd.DataFrame, value_column: str = "latency_p50_ms") -> pd.DataFrame:
    """One row per (key, run) of finished VALID results: the median of ``value_column`` (ms)
    over that run's results for the key, with the run's git SHA and first start time, and
    ``position`` numbering the runs of each key from 0 (oldest)."""
    ok = results[(results["status"] == "ok") & (results.get("validity", "VALID") == "VALID")]
    ok = ok[pd.to_numeric(ok[value_column], errors="coerce").notna()]
    if ok.empty:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    labels = {d: key_label(row) for d, row in ok.drop_duplicates("key_digest").set_index(
        "key_digest", drop=False).iterrows()}
    per_run = (
        ok.assign(value=pd.to_numeric(ok[value_column]), git_sha=ok["git_sha"].fillna(""))
        .groupby(["key_digest", "run_id"], sort=False)
        .agg(value_ms=("value", "median"), git_sha=("git_sha", "last"),
             started_at=("started_at", "min"))
        .reset_index()
        .sort_values(["key_digest", "started_at"], kind="stable")
    )
    per_run["position"] = per_run.groupby("key_digest").cumcount()
    per_run["label"] = per_run["key_digest"].map(labels)
    return per_run[list(HISTORY_COLUMNS)].reset_index(drop=True)


def robust_sigma(values: np.ndarray) -> float:
    """Noise level of a series from the median absolute successive difference (robust to a
    few steps); never below SIGMA_FLOOR."""
    if len(values) < 3:
        return SIGMA_FLOOR
    diffs = np.diff(values)
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return max(mad / (0.6745 * math.sqrt(2.0)), SIGMA_FLOOR)


def change_points(values: Any, *, penalty_scale: float = 3.0, min_size: int = 2) -> list[int]:
    """Indices where a new level starts in ``values`` (positive numbers), via ruptures' PELT on
    their logarithm. Returns [] for series shorter than ``2 * min_size``."""
    import ruptures

    series = np.log(np.asarray(values, dtype=float))
    n = len(series)
    if n < 2 * min_size:
        return []
    sigma = robust_sigma(series)
    penalty = penalty_scale * sigma**2 * math.log(n)
    algorithm = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(series.reshape(-1, 1))
    return [int(b) for b in algorithm.predict(pen=penalty) if b < n]


def detect_steps(
    history: pd.DataFrame, *, min_change: float = 0.05, penalty_scale: float = 3.0,
    min_size: int = 2,
) -> pd.DataFrame:
    """Steps in each key's series of ``history`` (from :func:`key_history`).

    One row per step (columns STEP_COLUMNS): the first run at the new level (position, run id,
    git SHA, start) and the last run before it, the median levels before and after (ms, over
    the neighbouring segments) and ``change`` = after / before - 1. Steps with
    ``|change| < min_change`` are dropped.
    """
    rows = []
    for digest, series in history.groupby("key_digest", sort=True):
        series = series.sort_values("position")
        values = series["value_ms"].to_numpy(dtype=float)
        if (values <= 0).any():
            continue
        bounds = change_points(values, penalty_scale=penalty_scale, min_size=min_size)
        edges = [0, *bounds, len(values)]
        for i, start in enumerate(bounds, start=1):
            before = float(np.median(values[edges[i - 1]:start]))
            after = float(np.median(values[start:edges[i + 1]]))
            change = after / before - 1
            if abs(change) < min_change:
                continue
            first, previous = series.iloc[start], series.iloc[start - 1]
            rows.append(
                {
                    "key_digest": digest, "label": first["label"], "position": int(start),
                    "run_id": first["run_id"], "git_sha": first["git_sha"],
                    "started_at": first["started_at"], "previous_run_id": previous["run_id"],
                    "previous_git_sha": previous["git_sha"], "before_ms": before,
                    "after_ms": after, "change": change,
                }
            )
    return pd.DataFrame(rows, columns=list(STEP_COLUMNS))
