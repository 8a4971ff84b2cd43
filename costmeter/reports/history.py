"""History of each benchmark key over runs, and step (change-point) detection with ``ruptures``.

Each key's series is its median latency per run, ordered by start time. Steps are found on the
log of the series (so a step is a relative change) with PELT and an L2 cost; the penalty is a
BIC-like ``penalty_scale * sigma^2 * log(n)`` where ``sigma`` is a robust estimate of the
run-to-run noise (MAD of successive differences), so the same settings work for fast and slow
models. Steps smaller than ``min_change`` are dropped.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from costmeter.reports.metrics import key_label

HISTORY_COLUMNS = ("key_digest", "label", "position", "run_id", "git_sha", "started_at", "value_ms")
# With one result per key and run (the usual case) these are that result's own figures; with
# several, the medians of theirs (result_id: the run's last result of the key).
TREND_COLUMNS = (
    "result_id", "p50_low_ms", "p50_high_ms", "p99_ms", "p99_low_ms", "p99_high_ms",
)
_TREND_SOURCES = {
    "p50_low_ms": "latency_p50_low_ms", "p50_high_ms": "latency_p50_high_ms",
    "p99_ms": "latency_p99_ms", "p99_low_ms": "latency_p99_low_ms",
    "p99_high_ms": "latency_p99_high_ms",
}
STEP_COLUMNS = (
    "key_digest", "label", "position", "run_id", "git_sha", "started_at", "previous_run_id",
    "previous_git_sha", "before_ms", "after_ms", "change",
)
SIGMA_FLOOR = 1e-4  # relative noise floor (0.01%), keeps the penalty positive on flat series


def key_history(results: pd.DataFrame, value_column: str = "latency_p50_ms") -> pd.DataFrame:
    """One row per (key, run) of finished VALID results: the median of ``value_column`` (ms)
    over that run's results for the key, with the run's git SHA and first start time, and
    ``position`` numbering the runs of each key from 0 (oldest). The :data:`TREND_COLUMNS`
    (p50 interval, p99 with its interval, in ms; NaN where not stored) come along for plots."""
    ok = results[(results["status"] == "ok") & (results.get("validity", "VALID") == "VALID")]
    ok = ok[pd.to_numeric(ok[value_column], errors="coerce").notna()]
    columns = [*HISTORY_COLUMNS, *TREND_COLUMNS]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    labels = {d: key_label(row) for d, row in ok.drop_duplicates("key_digest").set_index(
        "key_digest", drop=False).iterrows()}
    numbers = {name: pd.to_numeric(ok[source], errors="coerce") if source in ok.columns
               else pd.Series(np.nan, index=ok.index) for name, source in _TREND_SOURCES.items()}
    order = "finished_at" if "finished_at" in ok.columns else "started_at"
    per_run = (
        ok.assign(value=pd.to_numeric(ok[value_column]), git_sha=ok["git_sha"].fillna(""),
                  **numbers)
        .sort_values(order, kind="stable")
        .groupby(["key_digest", "run_id"], sort=False)
        .agg(value_ms=("value", "median"), git_sha=("git_sha", "last"),
             started_at=("started_at", "min"), result_id=("result_id", "last"),
             **{name: (name, "median") for name in _TREND_SOURCES})
        .reset_index()
        .sort_values(["key_digest", "started_at"], kind="stable")
    )
    per_run["position"] = per_run.groupby("key_digest").cumcount()
    per_run["label"] = per_run["key_digest"].map(labels)
    return per_run[columns].reset_index(drop=True)


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
    bounds = [int(b) for b in algorithm.predict(pen=penalty) if b < n]
    return _refined(series, bounds, min_size)


def _refined(series: np.ndarray, bounds: list[int], min_size: int) -> list[int]:
    """Each boundary moved to the best split (least squares) between its neighbours, then kept
    only when both sides still hold ``min_size`` runs. PELT cannot cut off fewer than
    ``min_size`` runs, so a change on the last night alone shows up as a boundary one run too
    early with a half-sized step; refined, it moves onto the last night and is dropped: one
    night at a new level is the regression verdict's business, not a step yet."""
    edges = [*bounds, len(series)]
    kept: list[int] = []
    for i, bound in enumerate(bounds):
        start, stop = (kept[-1] if kept else 0), edges[i + 1]
        costs = {cut: float(((series[start:cut] - series[start:cut].mean()) ** 2).sum()
                            + ((series[cut:stop] - series[cut:stop].mean()) ** 2).sum())
                 for cut in range(start + 1, stop)}
        cut = min(costs, key=lambda c: (costs[c], abs(c - bound)))
        if cut - start >= min_size and stop - cut >= min_size:
            kept.append(cut)
    return kept


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


BISECT_COLUMNS = (
    *STEP_COLUMNS, "between_runs", "between_shas", "bisect_hint",
)


def _run_starts(results: pd.DataFrame) -> pd.Series:
    """First start time of every run in ``results`` (UTC timestamps), indexed by run id."""
    starts = pd.to_datetime(results["started_at"], utc=True, format="ISO8601")
    return starts.groupby(results["run_id"].astype(str)).min()


def bisect_hint(last_good_sha: str, first_bad_sha: str) -> str:
    """What a user can do with a step's two commits, in one line."""
    if not last_good_sha or not first_bad_sha:
        return ("no git SHA stored on one side of the step; store the commit with each run "
                "(--sha) to bisect")
    if last_good_sha == first_bad_sha:
        return ("the same commit on both sides: the step is not in the code (machine, "
                "environment or dependency change)")
    return f"git bisect start {first_bad_sha} {last_good_sha}"


def bisect_ranges(steps: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The commits around each step of :func:`detect_steps`, for bisecting.

    ``steps`` rows already name the last good run (``previous_run_id``/``previous_git_sha``) and
    the first bad one (``run_id``/``git_sha``). Added: ``between_runs`` and ``between_shas``
    (every run in ``results``, of any key, that started strictly between those two runs, and
    their distinct non-empty git SHAs other than the two ends, oldest first: commits already
    measured that narrow the range) and ``bisect_hint`` (:func:`bisect_hint`).
    """
    if steps.empty:
        return pd.DataFrame(columns=list(BISECT_COLUMNS))
    starts = _run_starts(results)
    sha_of = results.assign(git_sha=results["git_sha"].fillna("").astype(str)).groupby(
        results["run_id"].astype(str))["git_sha"].last()
    ordered = starts.sort_values(kind="stable")
    rows = []
    for _, step in steps.iterrows():
        good, bad = str(step["previous_run_id"]), str(step["run_id"])
        low, high = starts.get(good), starts.get(bad)
        runs: list[str] = []
        if low is not None and high is not None:
            runs = [r for r, t in ordered.items() if low < t < high and r not in (good, bad)]
        ends = {str(step["previous_git_sha"]), str(step["git_sha"])}
        shas = [s for s in dict.fromkeys(sha_of.get(r, "") for r in runs) if s and s not in ends]
        rows.append({**step.to_dict(), "between_runs": runs, "between_shas": shas,
                     "bisect_hint": bisect_hint(str(step["previous_git_sha"]),
                                                str(step["git_sha"]))})
    return pd.DataFrame(rows, columns=list(BISECT_COLUMNS))


KEY_FIELDS = ("model_id", "device", "runtime", "batch", "threads", "dtype", "input_shape",
              "options")
NIGHT_KINDS = ("run", "date")


def _field_text(row: pd.Series, name: str) -> str:
    value = row.get(name)
    if value is None or (not isinstance(value, (list, tuple, dict)) and pd.isna(value)):
        return "auto" if name == "threads" else "-"
    if name == "options" and str(value).strip() in ("", "{}", "null"):
        return "-"
    prefix = {"batch": "b", "threads": "t"}.get(name)
    return f"{prefix}{int(value)}" if prefix else str(value)


def _cost_seconds(ok: pd.DataFrame) -> pd.Series:
    """Seconds one result of each key took (median over its results): finished - started when
    stored, else p50 x samples."""
    started = pd.to_datetime(ok["started_at"], utc=True, format="ISO8601")
    finished = pd.to_datetime(ok["finished_at"], utc=True, format="ISO8601")
    wall = (finished - started).dt.total_seconds()
    sampled = (pd.to_numeric(ok["latency_p50_ms"], errors="coerce")
               * pd.to_numeric(ok["n_samples"], errors="coerce") / 1000.0)
    cost = wall.where(wall > 0, sampled).fillna(1.0).clip(lower=1e-3)
    return cost.groupby(ok["key_digest"]).median()


def suite_history(
    results: pd.DataFrame, *, rank_by: Sequence[str] = ("device", "runtime"),
    min_change: float = 0.05, nights: str = "run",
) -> Any:
    """A :class:`~costmeter.reports.subset.SuiteHistory` from stored results (the history of one
    suite, e.g. ``tag:nightly``).

    Nights are runs (``nights="run"``, ordered by start) or dates (``"date"``; a key measured
    twice on a date counts with the median). A key's p50 per night comes from
    :func:`key_history`; it regressed on a night when :func:`detect_steps` finds a slowdown of
    at least ``min_change`` starting there. ``rank_by``: the key fields that name a contestant
    (the rest name the item). Raises ConfigError on unknown fields or night kinds.
    """
    from costmeter.errors import ConfigError
    from costmeter.reports.subset import SuiteHistory

    unknown = [f for f in rank_by if f not in KEY_FIELDS]
    if unknown or not rank_by:
        raise ConfigError(f"rank_by {list(rank_by)} must name key fields among "
                          f"{', '.join(KEY_FIELDS)}, e.g. runtime")
    if nights not in NIGHT_KINDS:
        raise ConfigError(f"nights {nights!r} is not one of {', '.join(NIGHT_KINDS)}")
    history = key_history(results)
    if history.empty:
        raise ConfigError("no finished VALID results in the selected history; "
                          "select the suite's nightly runs (e.g. --history tag:nightly)")
    steps = detect_steps(history, min_change=min_change)
    starts = _run_starts(results)
    if nights == "run":
        night_of = {r: r for r in starts.index}
        order = list(starts.sort_values(kind="stable").index)
    else:
        night_of = {r: t.strftime("%Y-%m-%d") for r, t in starts.items()}
        order = sorted(set(night_of.values()))
    history = history.assign(night=history["run_id"].astype(str).map(night_of))
    p50 = history.pivot_table(index="night", columns="key_digest", values="value_ms",
                              aggfunc="median").reindex([n for n in order
                                                         if n in set(history["night"])])
    regressed = pd.DataFrame(False, index=p50.index, columns=p50.columns)
    for _, step in steps[steps["change"] > 0].iterrows():
        regressed.loc[night_of[str(step["run_id"])], step["key_digest"]] = True
    ok = results[results["key_digest"].isin(p50.columns) & (results["status"] == "ok")]
    rows = ok.drop_duplicates("key_digest").set_index("key_digest")
    # item names: the other key fields, leaving out those that are the same for every key
    item_fields = [f for f in KEY_FIELDS if f not in rank_by and (f == "model_id" or len(
        {_field_text(rows.loc[d], f) for d in p50.columns}) > 1)]
    keys = pd.DataFrame({
        "label": [key_label(rows.loc[d].rename(None)) for d in p50.columns],
        "contestant": ["/".join(_field_text(rows.loc[d], f) for f in rank_by) for d in p50.columns],
        "item": [" ".join(_field_text(rows.loc[d], f) for f in item_fields) for d in p50.columns],
        "cost_s": _cost_seconds(ok).reindex(p50.columns).to_numpy(),
    }, index=p50.columns)
    return SuiteHistory(p50_ms=p50, regressed=regressed, keys=keys)
