"""Selectors: which stored results a report compares (``run:``, ``tag:``, ``sha:``, ``date:``).

A selector is a string:

- ``run:ID`` a run id (a unique prefix is enough); ``tag:NAME`` results stored with that tag;
- ``sha:PREFIX`` results measured at a git commit; ``date:YYYY-MM-DD`` or
  ``date:YYYY-MM-DD..YYYY-MM-DD`` results started on that day or in that inclusive range;
- ``latest`` the most recent run, ``latest~N`` the run N before it;
- anything else is tried as a run id, a tag, a git SHA prefix, then a date, in that order.

A selector that matches nothing raises ConfigError listing the runs, tags, commits and dates
that exist.
"""
from __future__ import annotations

import re

import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.metrics import require_results

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")
_LATEST = re.compile(r"^latest(?:~(\d+))?$")


def runs_in_order(frame: pd.DataFrame) -> list[str]:
    """Run ids ordered by their first start time (oldest first)."""
    first = frame.groupby("run_id")["started_at"].min().sort_values(kind="stable")
    return [str(r) for r in first.index]


def _by_run(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    exact = frame[frame["run_id"].astype(str) == value]
    if len(exact):
        return exact
    matching = {r for r in frame["run_id"].astype(str).unique() if r.startswith(value)}
    if len(matching) > 1:
        raise ConfigError(
            f"run id prefix {value!r} is ambiguous ({', '.join(sorted(matching))}); type more of it"
        )
    return frame[frame["run_id"].astype(str).isin(matching)]


def _by_tag(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    return frame[frame["tag"].fillna("").astype(str) == value]


def _by_sha(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    shas = frame["git_sha"].fillna("").astype(str).str.lower()
    return frame[(shas != "") & shas.str.startswith(value.lower())]


def _by_date(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    first, _, last = value.partition("..")
    last = last or first
    for day in (first, last):
        if not _DATE.match(day):
            raise ConfigError(
                f"date {day!r} is not YYYY-MM-DD; "
                "write date:2024-05-01 or date:2024-05-01..2024-05-07"
            )
    days = frame["started_at"].astype(str).str[:10]
    return frame[(days >= first) & (days <= last)]


def _by_latest(frame: pd.DataFrame, back: int) -> pd.DataFrame:
    runs = runs_in_order(frame)
    if back >= len(runs):
        return frame.iloc[0:0]
    return frame[frame["run_id"].astype(str) == runs[-1 - back]]


def describe_store(frame: pd.DataFrame, limit: int = 5) -> str:
    """One line naming the most recent runs, the tags, commits and the date range present."""
    runs = runs_in_order(frame)
    tags = sorted({str(t) for t in frame["tag"].dropna().unique() if str(t)})
    shas = sorted({str(s)[:10] for s in frame["git_sha"].dropna().unique() if str(s)})
    days = frame["started_at"].astype(str).str[:10]

    def listing(items: list[str]) -> str:
        if not items:
            return "none"
        shown = ", ".join(items[-limit:])
        return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"

    return (
        f"runs: {listing(runs)}; tags: {listing(tags)}; git SHAs: {listing(shas)}; "
        f"dates: {days.min()}..{days.max()}"
    )


def select_results(frame: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The rows of ``frame`` that ``selector`` picks (see the module doc for the forms).

    Raises ConfigError when the frame is empty or nothing matches (saying what exists).
    """
    require_results(frame)
    selector = str(selector).strip()
    kind, sep, value = selector.partition(":")
    if sep and kind in ("run", "tag", "sha", "date"):
        finder = {"run": _by_run, "tag": _by_tag, "sha": _by_sha, "date": _by_date}[kind]
        selected = finder(frame, value)
    elif _LATEST.match(selector):
        selected = _by_latest(frame, int(_LATEST.match(selector).group(1) or 0))
    else:
        selected = frame.iloc[0:0]
        for finder, applies in (
            (_by_run, True),
            (_by_tag, True),
            (_by_sha, bool(_HEX.match(selector))),
            (_by_date, bool(_DATE.match(selector.partition("..")[0]))),
        ):
            if applies:
                selected = finder(frame, selector)
                if len(selected):
                    break
    if selected.empty:
        raise ConfigError(
            f"selector {selector!r} matches no results; {describe_store(frame)}; "
            "use run:ID, tag:NAME, sha:PREFIX, date:YYYY-MM-DD[..YYYY-MM-DD] or latest[~N]"
        )
    return selected
