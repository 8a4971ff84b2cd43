"""The columns of the results table: the names ``--columns`` takes, their headers and cells.

A :class:`Row` holds one result's figures, built from a :class:`RunResult` (``bench run``,
``bench results show``) or from a stored frame row (``bench results list``); a :class:`Column`
turns a row into one cell. :func:`choose_columns` picks the default set, everything
(``--wide``) or the user's list (``--columns``), and refuses unknown names with the known ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from costmeter.errors import ConfigError


@dataclass
class Row:
    """One result's figures for the table. Latencies in ns, memory in bytes, energy in J."""

    label: str
    model: str
    runtime: str
    device: str
    batch: int
    threads: int | None
    status: str  # VALID, INVALID, FAILED or UNSUPPORTED
    percentiles: dict[float, tuple[float, float | None, float | None]] = field(default_factory=dict)
    confidence: float = 0.95
    samples: int | None = None
    cv: float | None = None
    mad_rel: float | None = None
    items_per_s: float | None = None
    peak_rss_bytes: int | None = None
    energy_per_inference_j: float | None = None
    energy_provenance: str | None = None
    energy_reason: str = ""
    max_abs_diff: float | None = None
    speedup_vs_torch: float | None = None
    fastest: bool = False
    prepare_s: float | None = None
    tune_s: float | None = None
    result_id: int | None = None
    run_id: str | None = None
    tag: str | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    note: int | None = None  # number of this result's group of notes under the table

    @property
    def measured(self) -> bool:
        return self.status in ("VALID", "INVALID", "UNJUDGED")


def fmt_ms(ns: float | None) -> str:
    """Nanoseconds as milliseconds with 3 significant digits (whole ms from 100), or '-'."""
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    ms = ns / 1e6
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_bytes(n: float | None) -> str:
    """Bytes as MiB, or '-'."""
    return "-" if n is None or n != n else f"{n / 2**20:.1f} MiB"


def fmt_rate(x: float | None) -> str:
    """Items per second with 4 significant digits (thousands separated), or '-'."""
    if x is None or x != x:
        return "-"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def fmt_share(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.1%}"


def fmt_ci(value: float, low: float | None, high: float | None, stacked: bool = False) -> str:
    """'value [low, high]' in ms ('[no CI]' without an interval); the interval on a second
    line when ``stacked``."""
    interval = "[no CI]" if low is None or high is None else f"[{fmt_ms(low)}, {fmt_ms(high)}]"
    return f"{fmt_ms(value)}{chr(10) if stacked else ' '}{interval}"


@dataclass(frozen=True)
class Column:
    """A table column: ``name`` for ``--columns``, ``header`` as printed, ``cell(row, stacked)``."""

    name: str
    header: str
    cell: Callable[[Row, bool], str]
    description: str
    justify: str = "right"


def _status(row: Row, _stacked: bool) -> str:
    return row.status + ("" if row.note is None else f" [{row.note}]")


def _percentile(q: float, confidence: float | None) -> Column:
    def cell(row: Row, stacked: bool) -> str:
        if q not in row.percentiles:
            return "-"
        return fmt_ci(*row.percentiles[q], stacked=stacked)

    level = "" if confidence is None else f"{confidence * 100:g}% "
    return Column(f"p{q:g}", f"p{q:g} ms [{level}CI]", cell,
                  f"the {q:g}th percentile of per-run latency with its confidence interval")


def _energy(row: Row, _stacked: bool) -> str:
    if row.energy_per_inference_j is None:
        return "unavailable" if row.measured else "-"
    return f"{row.energy_per_inference_j * 1e3:.3g} mJ ({row.energy_provenance})"


def _runtime(row: Row, _stacked: bool) -> str:
    return row.runtime + (" *" if row.fastest else "")


def _opt(value: object, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


BASE_COLUMNS: tuple[Column, ...] = (
    Column("id", "id", lambda r, s: _opt(r.result_id, "d"), "the result's id in the store"),
    Column("run", "run", lambda r, s: r.run_id or "-", "the run it belongs to", "left"),
    Column("tag", "tag", lambda r, s: r.tag or "-", "the run's tag", "left"),
    Column("model", "model", lambda r, s: r.model, "model id", "left"),
    Column("runtime", "runtime", _runtime, "runtime ('*': fastest VALID of its model)", "left"),
    Column("device", "device", lambda r, s: r.device, "device", "left"),
    Column("batch", "batch", lambda r, s: str(r.batch), "batch size"),
    Column("threads", "threads", lambda r, s: "auto" if r.threads is None else str(r.threads),
           "thread count (auto: the runtime's own)"),
)
TAIL_COLUMNS: tuple[Column, ...] = (
    Column("samples", "samples", lambda r, s: _opt(r.samples, ",d"), "samples taken (all processes)"),
    Column("cv", "CV", lambda r, s: fmt_share(r.cv), "standard deviation / mean"),
    Column("mad", "MAD/med", lambda r, s: fmt_share(r.mad_rel),
           "robust dispersion: median absolute deviation (normal-scaled) / median"),
    Column("items", "items/s", lambda r, s: fmt_rate(r.items_per_s), "batch / median latency"),
    Column("memory", "peak RSS", lambda r, s: fmt_bytes(r.peak_rss_bytes),
           "the worker's peak resident memory"),
    Column("energy", "energy/inf", _energy, "energy per inference and where it comes from"),
    Column("parity", "Δ vs torch", lambda r, s: _opt(r.max_abs_diff, ".1e"),
           "largest absolute difference of the outputs from torch eager"),
    Column("speedup", "× torch", lambda r, s: "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x",
           "torch eager's median / this median"),
    Column("prepare", "prepare s", lambda r, s: _opt(r.prepare_s, ".2f"),
           "export + conversion + compile + load seconds, apart from latency"),
    Column("tune", "tune s", lambda r, s: _opt(r.tune_s, ".1f"), "tuning seconds (TVM)"),
    Column("status", "status", _status, "VALID, INVALID, FAILED or UNSUPPORTED ([n]: notes below)", "left"),
)
# never hidden to fit the width; the rest go in this order (first hidden first)
KEPT = ("id", "model", "runtime", "device", "batch", "threads", "p50", "status")
HIDE_ORDER = ("tune", "prepare", "parity", "samples", "cv", "energy", "speedup", "memory", "items",
              "mad", "run", "tag")


def all_columns(percentiles: Sequence[float], listing: bool = False,
                confidence: float | None = 0.95) -> list[Column]:
    """Every column in table order; ``listing`` adds the store's id, run and tag. ``confidence``
    of the intervals, for the headers (None: the results differ in it)."""
    base = [c for c in BASE_COLUMNS if listing or c.name not in ("id", "run", "tag")]
    return [*base, *(_percentile(float(q), confidence) for q in percentiles), *TAIL_COLUMNS]


def _has(rows: Sequence[Row], name: str) -> bool:
    """Whether any row has something to show in column ``name`` (for --wide and defaults)."""
    getters = {
        "energy": lambda r: r.energy_per_inference_j is not None,
        "parity": lambda r: r.max_abs_diff is not None,
        "speedup": lambda r: r.speedup_vs_torch is not None,
        "prepare": lambda r: r.prepare_s is not None,
        "tune": lambda r: r.tune_s is not None,
        "tag": lambda r: bool(r.tag),
    }
    return any(getters[name](r) for r in rows) if name in getters else True


def choose_columns(rows: Sequence[Row], percentiles: Sequence[float], *, wide: bool = False,
                   names: Sequence[str] | None = None, listing: bool = False) -> list[Column]:
    """The columns to print.

    ``names`` (``--columns``): exactly those, in that order (ConfigError naming the known ones
    for an unknown name). ``wide``: every column with something to show. Otherwise the default:
    model, runtime, p50 and p99 (or the highest percentile asked) with intervals, MAD/median,
    items/s, peak RSS and status; plus device, batch and threads where the results differ in
    them, the speed-up against torch where one was computed, and energy where one was measured.
    """
    confidences = {r.confidence for r in rows}
    known = all_columns(percentiles, listing, confidences.pop() if len(confidences) == 1 else None)
    by_name = {c.name: c for c in known}
    if names is not None:
        return [by_name[n] for n in check_column_names(names, percentiles, listing)]
    if wide:
        return [c for c in known if _has(rows, c.name)]
    qs = [float(q) for q in percentiles]
    tail = [q for q in qs if q > 50.0]
    picked = {"model", "runtime", "mad", "items", "memory", "status"}
    picked |= {f"p{q:g}" for q in qs if q == 50.0}
    if tail:
        picked.add(f"p{(99.0 if 99.0 in tail else max(tail)):g}")
    if listing:
        picked.add("id")
    for name, attr in (("device", "device"), ("batch", "batch"), ("threads", "threads")):
        if len({getattr(r, attr) for r in rows}) > 1:
            picked.add(name)
    picked |= {n for n in ("speedup", "energy") if _has(rows, n)}
    return [c for c in known if c.name in picked]


def check_column_names(names: Sequence[str], percentiles: Sequence[float], listing: bool = False) -> list[str]:
    """``names`` cleaned (``p99.0`` -> ``p99``); ConfigError for an empty list or an unknown name."""
    known = [c.name for c in all_columns(percentiles, listing)]
    cleaned = []
    for name in names:
        name = name.strip().lower()
        if name.startswith("p"):
            try:
                name = f"p{float(name[1:]):g}"
            except ValueError:
                pass
        if name not in known:
            raise ConfigError(f"unknown column {name!r} for --columns; known: {', '.join(known)}")
        cleaned.append(name)
    if not cleaned:
        raise ConfigError(f"--columns is empty; pick from: {', '.join(known)}")
    return cleaned
