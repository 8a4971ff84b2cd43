"""``bench suite run``: bad input is one line (the suite file's line and key), exit 2 and nothing
written; results carry the suite, tag and SHA; user models are built in children only."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from costmeter.results import journal
from costmeter.results.integrity import check_store
from costmeter.results.store import ResultStore
from suite_helpers import SHA, TINY_SUITE, bench, write_suite

GOOD = TINY_SUITE.format(suite_id="tiny", models='["m1"]', latency_us=20, batches=[1], suite_extra="")

BAD_SUITES = [  # (replace this, with that, expected line, expected words)
    ("warmup = 1", "warmpu = 1", 7, "[protocol] unknown key 'warmpu'; allowed: max_cv"),
    ("batches = [1]", 'batches = [1, "8"]', 17, "[matrix] key 'batches' must be integer, not str '8'"),
    ("timeout_s = 60", 'timeout_s = "sixty"', 4, "[suite] key 'timeout_s' must be number"),
    ('devices = ["fake"]', 'devices = ["gpu9"]', 15, "[matrix] key 'devices': unknown device 'gpu9'"),
    ('runtimes = ["fake"]', 'runtimes = ["faster"]', 16, "unknown runtime 'faster' for device kind(s) fake"),
    ('latency_us = "20"', 'latncy_us = "20"', 20, "unknown option 'latncy_us' for fake"),
    ('spec = ["m1"]', 'zoo = ["resnet19"]', 24, "unknown zoo model 'resnet19'"),
    ('spec = ["m1"]', 'space = "nb201"', 23, "a space entry needs samples (with seed) or archs"),
    ('spec = ["m1"]', 'onnx = ["missing.onnx"]', 24, "missing.onnx not found"),
    ("[[models]]", "[[modles]]", 23, "top level unknown key 'modles'"),
    ("max_time_s = 0.3", "max_time_s = 0.001", 6, "must be >= --min-time"),
    ("[matrix]", "[matrix\n", 14, "not valid TOML"),
]


@pytest.mark.parametrize("old,new,line,words", BAD_SUITES)
def test_bad_suite_files_get_one_line_with_line_and_key(tmp_path: Path, old: str, new: str,
                                                        line: int, words: str) -> None:
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    done = bench(["suite", "run", str(path), "--sha", SHA], tmp_path / "wd", tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: bad.toml line {line}"), done.stderr
    assert words in done.stderr
    assert not (tmp_path / "wd").exists()  # nothing written, not even a store


def test_other_bad_input_gets_one_line_and_writes_nothing(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    workdir = tmp_path / "wd"
    cases = [
        (["--sha", SHA, "--store", "postgresql+psycopg://u:p@127.0.0.1:9/none"], "cannot open store"),
        (["--sha", SHA, "--farm", "ray://127.0.0.1:1"], "cannot reach the Ray head at 127.0.0.1:1"),
        (["--sha", SHA, "--farm", "cluster"], "is not ray://HEAD:PORT, HEAD:PORT, auto or local"),
        ([], "no git SHA for the code under test: pass --sha SHA or set repository"),
        (["--sha", "not-a-sha"], "is not a git SHA"),
        (["--resume"], "suite tiny has no interrupted run to resume"),
    ]
    for args, words in cases:
        done = bench(["suite", "run", str(suite), *args], workdir, tmp_path)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    if (workdir / "results.db").exists():
        with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
            assert store.query().empty
            with store.reading() as conn:
                assert journal.suite_runs(conn) == []


def test_results_carry_suite_tag_and_the_repositorys_sha(tmp_path: Path) -> None:
    repo = tmp_path / "code"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@e"], ["config", "user.name", "t"],
                 ["commit", "-q", "--allow-empty", "-m", "c"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    suite = write_suite(tmp_path, models=("m1",), batches=(1,), extra='repository = "code"\n')
    workdir = tmp_path / "wd"
    done = bench(["suite", "run", str(suite), "--tag", "rc1", "-q"], workdir, tmp_path)
    assert done.returncode == 0 and "complete" in done.stdout, done.stderr
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        (result,) = store.results()
        frame = store.query()
        assert check_store(store).ok
    assert result.environment["git_sha"] == head == frame["git_sha"].iloc[0]
    assert result.environment["costmeter_git_sha"] != head
    assert result.tag == "rc1" and result.extra["suite_id"] == "tiny"
    suite.write_text(suite.read_text().replace('spec = ["m1"]', 'spec = ["m1", "m2"]'))
    changed = bench(["suite", "run", str(suite), "--resume"], workdir, tmp_path)
    assert changed.returncode == 2 and "has no interrupted run" in changed.stderr


USER_MODELS = """\
import ctypes
import torch

def good():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 4), torch.randn(1, 8)

def segv():
    ctypes.string_at(0)

def wrong():
    return 3
"""


def test_user_models_are_built_in_children_and_a_crash_is_a_failed_result(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "usermods.py").write_text(USER_MODELS)
    suite = tmp_path / "user.toml"
    suite.write_text(GOOD.replace('timeout_s = 60', 'timeout_s = 300\npython_path = ["mods"]')
                     .replace('devices = ["fake"]', 'devices = ["cpu"]')
                     .replace('runtimes = ["fake"]', 'runtimes = ["onnxruntime"]')
                     .replace('[options.fake]\nlatency_us = "20"\njitter = "0.01"\n', "")
                     .replace('spec = ["m1"]', 'python = ["usermods:segv", "usermods:good"]'))
    workdir = tmp_path / "wd"
    done = bench(["suite", "run", str(suite), "--sha", SHA, "-q"], workdir, tmp_path)
    assert done.returncode == 0 and "1 failed" in done.stdout and "complete" in done.stdout, done.stderr
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        by_model = {r.key.model_id: r for r in store.results()}
    crashed = by_model["py:usermods:segv"]
    assert crashed.status.value == "failed"
    assert "died with SIGSEGV" in crashed.error and "Fatal Python error: Segmentation fault" in crashed.error
    assert by_model["py:usermods:good"].status.value == "ok"
    assert by_model["py:usermods:good"].model_info["params"] == 8 * 4 + 4
    # bad input from user code is still bad input: one line, exit 2, before anything runs
    wrong = bench(["run", "--model", "usermods:wrong", "--model", "tiny_mlp"], workdir, tmp_path / "mods")
    assert wrong.returncode == 2 and "cannot import module 'usermods'" in wrong.stderr, wrong.stderr
    assert wrong.stderr.count("\n") == 1  # the module lies in the current folder: not imported
    asked = bench(["run", "--model", "usermods:wrong", "--model", "tiny_mlp"], workdir, tmp_path,
                  pythonpath=(str(tmp_path / "mods"),))
    assert asked.returncode == 2 and asked.stderr.count("\n") == 1
    assert "usermods:wrong() returned int, not a pair" in asked.stderr


def test_the_example_suite_and_ci_job_are_well_formed(tmp_path: Path) -> None:
    from costmeter.harness.config import SuiteConfig
    from suite_helpers import ROOT

    suite = SuiteConfig.from_toml(ROOT / "examples" / "nightly.toml")
    jobs = suite.expand(tmp_path)
    assert suite.suite_id == "nightly-cpu" and suite.repository == str(ROOT)
    assert len(jobs) == len({j.key for j in jobs}) == 3 * 2 * 2 * 2 + 4 * 2
    ci = (ROOT / "examples" / "nightly-ci.yml").read_text()
    assert "bench nightly examples/nightly.toml" in ci and "--baseline window:10" in ci
