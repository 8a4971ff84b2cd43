"""Rendering and writing of the history site (:class:`costmeter.reports.site.SiteData`).

Pages are static HTML: CSS inline, plots inline SVG, one small inline script (the index's key
filter), nothing fetched, links relative, so the folder opens from disk or any static host.
:func:`render_site` returns every file's text; :func:`write_site` writes them into a fresh
folder beside ``out`` and swaps it in at the end, so a failure leaves no half-written site.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports import formatting as fmt
from costmeter.reports.regression_render import VERDICT_COLORS
from costmeter.reports.site import KeyView, RunView, SiteData, key_page, run_page

MARKER = ".history-site"  # names a folder this command wrote (and may replace)
esc = fmt.escape_html

_CSS = (
    "body{font-family:sans-serif;margin:1.5em auto;max-width:1150px;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.8em 0}th,td{border:1px solid #ccc;padding:3px 7px;"
    "font-size:13px;text-align:left;vertical-align:middle}th{background:#f3f3f3}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px}"
    "nav{margin-bottom:1em;font-size:14px}nav a{margin-right:1em}"
    ".banner{padding:0.6em 1em;font-weight:bold;border-radius:4px}"
    ".bad{background:#fbe3e3;color:#8a1111}.good{background:#e5f5e5;color:#1d5e1d}"
    ".muted{color:#777}.plot svg{max-width:100%;height:auto}ul.shas{columns:4;font-size:12px}"
    + "".join(f".v-{v}{{color:{c};font-weight:bold}}" for v, c in VERDICT_COLORS.items())
)
_FILTER_JS = """
(function () {
  var box = document.getElementById("key-filter");
  var rows = document.querySelectorAll("#keys tbody tr");
  box.addEventListener("input", function () {
    var wanted = box.value.toLowerCase();
    for (var i = 0; i < rows.length; i++) {
      rows[i].hidden = wanted !== "" && rows[i].textContent.toLowerCase().indexOf(wanted) < 0;
    }
    document.getElementById("key-count").textContent = String(
      document.querySelectorAll("#keys tbody tr:not([hidden])").length);
  });
})();
"""


def _page(title: str, body: list[str], *, depth: int, script: str = "") -> str:
    up = "../" * depth
    nav = f'<nav><a href="{up}index.html">Index</a><a href="{up}index.html#runs">Runs</a></nav>'
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{nav}\n"
        + "\n".join(body) + f"\n{tail}</body>\n</html>\n"
    )


def _table(header: list[str], rows: list[list[str]], *, table_id: str = "",
           numeric: tuple[int, ...] = ()) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _ms(value: Any, low: Any = None, high: Any = None) -> str:
    if fmt.is_missing(value):
        return fmt.MISSING
    text = fmt.significant(value)
    if not fmt.is_missing(low) and not fmt.is_missing(high):
        text += f" [{fmt.significant(low)}, {fmt.significant(high)}]"
    return esc(text)


def _change(verdict: dict[str, Any]) -> str:
    ratio = verdict.get("ratio")
    if fmt.is_missing(ratio):
        return fmt.MISSING
    low, high = verdict.get("ratio_low"), verdict.get("ratio_high")
    text = f"{(ratio - 1) * 100:+.1f}%"
    if not fmt.is_missing(low) and not fmt.is_missing(high) and math.isfinite(high):
        text += f" [{(low - 1) * 100:+.1f}, {(high - 1) * 100:+.1f}]"
    return esc(text)


def _verdict(name: str) -> str:
    return f'<span class="v-{esc(name)}">{esc(name)}</span>'


def _sha(sha: str) -> str:
    return f"<code>{esc(sha[:10])}</code>" if sha else '<span class="muted">none</span>'


def _date(value: Any) -> str:
    return esc(pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")) if not fmt.is_missing(value) else ""


def _settings_line(data: SiteData) -> str:
    s = data.report.settings
    return (f"threshold ±{s.threshold * 100:g}%, false discovery rate {s.alpha * 100:g}%, "
            f"{s.confidence * 100:g}% intervals; steps: PELT change points of at least "
            f"{s.threshold * 100:g}%")


# ---------------------------------------------------------------- index


def _index_summary(data: SiteData) -> list[str]:
    report = data.report
    counts = report.counts()
    bad = report.significant_regression
    scope = ", ".join(f"{k} {v}" for k, v in data.filters.items()) or "all stored results"
    return [
        "<h1>Benchmark history</h1>",
        f"<p>{esc(scope)}: {len(data.keys)} keys over {len(data.runs)} runs. "
        f"Current <code>{esc(report.current_selector)}</code> "
        f"({esc(', '.join(report.current_runs))}) against baseline "
        f"<code>{esc(report.baseline_selector)}</code>; {esc(_settings_line(data))}.</p>",
        f'<p class="banner {"bad" if bad else "good"}">'
        f'{"REGRESSION FOUND" if bad else "no significant regression"}: '
        + " · ".join(f"{esc(v)} {n}" for v, n in counts.items()) + "</p>",
    ]


def _notable_section(data: SiteData) -> str:
    notable = data.notable
    parts = ['<section id="changes">', "<h2>Regressions and improvements since the baseline</h2>"]
    if notable.empty:
        parts.append("<p>No key regressed or improved.</p>")
    else:
        rows = [[_link(key_page(r["key_digest"]), r["label"]), _verdict(r["verdict"]),
                 _ms(r["median_baseline_ms"]), _ms(r["median_current_ms"]), _change(r),
                 esc(fmt.significant(r["q_value"], 2)), esc(r.get("baseline") or ""),
                 esc(r.get("unit") or ""), esc(r.get("reason") or "")]
                for _, r in notable.iterrows()]
        parts.append(_table(["Key", "Verdict", "Baseline ms", "Current ms", "Change [CI]", "q",
                             "Baseline used", "Replication unit", "Reason"], rows,
                            table_id="notable", numeric=(2, 3, 4, 5)))
    parts.append("</section>")
    return "\n".join(parts)


def _step_rows(steps: pd.DataFrame, up: str, *, with_key: bool) -> list[list[str]]:
    rows = []
    for _, s in steps.iterrows():
        row = [_link(up + key_page(s["key_digest"]), s["label"])] if with_key else []
        row += [esc(f"{float(s['change']) * 100:+.1f}%"),
                _ms(s["before_ms"]) + " → " + _ms(s["after_ms"]),
                _link(up + run_page(s["previous_run_id"]), str(s["previous_run_id"])),
                _sha(str(s["previous_git_sha"])),
                _link(up + run_page(s["run_id"]), str(s["run_id"])), _sha(str(s["git_sha"])),
                esc(str(len(s["between_shas"])))]
        rows.append(row)
    return rows


_STEP_HEADER = ["Change", "Level ms", "Last good run", "Last good SHA", "First bad run",
                "First bad SHA", "SHAs between"]


def _steps_section(data: SiteData) -> str:
    parts = ['<section id="steps">', "<h2>Steps in the history</h2>"]
    if data.steps.empty:
        parts.append("<p>No step beyond the threshold in any key's history.</p>")
    else:
        parts.append(_table(["Key", *_STEP_HEADER], _step_rows(data.steps, "", with_key=True),
                            numeric=(1, 7)))
    parts.append("</section>")
    return "\n".join(parts)


def _keys_section(data: SiteData) -> str:
    from costmeter.reports.site_plots import sparkline_svg

    rows = []
    for view in data.keys:
        last = view.points.iloc[-1] if len(view.points) else None
        verdict = view.verdict["verdict"] if view.verdict else ""
        spark = sparkline_svg(view.points["value_ms"].tolist(),
                              [int(p) for p in view.steps["position"]],
                              label=f"p50 of {esc(view.label)} over its runs")
        rows.append([
            _link(view.page, view.label),
            _ms(None) if last is None else _ms(last["value_ms"], last["p50_low_ms"],
                                                last["p50_high_ms"]),
            _ms(None) if last is None else _ms(last["p99_ms"]),
            esc(str(len(view.points))), esc(str(len(view.steps))),
            _verdict(verdict) if verdict else "", spark,
        ])
    return "\n".join([
        '<section id="all-keys">', "<h2>Every key</h2>",
        '<p><label>Filter: <input id="key-filter" type="search" placeholder="model, runtime, '
        f'device"></label> <span id="key-count">{len(rows)}</span> shown</p>',
        _table(["Key", "Latest p50 ms [CI]", "Latest p99 ms", "Good runs", "Steps", "Verdict",
                "p50 over runs"], rows, table_id="keys", numeric=(1, 2, 3, 4)),
        "</section>",
    ])


def _runs_section(data: SiteData) -> str:
    rows = []
    for run in reversed(data.runs):
        status = run.rows["status"].value_counts().to_dict()
        rows.append([_link(run.page, run.run_id), _date(run.started_at), _sha(run.git_sha),
                     esc(run.tag), esc(str(len(run.rows))),
                     esc(", ".join(f"{k} {v}" for k, v in sorted(status.items())))])
    return "\n".join(['<section id="runs">', "<h2>Runs (newest first)</h2>",
                      _table(["Run", "Started (UTC)", "Git SHA", "Tag", "Keys", "Status"], rows,
                             numeric=(4,)), "</section>"])


def render_index(data: SiteData) -> str:
    """The index page."""
    body = [*_index_summary(data), _notable_section(data), _steps_section(data),
            _keys_section(data), _runs_section(data),
            '<p class="muted">Verdicts as JSON: <a href="verdicts.json">verdicts.json</a></p>']
    return _page("Benchmark history", body, depth=0, script=_FILTER_JS)


# ---------------------------------------------------------------- key and run pages


def _step_details(view: KeyView) -> list[str]:
    parts = []
    for _, s in view.steps.iterrows():
        between = s["between_shas"]
        change = f"{float(s['change']) * 100:+.1f}%"
        good = _link("../" + run_page(s["previous_run_id"]), str(s["previous_run_id"]))
        bad = _link("../" + run_page(s["run_id"]), str(s["run_id"]))
        parts.append(
            f"<h3>{esc(change)} at {bad}</h3>"
            f"<p>Last good: {good} at {_sha(str(s['previous_git_sha']))}; first bad: {bad} at "
            f"{_sha(str(s['git_sha']))}. <code>{esc(s['bisect_hint'])}</code></p>")
        if between:
            parts.append(f"<p>{len(between)} commit(s) measured by other runs in between "
                         "(oldest first):</p><ul class=\"shas\">"
                         + "".join(f"<li>{_sha(sha)}</li>" for sha in between) + "</ul>")
    return parts


def render_key(view: KeyView, data: SiteData) -> str:
    """One key's page: verdict, trend plot, steps with their commits, runs."""
    from costmeter.reports.plotting import figure_svg
    from costmeter.reports.site_plots import trend_figure

    body = [f"<h1>{esc(view.label)}</h1>",
            f"<p>Model <code>{esc(view.model_id)}</code> on {esc(view.runtime)} @ "
            f"{esc(view.device)}; key <code>{esc(view.digest)}</code>.</p>"]
    if view.verdict:
        v = view.verdict
        body.append(f"<p>Verdict {_verdict(v['verdict'])}: {_change(v)} against "
                    f"{esc(v.get('baseline') or '')} ({esc(v.get('reason') or '')}).</p>")
    else:
        body.append(f'<p class="muted">Not in the current selection '
                    f"({esc(data.report.current_selector)}); no verdict.</p>")
    body.append('<section id="trend"><h2>p50 and p99 over runs</h2>')
    if len(view.points):
        body.append('<div class="plot">' + figure_svg(trend_figure(view.points, view.steps))
                    + "</div><p class=\"muted\">Bands: 95% intervals of each run's percentile. "
                    "Click a point to open its run.</p>")
    else:
        body.append("<p>No finished VALID run of this key.</p>")
    body.append("</section>")
    body.append('<section id="steps"><h2>Steps</h2>')
    body += _step_details(view) if len(view.steps) else ["<p>No step beyond the threshold.</p>"]
    body.append("</section>")
    rows = [[_link("../" + p["page"], str(p["run_id"])), _date(p["started_at"]),
             _sha(str(p["git_sha"])), _ms(p["value_ms"], p["p50_low_ms"], p["p50_high_ms"]),
             _ms(p["p99_ms"], p["p99_low_ms"], p["p99_high_ms"])]
            for _, p in view.points.iloc[::-1].iterrows()]
    body += ['<section id="runs"><h2>Good runs (newest first)</h2>',
             _table(["Run", "Started (UTC)", "Git SHA", "p50 ms [CI]", "p99 ms [CI]"], rows,
                    numeric=(3, 4)), "</section>"]
    if len(view.others):
        rows = [[_link("../" + o["page"], o["run_id"]), esc(o["status"]), esc(o["validity"]),
                 esc(o["why"])] for _, o in view.others.iterrows()]
        body += ['<section id="others"><h2>Failed or INVALID results</h2>',
                 _table(["Run", "Status", "Validity", "Why"], rows), "</section>"]
    return _page(view.label, body, depth=1)


def render_run(view: RunView, data: SiteData) -> str:
    """One run's page: neighbours, metadata and every key of the run."""
    verdicts = {}
    if view.run_id in data.report.current_runs:
        verdicts = dict(zip(data.report.verdicts["key_digest"], data.report.verdicts["verdict"]))
    links = [f"previous: {_link('../' + view.previous[1], view.previous[0])}" if view.previous
             else '<span class="muted">first run</span>',
             f"next: {_link('../' + view.following[1], view.following[0])}" if view.following
             else '<span class="muted">latest run</span>']
    rows = [[_link("../" + r["key_page"], r["label"]), esc(r["status"]), esc(r["validity"]),
             _ms(r["p50_ms"], r["p50_low_ms"], r["p50_high_ms"]), _ms(r["p99_ms"]),
             esc(str(r["n_samples"])),
             _verdict(verdicts[r["key_digest"]]) if r["key_digest"] in verdicts else "",
             esc(r["why"])] for _, r in view.rows.iterrows()]
    body = [f"<h1>Run {esc(view.run_id)}</h1>",
            f'<p id="neighbours">{" · ".join(links)}</p>',
            f"<p>Started {_date(view.started_at)} UTC; git SHA {_sha(view.git_sha)}; tag "
            f"{esc(view.tag or 'none')}; host {esc(view.host or 'unknown')}.</p>",
            _table(["Key", "Status", "Validity", "p50 ms [CI]", "p99 ms", "Samples", "Verdict",
                    "Notes"], rows, table_id="run-keys", numeric=(3, 4, 5))]
    return _page(f"Run {view.run_id}", body, depth=1)


def render_site(data: SiteData) -> dict[str, str]:
    """Every file of the site: relative path -> text."""
    files = {"index.html": render_index(data), "verdicts.json": data.report.to_json(),
             MARKER: "A benchmark history site; `bench report history` replaces it.\n"}
    for view in data.keys:
        files[view.page] = render_key(view, data)
    for run in data.runs:
        files[run.page] = render_run(run, data)
    return files


def check_out(out: Path) -> None:
    """ConfigError when ``out`` is a file or a folder holding anything but a site written here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out} holds other files; pass a new or empty folder (or one "
                          "this command wrote before, which it replaces)")


def write_site(data: SiteData, out: str | Path) -> Path:
    """Render the site and put it at ``out`` (created, or replaced when it holds a site written
    before). Files go to a fresh folder beside ``out`` first, which is renamed into place at the
    end, so a failure leaves ``out`` as it was. Returns the index page's path. Raises
    ConfigError when ``out`` is a file, holds other files, or cannot be written."""
    out = Path(out)
    check_out(out)
    files = render_site(data)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise ConfigError(f"cannot write the site to {out}: {err.strerror or err}; "
                          "pass a writable --out folder") from err
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.chmod(0o755)
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(retired / "site")
            staging.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"cannot write the site to {out}: {err.strerror or err}; "
                          "pass a writable --out folder") from err
    return out / "index.html"
