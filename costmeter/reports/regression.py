"""Regression verdicts per benchmark key: is ``current`` slower than its baseline?

The rule (statistics in :mod:`costmeter.reports.regression_stats`):

- **regressed** needs both the point estimate of the slowdown beyond the threshold
  (current/baseline level ``> 1 + threshold``) *and* an interval that excludes no change
  (lower bound ``> 1``) *and* a Benjamini-Hochberg q-value ``<= alpha`` across all keys compared
  (``scipy.stats.false_discovery_control``), so a report over hundreds of keys keeps its false
  discovery rate at ``alpha``. A 0.3% slowdown is never regressed, whatever its p-value.
  **improved** is symmetric. **unchanged**: the whole interval lies inside
  ``[1 - threshold, 1 + threshold]``. **inconclusive**: anything else, and every key whose input
  is failed, INVALID or has too few samples.
- A run's level is the geometric mean of its process medians (the median when it has one
  process). The replication unit is the run: the interval's width comes from the key's measured
  run-to-run noise (the SD of its last ``history_runs`` stored runs' levels, t with ``n - 1``
  degrees of freedom) or, where fewer than ``min_history`` runs are stored, from an assumed
  run-to-run SD (``assumed_run_sd``), because the samples of one run share that run's offset and
  are not replicates of it. When the processes (or rounds) of the compared runs disagree more
  than the history does, their Welch interval is used instead, so disagreeing processes widen
  the interval. Each verdict's ``unit`` column says which of these it used.
- Baselines: one run (``--baseline SELECTOR``, latest result per key of the selection), or a
  window (``--baseline window:N``): the key's last ``N`` good runs before the current one, with a
  prediction-interval t-test of tonight against their mean (:func:`compare_window`).

The false-alarm and detection rates of this rule on simulated histories are printed by
``benchmarks/regression_power.py``. Rendering lives in
:mod:`costmeter.reports.regression_render`; step detection in :mod:`costmeter.reports.history`.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.metrics import key_label, require_results
from costmeter.reports.regression_stats import (
    NS_PER_MS,
    RunLevel,
    as_processes,
    compare_runs,
    compare_window,
    decide,
    run_level,
    run_noise,
)
from costmeter.reports.regression_verdicts import (
    VERDICTS,
    RegressionReport,
    RegressionSettings,
    apply_verdicts,
)
from costmeter.reports.selectors import runs_in_order, select_results

__all__ = [
    "VERDICTS", "RegressionSettings", "RegressionReport", "RunLevel", "apply_verdicts",
    "compare_runs", "compare_selections", "compare_to_window", "compare_window", "decide",
    "per_process_samples", "regression_report", "run_level",
]

SamplesFor = Callable[[Any], Any]
_WINDOW = re.compile(r"^window:(\d+)$")


def per_process_samples(store: Any) -> Callable[[Any], list[np.ndarray]]:
    """A ``samples_for`` over a results store (anything with ``get(result_id) -> RunResult``):
    per-run latencies in ns, one array per process, so that processes are replicates."""

    def samples_for(result_id: Any) -> list[np.ndarray]:
        measurement = store.get(int(result_id)).measurement
        if measurement is None:
            return []
        k = float(measurement.iterations_per_sample or 1)
        return [np.asarray(p, dtype=float) / k for p in measurement.samples_ns if len(p)]

    return samples_for


def _input_problem(row: pd.Series, side: str) -> str | None:
    if row["status"] != "ok":
        detail = row.get("error") or row["status"]
        return f"{side} {row['status']}: {detail}"
    if row.get("validity", "VALID") != "VALID":
        reasons = str(row.get("reasons") or "no reason recorded")
        return f"{side} INVALID: {reasons}"
    return None


def _times(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["started_at"], utc=True, format="ISO8601")


def _good(frame: pd.DataFrame) -> pd.DataFrame:
    validity = frame["validity"] if "validity" in frame.columns else "VALID"
    return frame[(frame["status"] == "ok") & (validity == "VALID")]


def _latest_per(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    order = "finished_at" if "finished_at" in frame.columns else "started_at"
    return frame.sort_values(order, kind="stable").drop_duplicates(column, keep="last")


class _Levels:
    """Run levels of stored results, computed once each."""

    def __init__(self, samples_for: SamplesFor, settings: RegressionSettings) -> None:
        self.samples_for, self.settings = samples_for, settings
        self.cache: dict[Any, tuple[list[np.ndarray], RunLevel | None]] = {}

    def processes_ms(self, result_id: Any) -> list[np.ndarray]:
        return self._get(result_id)[0]

    def level(self, result_id: Any) -> RunLevel | None:
        """None when the result has fewer than ``min_samples`` positive latencies."""
        return self._get(result_id)[1]

    def _get(self, result_id: Any) -> tuple[list[np.ndarray], RunLevel | None]:
        if result_id not in self.cache:
            processes = [p / NS_PER_MS for p in as_processes(self.samples_for(result_id))]
            n = sum(int((p > 0).sum()) for p in processes)
            level = (run_level(processes, self.settings.n_batches)
                     if n >= self.settings.min_samples else None)
            self.cache[result_id] = (processes, level)
        return self.cache[result_id]


def _history(results: pd.DataFrame | None, digest: str, until: pd.Timestamp, *,
             inclusive: bool, exclude_run: Any, limit: int) -> pd.DataFrame:
    """The key's last ``limit`` good runs started before (or at) ``until``, latest result per
    run, oldest first."""
    if results is None or limit == 0:
        return pd.DataFrame(columns=["result_id", "run_id"])
    rows = _good(results[results["key_digest"] == digest])
    times = _times(rows)
    rows = rows[(times <= until) if inclusive else (times < until)]
    rows = rows[rows["run_id"].astype(str) != str(exclude_run)]
    rows = _latest_per(rows, "run_id")
    return rows.sort_values("started_at", kind="stable").tail(limit)


def _key_row(c: pd.Series) -> dict[str, Any]:
    return {"key_digest": c["key_digest"], "label": key_label(c), "model_id": c["model_id"],
            "device": c["device"], "runtime": c["runtime"],
            "current_result_id": _native(c["result_id"])}


def _sides(base: RunLevel, cur: RunLevel) -> dict[str, Any]:
    return {"n_baseline": base.n_samples, "n_current": cur.n_samples,
            "processes_baseline": base.processes, "processes_current": cur.processes,
            "median_baseline_ms": base.level_ms, "median_current_ms": cur.level_ms}


def _too_few(n_base: int, n_cur: int, need: int) -> str:
    return f"too few samples ({n_base} baseline, {n_cur} current; need {need})"


def compare_selections(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    samples_for: SamplesFor,
    settings: RegressionSettings | None = None,
    *,
    baseline_selector: str = "baseline",
    current_selector: str = "current",
    history: pd.DataFrame | None = None,
) -> RegressionReport:
    """Compare two selections key by key (latest result per key on each side).

    ``samples_for(result_id)`` returns per-run latencies in ns: one array (one process) or a list
    of arrays (one per process). ``history`` (all stored results) supplies each key's earlier runs
    for its run-to-run noise; without it the noise is ``settings.assumed_run_sd``. Raises
    ConfigError when the selections share no benchmark key.
    """
    settings = settings or RegressionSettings()
    base = _latest_per(baseline, "key_digest").set_index("key_digest", drop=False)
    cur = _latest_per(current, "key_digest").set_index("key_digest", drop=False)
    common = [k for k in cur.index if k in base.index]
    if not common:
        raise ConfigError(
            f"baseline ({baseline_selector}) and current ({current_selector}) share no benchmark "
            f"key; baseline has {', '.join(sorted(map(key_label_of(base), base.index))[:5])}; "
            f"current has {', '.join(sorted(map(key_label_of(cur), cur.index))[:5])}"
        )
    levels = _Levels(samples_for, settings)
    rows: list[dict[str, Any]] = []
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for digest in sorted(common, key=lambda d: key_label(cur.loc[d])):
        b, c = base.loc[digest], cur.loc[digest]
        row = {**_key_row(c), "baseline_result_id": _native(b["result_id"]),
               "baseline": f"run {b['run_id']}"}
        problem = _input_problem(b, "baseline") or _input_problem(c, "current")
        if problem is None:
            b_id, c_id = _native(b["result_id"]), _native(c["result_id"])
            samples[digest] = (np.concatenate(levels.processes_ms(b_id) or [np.empty(0)]),
                               np.concatenate(levels.processes_ms(c_id) or [np.empty(0)]))
            b_level, c_level = levels.level(b_id), levels.level(c_id)
            if b_level is None or c_level is None:
                problem = _too_few(len(samples[digest][0]), len(samples[digest][1]),
                                   settings.min_samples)
            else:
                earlier = _history(history, digest, _times(base.loc[[digest]]).iloc[0],
                                   inclusive=True, exclude_run=c["run_id"],
                                   limit=settings.history_runs)
                logs = [lv.log_level for lv in map(levels.level, map(_native, earlier["result_id"]))
                        if lv is not None]
                noise = run_noise(logs, min_history=settings.min_history,
                                  assumed_sd=settings.assumed_run_sd)
                row.update(_sides(b_level, c_level))
                row.update(compare_runs(b_level, c_level, noise, settings.confidence))
        row["reason"] = problem
        rows.append(row)
    return RegressionReport(
        verdicts=apply_verdicts(pd.DataFrame(rows), settings),
        settings=settings,
        baseline_selector=baseline_selector,
        current_selector=current_selector,
        baseline_runs=runs_in_order(baseline),
        current_runs=runs_in_order(current),
        only_in_baseline=sorted(key_label(base.loc[d]) for d in base.index if d not in cur.index),
        only_in_current=sorted(key_label(cur.loc[d]) for d in cur.index if d not in base.index),
        samples=samples,
    )


def compare_to_window(
    results: pd.DataFrame,
    current: pd.DataFrame,
    samples_for: SamplesFor,
    runs: int,
    settings: RegressionSettings | None = None,
    *,
    current_selector: str = "current",
) -> RegressionReport:
    """Compare each key of ``current`` against its last ``runs`` good runs in ``results`` that
    started before it (:func:`compare_window`). Keys with fewer than two such runs are
    inconclusive. Raises ConfigError when ``runs < 2``."""
    settings = settings or RegressionSettings()
    if runs < 2:
        raise ConfigError(f"window:{runs} is too short; use window:N with N >= 2 (e.g. window:20)")
    cur = _latest_per(current, "key_digest").set_index("key_digest", drop=False)
    levels = _Levels(samples_for, settings)
    rows: list[dict[str, Any]] = []
    used_runs: set[str] = set()
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for digest in sorted(cur.index, key=lambda d: key_label(cur.loc[d])):
        c = cur.loc[digest]
        row = {**_key_row(c), "baseline_result_id": None}
        window = _history(results, digest, _times(cur.loc[[digest]]).iloc[0], inclusive=False,
                          exclude_run=c["run_id"], limit=runs)
        row["baseline"] = f"window of {len(window)} runs"
        problem = _input_problem(c, "current")
        c_level = None if problem else levels.level(_native(c["result_id"]))
        window_levels = [lv for lv in map(levels.level, map(_native, window["result_id"]))
                         if lv is not None]
        if problem is None and c_level is None:
            problem = f"too few samples in current (need {settings.min_samples})"
        elif problem is None and len(window_levels) < 2:
            problem = f"window holds {len(window_levels)} good runs of this key; need at least 2"
        if problem is None:
            used_runs.update(str(r) for r in window["run_id"])
            row["baseline"] = (f"window of {len(window_levels)} runs "
                               f"({window['run_id'].iloc[0]}..{window['run_id'].iloc[-1]})")
            row.update(_sides(window_levels[-1], c_level))
            row.update(  # the window's geometric mean level and all its samples
                median_baseline_ms=float(np.exp(np.mean([w.log_level for w in window_levels]))),
                n_baseline=int(sum(w.n_samples for w in window_levels)),
                processes_baseline=int(sum(w.processes for w in window_levels)),
            )
            row.update(compare_window(window_levels, c_level, min_history=settings.min_history,
                                      assumed_sd=settings.assumed_run_sd,
                                      confidence=settings.confidence))
            last = _native(window["result_id"].iloc[-1])
            samples[digest] = (np.concatenate(levels.processes_ms(last) or [np.empty(0)]),
                               np.concatenate(levels.processes_ms(_native(c["result_id"]))
                                              or [np.empty(0)]))
        row["reason"] = problem
        rows.append(row)
    ordered = results[results["run_id"].astype(str).isin(used_runs)]
    return RegressionReport(
        verdicts=apply_verdicts(pd.DataFrame(rows), settings),
        settings=settings,
        baseline_selector=f"window:{runs}",
        current_selector=current_selector,
        baseline_runs=runs_in_order(ordered) if len(ordered) else [],
        current_runs=runs_in_order(current),
        samples=samples,
    )


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (database drivers reject numpy ints)."""
    return value.item() if isinstance(value, np.generic) else value


def key_label_of(frame: pd.DataFrame) -> Callable[[str], str]:
    """A function from key_digest to label over ``frame`` (indexed by key_digest)."""
    return lambda digest: key_label(frame.loc[digest])




def regression_report(
    results: pd.DataFrame,
    baseline: str,
    current: str,
    samples_for: SamplesFor,
    settings: RegressionSettings | None = None,
    *,
    with_history: bool = True,
) -> RegressionReport:
    """Select ``current`` from all stored ``results`` (selectors, see selectors.py) and compare
    it with ``baseline``: a selector (each key's earlier runs give its run-to-run noise) or
    ``window:N`` (each key's last N good runs before it). With ``with_history``, attach the
    history and its steps for the compared keys (runs up to the current selection's last start).
    Raises ConfigError on bad selectors or an empty store."""
    from costmeter.reports.history import detect_steps, key_history

    settings = settings or RegressionSettings()
    require_results(results)
    selected = select_results(results, current)
    window = _WINDOW.match(str(baseline).strip())
    if window:
        report = compare_to_window(results, selected, samples_for, int(window.group(1)),
                                   settings, current_selector=current)
    else:
        report = compare_selections(
            select_results(results, baseline), selected, samples_for, settings,
            baseline_selector=baseline, current_selector=current, history=results,
        )
    if with_history:
        last = _times(selected).max()
        keys = set(report.verdicts["key_digest"])
        upto = results[(_times(results) <= last) & results["key_digest"].isin(keys)]
        report.history = key_history(upto)
        report.steps = detect_steps(report.history, min_change=settings.threshold)
    return report
