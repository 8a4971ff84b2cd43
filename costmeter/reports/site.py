"""The history site's data: what every page shows, as plain objects built from stored results.

:func:`build_site` is pure apart from reading samples through ``samples_for`` (for the regression
verdicts); rendering is in :mod:`costmeter.reports.site_render`. One page per benchmark key
(its p50 and p99 over the runs, in time order, with intervals; its steps and the commits around
them; its runs), one page per run (every key of that run; previous and next run) and an index
(regressions and improvements since the baseline, steps, every key, every run).

Verdicts come from :func:`costmeter.reports.regression.regression_report` (the current
selection, default ``latest``, against ``--baseline``: a selector or ``window:N``); each keeps
the ``baseline`` it used. Steps come from :func:`costmeter.reports.history.detect_steps` over
every stored run of the key (not only those up to the current selection), with
:func:`costmeter.reports.history.bisect_ranges` for the commits around them.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.history import bisect_ranges, detect_steps, key_history
from costmeter.reports.metrics import key_label, require_results
from costmeter.reports.regression import RegressionReport, RegressionSettings, regression_report
from costmeter.reports.selectors import runs_in_order

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def key_page(digest: str) -> str:
    """Site-relative path of a key's page."""
    return f"keys/{digest}.html"


def run_page(run_id: Any) -> str:
    """Site-relative path of a run's page: a readable part of the id plus a short hash, so that
    every run id (any characters) gets its own safe file name."""
    text = str(run_id)
    readable = _UNSAFE.sub("-", text).strip("-.")[:48] or "run"
    return f"runs/{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.html"


@dataclass
class KeyView:
    """One benchmark key's page.

    ``points``: its good runs in time order (columns of :func:`key_history`, plus ``page``: the
    run's page). ``steps``: its steps with the commits around them (columns of
    :func:`bisect_ranges`). ``others``: its failed or INVALID results (run_id, status,
    validity, why, page). ``verdict``: its row of the regression verdicts, None when the current
    selection did not compare it.
    """

    digest: str
    label: str
    page: str
    model_id: str
    device: str
    runtime: str
    points: pd.DataFrame
    steps: pd.DataFrame
    others: pd.DataFrame
    verdict: dict[str, Any] | None = None


@dataclass
class RunView:
    """One run's page: every result of the run (``rows``: key_digest, label, key page, status,
    validity, p50/p99 with intervals in ms, n_samples, why) and its neighbours in time."""

    run_id: str
    page: str
    started_at: pd.Timestamp
    git_sha: str
    tag: str
    host: str
    rows: pd.DataFrame
    previous: tuple[str, str] | None = None  # (run id, page)
    following: tuple[str, str] | None = None


@dataclass
class SiteData:
    """Everything the site shows. ``report`` holds the verdicts (and which baseline each
    used); ``keys`` and ``runs`` the pages; ``steps`` every step of every key (newest first);
    ``filters`` the tag/device/runtime the history was cut to."""

    report: RegressionReport
    keys: list[KeyView]
    runs: list[RunView]
    steps: pd.DataFrame
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def notable(self) -> pd.DataFrame:
        """Verdict rows that regressed or improved, regressions first, larger changes first."""
        verdicts = self.report.verdicts
        rows = verdicts[verdicts["verdict"].isin(("regressed", "improved"))]
        order = rows["verdict"].map({"regressed": 0, "improved": 1})
        change = -(rows["ratio"].astype(float) - 1).abs()
        return rows.assign(_o=order, _c=change).sort_values(["_o", "_c", "label"]).drop(
            columns=["_o", "_c"])

    def key(self, digest: str) -> KeyView:
        """The view of one key (KeyError when absent)."""
        return {k.digest: k for k in self.keys}[digest]


def _times(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["started_at"], utc=True, format="ISO8601")


def filter_history(results: pd.DataFrame, *, tag: str | None = None, device: str | None = None,
                   runtime: str | None = None) -> pd.DataFrame:
    """The stored results the site covers: all of them, or those of one tag, device and/or
    runtime. Raises ConfigError for an empty store or a filter that matches nothing (naming
    what exists)."""
    require_results(results)
    kept = results
    for column, wanted in (("tag", tag), ("device", device), ("runtime", runtime)):
        if wanted is None:
            continue
        chosen = kept[kept[column].fillna("").astype(str) == str(wanted)]
        if chosen.empty:
            present = sorted({str(v) for v in kept[column].dropna().unique() if str(v)})
            raise ConfigError(
                f"no results with {column} {wanted!r}; present: {', '.join(present) or 'none'}; "
                f"pick one of those or leave --{column} out"
            )
        kept = chosen
    return kept


def _why(row: pd.Series) -> str:
    if row["status"] != "ok":
        return str(row.get("error") or row["status"])
    if row.get("validity", "VALID") != "VALID":
        return str(row.get("reasons") or "INVALID, no reason recorded")
    return str(row.get("warnings") or "") if "warnings" in row.index else ""


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def run_views(results: pd.DataFrame) -> list[RunView]:
    """One view per run, oldest first, each linked to its neighbours."""
    ordered = runs_in_order(results.assign(started_at=_times(results)))
    frame = results.assign(_start=_times(results), run_id=results["run_id"].astype(str))
    views = []
    for run_id in ordered:
        rows = frame[frame["run_id"] == run_id].sort_values("_start", kind="stable")
        rows = rows.drop_duplicates("key_digest", keep="last")
        table = pd.DataFrame({
            "key_digest": rows["key_digest"].to_numpy(),
            "label": [key_label(r) for _, r in rows.iterrows()],
            "key_page": [key_page(d) for d in rows["key_digest"]],
            "status": rows["status"].to_numpy(),
            "validity": rows["validity"].to_numpy(),
            "p50_ms": rows["latency_p50_ms"].to_numpy(dtype=float),
            "p50_low_ms": rows["latency_p50_low_ms"].to_numpy(dtype=float),
            "p50_high_ms": rows["latency_p50_high_ms"].to_numpy(dtype=float),
            "p99_ms": rows["latency_p99_ms"].to_numpy(dtype=float),
            "n_samples": rows["n_samples"].to_numpy(),
            "why": [_why(r) for _, r in rows.iterrows()],
        }).sort_values("label", kind="stable").reset_index(drop=True)
        shas = [s for s in rows["git_sha"].fillna("").astype(str) if s]
        tags = [t for t in rows["tag"].fillna("").astype(str) if t]
        hosts = [h for h in rows["host"].fillna("").astype(str) if h] if "host" in rows else []
        views.append(RunView(run_id=run_id, page=run_page(run_id),
                             started_at=rows["_start"].min(), git_sha=shas[-1] if shas else "",
                             tag=", ".join(dict.fromkeys(tags)),
                             host=", ".join(dict.fromkeys(hosts)), rows=table))
    for before, after in zip(views, views[1:]):
        before.following = (after.run_id, after.page)
        after.previous = (before.run_id, before.page)
    return views


def key_views(results: pd.DataFrame, history: pd.DataFrame, steps: pd.DataFrame,
              verdicts: pd.DataFrame) -> list[KeyView]:
    """One view per benchmark key in ``results`` (those without a good run too), by label."""
    by_key = {d: v for d, v in verdicts.set_index("key_digest", drop=False).iterrows()}
    latest = results.assign(_start=_times(results)).sort_values("_start", kind="stable")
    views = []
    for digest, rows in latest.groupby("key_digest", sort=False):
        last = rows.iloc[-1]
        points = history[history["key_digest"] == digest].sort_values("position")
        points = points.assign(page=[run_page(r) for r in points["run_id"]])
        bad = rows[(rows["status"] != "ok") | (rows["validity"] != "VALID")]
        others = pd.DataFrame({
            "run_id": bad["run_id"].astype(str).to_numpy(), "status": bad["status"].to_numpy(),
            "validity": bad["validity"].to_numpy(),
            "why": [_why(r) for _, r in bad.iterrows()],
            "page": [run_page(r) for r in bad["run_id"]],
        })
        verdict = by_key.get(digest)
        views.append(KeyView(
            digest=str(digest), label=key_label(last), page=key_page(str(digest)),
            model_id=_text(last["model_id"]), device=_text(last["device"]),
            runtime=_text(last["runtime"]), points=points.reset_index(drop=True),
            steps=steps[steps["key_digest"] == digest].reset_index(drop=True), others=others,
            verdict=None if verdict is None else verdict.to_dict(),
        ))
    return sorted(views, key=lambda v: v.label)


def build_site(
    results: pd.DataFrame,
    samples_for: Callable[[Any], Any],
    *,
    baseline: str = "window:20",
    current: str = "latest",
    tag: str | None = None,
    device: str | None = None,
    runtime: str | None = None,
    settings: RegressionSettings | None = None,
) -> SiteData:
    """Everything the history site shows, from all stored ``results``.

    The history is cut to ``tag``/``device``/``runtime`` when given; ``current`` (a selector
    within it) is compared with ``baseline`` (a selector or ``window:N``) by the regression
    verdicts; every key gets its series and steps (threshold: ``settings.threshold``), every run
    its page. The commits between a step's two runs are looked up over all stored ``results``
    (other tags and devices measured commits too). Raises ConfigError on an empty store, a
    filter or selector that matches nothing, or a baseline that shares no key with current.
    """
    settings = settings or RegressionSettings()
    history_results = filter_history(results, tag=tag, device=device, runtime=runtime)
    report = regression_report(history_results, baseline, current, samples_for, settings,
                               with_history=False)
    history = key_history(history_results)
    steps = bisect_ranges(detect_steps(history, min_change=settings.threshold), results)
    report.history, report.steps = history, steps
    steps = steps.assign(_t=_times(steps) if len(steps) else pd.Series(dtype=object))
    steps = steps.sort_values(["_t", "label"], ascending=[False, True], kind="stable").drop(
        columns="_t").reset_index(drop=True)
    filters = {k: v for k, v in (("tag", tag), ("device", device), ("runtime", runtime)) if v}
    return SiteData(report=report,
                    keys=key_views(history_results, history, steps, report.verdicts),
                    runs=run_views(history_results), steps=steps, filters=filters)
