"""Nightly regression comparison: per benchmark key, is ``current`` slower than ``baseline``?

For every benchmark key (``key_digest``) present in both selections:

- effect: ratio of median latencies (current / baseline) with a bootstrap confidence interval
  (``scipy.stats.bootstrap``, percentile method, resampling both sample sets);
- significance: two-sided Mann-Whitney U test on the raw per-run latencies, then
  Benjamini-Hochberg correction across all keys compared (``scipy.stats.false_discovery_control``),
  so a report over hundreds of keys keeps its false discovery rate at ``alpha``;
- verdict: the band ``[1 - threshold, 1 + threshold]`` counts as no practical change.
  *unchanged* when the whole CI lies in the band; *regressed* when the test is significant
  (q <= alpha), the median got slower and the CI reaches past the band (a slowdown of the
  threshold's size is plausible); *improved* symmetrically; *inconclusive* when the input is
  not ``ok``/VALID, has too few samples, or the CI leaves the band without a significant test
  (noisy: collect more samples).

Rendering lives in :mod:`costmeter.reports.regression_render`; step detection over the history
of runs in :mod:`costmeter.reports.history`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.metrics import key_label, require_results
from costmeter.reports.selectors import runs_in_order, select_results

VERDICTS = ("regressed", "improved", "unchanged", "inconclusive")
SamplesFor = Callable[[str], np.ndarray]
NS_PER_MS = 1e6


@dataclass(frozen=True)
class RegressionSettings:
    """How strict the comparison is.

    ``threshold``: smallest relative change that counts (0.05 = 5%). ``alpha``: false discovery
    rate for the Benjamini-Hochberg correction. ``confidence``: level of the ratio CI.
    ``n_resamples``: bootstrap resamples. ``min_samples``: fewer samples on either side makes the
    key inconclusive. ``max_bootstrap_samples``: larger sample sets are randomly thinned to this
    size for the bootstrap only (the U test always uses all). ``seed`` makes reports repeatable.
    """

    threshold: float = 0.05
    alpha: float = 0.05
    confidence: float = 0.95
    n_resamples: int = 2000
    min_samples: int = 10
    max_bootstrap_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold {self.threshold} must be in (0, 1), e.g. 0.05 for 5%")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha {self.alpha} must be in (0, 1), e.g. 0.05")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence} must be in (0, 1), e.g. 0.95")
        if self.n_resamples < 100:
            raise ConfigError(f"n_resamples {self.n_resamples} is too few; use at least 100")
        if self.min_samples < 3:
            raise ConfigError(f"min_samples {self.min_samples} is too few; use at least 3")


def compare_samples(
    baseline_ms: np.ndarray, current_ms: np.ndarray, settings: RegressionSettings,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Effect and raw significance of one key: medians (ms), ratio of medians current/baseline
    with its CI, and the two-sided Mann-Whitney U p-value (before FDR correction)."""
    from scipy import stats

    rng = rng if rng is not None else np.random.default_rng(settings.seed)
    base = np.asarray(baseline_ms, dtype=float)
    cur = np.asarray(current_ms, dtype=float)
    median_base, median_cur = float(np.median(base)), float(np.median(cur))
    ratio = median_cur / median_base if median_base > 0 else float("nan")
    p_value = float(stats.mannwhitneyu(cur, base, alternative="two-sided").pvalue)
    if np.isnan(p_value):  # every sample identical on both sides
        p_value = 1.0
    boot_base = _thin(base, settings.max_bootstrap_samples, rng)
    boot_cur = _thin(cur, settings.max_bootstrap_samples, rng)
    if np.ptp(boot_base) == 0 and np.ptp(boot_cur) == 0:
        low = high = ratio
    else:
        result = stats.bootstrap(
            (boot_cur, boot_base),
            _median_ratio,
            n_resamples=settings.n_resamples,
            batch=max(1, int(2e7 // max(len(boot_cur), len(boot_base), 1)) // 10),
            vectorized=True,
            paired=False,
            confidence_level=settings.confidence,
            method="percentile",
            rng=rng,
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {
        "n_baseline": int(len(base)),
        "n_current": int(len(cur)),
        "median_baseline_ms": median_base,
        "median_current_ms": median_cur,
        "ratio": ratio,
        "ratio_low": low,
        "ratio_high": high,
        "p_value": p_value,
    }


def _median_ratio(current: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(current, axis=axis) / np.median(baseline, axis=axis)


def _thin(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= limit:
        return values
    return rng.choice(values, size=limit, replace=False)


def decide(ratio: float, low: float, high: float, q_value: float, settings: RegressionSettings):
    """(verdict, reason) for one comparable key from its ratio, CI and FDR-adjusted q-value.

    The band ``[1 - threshold, 1 + threshold]`` is "practically no change". A key is unchanged
    when its whole CI lies in the band; regressed (improved) when the U test is significant, the
    median got slower (faster) and the CI reaches past the band; inconclusive otherwise.
    """
    t = settings.threshold
    band = f"±{t * 100:g}%"
    ci = f"CI {(low - 1) * 100:+.1f}%..{(high - 1) * 100:+.1f}%"
    if low >= 1 - t and high <= 1 + t:
        return "unchanged", f"{(ratio - 1) * 100:+.1f}% ({ci}) within {band}"
    if q_value <= settings.alpha and ratio > 1 and high > 1 + t:
        return "regressed", f"{(ratio - 1) * 100:.1f}% slower ({ci}), q={q_value:.2g}"
    if q_value <= settings.alpha and ratio < 1 and low < 1 - t:
        return "improved", f"{(1 - ratio) * 100:.1f}% faster ({ci}), q={q_value:.2g}"
    return (
        "inconclusive",
        f"noisy: {(ratio - 1) * 100:+.1f}% ({ci}), q={q_value:.2g}; the CI reaches past {band} "
        "without a significant test; collect more samples",
    )


def _input_problem(row: pd.Series, side: str) -> str | None:
    if row["status"] != "ok":
        detail = row.get("error") or row["status"]
        return f"{side} {row['status']}: {detail}"
    if row.get("validity", "VALID") != "VALID":
        reasons = str(row.get("reasons") or "no reason recorded")
        return f"{side} INVALID: {reasons}"
    return None


@dataclass
class RegressionReport:
    """Verdicts per key plus everything needed to render and gate on them.

    ``verdicts`` columns: key_digest, label, model_id, device, runtime, baseline_result_id,
    current_result_id, n_baseline, n_current, median_baseline_ms, median_current_ms, ratio,
    ratio_low, ratio_high, p_value, q_value, verdict, reason. ``samples`` maps key_digest to
    (baseline_ms, current_ms) for plots. ``history``/``steps`` come from
    :mod:`costmeter.reports.history` when asked for.
    """

    verdicts: pd.DataFrame
    settings: RegressionSettings
    baseline_selector: str
    current_selector: str
    baseline_runs: list[str]
    current_runs: list[str]
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_current: list[str] = field(default_factory=list)
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    history: pd.DataFrame | None = None
    steps: pd.DataFrame | None = None

    @property
    def significant_regression(self) -> bool:
        """True when any key regressed significantly beyond the threshold (CI gate: exit 1)."""
        return bool((self.verdicts["verdict"] == "regressed").any())

    def counts(self) -> dict[str, int]:
        """Number of keys per verdict (every verdict present, zeros included)."""
        found = self.verdicts["verdict"].value_counts()
        return {v: int(found.get(v, 0)) for v in VERDICTS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: settings, selections, counts, verdicts and steps."""
        def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
            if frame is None:
                return []
            clean = frame.astype(object).where(frame.notna(), None)
            return clean.to_dict(orient="records")

        return {
            "settings": asdict(self.settings),
            "baseline": {"selector": self.baseline_selector, "runs": self.baseline_runs},
            "current": {"selector": self.current_selector, "runs": self.current_runs},
            "significant_regression": self.significant_regression,
            "counts": self.counts(),
            "verdicts": records(self.verdicts),
            "only_in_baseline": self.only_in_baseline,
            "only_in_current": self.only_in_current,
            "steps": records(self.steps),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


def _latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    order = "finished_at" if "finished_at" in frame.columns else "started_at"
    return frame.sort_values(order, kind="stable").drop_duplicates("key_digest", keep="last")


def compare_selections(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    samples_for: SamplesFor,
    settings: RegressionSettings | None = None,
    *,
    baseline_selector: str = "baseline",
    current_selector: str = "current",
) -> RegressionReport:
    """Compare two selections of results key by key (latest result per key on each side).

    ``samples_for(result_id)`` returns the per-run latencies in nanoseconds. Raises ConfigError
    when the two selections share no benchmark key.
    """
    settings = settings or RegressionSettings()
    base = _latest_per_key(baseline).set_index("key_digest", drop=False)
    cur = _latest_per_key(current).set_index("key_digest", drop=False)
    common = [k for k in cur.index if k in base.index]
    if not common:
        raise ConfigError(
            f"baseline ({baseline_selector}) and current ({current_selector}) share no benchmark "
            f"key; baseline has {', '.join(sorted(map(key_label_of(base), base.index))[:5])}; "
            f"current has {', '.join(sorted(map(key_label_of(cur), cur.index))[:5])}"
        )
    rng = np.random.default_rng(settings.seed)
    rows: list[dict[str, Any]] = []
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for digest in sorted(common, key=lambda d: key_label(cur.loc[d])):
        b, c = base.loc[digest], cur.loc[digest]
        row: dict[str, Any] = {
            "key_digest": digest, "label": key_label(c), "model_id": c["model_id"],
            "device": c["device"], "runtime": c["runtime"],
            "baseline_result_id": _native(b["result_id"]),
            "current_result_id": _native(c["result_id"]),
        }
        problem = _input_problem(b, "baseline") or _input_problem(c, "current")
        if problem is None:
            base_ms = np.asarray(samples_for(_native(b["result_id"])), dtype=float) / NS_PER_MS
            cur_ms = np.asarray(samples_for(_native(c["result_id"])), dtype=float) / NS_PER_MS
            samples[digest] = (base_ms, cur_ms)
            if min(len(base_ms), len(cur_ms)) < settings.min_samples:
                problem = (
                    f"too few samples ({len(base_ms)} baseline, {len(cur_ms)} current; "
                    f"need {settings.min_samples})"
                )
            else:
                row.update(compare_samples(base_ms, cur_ms, settings, rng))
        row["reason"] = problem
        rows.append(row)
    verdicts = apply_verdicts(pd.DataFrame(rows), settings)
    return RegressionReport(
        verdicts=verdicts,
        settings=settings,
        baseline_selector=baseline_selector,
        current_selector=current_selector,
        baseline_runs=runs_in_order(baseline),
        current_runs=runs_in_order(current),
        only_in_baseline=sorted(key_label(base.loc[d]) for d in base.index if d not in cur.index),
        only_in_current=sorted(key_label(cur.loc[d]) for d in cur.index if d not in base.index),
        samples=samples,
    )


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (database drivers reject numpy ints)."""
    return value.item() if isinstance(value, np.generic) else value


def key_label_of(frame: pd.DataFrame) -> Callable[[str], str]:
    """A function from key_digest to label over ``frame`` (indexed by key_digest)."""
    return lambda digest: key_label(frame.loc[digest])


def apply_verdicts(frame: pd.DataFrame, settings: RegressionSettings) -> pd.DataFrame:
    """Add ``q_value`` (Benjamini-Hochberg over the comparable rows), ``verdict`` and ``reason``.

    ``frame`` has one row per key with the columns of :func:`compare_samples` and ``reason``
    (None when comparable, else why not: such rows become inconclusive).
    """
    from scipy import stats

    frame = frame.copy()
    if "reason" not in frame.columns:
        frame["reason"] = None
    for column in ("n_baseline", "n_current", "median_baseline_ms", "median_current_ms",
                   "ratio", "ratio_low", "ratio_high", "p_value"):
        if column not in frame.columns:
            frame[column] = np.nan
    frame["q_value"] = np.nan
    comparable = frame["reason"].isna() & frame["p_value"].notna()
    if comparable.any():
        frame.loc[comparable, "q_value"] = stats.false_discovery_control(
            frame.loc[comparable, "p_value"].to_numpy(dtype=float), method="bh"
        )
    verdicts, reasons = [], []
    for _, row in frame.iterrows():
        if not comparable[row.name]:
            verdicts.append("inconclusive")
            reasons.append(row["reason"])
            continue
        verdict, reason = decide(
            row["ratio"], row["ratio_low"], row["ratio_high"], row["q_value"], settings
        )
        verdicts.append(verdict)
        reasons.append(reason)
    frame["verdict"] = verdicts
    frame["reason"] = reasons
    order = ["key_digest", "label", "model_id", "device", "runtime", "baseline_result_id",
             "current_result_id", "n_baseline", "n_current", "median_baseline_ms",
             "median_current_ms", "ratio", "ratio_low", "ratio_high", "p_value", "q_value",
             "verdict", "reason"]
    return frame[[c for c in order if c in frame.columns]].reset_index(drop=True)


def regression_report(
    results: pd.DataFrame,
    baseline: str,
    current: str,
    samples_for: SamplesFor,
    settings: RegressionSettings | None = None,
    *,
    with_history: bool = True,
) -> RegressionReport:
    """Select ``baseline`` and ``current`` from all stored ``results`` (selectors, see
    selectors.py), compare them, and attach the history and its steps for the compared keys
    (runs up to the current selection's last start). Raises ConfigError on bad selectors or an
    empty store."""
    from costmeter.reports.history import detect_steps, key_history

    settings = settings or RegressionSettings()
    require_results(results)
    report = compare_selections(
        select_results(results, baseline), select_results(results, current), samples_for,
        settings, baseline_selector=baseline, current_selector=current,
    )
    if with_history:
        last = select_results(results, current)["started_at"].astype(str).max()
        keys = set(report.verdicts["key_digest"])
        in_range = results["started_at"].astype(str) <= last
        upto = results[in_range & results["key_digest"].isin(keys)]
        report.history = key_history(upto)
        report.steps = detect_steps(report.history, min_change=settings.threshold)
    return report
