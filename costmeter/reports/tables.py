"""Efficiency-vs-accuracy tables, per device and runtime, as Markdown, HTML, CSV and LaTeX.

:func:`efficiency_table` is pure (results frame in, numeric frame out); the ``to_*`` functions
render it. Energy that was not measured prints as "unavailable", estimated energy is marked, and
INVALID measurements and published (reference-architecture) accuracies get footnotes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports import formatting as fmt
from costmeter.reports.accuracy import BUILTIN_SOURCE, MEASURED_SOURCE, PUBLISHED_FOOTNOTE
from costmeter.reports.metrics import ACCURACY_PREFIX, key_label
from costmeter.reports.pareto import pareto_mask, precisions_of

TABLE_COLUMNS = (
    "device", "runtime", "model_id", "label", "batch", "params", "macs", "latency_p50_ms",
    "latency_p50_low_ms", "latency_p50_high_ms", "latency_p99_ms", "throughput_items_per_s",
    "peak_rss_bytes", "energy_per_inference_j", "energy_provenance", "accuracy", "accuracy_source",
    "pareto_optimal", "accuracy_per_ms", "inferences_per_j", "validity", "reasons",
    "precision", "precision_effective", "accuracy_delta_pp", "top1_agreement",
)
PUBLISHED_MARK = "†"
INVALID_MARK = "*"
ENERGY_UNAVAILABLE = "unavailable"


def _column(results: pd.DataFrame, name: str, default: object = np.nan) -> pd.Series:
    if name in results.columns:
        return results[name]
    return pd.Series(default, index=results.index)


def _numeric(results: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(_column(results, name), errors="coerce").astype(float)


def efficiency_table(results: pd.DataFrame, *, accuracy_metric: str = "top1") -> pd.DataFrame:
    """One row per result with the efficiency figures and accuracy (columns: TABLE_COLUMNS).

    ``results`` should come from ``usable_results`` (and ``attach_accuracy`` for accuracy).
    Energy counts only when its provenance is not 'unavailable'. ``pareto_optimal`` is taken within
    each (device, runtime, batch) over latency p50 (min) and accuracy (max); it is NA where the
    accuracy is unknown. ``accuracy_per_ms`` is accuracy / latency p50 (points per ms);
    ``inferences_per_j`` is 1 / energy per inference. ``precision`` is what the run asked for
    (fp32 by default), ``precision_effective`` what the runtime was seen to run,
    ``accuracy_delta_pp`` the measured top-1 change against fp32 (``bench run --accuracy-data``,
    percentage points) and ``top1_agreement`` the share of held-out inputs whose top-1 class
    matches fp32's (percent). Sorted by device, runtime, batch, latency.
    """
    provenance = _column(results, "energy_provenance", "unavailable").fillna("unavailable")
    energy = _numeric(results, "energy_per_inference_j").where(provenance != "unavailable")
    accuracy_column = ACCURACY_PREFIX + accuracy_metric
    table = pd.DataFrame(
        {
            "device": results["device"].astype(str),
            "runtime": results["runtime"].astype(str),
            "model_id": results["model_id"].astype(str),
            "label": [key_label(row) for _, row in results.iterrows()],
            "batch": pd.to_numeric(results["batch"]).astype(int),
            "params": _numeric(results, "params"),
            "macs": _numeric(results, "macs"),
            "latency_p50_ms": _numeric(results, "latency_p50_ms"),
            "latency_p50_low_ms": _numeric(results, "latency_p50_low_ms"),
            "latency_p50_high_ms": _numeric(results, "latency_p50_high_ms"),
            "latency_p99_ms": _numeric(results, "latency_p99_ms"),
            "throughput_items_per_s": _numeric(results, "throughput_items_per_s"),
            "peak_rss_bytes": _numeric(results, "peak_rss_bytes"),
            "energy_per_inference_j": energy,
            "energy_provenance": provenance.astype(str),
            "accuracy": _numeric(results, accuracy_column),
            "accuracy_source": _column(results, accuracy_column + "_source", None),
            "validity": _column(results, "validity", "VALID").astype(str),
            "reasons": _column(results, "reasons", "").fillna("").astype(str),
            "precision": precisions_of(results),
            "precision_effective": _column(results, "precision_effective", "").fillna("").astype(str),
            "accuracy_delta_pp": _numeric(results, "accuracy_delta_pp"),
            "top1_agreement": 100.0 * _numeric(results, "fidelity_top1_agreement"),
        },
        index=results.index,
    )
    table["accuracy_per_ms"] = table["accuracy"] / table["latency_p50_ms"].where(
        table["latency_p50_ms"] > 0
    )
    table["inferences_per_j"] = 1.0 / table["energy_per_inference_j"].where(
        table["energy_per_inference_j"] > 0
    )
    flags = pd.Series(pd.NA, index=table.index, dtype="boolean")
    for _, group in table.groupby(["device", "runtime", "batch"], sort=False):
        known = group.dropna(subset=["accuracy", "latency_p50_ms"])
        if len(known):
            mask = pareto_mask(known[["latency_p50_ms", "accuracy"]].to_numpy(), (False, True))
            flags[known.index] = mask
    table["pareto_optimal"] = flags
    table = table.sort_values(["device", "runtime", "batch", "latency_p50_ms", "model_id"])
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


BASE_HEADERS = ("Model", "Batch", "Params", "MACs", "Latency p50 ms [95% CI]", "p99 ms", "Items/s",
                "Peak memory", "Energy/inference")
PRECISION_HEADERS = ("Precision", "Top-1 change vs fp32 (pp)", "Top-1 agree %")


def shows_precision(table: pd.DataFrame) -> bool:
    """Whether the rendered table needs the precision columns: some row ran at a precision
    other than fp32, or carries a measured accuracy change or top-1 agreement."""
    return bool((table["precision"] != "fp32").any() or table["accuracy_delta_pp"].notna().any()
                or table["top1_agreement"].notna().any())


def _headers(accuracy_metric: str, with_precision: bool = False) -> list[str]:
    return [*BASE_HEADERS, *(PRECISION_HEADERS if with_precision else ()), accuracy_metric, "Pareto",
            f"{accuracy_metric}/ms", "Inferences/J"]


ALIGN = ["l"] + ["r"] * 12


def _align(with_precision: bool) -> list[str]:
    return ALIGN[:len(BASE_HEADERS)] + ["l", "r", "r"] * with_precision + ALIGN[len(BASE_HEADERS):]


def _energy_cell(row: pd.Series) -> str:
    if fmt.is_missing(row["energy_per_inference_j"]):
        return ENERGY_UNAVAILABLE
    text = fmt.energy_joules(row["energy_per_inference_j"])
    return f"{text} (est.)" if row["energy_provenance"] == "estimated" else text


def _latency_cell(row: pd.Series) -> str:
    value = fmt.significant(row["latency_p50_ms"])
    if fmt.is_missing(row["latency_p50_low_ms"]) or fmt.is_missing(row["latency_p50_high_ms"]):
        return value
    low = fmt.significant(row["latency_p50_low_ms"])
    high = fmt.significant(row["latency_p50_high_ms"])
    return f"{value} [{low}, {high}]"


def _pareto_cell(value: object) -> str:
    if fmt.is_missing(value):
        return fmt.MISSING
    return "yes" if bool(value) else "no"


def _precision_cell(row: pd.Series) -> str:
    """``int8``, or ``int8 (ran mixed (35% int8))`` when what ran differs from what was asked."""
    ran = str(row["precision_effective"] or "")
    if ran and ran != row["precision"]:
        return f"{row['precision']} (ran {ran})"
    return str(row["precision"])


def _precision_cells(row: pd.Series) -> list[str]:
    delta = row["accuracy_delta_pp"]
    agree = row["top1_agreement"]
    return [_precision_cell(row), fmt.MISSING if fmt.is_missing(delta) else f"{delta:+.1f}",
            fmt.MISSING if fmt.is_missing(agree) else f"{agree:.1f}"]


def formatted_rows(group: pd.DataFrame, with_precision: bool = False) -> list[list[str]]:
    """The display strings of one device/runtime group, in header order (with the precision
    columns when ``with_precision``)."""
    rows = []
    for _, row in group.iterrows():
        model = row["model_id"] + (INVALID_MARK if row["validity"] != "VALID" else "")
        accuracy = "" if fmt.is_missing(row["accuracy"]) else f"{row['accuracy']:.2f}"
        if accuracy and row["accuracy_source"] == BUILTIN_SOURCE:
            accuracy += PUBLISHED_MARK
        rows.append(
            [
                model,
                str(int(row["batch"])),
                fmt.count(row["params"]),
                fmt.count(row["macs"]),
                _latency_cell(row),
                fmt.significant(row["latency_p99_ms"]),
                fmt.significant(row["throughput_items_per_s"]),
                fmt.size_bytes(row["peak_rss_bytes"]),
                _energy_cell(row),
                *(_precision_cells(row) if with_precision else ()),
                accuracy or fmt.MISSING,
                _pareto_cell(row["pareto_optimal"]),
                fmt.significant(row["accuracy_per_ms"]),
                fmt.significant(row["inferences_per_j"]),
            ]
        )
    return rows


def footnotes(table: pd.DataFrame) -> list[str]:
    """The footnotes this table needs, in display order."""
    notes = []
    if (table["accuracy_source"] == BUILTIN_SOURCE).any():
        notes.append(f"{PUBLISHED_MARK} {PUBLISHED_FOOTNOTE}")
    invalid = table[table["validity"] != "VALID"]
    for _, row in invalid.iterrows():
        reasons = row["reasons"].strip("[]").replace('"', "") or "no reason recorded"
        notes.append(f"{INVALID_MARK} {row['label']}: INVALID measurement ({reasons}).")
    if (table["energy_provenance"] == "estimated").any():
        notes.append("(est.) Energy estimated from a power model, not measured by a counter.")
    if (table["accuracy_source"] == MEASURED_SOURCE).any():
        notes.append("Accuracy measured on the labelled set given to `bench run --accuracy-data` "
                     "(top-1, %), per result and precision.")
    if shows_precision(table):
        notes.append("Top-1 change vs fp32: measured top-1 minus fp32 torch's on the same labelled "
                     "inputs; Top-1 agree: held-out inputs whose top-1 class matches fp32 torch's.")
    notes.append(
        "Pareto: optimal in latency p50 and accuracy among results of the same device, runtime "
        "and batch; – where the accuracy is unknown."
    )
    return notes


def _groups(table: pd.DataFrame):
    return table.groupby(["device", "runtime"], sort=True)


def to_markdown(table: pd.DataFrame, *, accuracy_metric: str = "top1") -> str:
    """Markdown: one '## device / runtime' section with a pipe table each, then footnotes."""
    parts = []
    wide = shows_precision(table)
    for (device, runtime), group in _groups(table):
        header = f"## {device} / {runtime}"
        parts.append(header + "\n\n" + fmt.markdown_table(
            _headers(accuracy_metric, wide), formatted_rows(group, wide), _align(wide)
        ))
    parts.extend(footnotes(table))
    return "\n\n".join(parts) + "\n"


def to_html(
    table: pd.DataFrame, *, accuracy_metric: str = "top1", full_document: bool = True
) -> str:
    """HTML: one section per device/runtime; a complete page unless ``full_document`` is False."""
    sections = []
    wide = shows_precision(table)
    for (device, runtime), group in _groups(table):
        sections.append(
            f'<section class="device-runtime">\n<h2>{fmt.escape_html(device)} / '
            f"{fmt.escape_html(runtime)}</h2>\n"
            + fmt.html_table(_headers(accuracy_metric, wide), formatted_rows(group, wide), _align(wide),
                             "efficiency")
            + "\n</section>"
        )
    notes = "\n".join(f'<p class="footnote">{fmt.escape_html(n)}</p>' for n in footnotes(table))
    body = "\n".join(sections) + "\n" + notes
    if not full_document:
        return body + "\n"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>Efficiency vs accuracy</title>\n<style>\n"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "th{background:#f3f3f3}.footnote{font-size:12px;color:#444}\n"
        "</style>\n</head>\n<body>\n<h1>Efficiency vs accuracy</h1>\n"
        + body
        + "\n</body>\n</html>\n"
    )


def to_csv(table: pd.DataFrame) -> str:
    """CSV of the numeric table (raw units in column names; empty cells where unknown)."""
    return table.to_csv(index=False, lineterminator="\n")


def to_latex(table: pd.DataFrame, *, accuracy_metric: str = "top1") -> str:
    """LaTeX: one booktabs ``tabular`` per device/runtime (needs ``\\usepackage{booktabs}``)."""
    blocks = []
    wide = shows_precision(table)
    for (device, runtime), group in _groups(table):
        header = " & ".join(fmt.escape_latex(h) for h in _headers(accuracy_metric, wide)) + r" \\"
        rows = [
            " & ".join(fmt.escape_latex(cell) for cell in row) + r" \\"
            for row in formatted_rows(group, wide)
        ]
        blocks.append(
            "\n".join(
                [
                    r"\begin{table}[ht]",
                    r"\centering",
                    r"\caption{" + fmt.escape_latex(f"{device} / {runtime}") + "}",
                    r"\begin{tabular}{" + "".join(_align(wide)) + "}",
                    r"\toprule",
                    header,
                    r"\midrule",
                    *rows,
                    r"\bottomrule",
                    r"\end{tabular}",
                    r"\end{table}",
                ]
            )
        )
    notes = "\n".join(
        r"\noindent\footnotesize " + fmt.escape_latex(n) + r"\par" for n in footnotes(table)
    )
    return "\n\n".join(blocks) + "\n\n" + notes + "\n"


TABLE_FORMATS = ("md", "html", "csv", "tex")


def render_table(table: pd.DataFrame, format_name: str, *, accuracy_metric: str = "top1") -> str:
    """Render ``table`` as ``md``, ``html``, ``csv`` or ``tex``; ConfigError for anything else."""
    if format_name == "md":
        return to_markdown(table, accuracy_metric=accuracy_metric)
    if format_name == "html":
        return to_html(table, accuracy_metric=accuracy_metric)
    if format_name == "csv":
        return to_csv(table)
    if format_name in ("tex", "latex"):
        return to_latex(table, accuracy_metric=accuracy_metric)
    raise ConfigError(f"table format {format_name!r} is not one of {', '.join(TABLE_FORMATS)}")
