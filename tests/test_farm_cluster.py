"""The device farm on a real local Ray cluster: a head (no devices) and two worker nodes that
declare different devices (``fake@alpha`` on one, ``fake@beta`` on the other, ``fake`` and
``fake@shared`` on both). One cluster start for the module; the node-kill test comes last because
it removes a node.

Jobs use the seeded fake runtime (busy-waits on the real clock in an isolated worker process), so
the farm is exercised end to end: validate, Ray placement by device resource, the harness on the
node, results streamed into a real SQLite store.
"""
from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from costmeter.cli import main  # noqa: E402
from costmeter.errors import ConfigError  # noqa: E402
from costmeter.harness.config import ProtocolConfig, RunConfig  # noqa: E402
from costmeter.harness.executors.farm_ledger import NAMESPACE, ledger_actor  # noqa: E402
from costmeter.harness.executors.ray_farm import (  # noqa: E402
    farm_device, farm_status, node_resources, on_farm_device, run_on_farm)
from costmeter.results.schema import Status  # noqa: E402
from costmeter.results import journal  # noqa: E402
from costmeter.results.integrity import check_store  # noqa: E402
from costmeter.results.store import ResultStore  # noqa: E402
from suite_helpers import SHA, bench_popen  # noqa: E402

FAST = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=50, min_time_s=0.05, max_time_s=5,
                      percentiles=(50.0, 90.0))
WAIT_LIMIT_S = 240.0  # a hung farm fails the test instead of hanging it; no figure is timed


@dataclass
class Farm:
    cluster: Any
    nodes: dict[str, Any]  # "alpha" / "beta" -> ray node object
    client_port: int

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("farm-home")
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # no auth token written under $HOME
        # The head's Ray Client server gives a client's server process 30 s to start: too short on a
        # loaded CI machine.
        mp.setenv("RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S", "180")
        mp.delenv("COSTMETER_STORE", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "ray_client_server_port": port})
        try:
            nodes = {}
            for name in ("alpha", "beta"):  # each node its own working folder, as on separate machines
                mp.setenv("COSTMETER_HOME", str(home / name))
                devices = ["fake", "fake@shared", f"fake@{name}"]
                nodes[name] = cluster.add_node(num_cpus=1, resources=node_resources(devices))
            cluster.wait_for_nodes()
            yield Farm(cluster, nodes, port)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


def _cfg(model: str, device: str, protocol: ProtocolConfig = FAST) -> RunConfig:
    """A fake-runtime job on the farm device ``device`` (``fake@alpha``: device fake, machine=alpha)."""
    return on_farm_device(RunConfig(model=model, device="fake", runtime="fake", protocol=protocol, timeout_s=60,
                                    options=(("latency_us", "50"), ("jitter", "0.02"))), device)


def _store(tmp_path: Path) -> ResultStore:
    return ResultStore(f"sqlite:///{tmp_path / 'results.db'}")


def test_jobs_land_on_their_devices_nodes_and_arrive_in_the_store_once(farm: Farm, tmp_path: Path) -> None:
    configs = [_cfg("alpha0", "fake@alpha"), _cfg("beta0", "fake@beta")] + [_cfg(f"shared{i}", "fake@shared")
                                                                          for i in range(3)]
    progress: list[int] = []
    with _store(tmp_path) as store:
        # ray://: the driver talks to the head through Ray Client, as a laptop would
        results = run_on_farm(configs, farm.client_address, store, tmp_path, tag="farm-test",
                              progress=lambda done, total, cfg, result: progress.append(done) if result else None)
        stored = store.results(run_id=results[0].run_id)
    assert [r.key.model_id for r in results] == [c.model for c in configs]  # the configs' order
    assert sorted(r.key.model_id for r in stored) == sorted(c.model for c in configs)  # each exactly once
    assert progress == list(range(1, len(configs) + 1))
    alpha, beta = farm.node_id("alpha"), farm.node_id("beta")
    allowed = {"fake@alpha": {alpha}, "fake@beta": {beta}, "fake@shared": {alpha, beta}}
    for cfg, r in zip(configs, results):
        assert r.status is Status.OK, r.error
        assert r.tag == "farm-test" and r.measurement is not None and r.measurement.count >= 50
        assert farm_device(cfg) in allowed and r.extra["farm"]["node_id"] in allowed[farm_device(cfg)], r.extra
        assert r.extra["farm"]["attempts"] == 1
        # the benchmark saw the node's thread settings and priority, not the Ray worker's
        # (OMP_NUM_THREADS=1, niceness 15)
        assert r.environment["thread_env"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")
        assert r.extra["farm"]["nice"] == os.nice(0)
    # the machine label is part of the stored key: two machines' results never share one
    labels = {r.key.model_id: (r.key.device, dict(r.key.options).get("machine")) for r in stored}
    assert labels["alpha0"] == ("fake", "alpha") and labels["shared1"] == ("fake", "shared")
    assert all(r.extra["farm"]["node_id"] in (alpha, beta) for r in stored)  # the farm facts reach the store
    # A device (per node) never ran two benchmarks at once: its jobs' intervals do not overlap.
    spans: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for cfg, r in zip(configs, results):
        spans[(r.extra["farm"]["node_id"], farm_device(cfg))].append((r.started_at, r.finished_at))
    for key, intervals in spans.items():
        intervals.sort()
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(intervals, intervals[1:])), (key, intervals)


def test_a_device_no_node_holds_is_refused_before_anything_runs(farm: Farm, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    configs = [_cfg("would-run", "fake@alpha"), _cfg("nowhere", "fake@gamma")]
    with _store(tmp_path) as store:
        with pytest.raises(ConfigError) as err:
            run_on_farm(configs, farm.address, store, tmp_path)
        assert store.results() == []  # nothing written
    message = str(err.value)
    assert "'fake@gamma'" in message and "bench farm node --device fake@gamma" in message and "\n" not in message
    assert not any(j["label"].startswith(("would-run/", "nowhere/")) for j in farm_status(farm.address).jobs)
    assert main(["farm", "check", "--address", farm.address, "-d", "fake@alpha", "-d", "fake@gamma"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fake@gamma" in lines[0]


def test_farm_status_lists_nodes_devices_and_jobs(farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    status = farm_status(farm.address)
    assert status.devices["fake@shared"]["total"] == 2 and status.devices["fake@alpha"]["total"] == 1
    by_id = {n.node_id: n for n in status.nodes}
    assert set(by_id[farm.node_id("alpha")].devices) == {"fake", "fake@shared", "fake@alpha"}
    assert set(by_id[farm.node_id("beta")].devices) == {"fake", "fake@shared", "fake@beta"}
    assert sum(n.is_head for n in status.nodes) == 1 and all(n.alive for n in status.nodes)
    assert main(["farm", "status", "--address", farm.address]) == 0
    out = capsys.readouterr().out
    assert "3 live node(s) of 3" in out and "fake@beta (free)" in out and "jobs:" in out


def _wait_running(label_prefix: str | tuple[str, ...], limit_s: float = WAIT_LIMIT_S) -> dict[str, Any]:
    ledger, deadline = None, time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ledger = ledger or ledger_actor(create=False)
        jobs = ray.get(ledger.jobs.remote()) if ledger is not None else []
        running = [j for j in jobs if j["label"].startswith(label_prefix) and j["state"] == "running"]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"{label_prefix} never started")


KILL_SUITE = """\
[suite]
id = "farm-kill"
tag = "nightly"
timeout_s = 120

[protocol]
warmup = 2
warmup_time_s = 0
min_count = 50
min_time_s = 2.0
max_time_s = 4.0
percentiles = [50]

[matrix]
devices = ["fake"]
runtimes = ["fake"]
batches = [1]

[options.fake]
latency_us = "50"
jitter = "0.02"

[[models]]
spec = ["m1", "m2"]
"""


def test_a_worker_node_killed_mid_suite_has_its_job_retried_on_the_other_node(farm: Farm, tmp_path: Path) -> None:
    """`bench suite run --farm HEAD:PORT` (a child process, as from cron) while a worker node dies
    mid-job: the job is retried on the other node holding `fake`, the suite completes, and every
    expected result is stored exactly once in a store that passes its integrity check."""
    import psutil

    suite, workdir = tmp_path / "kill.toml", tmp_path / "wd"
    suite.write_text(KILL_SUITE)
    workdir.mkdir()
    orphans: list[Any] = []
    ray.init(address=farm.address, namespace=NAMESPACE, log_to_driver=False)  # to watch the ledger
    try:
        proc = bench_popen(["suite", "run", str(suite), "--sha", SHA, "--farm", farm.address, "-q"], workdir, tmp_path)
        try:
            victim = _wait_running(("m1/", "m2/"))
            killed = next(name for name, n in farm.nodes.items() if n.node_id == victim["node_id"])
            # the benchmark child outlives its Ray worker (its own session): reap it by pid afterwards
            orphans = psutil.Process(victim["pid"]).children(recursive=True)
            farm.cluster.remove_node(farm.nodes.pop(killed), allow_graceful=False)
            out, err = proc.communicate(timeout=WAIT_LIMIT_S)
        finally:
            proc.kill()
    finally:
        ray.shutdown()
        _gone, alive = psutil.wait_procs(orphans, timeout=30)
        for leftover in alive:
            leftover.kill()
    assert proc.returncode == 0, out + err
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        stored = store.results()
        assert check_store(store).ok
        with store.reading() as conn:
            runs = journal.suite_runs(conn, "farm-kill")
    assert sorted(r.key.model_id for r in stored) == ["m1", "m2"]  # each exactly once
    assert len(runs) == 1 and runs[0].state == journal.COMPLETE
    survivor = next(iter(farm.nodes.values())).node_id
    by_job = {r.extra["farm"]["job_id"]: r for r in stored}
    assert all(r.status is Status.OK for r in stored), [r.error for r in stored]
    moved = by_job[victim["job_id"]]
    assert moved.extra["farm"]["node_id"] == survivor and moved.extra["farm"]["attempts"] == 2, moved.extra
