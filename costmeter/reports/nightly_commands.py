"""``bench report history`` and ``bench report subset``: the nightly workflow's reports.

Like :mod:`costmeter.reports.commands`, each takes the whole results frame
(``ResultStore.query()``) and plain options and returns what to print; bad input raises
ConfigError (exit code 2 in the CLI) before anything is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from costmeter.errors import ConfigError


def _check_writable(out: Path) -> None:
    """ConfigError unless ``out`` (a folder, maybe not yet there) could be created/written."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() and probe != out:
        raise ConfigError(f"cannot write the site to {out}: {probe} is a file; "
                          "pass a writable --out folder")
    target = probe if probe.is_dir() else probe.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the site to {out}: {target} is not writable; "
                          "pass a writable --out folder")


@dataclass
class HistoryOutcome:
    """What ``bench report history`` wrote: the site's index and its data."""

    index: Path
    data: Any

    def summary(self) -> str:
        """A few lines for the terminal."""
        report = self.data.report
        counts = " · ".join(f"{v} {n}" for v, n in report.counts().items())
        lines = [f"wrote {self.index} ({len(self.data.keys)} keys, {len(self.data.runs)} runs, "
                 f"{len(self.data.steps)} steps)",
                 f"{report.current_selector} against {report.baseline_selector}: {counts}"]
        for _, row in self.data.notable.iterrows():
            lines.append(f"  {row['verdict']}: {row['label']} ({row['reason']})")
        return "\n".join(lines)


def report_history(
    results: pd.DataFrame,
    samples_for: Callable[[Any], Any],
    *,
    out: str | Path,
    baseline: str = "window:20",
    current: str = "latest",
    tag: str | None = None,
    device: str | None = None,
    runtime: str | None = None,
    threshold: float = 0.05,
    alpha: float = 0.05,
) -> HistoryOutcome:
    """``bench report history``: build the history site's data
    (:func:`costmeter.reports.site.build_site`) and write it to ``out``
    (:func:`costmeter.reports.site_render.write_site`). The folder is checked first, so bad
    input (empty store, bad selector or filter, a file or foreign folder at ``out``, an
    unwritable place) fails before anything is written."""
    from costmeter.reports.regression import RegressionSettings
    from costmeter.reports.site import build_site
    from costmeter.reports.site_render import check_out, write_site

    target = Path(out)
    check_out(target)
    _check_writable(target)
    settings = RegressionSettings(threshold=threshold, alpha=alpha)
    data = build_site(results, samples_for, baseline=baseline, current=current, tag=tag,
                      device=device, runtime=runtime, settings=settings)
    return HistoryOutcome(index=write_site(data, target), data=data)


def report_subset(
    results: pd.DataFrame,
    *,
    history: str,
    budget: float,
    budget_by: str = "keys",
    rank_by: Sequence[str] = ("device", "runtime"),
    nights: str = "run",
    held_out: float = 1 / 3,
    weight: float = 0.5,
    min_change: float = 0.05,
    json_out: str | Path | None = None,
) -> tuple[Any, str]:
    """``bench report subset``: the cheap nightly subset of the suite whose stored history
    ``history`` selects (e.g. ``tag:nightly``). Returns (SubsetReport, text); writes the report
    as JSON to ``json_out`` when given."""
    import json

    from costmeter.reports.history import suite_history
    from costmeter.reports.selectors import select_results
    from costmeter.reports.subset import choose_subset

    selected = select_results(results, history)
    suite = suite_history(selected, rank_by=rank_by, min_change=min_change, nights=nights)
    report = choose_subset(suite, budget, budget_by=budget_by, held_out=held_out, weight=weight)
    text = report.summary() + "\nkeys:\n" + "\n".join(f"  {label}" for label in report.labels)
    if json_out is not None:
        path = Path(json_out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {err.strerror or err}; "
                              "pass a writable --json path") from err
        text += f"\nwrote {path}"
    return report, text


__all__ = ["HistoryOutcome", "report_history", "report_subset"]
