"""Terminal rendering of results: a table that fits the terminal, and notes grouped per result.

The table shows what a reader decides on (see :func:`costmeter.cli.columns.choose_columns`);
``--wide`` shows every column and ``--columns`` picks; :mod:`costmeter.cli.layout` fits it to
the console's width. INVALID reasons, errors and warnings follow the table in one numbered group
per result (the status cell carries the number); a warning every result shares is printed once.
Also the JSON form of a result (``--json``, ``bench results show``).
"""
from __future__ import annotations

import re
import textwrap
from typing import Any, Sequence

from costmeter.cli.columns import Row, choose_columns, fmt_bytes, fmt_ms
from costmeter.cli.layout import fit_table, print_table
from costmeter.results.schema import RunResult, Status, Validity

__all__ = ["fmt_bytes", "fmt_ms", "make_console", "print_results", "print_rows", "print_summary_line",
           "result_json", "result_summary", "robust_dispersion", "row_of", "row_of_record",
           "runtime_comparison"]

DEFAULT_PIPE_WIDTH = 240  # piped or captured: one line per result where it fits in this


def result_summary(r: RunResult, percentiles: tuple[float, ...] | None = None) -> Any:
    """The summary the table and the JSON show: ``r.measurement.summary`` at the percentiles and
    confidence the run was judged with (from ``extra["protocol"]``; defaults for older rows)."""
    protocol = r.extra.get("protocol") or {}
    if percentiles is None:
        percentiles = tuple(float(q) for q in protocol.get("percentiles", (50.0, 90.0, 95.0, 99.0)))
    return r.measurement.summary(percentiles=tuple(percentiles), confidence=float(protocol.get("confidence", 0.95)))


def result_json(r: RunResult, samples: bool = False) -> dict[str, Any]:
    """``r.to_dict()`` plus ``summary``: validity, reasons, warnings, throughput and every figure
    of :func:`result_summary` (ns; each percentile with its interval, noise figures, serial
    correlation, per-process figures). Raw samples only with ``samples``; otherwise the
    measurement keeps its per-process counts (``count_per_process``)."""
    d = r.to_dict()
    if r.measurement is not None and not samples:
        d["measurement"].pop("samples_ns", None)
        d["measurement"]["count_per_process"] = [len(p) for p in r.measurement.samples_ns]
    summary: dict[str, Any] = {"validity": r.validity.value if r.status is Status.OK else None,
                               "reasons": list(r.reasons), "warnings": list(r.warnings),
                               "throughput_items_per_s": r.extra.get("throughput_items_per_s"), "unit": "ns"}
    if r.status is Status.OK and r.measurement is not None and r.measurement.count:
        s = result_summary(r)
        summary.update(s.to_dict())
        summary["longest_stall_ns"] = s.max
        summary["percentiles"] = [
            {"q": q, "value": p.value, "low": p.low, "high": p.high, "confidence": p.confidence,
             "rel_half_width": p.rel_half_width, "widened": p.widened}
            for q, p in sorted(s.percentiles.items())]
    d["summary"] = summary
    return d


def row_of(r: RunResult, percentiles: tuple[float, ...], result_id: int | None = None) -> Row:
    """The table row of a result, its figures from :func:`result_summary` at ``percentiles``."""
    k = r.key
    status = r.status.value.upper() if r.status is not Status.OK else r.validity.value
    precision = dict(k.options).get("precision")
    row = Row(label=k.label(), model=k.model_id, runtime=k.runtime + (f" {precision}" if precision else ""), device=k.device, batch=k.batch,
              threads=k.threads, status=status, reasons=list(r.reasons), warnings=list(r.warnings),
              error=r.error, result_id=result_id, run_id=r.run_id, tag=r.tag,
              prepare_s=r.extra.get("prepare_s"), tune_s=r.extra.get("tune_s"),
              max_abs_diff=r.extra.get("max_abs_diff"), energy_reason=r.energy.reason or "")
    if r.status is not Status.OK or r.measurement is None or not r.measurement.count:
        return row
    s = result_summary(r, percentiles)
    row.confidence = float((r.extra.get("protocol") or {}).get("confidence", 0.95))
    row.percentiles = {q: (p.value, p.low, p.high) for q, p in s.percentiles.items()}
    row.samples, row.cv, row.mad_rel = s.n, s.cv, s.mad_rel
    row.items_per_s = r.extra.get("throughput_items_per_s")
    row.peak_rss_bytes = r.memory.peak_rss_bytes
    if r.energy.energy_j is not None:
        row.energy_per_inference_j = r.energy.energy_per_inference_j
        row.energy_provenance = r.energy.provenance.value
    return row


def row_of_record(rec: dict[str, Any], percentiles: Sequence[float]) -> Row:
    """The table row of a stored result from its :meth:`ResultStore.query` record (ms, bytes);
    MAD/median is not in the store's columns (see :func:`robust_dispersion`)."""

    def number(name: str) -> float | None:
        value = rec.get(name)
        return None if value is None or value != value else float(value)

    threads = rec.get("threads")
    threads = None if threads is None or threads != threads else int(threads)
    status = str(rec["validity"]) if rec["status"] == "ok" else str(rec["status"]).upper()
    label = f"{rec['model_id']}/{rec['runtime']}@{rec['device']} b{rec['batch']} t{threads or 'auto'}"
    row = Row(label=label, model=str(rec["model_id"]), runtime=str(rec["runtime"]), device=str(rec["device"]),
              batch=int(rec["batch"]), threads=threads, status=status, result_id=int(rec["result_id"]),
              run_id=rec.get("run_id"), tag=rec.get("tag") or None, error=rec.get("error") or None,
              samples=int(rec.get("n_samples") or 0), cv=number("latency_cv"),
              items_per_s=number("throughput_items_per_s"), max_abs_diff=number("max_abs_diff"),
              prepare_s=number("prepare_s"))
    if row.measured:
        for q in percentiles:
            value = number(f"latency_p{q:g}_ms")
            if value is not None:
                low, high = number(f"latency_p{q:g}_low_ms"), number(f"latency_p{q:g}_high_ms")
                row.percentiles[float(q)] = (value * 1e6, None if low is None else low * 1e6,
                                             None if high is None else high * 1e6)
        rss = number("peak_rss_bytes")
        row.peak_rss_bytes = None if rss is None else int(rss)
        row.energy_per_inference_j = number("energy_per_inference_j")
        row.energy_provenance = rec.get("energy_provenance")
    return row


def robust_dispersion(samples_ns: Any) -> float | None:
    """MAD/median of per-run samples, by the same code as the results' summaries."""
    from costmeter.results.stats import summarize

    if len(samples_ns) < 2:
        return None
    return summarize(samples_ns, percentiles=(), serial=False).mad_rel


def _group(r: RunResult) -> tuple[Any, ...]:
    """Results comparable across runtimes: same model, device, batch, threads, precision."""
    k = r.key
    return (k.model_id, k.model_hash, k.device, k.batch, k.threads, dict(k.options).get("precision"))


def _median_ns(r: RunResult) -> float | None:
    if r.status is not Status.OK or r.measurement is None or not r.measurement.count:
        return None
    return r.measurement.summary(percentiles=(50.0,)).median  # the pooled median: no interval needed


def runtime_comparison(results: list[RunResult]) -> dict[int, dict[str, Any]]:
    """Per result (by index): ``speedup_vs_torch`` (torch eager median / this median, where torch
    eager ran in the same group) and ``fastest`` (the lowest median among VALID results of its
    model/device/batch/threads group, when the group has more than one runtime)."""
    medians = {i: _median_ns(r) for i, r in enumerate(results)}
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault(_group(r), []).append(i)
    out: dict[int, dict[str, Any]] = {i: {} for i in range(len(results))}
    for members in groups.values():
        torch_ns = [medians[i] for i in members if results[i].key.runtime == "torch" and medians[i]]
        for i in members:
            if torch_ns and medians[i]:
                out[i]["speedup_vs_torch"] = torch_ns[0] / medians[i]
        valid = [i for i in members if medians[i] and results[i].validity is Validity.VALID]
        if len({results[i].key.runtime for i in members}) > 1 and valid:
            out[min(valid, key=lambda i: medians[i])]["fastest"] = True
    return out


def make_console(stderr: bool = False) -> Any:
    """A rich Console at the terminal's width; piped or captured, ``$COLUMNS`` or 240 columns."""
    import os

    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console = Console(stderr=stderr, width=DEFAULT_PIPE_WIDTH, highlight=False)
    return console


def print_results(results: list[RunResult], percentiles: tuple[float, ...], *, wide: bool = False,
                  columns: Sequence[str] | None = None, console: Any = None) -> None:
    """Print the results table fitted to the terminal, then the notes grouped per result.
    With several runtimes, '*' marks the fastest VALID runtime per model and '× torch' is the
    speed-up against eager."""
    comparison = runtime_comparison(results)
    rows = [row_of(r, percentiles) for r in results]
    multi_runtime = len({r.key.runtime for r in results}) > 1
    for i, row in enumerate(rows):
        row.fastest = bool(comparison[i].get("fastest"))
        if multi_runtime:
            row.speedup_vs_torch = comparison[i].get("speedup_vs_torch")
    print_rows(rows, percentiles, wide=wide, columns=columns, console=console)


def print_rows(rows: list[Row], percentiles: Sequence[float], *, wide: bool = False,
               columns: Sequence[str] | None = None, listing: bool = False, console: Any = None,
               notes: bool = True) -> None:
    """Print ``rows`` as a table fitted to the console and (with ``notes``) their notes."""
    console = console or make_console()
    chosen = choose_columns(rows, percentiles, wide=wide, names=columns, listing=listing)
    if notes:
        _number_notes(rows)
    table, hidden = fit_table(rows, chosen, console, may_hide=columns is None and not wide)
    print_table(console, table)
    if notes:
        print_notes(rows, console, shown={c.name for c in chosen} - set(hidden))
    if hidden:
        say(console, f"hidden to fit {console.width} columns: {', '.join(hidden)}; --wide shows every "
                     "column, --columns picks", "dim")
    if any(r.fastest for r in rows) and "runtime" in {c.name for c in chosen}:
        say(console, "* fastest VALID runtime for its model, device, batch and threads", "dim")


_PERCENTILE = re.compile(r"p\d+(?:\.\d+)?")
_TRAILING = re.compile(r"[^\w%]*$")


def merge_percentile_messages(messages: Sequence[str]) -> list[str]:
    """Messages that differ only in the percentile they name (and at most two figures that go
    with it), said once for all of them: "too few samples for a p90 ...: need >= 36; ... drop
    p90" and its p99 twin become "... a p90, p99 ...: need >= 36, 368; ... drop p90, p99"."""
    groups: list[list[list[str]]] = []
    for message in messages:
        tokens = message.split(" ")
        for group in groups:
            first = group[0]
            if len(first) != len(tokens):
                continue
            diff = [i for i, (a, b) in enumerate(zip(first, tokens)) if a != b]
            names_percentile = any(_PERCENTILE.fullmatch(_TRAILING.sub("", first[i]).strip("(")) for i in diff)
            if diff and len(diff) <= 3 and names_percentile and (len(group) == 1 or diff == _diff(group)):
                group.append(tokens)
                break
        else:
            groups.append([tokens])
    return [" ".join(group[0]) if len(group) == 1 else _joined(group) for group in groups]


def _diff(group: list[list[str]]) -> list[int]:
    return [i for i in range(len(group[0])) if len({tokens[i] for tokens in group}) > 1]


def _joined(group: list[list[str]]) -> str:
    """One message from a group: each differing word lists every member's, in order."""
    out = list(group[0])
    for i in _diff(group):
        words = list(dict.fromkeys(tokens[i] for tokens in group))
        tail = _TRAILING.search(words[0]).group()  # "36;" -> ";" (kept once, at the end)
        if all(w.endswith(tail) for w in words):
            words = [w[: len(w) - len(tail)] if tail else w for w in words]
        else:
            tail = ""
        out[i] = ", ".join(words) + tail
    return " ".join(out)


def _shared_warnings(rows: Sequence[Row]) -> set[str]:
    measured = [r for r in rows if r.measured]
    if len(measured) < 2:
        return set()
    return set(measured[0].warnings).intersection(*(r.warnings for r in measured[1:]))


def _number_notes(rows: Sequence[Row]) -> None:
    """Give each result that has something to say under the table a note number."""
    shared = _shared_warnings(rows)
    number = 0
    for row in rows:
        if row.reasons or row.error or row.status in ("FAILED", "UNSUPPORTED") or set(row.warnings) - shared:
            number += 1
            row.note = number
        else:
            row.note = None


def print_notes(rows: Sequence[Row], console: Any, shown: set[str] | frozenset[str] = frozenset()) -> None:
    """One group per numbered result: why it failed or is INVALID, then its warnings; then the
    warnings every result shares, once; then why energy is unavailable (when its column shows)."""
    shared = _shared_warnings(rows)
    for row in rows:
        if row.note is None:
            continue
        style = "yellow" if row.status in ("VALID", "UNJUDGED") else "red"
        say(console, f"[{row.note}] {row.label}: {row.status}", style)
        for reason in ([row.error] if row.error else []) + merge_percentile_messages(row.reasons):
            say(console, reason, style, "  - ", "    ")
        for warning in merge_percentile_messages([w for w in row.warnings if w not in shared]):
            say(console, warning, "yellow", "  warning: ", "    ")
    if shared:
        say(console, "every result:", "yellow")
        for warning in merge_percentile_messages(sorted(shared)):
            say(console, warning, "yellow", "  warning: ", "    ")
    if "energy" in shown:
        for reason in sorted({r.energy_reason for r in rows if r.measured and r.energy_per_inference_j is None
                              and r.energy_reason}):
            say(console, f"energy unavailable: {reason}", "dim")


def say(console: Any, text: str, style: str, first: str = "", rest: str = "") -> None:
    """Print ``text`` wrapped to the console (``first``/``rest``: indents), never as markup."""
    wrapped = textwrap.fill(text, width=max(40, console.width), initial_indent=first, subsequent_indent=rest,
                            break_on_hyphens=False)
    console.print(wrapped, style=style, markup=False, highlight=False, soft_wrap=True)


def print_summary_line(results: list[RunResult], what: str) -> None:
    """One line: how many results were VALID, INVALID, failed or unsupported."""
    import click

    counts = {"VALID": 0, "INVALID": 0, "failed": 0, "unsupported": 0}
    for r in results:
        status = r.validity.value if r.status is Status.OK else r.status.value
        counts[status] = counts.get(status, 0) + 1
    click.echo(f"measured {len(results)} {what}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for r in results:
        if r.status is not Status.OK:
            click.echo(f"{r.status.value} {r.key.label()}: {r.error}", err=True)
