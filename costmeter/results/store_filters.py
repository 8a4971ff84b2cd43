"""The filters of :meth:`ResultStore.results` and :meth:`ResultStore.query` as SQL conditions."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import or_

from costmeter.errors import ConfigError, StoreError
from costmeter.results.schema import Status
from costmeter.results.tables import parse_timestamp, results_table

FilterValue = str | Sequence[str] | None


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, Status)):
        return [value]
    return list(value)


def _filter_timestamp(value: str | datetime, name: str) -> datetime:
    try:
        return parse_timestamp(value, name)
    except StoreError as exc:
        raise ConfigError(str(exc)) from exc


def _conditions(
    run_id: FilterValue = None,
    tag: FilterValue = None,
    model_id: FilterValue = None,
    device: FilterValue = None,
    runtime: FilterValue = None,
    status: Status | str | Sequence[Status | str] | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    git_sha: FilterValue = None,
) -> list[Any]:
    """SQL conditions for the filters; a list value matches any of its items."""
    conditions: list[Any] = []
    for name, value in (("run_id", run_id), ("tag", tag), ("model_id", model_id),
                        ("device", device), ("runtime", runtime)):  # fmt: skip
        if value is not None:
            conditions.append(results_table.c[name].in_(_as_list(value)))
    if status is not None:
        try:
            values = [Status(s).value for s in _as_list(status)]
        except ValueError as exc:
            choices = ", ".join(s.value for s in Status)
            raise ConfigError(f"unknown status filter {status!r}; use one of {choices}") from exc
        conditions.append(results_table.c.status.in_(values))
    if since is not None:
        conditions.append(results_table.c.started_utc >= _filter_timestamp(since, "since"))
    if until is not None:
        conditions.append(results_table.c.started_utc < _filter_timestamp(until, "until"))
    if git_sha is not None:
        prefixes = [results_table.c.git_sha.startswith(s, autoescape=True) for s in _as_list(git_sha)]
        conditions.append(or_(*prefixes))
    return conditions
