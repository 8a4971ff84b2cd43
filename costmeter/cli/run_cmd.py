"""``bench run``: benchmark models x runtimes x batches x threads on a device."""
from __future__ import annotations

import json
from pathlib import Path

import click

from costmeter.cli.common import (MODEL_HELP, FiniteRange, FloatList, IntList, count, cpus_option, fraction,
                                  model_specs, non_empty_list, open_store, seconds, store_option, workdir_option)
from costmeter.cli.table_options import table_columns, table_options
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import DeviceSpec, ProtocolConfig, RunConfig, default_workdir, parse_options


@click.command()
@click.option("--device", "-d", default="cpu", show_default=True,
              help="cpu, cuda[:N], ssh://user@host[:port], adb://SERIAL, fake (comma-separated for several)")
@click.option("--runtime", "-r", default="onnxruntime", show_default=True,
              help="Comma-separated runtimes, or 'all' for every installed one (see `bench env`)")
@click.option("--model", "-m", "models", required=True, multiple=True, help=MODEL_HELP)
@click.option("--batch", "-b", type=IntList(1), default="1", show_default=True, help="Comma-separated batch sizes")
@click.option("--threads", "-t", type=IntList(1, MAX_THREADS), default=None,
              help="Comma-separated thread counts (default: the runtime's own)")
@click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
              help="Runtime option, e.g. -o opt_level=basic -o inter_op_threads=1 (repeatable)")
@click.option("--precision", "-p", "precision", default=None, metavar="P[,P...]|all",
              help="fp32, fp16, bf16, int8 (comma-separated), or all: each runtime's precisions side by side")
@click.option("--calibration", default=None, metavar="FILE.npz|random:N",
              help="int8 calibration inputs: one array per model input, samples on axis 0 (default random:32)")
@click.option("--accuracy-data", default=None, metavar="FILE.npz",
              help="Labelled inputs (the model's inputs + 'labels'): top-1 accuracy of every run and its delta vs fp32")
@click.option("--warmup", type=count(0), default=10, show_default=True, help="Warm-up runs (at least)")
@click.option("--warmup-time", type=seconds(example="0.5"), default=0.5, show_default=True, help="Warm-up seconds (at least)")
@click.option("--min-count", type=count(1, example="100"), default=100, show_default=True,
              help="Samples at least (raised automatically to what --percentiles need for a CI)")
@click.option("--min-time", type=seconds(), default=2.0, show_default=True, help="Sampling seconds at least")
@click.option("--max-time", type=seconds(min_open=True, example="60"), default=60.0, show_default=True,
              help="Sampling seconds at most")
@click.option("--percentiles", type=FloatList(0, 100, "50,90,99"), default="50,90,95,99", show_default=True,
              help="Percentiles to report with CIs")
@click.option("--max-rel-ci", type=fraction("0.01"), default=0.01, show_default=True,
              help="Largest relative half-width of the p50 interval (0.01 = +-1%); sampling goes on "
                   "(up to --max-time) until it is reached, and a wider one is INVALID")
@click.option("--max-cv", type=FiniteRange(0, 1e6, min_open=True, example="0.15"), default=0.15, show_default=True,
              help="Coefficient of variation above which a result carries a warning (with its stalls)")
@click.option("--processes", type=count(1, 10_000, "3"), default=1, show_default=True,
              help="Repeat each benchmark in N fresh processes; the headline interval then includes "
                   "the spread between processes")
@click.option("--timeout", type=seconds(min_open=True, example="600"), default=600.0, show_default=True,
              help="Seconds before a worker process is killed")
@click.option("--no-parity", is_flag=True, help="Skip comparing outputs with torch eager")
@click.option("--tag", default=None, help="Label stored with every result (e.g. nightly)")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (with the table's summary) instead of a table")
@click.option("--samples", "with_samples", is_flag=True, help="With --json: include the raw samples (ns)")
@table_options
@cpus_option
@click.option("--remote-python", default="python3", show_default=True, help="Python on ssh:// boards")
@click.option("--remote-pythonpath", default=None, metavar="DIR", help="Folder holding costmeter's source on ssh:// boards")
@click.option("--ssh-identity", default=None, metavar="KEY", help="Private key for ssh:// boards (default: yours / agent)")
@click.option("--known-hosts", default=None, metavar="FILE", help="known_hosts file for ssh:// boards (default: ~/.ssh/known_hosts)")
@click.option("--accept-new-host-key", is_flag=True, help="Record an unknown board's host key (a changed key is still refused)")
@click.option("--benchmark-model", default=None, metavar="PATH", help="LiteRT benchmark_model binary for adb:// devices")
@store_option
@workdir_option
def run(device: str, runtime: str, models: tuple[str, ...], batch: list[int], threads: list[int] | None,
        options: tuple[str, ...], precision: str | None, calibration: str | None, accuracy_data: str | None,
        warmup: int, warmup_time: float, min_count: int, min_time: float, max_time: float,
        percentiles: list[float],
        max_rel_ci: float, max_cv: float, processes: int, timeout: float, no_parity: bool, tag: str | None,
        as_json: bool, with_samples: bool, wide: bool, columns: str | None, cpus: str | None, remote_python: str, remote_pythonpath: str | None, ssh_identity: str | None,
        known_hosts: str | None, accept_new_host_key: bool, benchmark_model: str | None,
        store_url: str | None, workdir: Path | None) -> None:
    """Measure latency (percentiles with CIs), memory and energy; store every result."""
    from costmeter.cli.precision import check_inspected_sets, precision_configs, print_precision_table
    from costmeter.cli.render import print_results, result_json
    from costmeter.harness.runner import Runner, expand, validate

    workdir = workdir or default_workdir()
    devices = non_empty_list(device, "--device", "cpu or cuda:0")
    for d in devices:
        DeviceSpec.parse(d)
    pct = tuple(percentiles)
    protocol = ProtocolConfig(warmup_count=warmup, warmup_s=warmup_time, min_count=min_count,
                              min_time_s=min_time, max_time_s=max_time, percentiles=pct, max_cv=max_cv,
                              max_rel_ci=max_rel_ci)
    picked = table_columns(wide, columns, pct, as_json)
    run_options = parse_options(options)
    if cpus:
        from costmeter.harness.executors.remote import parse_cpus

        parse_cpus(cpus)
        run_options = tuple(sorted({**dict(run_options), "cpus": cpus}.items()))
    base = RunConfig(model="-", device=devices[0], protocol=protocol, processes=processes, timeout_s=timeout,
                     workdir=str(workdir), check_outputs=not no_parity, tag=tag, options=run_options)
    thread_list: list[int | None] = list(threads) if threads else [None]
    executors = _executors(remote_python, remote_pythonpath, ssh_identity, known_hosts, accept_new_host_key,
                           benchmark_model)
    try:
        runtimes = _runtimes(runtime, devices, executors)
        configs = expand(base, model_specs(models), runtimes, batch, thread_list, devices)
        configs = precision_configs(configs, precision, calibration, accuracy_data, workdir,
                                    all_runtimes=runtime.strip() == "all")
        jobs = check_inspected_sets(validate(configs), calibration, accuracy_data, workdir)
        executors.preflight(configs)
        store = open_store(store_url, workdir)
        try:
            runner = Runner(store, workdir, run_in=executors, accuracy_data=accuracy_data)
            results = _run_with_progress(runner, jobs, tag, quiet=as_json)
        finally:
            store.close()
    finally:
        executors.close()
    if as_json:
        click.echo(json.dumps([result_json(r, samples=with_samples) for r in results], indent=1))
    else:
        print_results(results, pct, wide=wide, columns=picked)
        if precision:
            print_precision_table(results)


def _executors(python: str, pythonpath: str | None, identity: str | None, known_hosts: str | None,
               accept_new: bool, benchmark_model: str | None):
    from costmeter.devices.remote.ssh import SshOptions
    from costmeter.harness.executors.remote import DeviceExecutors, RemoteSettings

    ssh = SshOptions(identity=identity, known_hosts=known_hosts, accept_new_host_key=accept_new)
    return DeviceExecutors(RemoteSettings(python=python, pythonpath=pythonpath, ssh=ssh,
                                          benchmark_model=benchmark_model))


def _runtimes(spec: str, devices: list[str], executors) -> list[str]:
    """The runtimes to run: the list given, or for 'all' every one installed (on each ssh board,
    those its Python has) whose converter is installed here."""
    from costmeter.devices.base import get_runtime, runtime_names
    from costmeter.harness.convert.artifacts import CONVERTED_KINDS, converter_problem

    if spec.strip() != "all":
        return non_empty_list(spec, "--runtime", "onnxruntime,torch or all")
    names: set[str] = set()
    for device in devices:
        kind = DeviceSpec.parse(device).kind
        candidates = runtime_names(kind)
        if kind == "ssh":
            found = executors.executor(device).probe(candidates)
            usable = [n for n, (ok, _) in found["runtimes"].items() if ok]
        else:
            usable = [n for n in candidates if get_runtime(kind, n).is_available()[0]]
        for name in usable:
            artifact = get_runtime(kind, name).artifact_kind
            if artifact not in CONVERTED_KINDS or converter_problem(artifact) is None:
                names.add(name)
    return sorted(names)


def _run_with_progress(runner, jobs, tag, quiet: bool):
    from costmeter.cli.common import with_run_progress

    def call(progress):
        runner.progress = progress
        return runner.run(jobs, tag=tag)

    return with_run_progress(call, quiet=quiet)
