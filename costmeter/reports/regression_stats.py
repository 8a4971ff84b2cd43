"""The statistics behind regression verdicts: run levels, replication units, comparisons.

Model (per benchmark key, on a log scale so that differences are relative changes)::

    L_r = mu + delta_r + e_r

- ``delta_r``: the run-to-run offset, standard deviation ``sigma_run``. It is what a whole run
  shares (the machine's state that night, the level each process settled on), so no number of
  samples inside one run averages it away. It is estimated from the key's stored history.
- ``e_r``: the error of the run's own level estimate from its replicates (below).

Level of one run (:func:`run_level`), replication units:

- several processes (``Measurement.samples_ns`` holds one list per process, or per round):
  ``L`` is the mean of the log process medians; its standard error is their standard deviation
  over ``sqrt(P)``, with ``P - 1`` degrees of freedom. Assumes process levels are independent
  draws around the run's level (normal on the log scale).
- one process: ``L`` is the log median; its standard error comes from batch medians (the samples
  cut into contiguous batches, SD of the log batch medians over ``sqrt(B)``, ``B - 1`` degrees of
  freedom). Assumes batches much longer than the samples' correlation time (AR(1) with
  phi = 0.9 forgets in about 20 samples, so 300 samples in 10 batches is at the edge).

Run-to-run noise (:func:`run_noise`): the standard deviation of the levels of the key's last
runs (plain sample SD, ``n - 1`` degrees of freedom; assumes those runs are independent draws of
the same level: a step inside the window inflates it, which costs alarms, not false ones). With
fewer than ``min_history`` runs the SD is at least ``assumed_run_sd``: pooled samples of a single
run are not replicates of ``delta``, so without a history the noise floor is an assumption, and
the verdict says so.

A comparison's difference ``D`` gets a standard error that is the larger of what the run-to-run
noise implies and what the runs' own replicates say (processes that disagree widen it). The
interval is ``exp(D +- t * SE)`` with the degrees of freedom of the larger term (infinite for an
assumed floor); the p-value is the two-sided t-test of ``D = 0`` with the same SE and df.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

NS_PER_MS = 1e6


@dataclass(frozen=True)
class RunLevel:
    """One run's latency level for one key.

    ``log_level``: natural log of the level in ms. ``se_log``: its standard error (log units,
    i.e. relative). ``df``: degrees of freedom of ``se_log``. ``processes``: replicates used
    (processes or rounds; 1 means batch medians of one process). ``n_samples``: per-run latencies
    over all processes.
    """

    log_level: float
    se_log: float
    df: float
    processes: int
    n_samples: int

    @property
    def level_ms(self) -> float:
        """The level in ms (geometric mean of process medians, or the median of one process)."""
        return math.exp(self.log_level)


def as_processes(samples: Any) -> list[np.ndarray]:
    """Per-process latency arrays from what a ``samples_for`` callable returns: a 1-D array or a
    list of numbers is one process; a list of arrays (or lists) is one entry per process."""
    if isinstance(samples, np.ndarray):
        if samples.ndim <= 1:
            return [samples.astype(float).ravel()]
        return [np.asarray(row, dtype=float) for row in samples]
    items = list(samples)
    if items and all(hasattr(item, "__len__") for item in items):
        return [np.asarray(item, dtype=float) for item in items if len(item)]
    return [np.asarray(items, dtype=float)]


def _sem(values: np.ndarray) -> float:
    """Standard error of the mean (ddof=1)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def run_level(processes_ms: Sequence[np.ndarray], n_batches: int = 10) -> RunLevel:
    """The level of one run from its per-process latencies (ms); see the module doc for the
    estimator and its assumptions. Raises ValueError when no process holds a positive sample."""
    processes = [np.asarray(p, dtype=float) for p in processes_ms if len(p)]
    processes = [p[p > 0] for p in processes]
    processes = [p for p in processes if len(p)]
    if not processes:
        raise ValueError("no positive latency samples")
    n = int(sum(len(p) for p in processes))
    if len(processes) >= 2:
        logs = np.log([np.median(p) for p in processes])
        return RunLevel(float(np.mean(logs)), _sem(logs), len(logs) - 1.0, len(processes), n)
    values = processes[0]
    batches = max(2, min(n_batches, len(values) // 5))
    if len(values) < 2 * batches:
        return RunLevel(float(np.log(np.median(values))), math.inf, 1.0, 1, n)
    usable = len(values) - len(values) % batches
    batch_logs = np.log(np.median(values[:usable].reshape(batches, -1), axis=1))
    return RunLevel(float(np.log(np.median(values))), _sem(batch_logs), batches - 1.0, 1, n)


@dataclass(frozen=True)
class RunNoise:
    """Run-to-run standard deviation used for a comparison (log units = relative).

    ``sd``: the value used. ``df``: its degrees of freedom (``inf`` when assumed). ``n_runs``:
    history runs it came from. ``source``: ``"history"`` (measured: over at least the minimum
    number of runs, or over a shorter history that is noisier than the floor) or ``"assumed"``
    (the floor: no history, or a short one that measured less than the floor).
    """

    sd: float
    df: float
    n_runs: int
    source: str


def run_noise(history_log_levels: Sequence[float], *, min_history: int,
              assumed_sd: float) -> RunNoise:
    """Run-to-run SD of one key from the log levels of its recent runs (see the module doc)."""
    logs = np.asarray(history_log_levels, dtype=float)
    n = len(logs)
    measured = float(np.std(logs, ddof=1)) if n >= 2 else 0.0
    if n >= min_history:
        return RunNoise(measured, n - 1.0, n, "history")
    if n >= 2 and measured > assumed_sd:
        return RunNoise(measured, n - 1.0, n, "history")
    return RunNoise(assumed_sd, math.inf, n, "assumed")


def _welch(se_a: float, df_a: float, se_b: float, df_b: float) -> tuple[float, float]:
    """Combined SE of a difference and its Welch-Satterthwaite degrees of freedom."""
    var = se_a**2 + se_b**2
    if var == 0 or not math.isfinite(var):
        return math.sqrt(var), 1.0
    denominator = (se_a**4 / df_a if se_a else 0.0) + (se_b**4 / df_b if se_b else 0.0)
    return math.sqrt(var), (var**2 / denominator) if denominator else math.inf


def _interval(diff: float, se: float, df: float, confidence: float) -> dict[str, float]:
    from scipy import stats

    ratio = math.exp(diff)
    if se == 0:
        return {"ratio": ratio, "ratio_low": ratio, "ratio_high": ratio,
                "p_value": 1.0 if diff == 0 else 0.0}
    if not math.isfinite(se):
        return {"ratio": ratio, "ratio_low": 0.0, "ratio_high": math.inf, "p_value": 1.0}
    crit = float(stats.t.ppf(0.5 + confidence / 2, df))
    return {
        "ratio": ratio,
        "ratio_low": math.exp(diff - crit * se),
        "ratio_high": math.exp(diff + crit * se),
        "p_value": float(2 * stats.t.sf(abs(diff) / se, df)),
    }


def _replicates(level: RunLevel) -> str:
    return f"{level.processes} processes" if level.processes > 1 else "batches of 1 process"


def _unit(noise: RunNoise, from_noise: bool, within: str) -> str:
    if not from_noise:
        return f"replicates within the runs ({within})"
    if noise.source == "history":
        return f"runs: SD {noise.sd * 100:.2g}% over {noise.n_runs} stored runs"
    return (f"assumed run-to-run SD {noise.sd * 100:.2g}% (history of {noise.n_runs} runs is "
            "too short to measure it)")


def _row(diff: float, se: float, df: float, unit: str, noise: RunNoise,
         confidence: float) -> dict[str, Any]:
    return {**_interval(diff, se, df, confidence), "se_log": se, "df": df, "unit": unit,
            "noise_sd": noise.sd, "noise_source": noise.source, "n_history": noise.n_runs}


def compare_runs(baseline: RunLevel, current: RunLevel, noise: RunNoise,
                 confidence: float = 0.95) -> dict[str, Any]:
    """Current run against one baseline run.

    ``D = L_current - L_baseline``; its SE is the larger of ``sqrt(2) * noise.sd`` (two runs,
    each with its own run-to-run offset) and the Welch combination of the two runs' own standard
    errors. Returns ratio (current/baseline level), ratio_low/high at ``confidence``, the
    two-sided p-value, se_log, df, the replication ``unit`` in words, noise_sd/source, n_history.
    """
    diff = current.log_level - baseline.log_level
    se_within, df_within = _welch(baseline.se_log, baseline.df, current.se_log, current.df)
    se_noise = math.sqrt(2.0) * noise.sd
    from_noise = se_noise >= se_within
    se, df = (se_noise, noise.df) if from_noise else (se_within, df_within)
    within = f"{_replicates(baseline)} vs {_replicates(current)}"
    return _row(diff, se, df, _unit(noise, from_noise, within), noise, confidence)


def compare_window(window: Sequence[RunLevel], current: RunLevel, *, min_history: int = 5,
                   assumed_sd: float = 0.01, confidence: float = 0.95) -> dict[str, Any]:
    """Current run against the distribution of the last runs of the same key (a window).

    A prediction-interval t-test: ``D = L_current - mean(L_window)``, whose SE is the larger of
    ``s * sqrt(1 + 1/n)`` (``s`` the window's run-to-run SD, ``n`` its runs; df ``n - 1``) and
    ``sqrt(se_current^2 + s^2 / n)`` (the current run's own replicates). One noisy night in the
    window moves the mean by 1/n of its offset and widens ``s``: it can neither raise an alert
    on its own nor hide a large one. Same return fields as :func:`compare_runs`; raises
    ValueError on an empty window.
    """
    if not window:
        raise ValueError("the window holds no runs")
    logs = np.array([w.log_level for w in window], dtype=float)
    n = len(logs)
    noise = run_noise(logs, min_history=min_history, assumed_sd=assumed_sd)
    diff = current.log_level - float(np.mean(logs))
    se_noise = noise.sd * math.sqrt(1.0 + 1.0 / n)
    se_within = math.sqrt(current.se_log**2 + noise.sd**2 / n)
    from_noise = se_noise >= se_within
    se, df = (se_noise, noise.df) if from_noise else (se_within, current.df)
    within = f"{_replicates(current)} tonight"
    return _row(diff, se, df, _unit(noise, from_noise, within), noise, confidence)


def decide(ratio: float, low: float, high: float, q_value: float, *, threshold: float,
           alpha: float) -> tuple[str, str]:
    """(verdict, reason) for one comparable key.

    - regressed: the point estimate is beyond ``1 + threshold`` AND the interval excludes no
      change (``low > 1``) AND the Benjamini-Hochberg q-value is at most ``alpha``;
    - improved: symmetric (``ratio < 1 - threshold``, ``high < 1``, ``q <= alpha``);
    - unchanged: the whole interval lies inside ``[1 - threshold, 1 + threshold]``;
    - inconclusive: anything else (the interval reaches past the band without a verdict).

    So a change smaller than the threshold is never regressed, whatever its p-value.
    """
    band = f"±{threshold * 100:g}%"
    change = f"{(ratio - 1) * 100:+.1f}%"
    ci = f"CI {(low - 1) * 100:+.1f}%..{(high - 1) * 100:+.1f}%"
    if ratio > 1 + threshold and low > 1 and q_value <= alpha:
        return "regressed", f"{change} slower ({ci}), q={q_value:.2g}"
    if ratio < 1 - threshold and high < 1 and q_value <= alpha:
        return "improved", f"{(1 - ratio) * 100:.1f}% faster ({ci}), q={q_value:.2g}"
    if low >= 1 - threshold and high <= 1 + threshold:
        return "unchanged", f"{change} ({ci}) within {band}"
    if abs(ratio - 1) > threshold:
        why = "beyond the threshold, but the interval does not exclude no change"
    else:
        why = f"within {band}, but the interval reaches past it"
    return "inconclusive", f"{change} ({ci}), q={q_value:.2g}: {why}; collect more runs"
