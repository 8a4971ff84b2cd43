"""``bench run``: benchmark models x runtimes x batches x threads on a device."""
from __future__ import annotations

import json
from pathlib import Path

import click

from costmeter.cli.common import open_store, split_list, store_option, workdir_option
from costmeter.harness.config import ProtocolConfig, RunConfig, default_workdir, parse_device, parse_int_list, parse_options


@click.command()
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu, cuda[:N], fake (comma-separated for several)")
@click.option("--runtime", "-r", default="onnxruntime", show_default=True,
              help="Comma-separated runtimes, or 'all' for every installed one (see `bench env`)")
@click.option("--model", "-m", required=True, help="Comma-separated: zoo names, FILE.onnx, or package.module:function")
@click.option("--batch", "-b", default="1", show_default=True, help="Comma-separated batch sizes")
@click.option("--threads", "-t", default=None, help="Comma-separated thread counts (default: the runtime's own)")
@click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
              help="Runtime option, e.g. -o opt_level=basic -o inter_op_threads=1 (repeatable)")
@click.option("--warmup", default=10, show_default=True, help="Warm-up runs (at least)")
@click.option("--warmup-time", default=0.5, show_default=True, help="Warm-up seconds (at least)")
@click.option("--min-count", default=100, show_default=True,
              help="Samples at least (raised automatically to what --percentiles need for a CI)")
@click.option("--min-time", default=2.0, show_default=True, help="Sampling seconds at least")
@click.option("--max-time", default=60.0, show_default=True, help="Sampling seconds at most")
@click.option("--percentiles", default="50,90,95,99", show_default=True, help="Percentiles to report with CIs")
@click.option("--max-cv", default=0.15, show_default=True, help="Coefficient of variation above which a result is INVALID")
@click.option("--processes", default=1, show_default=True, help="Repeat each benchmark in N fresh processes")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds before a worker process is killed")
@click.option("--no-parity", is_flag=True, help="Skip comparing outputs with torch eager")
@click.option("--tag", default=None, help="Label stored with every result (e.g. nightly)")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON instead of a table")
@store_option
@workdir_option
def run(device: str, runtime: str, model: str, batch: str, threads: str | None, options: tuple[str, ...],
        warmup: int, warmup_time: float, min_count: int, min_time: float, max_time: float, percentiles: str,
        max_cv: float, processes: int, timeout: float, no_parity: bool, tag: str | None, as_json: bool,
        store_url: str | None, workdir: Path | None) -> None:
    """Measure latency (percentiles with CIs), memory and energy; store every result."""
    from costmeter.cli.render import print_results
    from costmeter.harness.runner import Runner, expand, validate

    workdir = workdir or default_workdir()
    devices = split_list(device)
    for d in devices:
        parse_device(d)
    pct = tuple(float(p) for p in _floats(percentiles, "--percentiles"))
    protocol = ProtocolConfig(warmup_count=warmup, warmup_s=warmup_time, min_count=min_count,
                              min_time_s=min_time, max_time_s=max_time, percentiles=pct, max_cv=max_cv)
    base = RunConfig(model="-", device=devices[0], protocol=protocol, processes=processes, timeout_s=timeout,
                     workdir=str(workdir), check_outputs=not no_parity, tag=tag, options=parse_options(options))
    thread_list: list[int | None] = parse_int_list(threads, "--threads") if threads else [None]
    runtimes = _runtimes(runtime, devices)
    configs = expand(base, split_list(model), runtimes, parse_int_list(batch, "--batch"), thread_list, devices)
    jobs = validate(configs)
    store = open_store(store_url, workdir)
    try:
        results = _run_with_progress(Runner(store, workdir), jobs, tag, quiet=as_json)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        print_results(results, pct)


def _runtimes(spec: str, devices: list[str]) -> list[str]:
    from costmeter.devices.base import get_runtime, runtime_names

    if spec.strip() != "all":
        return split_list(spec)
    kinds = {parse_device(d)[0] for d in devices}
    names = [n for k in sorted(kinds) for n in runtime_names(k) if get_runtime(k, n).is_available()[0]]
    return sorted(set(names))


def _floats(text: str, what: str) -> list[float]:
    from costmeter.errors import ConfigError

    try:
        return [float(p) for p in split_list(text)]
    except ValueError:
        raise ConfigError(f"malformed {what} {text!r}: expected comma-separated numbers, e.g. 50,90,99") from None


def _run_with_progress(runner, jobs, tag, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("benchmarks", total=len(jobs))

        def progress(done, total, cfg, result):
            desc = f"{cfg.model}/{cfg.runtime} b{cfg.batch} t{cfg.threads or 'auto'}"
            bar.update(task, completed=done, description=desc)

        runner.progress = progress
        return runner.run(jobs, tag=tag)
