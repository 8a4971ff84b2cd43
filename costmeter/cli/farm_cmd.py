"""``bench farm``: the device farm on Ray — start a node that declares its devices, check that a
farm holds the devices a suite needs, and show nodes, devices and jobs."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import click

ADDRESS_HELP = ("The farm: HEAD:6379 (the head's address), ray://HEAD:10001 (Ray Client) or auto (the "
                "cluster running on this machine). Default: $COSTMETER_FARM or auto")


def _address_option(f):
    return click.option("--address", envvar="COSTMETER_FARM", default="auto", show_default=False,
                        help=ADDRESS_HELP)(f)


@click.group()
def farm() -> None:
    """Device farm on Ray: each device is a Ray resource of capacity 1 on the node that holds it."""


@farm.command()
@_address_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON")
@click.option("--jobs", "max_jobs", default=20, show_default=True, help="Most recent jobs to list")
def status(address: str, as_json: bool, max_jobs: int) -> None:
    """Nodes, their devices (busy or free) and queued, running and finished costmeter jobs."""
    from costmeter.harness.executors.ray_farm import farm_status

    st = farm_status(address)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=1, default=str))
        return
    click.echo(f"farm {address}: {sum(n.alive for n in st.nodes)} live node(s) of {len(st.nodes)}")
    for n in st.nodes:
        role = "head" if n.is_head else "node"
        devices = ", ".join(f"{d} ({'busy: ' + job if job else 'free'})" for d, job in n.devices.items()) or "-"
        click.echo(f"  {role} {n.node_id[:12]} {n.address} {'alive' if n.alive else 'DEAD'}: {devices}")
    for device, figures in st.devices.items():
        click.echo(f"  device {device}: {figures['free']:g} of {figures['total']:g} free")
    counts = st.counts()
    click.echo("jobs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    node_alive = {n.node_id: n.alive for n in st.nodes}
    for job in [j for j in st.jobs if j["state"] in ("queued", "running")] + \
            [j for j in st.jobs if j["state"] not in ("queued", "running")][-max_jobs:]:
        where = f" on {job['host']} {str(job['node_id'])[:12]}" if job["node_id"] else ""
        if job["state"] == "running" and not node_alive.get(job["node_id"], False):
            where += " (node lost; Ray retries it)"
        outcome = f" {job['status']}" if job["status"] else ""
        tries = f" tries={job['attempts']}" if job["attempts"] > 1 else ""
        click.echo(f"  {job['state']:<8} {job['label']}{where}{outcome}{tries}")


@farm.command()
@_address_option
@click.option("--device", "-d", "devices", multiple=True, required=True,
              help="A device the farm must hold (repeatable), e.g. cpu@lab1, ssh://pi@board1")
def check(address: str, devices: tuple[str, ...]) -> None:
    """Exit 2 with one line unless a live node holds every device given."""
    from costmeter.harness.executors.ray_farm import farm_session, require_devices, split_device

    for device in devices:
        split_device(device)
    with farm_session(address):
        held = require_devices(list(devices), address)
    for device in devices:
        click.echo(f"{device}: held by {len(held[device])} node(s)")


@farm.command()
@click.option("--address", default=None, help="HEAD:PORT of the farm's head to join")
@click.option("--head", is_flag=True, help="Start the farm's head (on this machine) instead of joining one")
@click.option("--port", default=6379, show_default=True, help="With --head: the port the head listens on")
@click.option("--device", "-d", "devices", multiple=True,
              help="A device this node benchmarks (repeatable): cpu, cpu@LABEL, cuda:N, ssh://user@board, "
                   "adb://SERIAL. Declare each board on one node only")
@click.option("--num-cpus", type=int, default=None, help="CPUs Ray may use on this node (default: Ray's count)")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The node's working folder (caches); default $COSTMETER_HOME or ./.costmeter")
@click.option("--block", is_flag=True,
              help="Stay in the foreground (for a service manager); SIGTERM stops the node")
@click.option("--print", "print_only", is_flag=True, help="Print the `ray start` command instead of running it")
def node(address: str | None, head: bool, port: int, devices: tuple[str, ...], num_cpus: int | None,
         workdir: Path | None, block: bool, print_only: bool) -> None:
    """Start a Ray node that declares its devices as resources (runs `ray start --resources ...`)."""
    from costmeter.errors import ConfigError, UnavailableError
    from costmeter.harness.executors.ray_farm import import_ray, node_start_argv
    from costmeter.workdir import Workdir

    if not devices and not head:
        raise ConfigError("a node needs at least one --device, e.g. --device cpu@$(hostname)")
    argv = node_start_argv(list(devices), address=address, head=head, port=port, num_cpus=num_cpus)
    if not print_only:
        import_ray()  # `ray start` runs with this Python's Ray
    argv += ["--block"] if block else []
    root = (workdir or Workdir.default().root).resolve()
    if print_only:
        click.echo(f"COSTMETER_HOME={shlex.quote(str(root))} " + shlex.join(argv))
        return
    env = {**os.environ, "COSTMETER_HOME": str(root)}
    ray_argv = [sys.executable, "-m", "ray.scripts.scripts", *argv[1:]]
    if block:  # become `ray start --block`, so that a service manager's signals reach it
        os.execve(sys.executable, ray_argv, env)
    proc = subprocess.run(ray_argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = next((ln for ln in reversed((proc.stderr + proc.stdout).splitlines()) if ln.strip()), "")
        raise UnavailableError(f"`ray start` failed (exit {proc.returncode}): {tail.strip()[:200]}; check "
                               "--address and that Ray is installed (pip install 'costmeter[farm]')")
    click.echo(f"node started with devices: {', '.join(devices) or '-'} (working folder {root}); "
               "`bench farm status` lists it")
