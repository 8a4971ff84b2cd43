"""Terminal rendering of results (rich tables)."""
from __future__ import annotations

from typing import Any

from costmeter.results.schema import RunResult, Status, Validity


def fmt_ms(ns: float | None) -> str:
    """Nanoseconds as milliseconds with 3 significant-ish digits, or '-'."""
    if ns is None:
        return "-"
    ms = ns / 1e6
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_bytes(n: int | None) -> str:
    """Bytes as MiB, or '-'."""
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def fmt_ci(pci: Any) -> str:
    """'value [low, high]' in ms; 'value [no CI]' when there are too few samples."""
    if pci is None:
        return "-"
    if pci.low is None or pci.high is None:
        return f"{fmt_ms(pci.value)} [no CI]"
    return f"{fmt_ms(pci.value)} [{fmt_ms(pci.low)}, {fmt_ms(pci.high)}]"


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


def result_row(r: RunResult, percentiles: tuple[float, ...]) -> dict[str, str]:
    """One table row (strings) for a result."""
    k = r.key
    precision = dict(k.options).get("precision")
    row = {"model": k.model_id, "runtime": k.runtime + (f" {precision}" if precision else ""),
           "device": k.device, "batch": str(k.batch),
           "threads": "auto" if k.threads is None else str(k.threads)}
    if r.status is not Status.OK or r.measurement is None:
        row["status"] = r.status.value.upper() + " (see below)"
        return row
    s = result_summary(r, percentiles)
    for q in percentiles:
        row[f"p{q:g} ms [95% CI]"] = fmt_ci(s.percentiles.get(q))
    row["CV"] = f"{s.cv:.1%}"
    row["MAD/med"] = f"{s.mad_rel:.1%}"
    tput = r.extra.get("throughput_items_per_s")
    row["items/s"] = "-" if tput is None else f"{tput:,.1f}"
    row["peak RSS"] = fmt_bytes(r.memory.peak_rss_bytes)
    if r.energy.energy_j is None:
        row["energy/inf"] = "unavailable"
    else:
        row["energy/inf"] = f"{r.energy.energy_per_inference_j * 1e3:.3g} mJ ({r.energy.provenance.value})"
    diff = r.extra.get("max_abs_diff")
    row["Δ vs torch"] = "-" if diff is None else f"{diff:.1e}"
    row["status"] = r.validity.value if r.validity is Validity.VALID else "INVALID (see below)"
    return row


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


def add_comparison(rows: list[dict[str, str]], results: list[RunResult]) -> None:
    """Add the speed-up and preparation-time columns, and mark the fastest VALID runtime."""
    comparison = runtime_comparison(results)
    show_speedup = any("speedup_vs_torch" in c for c in comparison.values()) and len(
        {r.key.runtime for r in results}) > 1
    for i, (row, r) in enumerate(zip(rows, results)):
        if comparison[i].get("fastest"):
            row["runtime"] = f"{row['runtime']} *"
        if show_speedup:
            speedup = comparison[i].get("speedup_vs_torch")
            row["× torch"] = "-" if speedup is None else f"{speedup:.2f}x"
        prepare = r.extra.get("prepare_s")
        if prepare is not None:
            row["prepare s"] = f"{prepare:.2f}"
        if r.extra.get("tune_s") is not None:
            row["tune s"] = f"{r.extra['tune_s']:.1f}"


def print_results(results: list[RunResult], percentiles: tuple[float, ...]) -> None:
    """Print the results table and, below it, warnings and energy reasons. With several runtimes,
    '*' marks the fastest VALID runtime per model and '× torch' is the speed-up against eager."""
    from rich.console import Console
    from rich.table import Table

    rows = [result_row(r, percentiles) for r in results]
    add_comparison(rows, results)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns.remove("status")
    columns.append("status")
    table = Table(title="costmeter results", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold", no_wrap=c in ("model", "runtime"),
                         justify="right" if c not in ("model", "runtime", "device", "status") else "left")
    for row in rows:
        table.add_row(*[row.get(c, "") for c in columns])
    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze the table into 80 columns
        console = Console(width=240)
    console.print(table)
    for r in results:
        if r.status is not Status.OK:
            console.print(f"{r.status.value.upper()} {r.key.label()}: {r.error}", style="red", soft_wrap=True)
        elif r.validity is Validity.INVALID:
            for reason in r.reasons:
                console.print(f"INVALID {r.key.label()}: {reason}", style="red", soft_wrap=True)
    notes = {f"energy unavailable: {r.energy.reason}" for r in results if r.energy.energy_j is None and r.energy.reason}
    ok = [r for r in results if r.status is Status.OK]
    shared = set(ok[0].warnings).intersection(*(r.warnings for r in ok[1:])) if len(ok) > 1 else set()
    notes |= {f"{r.key.label()}: {w}" for r in results for w in r.warnings if w not in shared}
    notes |= {f"every result: {w}" for w in shared}
    for note in sorted(notes):
        console.print(f"note: {note}", style="yellow", soft_wrap=True)
    if any(row["runtime"].endswith(" *") for row in rows):
        console.print("* fastest VALID runtime for its model, device, batch and threads; "
                      "'prepare s' = export + conversion + compile + load, apart from latency")


def print_summary_line(results: list[RunResult], what: str) -> None:
    """One line: how many results were VALID, INVALID, failed or unsupported."""
    import click

    counts = {"VALID": 0, "INVALID": 0, "failed": 0, "unsupported": 0}
    for r in results:
        counts[r.validity.value if r.status is Status.OK else r.status.value] += 1
    click.echo(f"measured {len(results)} {what}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for r in results:
        if r.status is not Status.OK:
            click.echo(f"{r.status.value} {r.key.label()}: {r.error}", err=True)
