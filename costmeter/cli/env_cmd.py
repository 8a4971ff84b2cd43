"""``bench env`` (devices, runtimes, counters) and ``bench models`` (the zoo)."""
from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON")
def env(as_json: bool) -> None:
    """List devices, runtimes (installed or not, with versions and reasons) and readable counters."""
    from costmeter.devices.base import device_kinds, get_runtime, runtime_names
    from costmeter.harness.environment import capture, counters_report

    runtimes = []
    for kind in device_kinds():
        for name in runtime_names(kind):
            ok, reason = get_runtime(kind, name).is_available()
            runtimes.append({"device": kind, "runtime": name, "available": ok, "reason": reason})
    data = {"environment": capture(), "runtimes": runtimes, "counters": counters_report()}
    if as_json:
        click.echo(json.dumps(data, indent=1, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    e = data["environment"]
    console.print(f"host {e.get('hostname')}  cpu {e.get('cpu_model')}  "
                  f"cores {e.get('logical_cores')}  python {e.get('python_version')}")
    t = Table(title="runtimes")
    for c in ("device", "runtime", "available", "reason / version"):
        t.add_column(c, overflow="fold")
    libs = e.get("libraries", {})
    lib_of = {"torch": "torch", "torch_compile": "torch", "onnxruntime": "onnxruntime"}
    for r in runtimes:
        info = r["reason"] if not r["available"] else str(libs.get(lib_of.get(r["runtime"], r["runtime"]), ""))
        t.add_row(r["device"], r["runtime"], "yes" if r["available"] else "no", info)
    console.print(t)
    c = Table(title="counters")
    for col in ("counter", "readable", "detail"):
        c.add_column(col, overflow="fold")
    for item in data["counters"]:
        c.add_row(str(item.get("name")), "yes" if item.get("available") else "no",
                  str(item.get("reason") or item.get("detail") or ""))
    console.print(c)


@click.command()
def models() -> None:
    """List the built-in zoo models."""
    from costmeter.models.source import zoo_names

    for name in zoo_names():
        click.echo(name)
