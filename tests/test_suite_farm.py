"""``bench suite run --farm``: the suite's side of the farm. The farm module's Ray side is replaced
here (its status and its runner); the Ray farm itself is tested on a cluster in
test_farm_cluster.py. A device no node holds is refused before anything runs, results the farm
hands back are journaled against their jobs exactly once, and a missing Ray is one line naming
the extra to install."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from costmeter.cli import main
from costmeter.harness.executors import ray_farm
from costmeter.harness.executors.farm_ledger import FarmNode, FarmStatus
from costmeter.results.integrity import check_store
from costmeter.results.store import ResultStore
from suite_helpers import SHA, write_suite


@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch):
    """Install a stand-in farm holding ``devices`` on one live node; returns its calls."""
    def install(devices: list[str]) -> list:
        calls: list = []

        def farm_status(address: str) -> FarmStatus:
            calls.append(("status", address))
            node = FarmNode("n1", "10.0.0.1", True, True, {d: None for d in devices})
            return FarmStatus(address, [node], {d: {"total": 1.0, "free": 1.0} for d in devices}, [])

        def run_on_farm(configs, address, sink, workdir, progress=None):
            from costmeter.harness.runner import Runner, validate

            calls.append(("run", address, len(configs)))
            runner = Runner(None, workdir)
            for job in reversed(validate(list(configs))):  # out of order, as a farm would
                sink.write(runner.run_one(job, "farm-run"))

        monkeypatch.setattr(ray_farm, "import_ray", lambda: None)
        monkeypatch.setattr(ray_farm, "farm_status", farm_status)
        monkeypatch.setattr(ray_farm, "run_on_farm", run_on_farm)
        return calls
    return install


def test_a_device_no_node_holds_is_one_line_and_nothing_runs(tmp_path: Path, farm, workdir: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    calls = farm(["cpu", "cuda:0"])
    suite = write_suite(tmp_path)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "ray://head:10001", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no farm node holds device 'fake' (the farm has cpu, cuda:0)" in err
    assert calls == [("status", "ray://head:10001")] and not (workdir / "results.db").exists()


def test_farm_results_are_journaled_against_their_jobs(tmp_path: Path, farm, workdir: Path) -> None:
    calls = farm(["fake"])
    suite = write_suite(tmp_path)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "local", "-q"]) == 0
    # a local farm is started holding the suite's devices: there is no farm to ask before
    assert calls == [("run", "local", 4)]
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        results = store.results()
        assert check_store(store).ok
    assert len(results) == 4 and len({r.extra["job_key"] for r in results}) == 4
    assert {r.run_id for r in results} != {"farm-run"}  # the suite's run id, not the farm's
    assert {r.environment["git_sha"] for r in results} == {SHA}


@pytest.mark.parametrize("address", ["bogus", "ray://", "ray:/x", "head:port", ""])
def test_a_malformed_farm_address_is_one_line(tmp_path: Path, farm, workdir: Path, address: str,
                                              capsys: pytest.CaptureFixture) -> None:
    calls = farm(["fake"])
    suite = write_suite(tmp_path)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", address, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--farm {address!r} is not ray://HEAD:PORT, HEAD:PORT, auto or local" in err
    assert calls == [] and not (workdir / "results.db").exists()


@pytest.mark.parametrize("command", [["suite", "run"], ["nightly"]])
def test_without_ray_farm_is_one_line_naming_the_extra(tmp_path: Path, workdir: Path, command: list[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = write_suite(tmp_path)
    assert main([*command, str(suite), "--sha", SHA, "--farm", "local", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the device farm needs Ray" in err and "pip install 'costmeter[farm]'" in err
    assert not (workdir / "results.db").exists()


def test_a_machine_option_asks_the_farm_for_that_machines_device(tmp_path: Path, farm, workdir: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    suite = write_suite(tmp_path, models=("m1",), batches=(1,))
    suite.write_text(suite.read_text().replace('jitter = "0.01"', 'jitter = "0.01"\nmachine = "lab-1"'))
    calls = farm(["fake"])
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "head:6379", "-q"]) == 2
    assert "no farm node holds device 'fake@lab-1' (the farm has fake)" in capsys.readouterr().err
    calls = farm(["fake@lab-1"])
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "head:6379", "-q"]) == 0
    assert calls == [("status", "head:6379"), ("run", "head:6379", 1)]
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        assert {dict(r.key.options)["machine"] for r in store.results()} == {"lab-1"}  # part of the key


def test_boards_on_the_farm_are_not_contacted_from_the_driver(tmp_path: Path, farm, workdir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An ssh board attached to a farm node need not be reachable from here: the driver checks that
    a node holds it, the node checks the board."""
    from costmeter.harness.runner import make_key, validate
    from costmeter.results.schema import RunResult, Status

    board = "ssh://pi@board1.invalid"  # no such host: contacting it from here would refuse the suite
    suite = write_suite(tmp_path, models=("tiny_mlp",), batches=(1,))
    text = suite.read_text().replace('devices = ["fake"]', f'devices = ["{board}"]')
    suite.write_text(text.replace('runtimes = ["fake"]', 'runtimes = ["onnxruntime"]').split("[options.fake]")[0]
                     + '[[models]]\nspec = ["tiny_mlp"]\n')
    calls = farm([board])
    seen: list = []

    def on_node(configs, address, sink, workdir, progress=None):  # what a node that lost the board returns
        seen.extend(c.device for c in configs)
        for job in validate(list(configs)):
            sink.write(RunResult(key=make_key(job), status=Status.FAILED, run_id="farm-run", error="board gone",
                                 started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:01+00:00"))

    monkeypatch.setattr(ray_farm, "run_on_farm", on_node)
    assert main(["suite", "run", str(suite), "--sha", SHA, "--farm", "head:6379", "-q"]) == 0
    assert calls == [("status", "head:6379")] and seen == [board]
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        assert [(r.key.device, r.status) for r in store.results()] == [(board, Status.FAILED)]
