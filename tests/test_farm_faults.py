"""Farm faults beyond the default run (``slow``): a node lost with no retries left, a device whose
only node died (its queued job fails after the wait), a node started by ``bench farm node``
joining and taking over a killed node's jobs, and ``bench suite run --farm local`` with a real
runtime. Each ends with every expected result in the store exactly once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
from ray.cluster_utils import Cluster  # noqa: E402

from costmeter.harness.config import ProtocolConfig, RunConfig  # noqa: E402
from costmeter.harness.executors.farm_ledger import NAMESPACE, held_devices, ledger_actor  # noqa: E402
from costmeter.harness.executors.ray_farm import farm_device, node_resources, on_farm_device, run_on_farm  # noqa: E402
from costmeter.results.schema import Status  # noqa: E402
from costmeter.results.store import ResultStore  # noqa: E402

pytestmark = pytest.mark.slow

FAST = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=50, min_time_s=0.05, max_time_s=5,
                      percentiles=(50.0, 90.0))
MEDIUM = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=50, min_time_s=2.0, max_time_s=4.0,
                        percentiles=(50.0, 90.0))
LONG = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=50, min_time_s=8.0, max_time_s=10.0,
                      percentiles=(50.0, 90.0))
WAIT_LIMIT_S = 300.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("farm-faults-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("COSTMETER_STORE", raising=False)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            c.farm_nodes = {}
            for name in ("alpha", "beta"):  # each node its own working folder, as on separate machines
                mp.setenv("COSTMETER_HOME", str(home / name))
                c.farm_nodes[name] = c.add_node(num_cpus=1, resources=node_resources(["fake@shared", f"fake@{name}"]))
            c.wait_for_nodes()
            ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False)  # run_on_farm reuses it
            yield c
        finally:
            if ray.is_initialized():
                ray.shutdown()
            c.shutdown()


def _cfg(model: str, device: str, protocol: ProtocolConfig = FAST) -> RunConfig:
    """A fake-runtime job on the farm device ``device`` (``fake@alpha``: device fake, machine=alpha)."""
    return on_farm_device(RunConfig(model=model, device="fake", runtime="fake", protocol=protocol, timeout_s=60,
                                    options=(("latency_us", "50"), ("jitter", "0.02"))), device)


def _jobs() -> list[dict[str, Any]]:
    ledger = ledger_actor(create=False)  # None until the first run creates it
    return ray.get(ledger.jobs.remote()) if ledger is not None else []


def _wait(predicate, what: str) -> Any:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _in_background(call) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["results"] = call()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _kill_node(cluster: Any, name: str) -> list[Any]:
    """Remove a node the hard way; returns the benchmark processes it leaves (own session)."""
    node = cluster.farm_nodes.pop(name)
    orphans = []
    for job in _jobs():
        if job["state"] == "running" and job["node_id"] == node.node_id:
            try:
                orphans += psutil.Process(job["pid"]).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    cluster.remove_node(node, allow_graceful=False)
    return orphans


def _reap(orphans: list[Any]) -> None:
    _gone, alive = psutil.wait_procs(orphans, timeout=30)
    for proc in alive:
        proc.kill()


def test_no_retries_left_and_a_device_whose_only_node_died(cluster: Any, tmp_path: Path) -> None:
    configs = [_cfg("v1", "fake@shared", LONG), _cfg("v2", "fake@shared", LONG),
               _cfg("a1", "fake@alpha", LONG), _cfg("a2", "fake@alpha", LONG)]
    alpha = cluster.farm_nodes["alpha"].node_id
    with ResultStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        thread, out = _in_background(lambda: run_on_farm(configs, cluster.address, store, tmp_path,
                                                         max_retries=0, node_wait_s=3))
        # both shared jobs run (one per node) and one alpha job runs; the other waits for fake@alpha
        _wait(lambda: sum(j["state"] == "running" and j["label"].startswith(("v1/", "v2/", "a1/", "a2/"))
                          for j in _jobs()) == 3, "v1, v2 and an alpha job to run")
        running_alpha = next(j["label"].split("/")[0] for j in _jobs()
                             if j["state"] == "running" and j["label"].startswith(("a1/", "a2/")))
        orphans = _kill_node(cluster, "alpha")
        thread.join(WAIT_LIMIT_S)
        _reap(orphans)
        assert "error" not in out, out.get("error")
        stored = store.results()
    assert sorted(r.key.model_id for r in stored) == sorted(c.model for c in configs)
    by = {r.key.model_id: r for r in out["results"]}
    on_alpha = [m for m in ("v1", "v2") if by[m].status is Status.FAILED]
    assert len(on_alpha) == 1  # the shared job on the lost node; the other one finished on beta
    assert "no result after 1 tries on nodes holding fake@shared (max_retries=0)" in by[on_alpha[0]].error
    other = ({"v1", "v2"} - set(on_alpha)).pop()
    assert by[other].status is Status.OK and by[other].extra["farm"]["node_id"] != alpha
    waiting = ({"a1", "a2"} - {running_alpha}).pop()
    assert by[running_alpha].status is Status.FAILED and "no result after 1 tries" in by[running_alpha].error
    assert by[waiting].status is Status.FAILED
    assert "no live node has held device fake@alpha for 3 s" in by[waiting].error


def test_a_node_from_bench_farm_node_joins_and_takes_over_a_killed_nodes_jobs(cluster: Any, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    node = subprocess.Popen([sys.executable, "-c", "import sys; from costmeter.cli import main; sys.exit(main())",
                             "farm", "node", "--address", cluster.address, "-d", "fake@shared", "-d", "fake@alpha",
                             "--num-cpus", "1", "--workdir", str(tmp_path / "node-wd"), "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orphans: list[Any] = []
    try:
        _wait(lambda: "fake@alpha" in held_devices(), "the new node to declare fake@alpha")
        new_id = next(i for i in held_devices()["fake@alpha"])
        configs = [_cfg(f"s{i}", "fake@shared", MEDIUM) for i in range(6)] + [_cfg("a0", "fake@alpha"),
                                                                               _cfg("a1", "fake@alpha")]
        beta = cluster.farm_nodes["beta"].node_id
        with ResultStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
            thread, out = _in_background(lambda: run_on_farm(configs, cluster.address, store, tmp_path))
            _wait(lambda: any(j["state"] == "running" and j["node_id"] == beta for j in _jobs()),
                  "a job to run on beta")
            orphans = _kill_node(cluster, "beta")
            thread.join(WAIT_LIMIT_S)
            assert "error" not in out, out.get("error")
            stored = store.results()
        assert sorted(r.key.model_id for r in stored) == sorted(c.model for c in configs)
        results = out["results"]
        assert all(r.status is Status.OK for r in results), [r.error for r in results]
        assert {r.extra["farm"]["node_id"] for c, r in zip(configs, results) if farm_device(c) == "fake@alpha"} \
            == {new_id}
        retried = [r for r in results if r.extra["farm"]["attempts"] > 1]
        assert retried and all(r.extra["farm"]["node_id"] == new_id for r in retried)
    finally:
        _reap(orphans)
        node.send_signal(signal.SIGTERM)  # `ray start --block` stops its raylet and agents
        node.wait(60)


LOCAL_SUITE = """\
[suite]
id = "local-farm"
timeout_s = 120

[protocol]
warmup = 5
warmup_time_s = 0.05
min_count = 100
min_time_s = 0.3
max_time_s = 5
max_rel_ci = 0.05

[matrix]
devices = ["cpu"]
runtimes = ["onnxruntime"]
threads = [1, 2]

[[models]]
spec = ["tiny_mlp"]
"""


def test_a_suite_on_a_local_farm_runs_a_real_runtime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from costmeter.cli import main
    from costmeter.results.integrity import check_store

    ray.shutdown()  # a local farm starts its own cluster
    suite, workdir = tmp_path / "local.toml", tmp_path / "wd"
    suite.write_text(LOCAL_SUITE)
    workdir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("COSTMETER_HOME", str(workdir))
        assert main(["suite", "run", str(suite), "--sha", "0123456789abcdef", "--farm", "local", "-q"]) == 0
    assert not ray.is_initialized()  # the local cluster was stopped
    with ResultStore(f"sqlite:///{workdir / 'results.db'}") as store:
        stored = store.results()
        assert check_store(store).ok
    assert sorted(r.key.threads for r in stored) == [1, 2]
    for r in stored:
        assert r.status is Status.OK, r.error
        assert r.key.device == "cpu" and r.measurement.count >= 100
        assert r.measurement.summary((50.0,)).median > 0
        assert r.extra["farm"]["attempts"] == 1
    assert (workdir / "farm" / "cpu" / "cache" / "onnx").is_dir()  # the node used the driver's working folder
