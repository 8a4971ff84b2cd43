"""Remote benchmarks over SSH against a real ``sshd`` started on a loopback port with a temporary
host key and user key; the "board" is this machine, its Python the one running the tests."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import costmeter
from costmeter.devices.base import get_runtime
from costmeter.devices.remote.ssh import SshOptions, SshTarget, SshTransport
from costmeter.errors import ConfigError, UnavailableError
from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.convert.artifacts import converter_problem
from costmeter.harness.executors.remote import (DeviceExecutors, RemoteSettings, WorkerExecutor, check_local_pinning,
                                      parse_cpus)
from costmeter.harness.runner import Runner, validate
from costmeter.results.schema import Status

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
SOURCE_ROOT = str(Path(costmeter.__file__).resolve().parent.parent)
FAST = ProtocolConfig(warmup_count=2, warmup_s=0, min_count=20, min_time_s=0.05, max_time_s=5,
                      percentiles=(50.0,), max_cv=1000.0)
NO_OPENSSH = ("needs OpenSSH: apt-get install -y openssh-server openssh-client"
              if SSHD is None or shutil.which("ssh") is None or shutil.which("scp") is None else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private sshd on 127.0.0.1 accepting one user key; yields paths and the device URL.
    Only the tests that use it skip without OpenSSH: the rest need no sshd."""
    if NO_OPENSSH:
        pytest.skip(NO_OPENSSH)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation folder
    root = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(root / "host_key")
    user_pub = _keygen(root / "user_key")
    _keygen(root / "stranger_key")
    (root / "authorized_keys").write_text(user_pub + "\n")
    port = _free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    log = open(root / "sshd.log", "wb")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text()[-300:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    other_pub = (root / "stranger_key.pub").read_text().split()
    (root / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {other_pub[0]} {other_pub[1]}\n")
    (root / "empty_known_hosts").write_text("")
    try:
        yield {"root": root, "port": port, "device": f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
               "options": SshOptions(identity=str(root / "user_key"), known_hosts=str(root / "known_hosts"))}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _settings(sshd: dict[str, Any], **ssh: Any) -> RemoteSettings:
    options = sshd["options"]
    fields = {"identity": options.identity, "known_hosts": options.known_hosts, **ssh}
    return RemoteSettings(python=sys.executable, pythonpath=SOURCE_ROOT, ssh=SshOptions(**fields))


def _config(workdir: Path, device: str, runtime: str = "onnxruntime", **options: str) -> RunConfig:
    return RunConfig(model="tiny_mlp", device=device, runtime=runtime, protocol=FAST, workdir=str(workdir),
                     threads=1, timeout_s=300, options=tuple(options.items()))


@pytest.mark.slow
def test_benchmark_runs_on_the_board_and_comes_back(sshd: dict[str, Any], tmp_path: Path) -> None:
    executors = DeviceExecutors(_settings(sshd))
    configs = [_config(tmp_path, sshd["device"]), _config(tmp_path, sshd["device"], "torch", cpus="0")]
    if get_runtime("cpu", "tvm").is_available()[0] and converter_problem("tvm") is None:
        configs.append(_config(tmp_path, sshd["device"], "tvm"))  # a folder artifact (lib.so + meta.json)
    try:
        jobs = validate(configs)
        found = executors.preflight(configs)[sshd["device"]]
        results = Runner(None, tmp_path, run_in=executors).run(jobs)
        remote_root = executors.executor(sshd["device"])._root
    finally:
        executors.close()
    assert found["costmeter"] == costmeter.__version__
    assert found["energy"]["available"] in (True, False) and "reason" in found["energy"]
    for result in results:
        assert result.status is Status.OK, result.error
        assert result.measurement.count >= FAST.min_count
        assert result.extra["parity_ok"]  # outputs came back from the board
        assert result.key.device == sshd["device"]
        assert result.environment["remote"]["device"].startswith("ssh://")
    pinned = results[1]
    assert pinned.environment["remote"]["pinned_cpus"] == [0]
    assert pinned.environment["cpu_affinity"] == [0]  # taskset on the board
    assert remote_root and not Path(remote_root).exists()  # the board's folder is removed


@pytest.mark.slow
def test_cli_runs_over_ssh_and_stores_results(sshd: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from costmeter.cli import main

    monkeypatch.setenv("COSTMETER_HOME", str(tmp_path))
    args = ["run", "--device", sshd["device"], "-r", "onnxruntime", "-m", "tiny_mlp", "--min-time", "0.05",
            "--min-count", "20", "--warmup", "2", "--warmup-time", "0", "--percentiles", "50", "--json",
            "--remote-python", sys.executable, "--remote-pythonpath", SOURCE_ROOT,
            "--ssh-identity", sshd["options"].identity, "--known-hosts", sshd["options"].known_hosts]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert rows[0]["status"] == "ok" and rows[0]["key"]["device"] == sshd["device"]
    assert (tmp_path / "results.db").exists()


def _preflight_error(sshd: dict[str, Any], device: str | None = None, python: str | None = None,
                     pythonpath: str | None = SOURCE_ROOT, **ssh: Any) -> str:
    settings = _settings(sshd, **ssh)
    settings = RemoteSettings(python=python or settings.python, pythonpath=pythonpath, ssh=settings.ssh)
    executor = DeviceExecutors(settings).executor(device or sshd["device"])
    with pytest.raises(UnavailableError) as info:
        executor.preflight(["onnxruntime"])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_host_key_mismatch_is_refused(sshd: dict[str, Any]) -> None:
    message = _preflight_error(sshd, known_hosts=str(sshd["root"] / "wrong_known_hosts"))
    assert "does not match" in message and "ssh-keygen -R" in message


def test_unknown_host_key_is_refused_unless_asked(sshd: dict[str, Any], tmp_path: Path) -> None:
    message = _preflight_error(sshd, known_hosts=str(sshd["root"] / "empty_known_hosts"))
    assert "not in" in message and "--accept-new-host-key" in message
    fresh = tmp_path / "known_hosts"
    fresh.write_text("")
    settings = _settings(sshd, known_hosts=str(fresh), accept_new_host_key=True)
    found = DeviceExecutors(settings).executor(sshd["device"]).preflight(["onnxruntime"])
    host_key = (sshd["root"] / "host_key.pub").read_text().split()[1]
    assert found["runtimes"]["onnxruntime"][0] and host_key in fresh.read_text()  # key recorded


def test_authentication_failure(sshd: dict[str, Any]) -> None:
    message = _preflight_error(sshd, identity=str(sshd["root"] / "stranger_key"))
    assert "authentication" in message and "--ssh-identity" in message


def test_unreachable_host(sshd: dict[str, Any]) -> None:
    message = _preflight_error(sshd, device=f"ssh://{getpass.getuser()}@127.0.0.1:{_free_port()}")
    assert "cannot reach" in message


def test_missing_remote_python(sshd: dict[str, Any]) -> None:
    message = _preflight_error(sshd, python="/nonexistent/python3")
    assert "not found" in message and "--remote-python" in message


def test_missing_remote_costmeter(sshd: dict[str, Any], tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # a Python that cannot import costmeter
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    message = _preflight_error(sshd, python=str(bare / "bin" / "python"), pythonpath=None)
    assert "costmeter is not importable" in message and "--remote-pythonpath" in message


def test_cli_exits_2_with_one_line_for_host_key_mismatch(sshd: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from costmeter.cli import main

    monkeypatch.setenv("COSTMETER_HOME", str(tmp_path))
    args = ["run", "--device", sshd["device"], "-r", "onnxruntime", "-m", "tiny_mlp",
            "--remote-python", sys.executable, "--remote-pythonpath", SOURCE_ROOT,
            "--ssh-identity", sshd["options"].identity, "--known-hosts", str(sshd["root"] / "wrong_known_hosts")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results.db").exists()  # nothing written


def test_remote_rapl_is_read_through_the_same_reader(sshd: dict[str, Any], tmp_path: Path) -> None:
    from costmeter.devices.energy.rapl import RaplMeter

    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    transport = SshTransport(SshTarget.parse(sshd["device"]), sshd["options"])
    meter = RaplMeter(sysfs_root=tmp_path / "powercap", read_text=transport.read_text, list_dir=transport.list_dir)
    assert meter.is_available() == (True, "")
    meter.start()
    (zone / "energy_uj").write_text("3500000\n")
    reading = meter.stop()
    assert reading.energy_j == pytest.approx(2.5)


def test_ssh_commands_quote_each_argument_for_the_remote_shell() -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str], timeout_s: float | None) -> Any:
        from costmeter.devices.remote.transport import CommandResult

        calls.append(argv)
        return CommandResult(0, "", "")

    transport = SshTransport(SshTarget.parse("ssh://pi@board.local:2222"), SshOptions(), fake)
    transport.run(["cat", "/tmp/a b; rm -rf /"])
    argv = calls[0]
    assert argv[:3] == ["ssh", "-p", "2222"] and "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv[-2:] == ["pi@board.local", "cat '/tmp/a b; rm -rf /'"]


@pytest.mark.parametrize("url", ["ssh://", "ssh://-oProxyCommand=x@host", "ssh://user@-host", "ssh://u@h:0",
                                 "ssh://u@h:99999", "ssh://u@ho st"])
def test_bad_ssh_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        SshTarget.parse(url)


def test_cpu_lists() -> None:
    assert parse_cpus("4-7,9") == [4, 5, 6, 7, 9]
    for bad in ("", "a", "7-4", "1,,2", "-1"):
        with pytest.raises(ConfigError):
            parse_cpus(bad)


def test_local_transport_executor_pins_cpus(tmp_path: Path) -> None:
    from costmeter.devices.remote.transport import LocalTransport

    executor = WorkerExecutor(LocalTransport(), sys.executable, SOURCE_ROOT, str(tmp_path))
    found = executor.preflight(["onnxruntime"], need_taskset=True)
    assert found["runtimes"]["onnxruntime"][0]
    assert check_local_pinning([0]) == {"pinned_cpus": [0]}
    with pytest.raises(ConfigError, match="does not offer"):
        check_local_pinning([4096])
    with pytest.raises(UnavailableError, match="taskset"):
        check_local_pinning([0], which=lambda name: None)


@pytest.mark.slow
def test_pinned_worker_failures_come_back_as_failed_results(tmp_path: Path) -> None:
    """Through the transport executor (local here, the same code as over SSH): a hang is killed
    on the device by `timeout -s KILL`, a crash is reported, and the run goes on."""
    # only the hang gets the short timeout: the healthy job samples until its median is pinned
    # (up to FAST's max_time_s), which on a loaded machine takes longer than 3 s
    configs = [RunConfig(model=name, device="fake", runtime="fake", protocol=FAST, workdir=str(tmp_path),
                         timeout_s=timeout, options=(("cpus", "0"), *opts))
               for name, timeout, opts in (("hang", 3, (("fault", "hang"),)),
                                           ("segv", 60, (("fault", "segfault"),)),
                                           ("healthy", 60, (("latency_us", "50"),)))]
    executors = DeviceExecutors()
    try:
        executors.preflight(configs)
        results = {r.key.model_id: r for r in Runner(None, tmp_path, run_in=executors).run(validate(configs))}
    finally:
        executors.close()
    assert results["hang"].status is Status.FAILED and "timed out after 3 s" in results["hang"].error
    assert results["segv"].status is Status.FAILED and "SIGSEGV" in results["segv"].error
    assert results["healthy"].status is Status.OK
    assert results["healthy"].environment["cpu_affinity"] == [0]


def test_an_openvino_ir_travels_with_its_weights(tmp_path: Path) -> None:
    """A pinned (or remote) run copies the IR's folder, so model.xml finds model.bin beside it;
    single-file artifacts are copied alone."""
    from costmeter.devices.remote.transport import LocalTransport

    ir = tmp_path / "cache" / "openvino-int8" / "key.q"
    ir.mkdir(parents=True)
    (ir / "model.xml").write_text("<net/>")
    (ir / "model.bin").write_bytes(b"\x00" * 16)
    onnx = tmp_path / "cache" / "m.onnx"
    onnx.write_bytes(b"onnx")
    remote = tmp_path / "remote"
    remote.mkdir()
    executor = WorkerExecutor(LocalTransport(), sys.executable, SOURCE_ROOT, str(remote))
    uploaded = Path(executor._upload_artifact(str(ir / "model.xml")))
    assert uploaded.name == "model.xml" and uploaded.with_suffix(".bin").read_bytes() == b"\x00" * 16
    single = Path(executor._upload_artifact(str(onnx)))
    assert single.read_bytes() == b"onnx" and single.parent != uploaded.parent
    assert executor._upload_artifact(None) is None
