"""Settings, the verdict table and the report object of a regression comparison.

The verdict rule is stated in :mod:`costmeter.reports.regression`; the per-key statistics live
in :mod:`costmeter.reports.regression_stats`. Here: :class:`RegressionSettings`,
:func:`apply_verdicts` (Benjamini-Hochberg across keys, then one verdict per key) and
:class:`RegressionReport`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.regression_stats import decide

VERDICTS = ("regressed", "improved", "unchanged", "inconclusive")
COMPARISON_COLUMNS = (
    "n_baseline", "n_current", "processes_baseline", "processes_current", "median_baseline_ms",
    "median_current_ms", "ratio", "ratio_low", "ratio_high", "p_value", "se_log", "df", "unit",
    "noise_sd", "noise_source", "n_history",
)
_TEXT_COLUMNS = ("unit", "noise_source")


@dataclass(frozen=True)
class RegressionSettings:
    """How strict the comparison is.

    ``threshold``: smallest relative change that counts (0.05 = 5%). ``alpha``: false discovery
    rate (Benjamini-Hochberg). ``confidence``: level of the ratio interval. ``min_samples``: fewer
    per-run latencies on either side makes the key inconclusive. ``history_runs``: how many of a
    key's latest stored runs (up to the baseline) measure its run-to-run noise; 0 uses none.
    ``min_history``: fewer runs than this and the noise is at least ``assumed_run_sd`` (relative
    SD of one run's level, 0.01 = 1%). ``n_batches``: batches for the standard error of a
    one-process run.
    """

    threshold: float = 0.05
    alpha: float = 0.05
    confidence: float = 0.95
    min_samples: int = 10
    history_runs: int = 20
    min_history: int = 5
    assumed_run_sd: float = 0.01
    n_batches: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold {self.threshold} must be in (0, 1), e.g. 0.05 for 5%")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha {self.alpha} must be in (0, 1), e.g. 0.05")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence} must be in (0, 1), e.g. 0.95")
        if self.min_samples < 3:
            raise ConfigError(f"min_samples {self.min_samples} is too few; use at least 3")
        if self.history_runs < 0:
            raise ConfigError(f"history_runs {self.history_runs} must be >= 0 (0: no history)")
        if self.min_history < 3:
            raise ConfigError(f"min_history {self.min_history} is too few; use at least 3")
        if not 0 < self.assumed_run_sd < 1:
            raise ConfigError(
                f"assumed_run_sd {self.assumed_run_sd} must be in (0, 1), e.g. 0.01 for 1%"
            )
        if self.n_batches < 2:
            raise ConfigError(f"n_batches {self.n_batches} must be at least 2")


@dataclass
class RegressionReport:
    """Verdicts per key plus everything needed to render and gate on them.

    ``verdicts`` columns: key_digest, label, model_id, device, runtime, baseline (which baseline
    the verdict used, in words), baseline_result_id, current_result_id, the
    :data:`COMPARISON_COLUMNS` (levels in ms, ratio with its interval, p-value, ``unit``: the
    replication unit in words), q_value, verdict, reason. ``samples`` maps key_digest to
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
        """True when any key is regressed (the CI gate: exit 1)."""
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
            finite = frame.replace([np.inf, -np.inf], np.nan)
            clean = finite.astype(object).where(finite.notna(), None)
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
        """:meth:`to_dict` as indented JSON (infinite values, e.g. an assumed noise's degrees of
        freedom, as null)."""
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


def apply_verdicts(frame: pd.DataFrame, settings: RegressionSettings) -> pd.DataFrame:
    """Add ``q_value`` (Benjamini-Hochberg over the comparable rows), ``verdict`` and ``reason``.

    ``frame`` has one row per key with the columns of :func:`compare_runs` and ``reason`` (None
    when comparable, else why not: such rows become inconclusive).
    """
    from scipy import stats

    frame = frame.copy()
    if "reason" not in frame.columns:
        frame["reason"] = None
    for column in COMPARISON_COLUMNS:
        if column not in frame.columns:
            frame[column] = None if column in _TEXT_COLUMNS else np.nan
    frame["q_value"] = np.nan
    comparable = frame["reason"].isna() & frame["p_value"].notna()
    if comparable.any():
        frame.loc[comparable, "q_value"] = stats.false_discovery_control(
            frame.loc[comparable, "p_value"].to_numpy(dtype=float), method="bh"
        )
    verdicts, reasons = [], []
    for index, row in frame.iterrows():
        if not comparable[index]:
            verdicts.append("inconclusive")
            reasons.append(row["reason"])
            continue
        verdict, reason = decide(row["ratio"], row["ratio_low"], row["ratio_high"],
                                 row["q_value"], threshold=settings.threshold,
                                 alpha=settings.alpha)
        verdicts.append(verdict)
        reasons.append(reason)
    frame["verdict"] = verdicts
    frame["reason"] = reasons
    order = ["key_digest", "label", "model_id", "device", "runtime", "baseline",
             "baseline_result_id", "current_result_id", *COMPARISON_COLUMNS, "q_value",
             "verdict", "reason"]
    return frame[[c for c in order if c in frame.columns]].reset_index(drop=True)
