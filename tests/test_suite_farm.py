"""``bench suite run --farm``: the suite's side of the farm (a stand-in farm module here; the Ray
farm has its own tests): a device no node holds is refused before anything runs, and results
the farm hands back are journaled against their jobs, exactly once."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from costmeter.cli import main
from costmeter.results.integrity import check_store
from costmeter.results.store import ResultStore
from suite_helpers import SHA, write_suite


def _fake_farm(devices: list[str], calls: list) -> types.ModuleType:
    module = types.ModuleType("costmeter.harness.executors.ray_farm")

    def farm_status(address: str) -> dict:
        return {"nodes": [{"name": "n1", "devices": devices}]}

    def run_on_farm(configs, address, sink, workdir):
        from costmeter.harness.runner import Runner, validate

        calls.append((address, len(configs)))
        runner = Runner(None, workdir)
        for job in reversed(validate(list(configs))):  # out of order, as a farm would
            sink.write(runner.run_one(job, "farm-run"))

    module.farm_status, module.run_on_farm = farm_status, run_on_farm
    return module


@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch):
    def install(devices: list[str]) -> list:
        calls: list = []
        monkeypatch.setitem(sys.modules, "costmeter.harness.executors.ray_farm", _fake_farm(devices, calls))
        return calls
    return install


def test_a_device_no_node_holds_is_one_line_and_nothing_runs(tmp_path: Path, farm, workdir: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    calls = farm(["cpu", "cuda:0"])
    suite = write_suite(tmp_path)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "ray://head:10001", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no farm node holds device 'fake' (the farm has cpu, cuda:0)" in err
    assert calls == [] and not (workdir / "results.db").exists()


def test_farm_results_are_journaled_against_their_jobs(tmp_path: Path, farm, workdir: Path) -> None:
    calls = farm(["fake"])
    suite = write_suite(tmp_path)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "local", "-q"]) == 0
    assert calls == [("local", 4)]
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        results = store.results()
        assert check_store(store).ok
    assert len(results) == 4 and len({r.extra["job_key"] for r in results}) == 4
    assert {r.run_id for r in results} != {"farm-run"}  # the suite's run id, not the farm's
    assert {r.environment["git_sha"] for r in results} == {SHA}
