"""``bench nightly``: run a suite, compare it with its last good night (or a window of good
nights), write the regression report, and gate: exit 1 on a regression the verdicts call real.

A night *passes* when its comparison finds no regressed key; passed nights are the baselines of
later ones (``suite_runs.gate`` in the store). The first night of a suite has nothing to compare
with and passes. For every step found in the history (and every regression against the last
good night) the report lists the SHAs between the last good night and the first bad one: those
measured by other nights, and, when the suite names its repository, the commits in between.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import click

from costmeter.cli.common import OutputPath, fraction
from costmeter.cli.suite_cmd import run_suite_file, suite_options
from costmeter.errors import ConfigError

_WINDOW = re.compile(r"^window:(\d+)$")
MAX_COMMITS = 200


def parse_baseline(text: str) -> int | None:
    """None for ``last-good``; N for ``window:N`` (N >= 2); ConfigError otherwise."""
    value = str(text).strip()
    if value == "last-good":
        return None
    found = _WINDOW.match(value)
    if found and int(found.group(1)) >= 2:
        return int(found.group(1))
    raise ConfigError(f"--baseline {text!r} is not last-good or window:N with N >= 2, e.g. window:10")


def check_out(out: Path) -> None:
    """ConfigError unless the report folder exists or its parent does (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the reports")
    if not out.exists() and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it first")


def git_commits(repository: str | None, good: str, bad: str) -> list[str] | None:
    """Commits after ``good`` up to ``bad`` (newest first, at most MAX_COMMITS) in the suite's
    repository; None when there is no repository or git cannot tell."""
    if not repository or not good or not bad or good == bad:
        return None
    try:
        out = subprocess.run(["git", "-C", repository, "rev-list", f"--max-count={MAX_COMMITS}",
                              f"{good}..{bad}"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split()


def bisect_ranges(steps: Any, frame: Any, repository: str | None) -> list[dict[str, Any]]:
    """One entry per (last good, first bad) pair of the steps, with the keys that stepped,
    the SHAs measured in between, the commits in between and the ``git bisect`` line."""
    from costmeter.reports.history import bisect_ranges as ranges

    if steps is None or steps.empty:
        return []
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for _, row in ranges(steps, frame).iterrows():
        good, bad = str(row["previous_git_sha"] or ""), str(row["git_sha"] or "")
        entry = pairs.setdefault((str(row["previous_run_id"]), str(row["run_id"])), {
            "last_good_run": str(row["previous_run_id"]), "last_good_sha": good,
            "first_bad_run": str(row["run_id"]), "first_bad_sha": bad,
            "measured_between": list(row["between_shas"]),
            "commits": git_commits(repository, good, bad), "bisect": row["bisect_hint"], "keys": []})
        entry["keys"].append(f"{row['label']} ({row['change']:+.1%})")
    return list(pairs.values())


def compare(store: Any, config: Any, run_id: str, window: int | None, settings: Any) -> dict[str, Any]:
    """The night's comparison: the report (None on a first night), the baseline used, the
    bisect ranges, and the gate."""
    from costmeter.reports.history import detect_steps, key_history
    from costmeter.reports.regression import regression_report
    from costmeter.results import journal

    with store.reading() as conn:
        runs = journal.suite_runs(conn, config.suite_id)
    current = next(r for r in runs if r.run_id == run_id)
    good = [r.run_id for r in runs if r.gate == journal.PASSED and r.run_id != run_id
            and r.started_utc <= current.started_utc]
    everything = store.query(run_id=[r.run_id for r in runs if r.started_utc <= current.started_utc])
    if not good:
        return {"report": None, "baseline": "none (first good night of the suite)", "ranges": [],
                "gate": journal.PASSED}
    usable = everything[everything["run_id"].isin([*good, run_id])]
    baseline = f"window:{window}" if window else f"run:{good[-1]}"
    report = regression_report(usable, baseline, f"run:{run_id}", store_samples(store), settings,
                               with_history=False)
    report.history = key_history(everything[everything["key_digest"].isin(set(report.verdicts["key_digest"]))])
    report.steps = detect_steps(report.history, min_change=settings.threshold)
    ranges = bisect_ranges(report.steps, everything, config.repository)
    if report.significant_regression:
        last_good = next(r for r in runs if r.run_id == good[-1])
        bad = next((r for r in runs if r.started_utc > last_good.started_utc and r.run_id not in good), current)
        regressed = report.verdicts[report.verdicts["verdict"] == "regressed"]["label"].tolist()
        if not any(r["first_bad_run"] == bad.run_id for r in ranges):
            ranges.append({"last_good_run": last_good.run_id, "last_good_sha": last_good.git_sha,
                           "first_bad_run": bad.run_id, "first_bad_sha": bad.git_sha,
                           "measured_between": [], "keys": regressed,
                           "commits": git_commits(config.repository, last_good.git_sha or "", bad.git_sha or ""),
                           "bisect": f"git bisect start {bad.git_sha} {last_good.git_sha}"})
    gate = journal.REGRESSED if report.significant_regression else journal.PASSED
    return {"report": report, "baseline": baseline, "ranges": ranges, "gate": gate}


def store_samples(store: Any) -> Any:
    from costmeter.reports.regression import per_process_samples

    return per_process_samples(store)


def _summary_lines(outcome: Any, found: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    report = found["report"]
    lines = [outcome.summary()]
    if report is None:
        lines.append(f"no earlier good night of suite {outcome.suite_id}: this night is the baseline")
    else:
        counts = " · ".join(f"{n} {v}" for v, n in report.counts().items())
        lines.append(f"against {found['baseline']}: {counts}")
        for _, row in report.verdicts[report.verdicts["verdict"] == "regressed"].iterrows():
            lines.append(f"  regressed: {row['label']} ({row['reason']})")
    for r in found["ranges"]:
        commits = r.get("commits")
        lines.append(f"step between {r['last_good_sha'] or '?'} (run {r['last_good_run']}) and "
                     f"{r['first_bad_sha'] or '?'} (run {r['first_bad_run']}): {', '.join(r['keys'][:5])}")
        if r["measured_between"]:
            lines.append(f"  SHAs measured in between: {' '.join(r['measured_between'])}")
        if commits:
            lines.append(f"  {len(commits)} commit(s) in between: {' '.join(c[:12] for c in commits[:20])}")
        lines.append(f"  {r['bisect']}")
    lines += [f"wrote {p}" for p in paths.values()]
    lines.append(f"gate: {found['gate']}")
    return lines


@click.command()
@suite_options
@click.option("--baseline", default="last-good", show_default=True,
              help="last-good (the last night of this suite that passed) or window:N (its last N good nights)")
@click.option("--out", type=OutputPath(folder=True, path_type=Path, what="the nightly report"),
              default=Path("nightly-report"), show_default=True,
              help="Folder for regression.html/.md/.json and nightly.json")
@click.option("--threshold", type=fraction("0.05"), default=0.05, show_default=True,
              help="Smallest slowdown that can be a regression")
@click.option("--alpha", type=fraction("0.05"), default=0.05, show_default=True,
              help="False discovery rate across keys")
def nightly(suite_file: str, resume: bool, sha: str | None, tag: str | None, farm: str | None,
            quiet: bool, store_url: str | None, workdir: Path | None, baseline: str, out: Path,
            threshold: float, alpha: float) -> None:
    """Run SUITE_FILE, compare it with its last good night (or a window of good nights), write
    the regression report, and exit 1 on a regression the verdicts call real (else 0)."""
    from costmeter.cli import GateFailed
    from costmeter.reports.regression import RegressionSettings
    from costmeter.reports.regression_render import write_reports
    from costmeter.results import journal

    window = parse_baseline(baseline)
    settings = RegressionSettings(threshold=threshold, alpha=alpha)
    check_out(out)
    outcome, config, store = run_suite_file(suite_file, resume=resume, sha=sha, tag=tag, farm=farm,
                                            quiet=quiet, store_url=store_url, workdir=workdir)
    try:
        found = compare(store, config, outcome.run_id, window, settings)
        out.mkdir(exist_ok=True)
        paths = write_reports(found["report"], out) if found["report"] is not None else {}
        details = {"suite_id": config.suite_id, "run_id": outcome.run_id, "git_sha": outcome.git_sha,
                   "baseline": found["baseline"], "gate": found["gate"], "complete": outcome.complete,
                   "spooled": outcome.spooled, "bisect": found["ranges"]}
        paths["nightly"] = out / "nightly.json"
        paths["nightly"].write_text(json.dumps(details, indent=2, default=str) + "\n", encoding="utf-8")
        with store.transaction("record the nightly gate in") as conn:
            journal.set_gate(conn, outcome.run_id, found["gate"], details)
    finally:
        store.close()
    text = "\n".join(_summary_lines(outcome, found, paths))
    if found["gate"] == journal.REGRESSED:
        raise GateFailed(text)
    click.echo(text)
