"""The history site on a real SQLite store: the data behind the pages (verdicts with their
baseline, steps with the commits around them, runs linked in time order), the written site
(every local link resolves, nothing external), writing it whole or not at all, and the
``bench report history`` / ``bench report subset`` commands."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.reports.regression import per_process_samples
from costmeter.reports.site import build_site, key_page, run_page
from costmeter.reports.site_render import MARKER, render_site, write_site
from costmeter.results.store import ResultStore
from site_history import NIGHTS, REGRESSED, STEPPED, fill, sha
from site_links import broken_links


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('site') / 'results.db'}"
    with ResultStore(url) as store:
        fill(store)
    return url


@pytest.fixture(scope="module")
def site(store_url: str):
    with ResultStore(store_url) as store:
        return build_site(store.query(), per_process_samples(store), baseline="window:8",
                          tag="nightly")


def by_label(site) -> dict[str, object]:
    return {view.label: view for view in site.keys}


# ------------------------------------------------------------ the data (no rendering)


def test_verdicts_say_which_baseline_they_used(site) -> None:
    notable = site.notable.set_index("label")
    assert list(notable.index) == [REGRESSED]
    row = notable.loc[REGRESSED]
    assert row["verdict"] == "regressed" and row["ratio"] == pytest.approx(1.2, abs=0.03)
    assert row["baseline"].startswith("window of 8 runs (nightly-03..nightly-10)")
    assert site.report.current_runs == [f"nightly-{NIGHTS - 1:02d}"]
    assert by_label(site)[REGRESSED].verdict["verdict"] == "regressed"


def test_steps_name_the_commits_around_them(site) -> None:
    steps = site.steps.set_index("label")
    assert list(steps.index) == [STEPPED]
    step = steps.loc[STEPPED]
    assert step["change"] == pytest.approx(0.15, abs=0.02)
    assert (step["previous_run_id"], step["run_id"]) == ("nightly-07", "nightly-08")
    assert (step["previous_git_sha"], step["git_sha"]) == (sha(7), sha(8))
    # the pull-request run of that day measured a commit in between (other tags count)
    assert step["between_runs"] == ["pr-7"] and step["between_shas"] == ["07" + "d" * 38]
    assert step["bisect_hint"] == f"git bisect start {sha(8)} {sha(7)}"
    assert len(by_label(site)[STEPPED].steps) == 1


def test_runs_and_keys_of_the_history(site) -> None:
    assert [r.run_id for r in site.runs] == [f"nightly-{n:02d}" for n in range(NIGHTS)]  # no pr
    assert site.runs[0].previous is None and site.runs[-1].following is None
    assert site.runs[3].previous == ("nightly-02", site.runs[2].page)
    assert site.runs[3].following == ("nightly-04", site.runs[4].page)
    assert len(site.runs[-1].rows) == 5  # the failed key is listed on its run
    views = by_label(site)
    assert len(views) == 5
    failed = views["bert_tiny/onnxruntime@cpu b1 t4"]
    assert failed.points.empty and failed.others["why"].tolist() == ["worker crashed"]
    stepped = views[STEPPED]
    assert stepped.points["run_id"].tolist() == [f"nightly-{n:02d}" for n in range(NIGHTS)]
    assert stepped.points["p50_low_ms"].lt(stepped.points["value_ms"]).all()
    assert stepped.points["p99_ms"].gt(stepped.points["value_ms"]).all()


def test_page_names_are_safe_and_distinct() -> None:
    assert run_page("nightly/2024 07 01") != run_page("nightly-2024-07-01")
    assert run_page("../../etc").startswith("runs/etc-")
    assert key_page("abc") == "keys/abc.html"


def test_filters_that_match_nothing_name_what_exists(store_url: str) -> None:
    with ResultStore(store_url) as store:
        frame, samples = store.query(), per_process_samples(store)
    with pytest.raises(ConfigError, match=r"device 'gpu'.*present: cpu"):
        build_site(frame, samples, device="gpu")
    with pytest.raises(ConfigError, match=r"tag 'weekly'.*nightly, pr"):
        build_site(frame, samples, tag="weekly")
    with pytest.raises(ConfigError, match="matches no results"):
        build_site(frame, samples, baseline="run:nope")
    with pytest.raises(ConfigError, match="store is empty"):
        build_site(frame.iloc[0:0], samples)


# ------------------------------------------------------------ the written site


def test_every_local_link_resolves_and_nothing_is_fetched(site, tmp_path: Path) -> None:
    index = write_site(site, tmp_path / "site")
    root = index.parent
    broken, external, checked = broken_links(root)
    assert broken == [] and external == []
    assert checked > 200  # nav, tables, prev/next and the plots' point links
    pages = {p.relative_to(root).as_posix() for p in root.rglob("*.html")}
    assert len(pages) == 1 + 5 + NIGHTS
    html = index.read_text()
    assert f'href="{key_page(site.notable["key_digest"].iloc[0])}"' in html
    assert html.count('class="spark"') == 5 and "<script>" in html
    stepped = (root / by_label(site)[STEPPED].page).read_text()
    assert stepped.count("<svg") == 1 and "git bisect start" in stepped
    assert stepped.count(f'xlink:href="../{run_page("nightly-08")}"') == 2  # p50 and p99 points


def test_the_link_check_can_fail(site, tmp_path: Path) -> None:
    root = write_site(site, tmp_path / "site").parent
    (root / site.runs[4].page).unlink()
    broken, _, _ = broken_links(root)
    assert any(site.runs[4].page in b for b in broken)


def test_a_site_is_written_whole_or_not_at_all(site, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "site"
    write_site(site, out)
    assert (out / MARKER).exists()
    (out / "stale.html").write_text("old")
    write_site(site, out)  # a site written before is replaced
    assert not (out / "stale.html").exists() and (out / "index.html").exists()

    import costmeter.reports.site_render as site_render

    def broken(*_args, **_kw):
        raise ConfigError("rendering failed")

    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(site_render, "render_run", broken)
    with pytest.raises(ConfigError, match="rendering failed"):
        write_site(site, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no staging left behind


def test_refuses_a_file_or_someone_elses_folder(site, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_site(site, tmp_path / "notes.txt")
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "README").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        write_site(site, foreign)
    assert [p.name for p in foreign.iterdir()] == ["README"]
    with pytest.raises(ConfigError, match="cannot write the site"):
        write_site(site, tmp_path / "notes.txt" / "site")


def test_render_is_pure_text(site) -> None:
    files = render_site(site)
    assert set(files) >= {"index.html", "verdicts.json", MARKER}
    assert all(isinstance(text, str) for text in files.values())


# ------------------------------------------------------------ the commands


def test_history_command(store_url: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "site"
    rc = main(["report", "history", "--out", str(out), "--tag", "nightly", "--baseline",
               "window:8", "--store", store_url])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"wrote {out / 'index.html'} (5 keys, {NIGHTS} runs, 1 steps)" in text
    assert f"regressed: {REGRESSED}" in text
    assert (out / "verdicts.json").exists()


@pytest.mark.parametrize("args", [
    ["--baseline", "run:nope"], ["--tag", "weekly"], ["--current", "sha:ffff"],
])
def test_history_command_bad_input(store_url: str, tmp_path: Path, capsys, args) -> None:
    out = tmp_path / "site"
    rc = main(["report", "history", "--out", str(out), "--store", store_url, *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_history_command_empty_store_and_unwritable_out(tmp_path: Path, capsys) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    ResultStore(empty).close()
    rc = main(["report", "history", "--out", str(tmp_path / "site"), "--store", empty])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "empty" in err and len(err.splitlines()) == 1
    (tmp_path / "file").write_text("x")
    rc = main(["report", "history", "--out", str(tmp_path / "file" / "site"), "--store", empty])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot write the site" in err and len(err.splitlines()) == 1


def test_subset_command(store_url: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "subset.json"
    rc = main(["report", "subset", "--history", "tag:nightly", "--budget", "0.5",
               "--json", str(out), "--store", store_url])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "Kendall tau" in text and "alarms caught" in text and out.exists()
    rc = main(["report", "subset", "--history", "tag:nightly", "--budget", "0",
               "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "budget" in err and len(err.splitlines()) == 1
    frame = pd.read_json(out, typ="series")
    assert frame["budget"] == 0.5


def test_a_change_on_the_last_night_alone_is_not_a_step() -> None:
    """PELT cannot cut off one run, so it used to report a half-sized step one night early
    (wrong commits to bisect); the boundary is refined onto the right night or dropped."""
    from costmeter.reports.history import change_points

    rng = np.random.default_rng(3)
    flat = 5.0 * np.exp(rng.normal(0, 0.002, 12))
    spike = flat.copy()
    spike[-1] *= 1.2
    assert change_points(spike) == []
    late = flat.copy()
    late[-2:] *= 1.2
    assert change_points(late) == [10]
    middle = flat.copy()
    middle[8:] *= 1.15
    assert change_points(middle) == [8]
