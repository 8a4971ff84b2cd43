"""``bench nightly``: the gate against the last good night (or a window of good nights), the
regression report, and the SHAs between the last good night and the first bad one."""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from costmeter.results import journal
from costmeter.results.store import ResultStore
from suite_helpers import bench, plant_nights, write_suite


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _repo(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """A git repository with ``n`` commits; their SHAs, oldest first."""
    repo = tmp_path / "code"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    shas = []
    for i in range(n):
        (repo / "f.txt").write_text(str(i))
        _git(repo, "add", "f.txt")
        _git(repo, "commit", "-qm", f"c{i}")
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return repo, shas


def _gate(db: Path, run_id: str) -> str | None:
    with ResultStore(f"sqlite:///{db}") as store, store.reading() as conn:
        return journal.get_run(conn, run_id).gate


def test_a_slower_night_fails_the_gate_and_names_the_commits_to_bisect(tmp_path: Path) -> None:
    repo, shas = _repo(tmp_path, 10)
    workdir, db = tmp_path / "wd", tmp_path / "wd" / "results.db"
    suite = write_suite(tmp_path, models=("m1",), extra='repository = "code"\n')
    # six good nights at 5 us (shas 0-5), then the first bad night at 40 us (sha 8): the
    # commits 6 and 7 were never measured; tonight runs HEAD (sha 9) at ~20 us.
    planted = plant_nights(db, suite, workdir, [(s, 5.0, journal.PASSED) for s in shas[:6]]
                           + [(shas[8], 40.0, journal.REGRESSED)])
    done = bench(["nightly", str(suite), "--out", str(tmp_path / "out"), "-q"], workdir, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "gate: regressed" in done.stderr
    assert "regressed: m1/fake@fake b1" in done.stderr
    summary = json.loads((tmp_path / "out" / "nightly.json").read_text())
    assert summary["gate"] == "regressed" and summary["git_sha"] == shas[9]
    assert summary["baseline"] == f"run:{planted[5]}"
    (step,) = [r for r in summary["bisect"] if r["first_bad_run"] == planted[6]]
    assert (step["last_good_sha"], step["first_bad_sha"]) == (shas[5], shas[8])
    assert step["commits"] == [shas[8], shas[7], shas[6]]  # newest first
    assert step["bisect"] == f"git bisect start {shas[8]} {shas[5]}"
    for name in ("regression.html", "regression.md", "regression.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert _gate(db, summary["run_id"]) == journal.REGRESSED


def test_first_night_passes_and_a_faster_night_passes_against_a_window(tmp_path: Path) -> None:
    workdir, db = tmp_path / "wd", tmp_path / "wd" / "results.db"
    suite = write_suite(tmp_path, models=("m1",), batches=(1,))
    first = bench(["nightly", str(suite), "--sha", "a" * 40, "--out", str(tmp_path / "o1"), "-q"],
                  workdir, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "this night is the baseline" in first.stdout and "gate: passed" in first.stdout
    # five good nights at 900 us between the first night and tonight
    # (stamped from now on, 10 ms apart: after the first night, before tonight starts)
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    plant_nights(db, suite, workdir, [("b" * 40, 900.0, journal.PASSED)] * 5, start=now,
                 step_s=0.01)
    second = bench(["nightly", str(suite), "--sha", "c" * 40, "--baseline", "window:5",
                    "--out", str(tmp_path / "o2"), "-q"], workdir, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "against window:5" in second.stdout and "gate: passed" in second.stdout
    report = json.loads((tmp_path / "o2" / "regression.json").read_text())
    assert report["counts"]["regressed"] == 0 and report["counts"]["improved"] == 1


def test_bad_baselines_and_out_folders_fail_before_anything_runs(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    suite = write_suite(tmp_path)
    (tmp_path / "afile").write_text("x")
    for args, message in ((["--baseline", "yesterday"], "--baseline 'yesterday' is not last-good"),
                          (["--baseline", "window:1"], "window:N with N >= 2"),
                          (["--out", str(tmp_path / "afile")], "is a file"),
                          (["--out", str(tmp_path / "no" / "such")], "does not exist")):
        done = bench(["nightly", str(suite), "--sha", "a" * 40, *args], workdir, tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (workdir / "results.db").exists()
