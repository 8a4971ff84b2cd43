"""Rendering of a :class:`~costmeter.reports.regression.RegressionReport`.

- :func:`render_markdown`: a short summary for a CI log or a chat message;
- :func:`render_html`: a self-contained page (CSS inline, plots embedded as PNG data URIs, no
  scripts, nothing fetched), with sections ``summary``, ``verdicts``, ``ratios``,
  ``distributions``, ``history`` and ``method``;
- JSON is :meth:`RegressionReport.to_json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmeter.reports import formatting as fmt
from costmeter.reports.regression import RegressionReport

VERDICT_COLORS = {
    "regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#7f7f7f",
    "inconclusive": "#ff7f0e",
}
VERDICT_ORDER = {"regressed": 0, "improved": 1, "inconclusive": 2, "unchanged": 3}
MAX_DETAIL_PLOTS = 12


def _ordered(verdicts: pd.DataFrame) -> pd.DataFrame:
    rank = verdicts["verdict"].map(VERDICT_ORDER)
    change = -(verdicts["ratio"].fillna(1.0) - 1).abs()
    return verdicts.assign(_rank=rank, _change=change).sort_values(
        ["_rank", "_change", "label"], kind="stable"
    ).drop(columns=["_rank", "_change"])


def _change_cell(row: pd.Series) -> str:
    if fmt.is_missing(row["ratio"]):
        return fmt.MISSING
    pct = (row["ratio"] - 1) * 100
    low, high = (row["ratio_low"] - 1) * 100, (row["ratio_high"] - 1) * 100
    if not np.isfinite(high):
        return f"{pct:+.1f}% [unbounded]"
    return f"{pct:+.1f}% [{low:+.1f}, {high:+.1f}]"


def _q_cell(value: Any) -> str:
    return fmt.MISSING if fmt.is_missing(value) else f"{value:.2g}"


def _headline(report: RegressionReport) -> str:
    return "REGRESSION FOUND" if report.significant_regression else "no significant regression"


def _settings_line(report: RegressionReport) -> str:
    s = report.settings
    return (
        f"threshold ±{s.threshold * 100:g}%, FDR {s.alpha * 100:g}% (Benjamini-Hochberg), "
        f"{s.confidence * 100:g}% t interval of the ratio of run levels; run-to-run noise from "
        f"each key's last {s.history_runs} stored runs, assumed {s.assumed_run_sd * 100:g}% "
        f"where fewer than {s.min_history} exist"
    )


def _text(value: Any) -> str:
    return fmt.MISSING if fmt.is_missing(value) else str(value)


def verdict_rows(verdicts: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and display rows of a verdict table (ordered: regressed, improved, inconclusive,
    unchanged; larger changes first). ``Unit`` is the replication unit the interval used."""
    header = ["Key", "Verdict", "Baseline p50 ms", "Current p50 ms", "Change [CI]", "q",
              "Baseline", "Unit", "Reason"]
    rows = [
        [row["label"], row["verdict"], fmt.significant(row["median_baseline_ms"]),
         fmt.significant(row["median_current_ms"]), _change_cell(row), _q_cell(row["q_value"]),
         _text(row.get("baseline")), _text(row.get("unit")), str(row["reason"])]
        for _, row in _ordered(verdicts).iterrows()
    ]
    return header, rows


def _runs_text(runs: list[str], limit: int = 5) -> str:
    if len(runs) <= limit:
        return ", ".join(runs)
    return f"{', '.join(runs[:2])}, …, {', '.join(runs[-2:])}; {len(runs)} runs"


def render_markdown(report: RegressionReport, *, max_rows: int = 20) -> str:
    """A Markdown summary: headline, counts, the keys that are not unchanged, and history steps."""
    counts = report.counts()
    lines = [
        f"## Performance regression report: {_headline(report)}",
        "",
        f"Baseline `{report.baseline_selector}` ({_runs_text(report.baseline_runs)}) vs current "
        f"`{report.current_selector}` ({_runs_text(report.current_runs)}); "
        f"{_settings_line(report)}.",
        "",
        " · ".join(f"{verdict} {n}" for verdict, n in counts.items()),
        "",
    ]
    notable = report.verdicts[report.verdicts["verdict"] != "unchanged"]
    if len(notable):
        header, rows = verdict_rows(notable)
        align = ["l", "l", "r", "r", "r", "r", "l", "l", "l"]
        lines.append(fmt.markdown_table(header, rows[:max_rows], align))
        if len(rows) > max_rows:
            lines.append(f"\n… and {len(rows) - max_rows} more (see the HTML or JSON report).")
        lines.append("")
    lines.append(f"{counts['unchanged']} key(s) unchanged (not listed).")
    if report.only_in_baseline:
        lines.append(f"Only in baseline (not compared): {', '.join(report.only_in_baseline)}.")
    if report.only_in_current:
        lines.append(f"Only in current (not compared): {', '.join(report.only_in_current)}.")
    if report.steps is not None and len(report.steps):
        lines += ["", "Steps in the history:"]
        for _, step in report.steps.iterrows():
            lines.append(f"- {_step_text(step)}")
    return "\n".join(lines) + "\n"


def _step_text(step: pd.Series) -> str:
    at = step["git_sha"][:10] if step["git_sha"] else step["run_id"]
    before = step["previous_git_sha"][:10] if step["previous_git_sha"] else step["previous_run_id"]
    return (
        f"{step['label']}: {step['change'] * 100:+.1f}% ({fmt.significant(step['before_ms'])} -> "
        f"{fmt.significant(step['after_ms'])} ms) at {at} (run {step['run_id']}, after {before})"
    )


# ---------------------------------------------------------------- plots


def ratio_figure(report: RegressionReport) -> Any:
    """Forest plot: each key's ratio of run levels with its CI, the threshold band shaded."""
    from costmeter.reports.plotting import new_figure

    rows = report.verdicts.dropna(subset=["ratio"]).iloc[::-1]
    figure, axes = new_figure(7.5, max(2.0, 0.32 * len(rows) + 1.2))
    t = report.settings.threshold
    axes.axvspan(1 - t, 1 + t, color="#dddddd", alpha=0.6, label=f"±{t * 100:g}% band")
    axes.axvline(1.0, color="black", linewidth=0.8)
    positions = np.arange(len(rows))
    for position, (_, row) in zip(positions, rows.iterrows()):
        color = VERDICT_COLORS[row["verdict"]]
        axes.errorbar(
            row["ratio"], position,
            xerr=[[max(row["ratio"] - row["ratio_low"], 0)],
                  [max(row["ratio_high"] - row["ratio"], 0) if np.isfinite(row["ratio_high"])
                   else 0.0]],
            fmt="o", color=color, capsize=3,
        )
    axes.set_yticks(positions, [str(label) for label in rows["label"]], fontsize=7)
    axes.set_xlabel(f"current / baseline level ({report.settings.confidence * 100:g}% CI)")
    axes.set_title("Ratio of run levels per key", fontsize=10)
    axes.grid(True, axis="x", alpha=0.3)
    return figure


def distribution_figure(label: str, baseline_ms: np.ndarray, current_ms: np.ndarray) -> Any:
    """Empirical CDFs of one key's baseline and current latencies (ms)."""
    from costmeter.reports.plotting import new_figure

    figure, axes = new_figure(6.0, 3.0)
    sides = (("baseline", baseline_ms, "#1f77b4"), ("current", current_ms, "#d62728"))
    for name, values, color in sides:
        ordered = np.sort(values)
        axes.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post",
                  color=color, label=f"{name} (n={len(ordered)}, median {np.median(values):.4g})")
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("fraction of runs")
    axes.set_title(label, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(True, alpha=0.3)
    return figure


def history_figure(label: str, series: pd.DataFrame, steps: pd.DataFrame,
                   band: float = 0.05) -> Any:
    """One key's median latency per run, with its detected steps marked. The y axis spans at
    least ±``band`` around the series' median, so that run-to-run noise is not magnified."""
    from costmeter.reports.plotting import new_figure

    figure, axes = new_figure(7.0, 2.8)
    series = series.sort_values("position")
    axes.plot(series["position"], series["value_ms"], marker="o", markersize=3, color="#1f77b4")
    for _, step in steps.iterrows():
        axes.axvline(step["position"] - 0.5, color="#d62728", linestyle="--", linewidth=1)
        at = step["git_sha"][:8] if step["git_sha"] else str(step["run_id"])
        axes.annotate(
            f"{step['change'] * 100:+.1f}% @ {at}", (step["position"] - 0.5, step["after_ms"]),
            fontsize=7, color="#d62728", xytext=(3, 3), textcoords="offset points",
        )
    ticks = series["git_sha"].where(series["git_sha"] != "", series["run_id"]).astype(str).str[:8]
    axes.set_xticks(series["position"], ticks, rotation=60, fontsize=6)
    middle = float(series["value_ms"].median())
    axes.set_ylim(min(float(series["value_ms"].min()), middle * (1 - band)) * 0.99,
                  max(float(series["value_ms"].max()), middle * (1 + band)) * 1.01)
    axes.set_ylabel("median latency (ms)")
    axes.set_title(label, fontsize=9)
    axes.grid(True, alpha=0.3)
    return figure


# ---------------------------------------------------------------- HTML

_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;"
    "font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;"
    "margin:0.5em 0}.banner{padding:0.6em 1em;font-weight:bold;border-radius:4px}"
    ".banner.bad{background:#fbe3e3;color:#8a1111}.banner.good{background:#e5f5e5;color:#1d5e1d}"
    + "".join(f"td.v-{v}{{color:{c};font-weight:bold}}" for v, c in VERDICT_COLORS.items())
)


def _img(figure: Any, alt: str) -> str:
    from costmeter.reports.plotting import figure_data_uri

    return f'<img alt="{fmt.escape_html(alt)}" src="{figure_data_uri(figure)}">'


def _verdict_table(verdicts: pd.DataFrame) -> str:
    header, rows = verdict_rows(verdicts)
    head = "".join(f"<th>{fmt.escape_html(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(
            f'<td class="v-{fmt.escape_html(cell)}">{fmt.escape_html(cell)}</td>' if i == 1
            else f"<td>{fmt.escape_html(cell)}</td>"
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return (
        f'<table class="verdicts">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )


def render_html(report: RegressionReport, *, max_detail_plots: int = MAX_DETAIL_PLOTS) -> str:
    """A self-contained HTML page (opens offline; plots are embedded PNGs)."""
    counts = report.counts()
    esc = fmt.escape_html
    banner_class = "bad" if report.significant_regression else "good"
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>Regression report: {esc(report.baseline_selector)} vs "
        f"{esc(report.current_selector)}</title>",
        f"<style>{_CSS}</style>\n</head>\n<body>",
        "<h1>Performance regression report</h1>",
        '<section id="summary">\n<h2>Summary</h2>',
        f'<p class="banner {banner_class}">{esc(_headline(report))}</p>',
        f"<p>Baseline <code>{esc(report.baseline_selector)}</code> (runs "
        f"{esc(_runs_text(report.baseline_runs))}) vs current <code>"
        f"{esc(report.current_selector)}</code> (runs {esc(_runs_text(report.current_runs))}).</p>",
        f"<p>{esc(_settings_line(report))}.</p>",
        fmt.html_table(list(counts), [[str(n) for n in counts.values()]], ["r"] * 4, "counts"),
    ]
    for title, labels in (("Only in baseline", report.only_in_baseline),
                          ("Only in current", report.only_in_current)):
        if labels:
            parts.append(f"<p>{title} (not compared): {esc(', '.join(labels))}</p>")
    parts += ["</section>", '<section id="verdicts">\n<h2>Verdicts</h2>',
              _verdict_table(report.verdicts), "</section>"]
    parts.append('<section id="ratios">\n<h2>Ratios of run levels</h2>')
    if report.verdicts["ratio"].notna().any():
        parts.append(
            _img(ratio_figure(report), "ratio of run levels per key with confidence intervals")
        )
    else:
        parts.append("<p>No key could be compared.</p>")
    parts.append("</section>")
    parts.append(_distributions_section(report, max_detail_plots))
    parts.append(_history_section(report, max_detail_plots))
    parts += [
        '<section id="method">\n<h2>Method</h2>',
        "<p>Per benchmark key: the level of a run is the geometric mean of its process "
        "medians (the median when it has one process). Current is compared with one baseline "
        "run, or with the mean of a window of the key's last runs. The interval of the ratio "
        "of levels is a t interval whose width comes from the key's run-to-run noise, measured "
        "as the SD of its last stored runs' levels (or an assumed SD where the history is too "
        "short: the samples of one run share its offset and are not replicates of it), or from "
        "the processes of the compared runs when they disagree more; the Unit column says "
        "which. p-values come from the same t-test, with Benjamini-Hochberg correction across "
        "all keys compared (q-values). Regressed / improved: the change is beyond the threshold "
        "and the interval excludes no change and q is at most the FDR. Unchanged: the whole "
        "interval lies inside the threshold band. Inconclusive: failed, unsupported or INVALID "
        "input, too few samples, or an interval that reaches past the band without a verdict. "
        "Steps in the history are change points found by PELT (ruptures) on the log of each "
        "key's median latency per run.</p>",
        "</section>\n</body>\n</html>\n",
    ]
    return "\n".join(parts)


def _distributions_section(report: RegressionReport, limit: int) -> str:
    notable = _ordered(report.verdicts)
    notable = notable[notable["key_digest"].isin(report.samples.keys())]
    chosen = notable[notable["verdict"] != "unchanged"].head(limit)
    parts = ['<section id="distributions">\n<h2>Sample distributions</h2>']
    if chosen.empty:
        parts.append("<p>Every compared key is unchanged; no distribution shown.</p>")
    for _, row in chosen.iterrows():
        base, cur = report.samples[row["key_digest"]]
        parts.append(f"<h3>{fmt.escape_html(row['label'])}: {fmt.escape_html(row['verdict'])}</h3>")
        figure = distribution_figure(row["label"], base, cur)
        parts.append(_img(figure, f"latency CDFs of {row['label']}"))
    parts.append("</section>")
    return "\n".join(parts)


def _history_section(report: RegressionReport, limit: int) -> str:
    parts = ['<section id="history">\n<h2>History and steps</h2>']
    history, steps = report.history, report.steps
    if history is None or history.empty:
        parts.append("<p>No history was collected for these keys.</p></section>")
        return "\n".join(parts)
    steps = steps if steps is not None else pd.DataFrame(columns=["key_digest"])
    if len(steps):
        header = ["Key", "Change", "Before ms", "After ms", "First run at new level", "Git SHA",
                  "Previous run", "Previous SHA"]
        rows = [[s["label"], f"{s['change'] * 100:+.1f}%", fmt.significant(s["before_ms"]),
                 fmt.significant(s["after_ms"]), str(s["run_id"]), str(s["git_sha"]),
                 str(s["previous_run_id"]), str(s["previous_git_sha"])]
                for _, s in steps.iterrows()]
        parts.append(fmt.html_table(header, rows, ["l"] * 8, "steps"))
    else:
        parts.append("<p>No step beyond the threshold in any key's history.</p>")
    stepped = list(dict.fromkeys(steps["key_digest"]))
    others = [d for d in _ordered(report.verdicts)["key_digest"] if d not in stepped]
    for digest in (stepped + others)[:limit]:
        series = history[history["key_digest"] == digest]
        if len(series) < 2:
            continue
        label = str(series["label"].iloc[0])
        figure = history_figure(label, series, steps[steps["key_digest"] == digest],
                                report.settings.threshold)
        parts.append(_img(figure, f"history of {label}"))
    parts.append("</section>")
    return "\n".join(parts)


def write_reports(
    report: RegressionReport, out_dir: str | Path, stem: str = "regression"
) -> dict[str, Path]:
    """Write ``<stem>.html``, ``<stem>.md`` and ``<stem>.json`` into ``out_dir``; returns the
    paths by format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / f"{stem}.html", "md": out / f"{stem}.md", "json": out / f"{stem}.json"}
    paths["html"].write_text(render_html(report), encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["json"].write_text(report.to_json(), encoding="utf-8")
    return paths
