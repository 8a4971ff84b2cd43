"""The device farm without a cluster: addresses, device names and resources, the `ray start` line a
node runs, the ledger's bookkeeping, and one-line refusals (exit 2) of bad input."""
from __future__ import annotations

import json
import shlex
import socket
import time
from pathlib import Path

import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.harness.executors.farm_ledger import MAX_FINISHED, Ledger, device_resource, resource_device
from costmeter.harness.executors.ray_farm import (FarmAddress, node_resources, node_start_argv,
                                                  parse_farm_address, split_device)


@pytest.mark.parametrize("text, expected", [
    ("local", FarmAddress("local")),
    ("auto", FarmAddress("auto")),
    ("ray://head.lab:10001", FarmAddress("client", "head.lab", 10001)),
    ("ray://head.lab", FarmAddress("client", "head.lab", 10001)),
    ("10.0.0.5:6380", FarmAddress("cluster", "10.0.0.5", 6380)),
    ("head", FarmAddress("cluster", "head", 6379)),
])
def test_farm_addresses(text: str, expected: FarmAddress) -> None:
    assert parse_farm_address(text) == expected


def test_ray_init_gets_the_address_it_understands() -> None:
    assert parse_farm_address("ray://h:1").ray_address == "ray://h:1"
    assert parse_farm_address("h:2").ray_address == "h:2"
    assert parse_farm_address("local").ray_address == "local"  # never attach to a running cluster


@pytest.mark.parametrize("text", ["ray://", "http://h:1", "h:port", "ray://h/x", ":6379"])
def test_malformed_farm_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="malformed farm address"):
        parse_farm_address(text)


def test_device_names_and_labels() -> None:
    assert split_device("cpu@lab-xeon") == ("cpu", "lab-xeon")
    assert split_device("cuda:1@gpu2") == ("cuda:1", "gpu2")
    assert split_device("cpu") == ("cpu", None)
    # a URL device names one board; its '@' is the user's
    assert split_device("ssh://pi@board1:2222") == ("ssh://pi@board1:2222", None)
    assert split_device("adb://R58M") == ("adb://R58M", None)
    for bad in ("cpu@", "cpu@a b", "tpu@x", "gpu"):
        with pytest.raises(ConfigError):
            split_device(bad)


def test_a_machine_label_travels_as_the_machine_option() -> None:
    from costmeter.harness.config import RunConfig
    from costmeter.harness.executors.ray_farm import farm_device, on_farm_device

    cfg = on_farm_device(RunConfig(model="tiny_mlp", options=(("opt_level", "all"),)), "cpu@lab-xeon")
    assert cfg.device == "cpu" and dict(cfg.options) == {"opt_level": "all", "machine": "lab-xeon"}
    assert farm_device(cfg) == "cpu@lab-xeon"
    assert farm_device(on_farm_device(cfg, "cpu")) == "cpu"  # the label is dropped again
    assert farm_device(on_farm_device(cfg, "ssh://pi@b1")) == "ssh://pi@b1"
    with pytest.raises(ConfigError, match="names its board"):
        farm_device(RunConfig(model="m", device="ssh://pi@b1", options=(("machine", "x"),)))


def test_each_device_is_a_resource_of_capacity_one() -> None:
    res = node_resources(["cpu@lab1", "ssh://pi@board1", "adb://R58M", "cpu@lab1"])
    assert res == {"costmeter-device:cpu@lab1": 1, "costmeter-device:ssh://pi@board1": 1,
                   "costmeter-device:adb://R58M": 1}
    assert resource_device(device_resource("ssh://pi@b")) == "ssh://pi@b"
    assert resource_device("CPU") is None


def test_node_start_argv_declares_the_devices() -> None:
    argv = node_start_argv(["cpu@lab1", "ssh://pi@board1"], address="10.0.0.5:6379", num_cpus=4)
    assert argv[:3] == ["ray", "start", "--address=10.0.0.5:6379"]
    resources = json.loads(next(a for a in argv if a.startswith("--resources="))[len("--resources="):])
    assert resources == {"costmeter-device:cpu@lab1": 1, "costmeter-device:ssh://pi@board1": 1}
    assert "--num-cpus=4" in argv
    head = node_start_argv(["cpu"], head=True, port=6390)
    assert head[:4] == ["ray", "start", "--head", "--port=6390"]
    with pytest.raises(ConfigError):
        node_start_argv(["cpu"], address="h:1", head=True)
    with pytest.raises(ConfigError):
        node_start_argv(["cpu"])


def test_farm_node_print_is_a_runnable_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["farm", "node", "--address", "10.0.0.5:6379", "-d", "cpu@lab1", "-d", "adb://R58M",
                 "--workdir", str(tmp_path), "--print"]) == 0
    words = shlex.split(capsys.readouterr().out.strip())
    assert words[0] == f"COSTMETER_HOME={tmp_path.resolve()}"
    assert words[1:4] == ["ray", "start", "--address=10.0.0.5:6379"]
    assert json.loads(words[4][len("--resources="):]) == {"costmeter-device:cpu@lab1": 1,
                                                          "costmeter-device:adb://R58M": 1}


@pytest.mark.parametrize("argv, needle", [
    (["farm", "node", "--address", "h:1", "-d", "tpu", "--print"], "unknown device 'tpu'"),
    (["farm", "node", "--address", "h:1", "--print"], "at least one --device"),
    (["farm", "status", "--address", "ray://"], "malformed farm address"),
])
def test_bad_farm_input_is_one_line_and_exit_2(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["farm", "status"],
    ["farm", "check", "-d", "cpu"],
    ["farm", "node", "--head", "-d", "cpu"],
])
def test_without_ray_farm_commands_are_one_line_naming_the_extra(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the device farm needs Ray" in err and "pip install 'costmeter[farm]'" in err


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_head_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    port = _closed_port()
    for argv in (["farm", "status", "--address", f"127.0.0.1:{port}"],
                 ["farm", "check", "--address", f"ray://127.0.0.1:{port}", "-d", "cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot reach the Ray head at 127.0.0.1:{port}" in err, err


def test_ledger_counts_attempts_and_keeps_unfinished_jobs() -> None:
    ledger = Ledger()
    ledger.submitted("r1", [{"job_id": "a", "label": "A", "device": "cpu"},
                            {"job_id": "b", "label": "B", "device": "cpu"}])
    assert [j["state"] for j in ledger.jobs()] == ["queued", "queued"]
    assert ledger.started("a", "n1", "h1", 11) == 1
    assert ledger.started("a", "n2", "h2", 12) == 2  # retried after its node was lost
    rec = ledger.finished("a", "ok")
    assert rec["state"] == "finished" and rec["attempts"] == 2 and rec["node_id"] == "n2"
    assert ledger.started("a", "n3", "h3", 13) == 0  # a late start of a finished job changes nothing
    assert ledger.finished("b", "lost", "NodeDiedError")["state"] == "failed"
    ledger.submitted("r2", [{"job_id": f"j{i}", "label": "x", "device": "cpu"} for i in range(MAX_FINISHED + 5)])
    for i in range(MAX_FINISHED + 4):
        ledger.finished(f"j{i}", "ok")
    jobs = ledger.jobs()
    assert len(jobs) == MAX_FINISHED + 1  # the finished ones pruned to the limit, the queued one kept
    assert any(j["job_id"] == f"j{MAX_FINISHED + 4}" and j["state"] == "queued" for j in jobs)
    assert all(j["run_id"] == "r2" for j in ledger.jobs("r2"))


def test_a_benchmark_sees_the_nodes_thread_and_accelerator_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker sets OMP_NUM_THREADS=1 and hides GPUs for a task without CPUs/GPUs; the benchmark
    must see what the node's raylet was started with, and the worker gets Ray's values back after."""
    import os
    import subprocess

    from costmeter.harness.executors.farm_node import node_environment, node_variables

    assert node_variables({"OMP_NUM_THREADS": "4", "PATH": "/bin"})["OMP_NUM_THREADS"] == "4"
    assert node_variables(None)["CUDA_VISIBLE_DEVICES"] is None
    raylet = subprocess.Popen(["sleep", "60"], env={"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "0,1"})
    environ = Path(f"/proc/{raylet.pid}/environ")
    while b"OMP_NUM_THREADS=3" not in environ.read_bytes():  # until the child has exec'd (not a fork copy)
        time.sleep(0.01)
    try:
        monkeypatch.setenv("RAY_RAYLET_PID", str(raylet.pid))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "")
        with node_environment():
            assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
            assert "ROCR_VISIBLE_DEVICES" not in os.environ  # the node had none
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == ""
        assert os.environ["ROCR_VISIBLE_DEVICES"] == ""
    finally:
        raylet.kill()
        raylet.wait()


def test_each_device_has_its_own_folder_on_a_node(tmp_path) -> None:
    from costmeter.harness.executors.farm_node import device_folder

    assert device_folder(str(tmp_path), "cpu@lab1") == tmp_path / "farm" / "cpu@lab1"
    assert device_folder(str(tmp_path), "ssh://pi@b1:22") == tmp_path / "farm" / "ssh___pi@b1_22"
    assert device_folder(str(tmp_path), "cpu") != device_folder(str(tmp_path), "adb://R58M")


def test_run_on_farm_with_an_unreachable_head_writes_nothing(tmp_path) -> None:
    pytest.importorskip("ray")
    from costmeter.errors import UnavailableError
    from costmeter.harness.config import RunConfig
    from costmeter.harness.executors.ray_farm import run_on_farm
    from costmeter.results.store import ResultStore

    port = _closed_port()
    with ResultStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        with pytest.raises(UnavailableError, match=f"cannot reach the Ray head at 127.0.0.1:{port}") as err:
            run_on_farm([RunConfig(model="m", device="fake", runtime="fake")], f"127.0.0.1:{port}", store, tmp_path)
        assert "\n" not in str(err.value) and store.results() == []


def test_a_node_whose_raylet_is_gone_counts_as_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from costmeter.harness.executors.farm_node import raylet_alive

    monkeypatch.delenv("RAY_RAYLET_PID", raising=False)
    assert raylet_alive()  # not in a Ray worker: nothing to say
    proc = subprocess.Popen(["sleep", "60"])
    monkeypatch.setenv("RAY_RAYLET_PID", str(proc.pid))
    assert raylet_alive()
    proc.kill()
    import psutil

    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:  # the signal lands asynchronously
        time.sleep(0.01)
    assert not raylet_alive()  # killed, not yet reaped (a zombie) counts as gone
    proc.wait()
    assert not raylet_alive()


class _FlakyRay:
    """A stand-in for the ray module whose first ``init`` calls fail as Ray Client's do when
    the head could not start the driver's server."""

    def __init__(self, failures: int, message: str = "Initialization failure from server: Traceback") -> None:
        self.failures, self.message, self.calls, self.connected = failures, message, 0, False

    def is_initialized(self) -> bool:
        return self.connected

    def init(self, address: str, **_: object) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionAbortedError(self.message)
        self.connected = True

    def shutdown(self) -> None:
        self.connected = False


@pytest.mark.parametrize("failures,connects", [(0, True), (2, True), (3, False)])
def test_a_ray_client_server_that_failed_to_start_is_tried_again(monkeypatch: pytest.MonkeyPatch, failures: int,
                                                                connects: bool) -> None:
    from costmeter.errors import UnavailableError
    from costmeter.harness.executors import ray_farm

    fake = _FlakyRay(failures)
    monkeypatch.setattr(ray_farm, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_farm, "_require_reachable", lambda where: None)
    monkeypatch.setattr(ray_farm.time, "sleep", lambda s: None)
    if connects:
        with ray_farm.farm_session("ray://127.0.0.1:10001"):
            assert fake.connected
        assert fake.calls == failures + 1 and not fake.connected
    else:
        with pytest.raises(UnavailableError, match="Initialization failure from server"):
            with ray_farm.farm_session("ray://127.0.0.1:10001"):
                pass
        assert fake.calls == ray_farm.CLIENT_TRIES


def test_other_connection_errors_are_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.errors import UnavailableError
    from costmeter.harness.executors import ray_farm

    fake = _FlakyRay(1, message="connection refused")
    monkeypatch.setattr(ray_farm, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_farm, "_require_reachable", lambda where: None)
    with pytest.raises(UnavailableError, match="connection refused"):
        with ray_farm.farm_session("ray://127.0.0.1:10001"):
            pass
    assert fake.calls == 1
