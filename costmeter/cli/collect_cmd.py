"""``bench collect`` (measure sampled architectures) and ``bench kernels detect`` (fusion rules)."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import (MODEL_HELP, OutputPath, check_cpus, check_target, count, model_specs,
                                  non_empty_list, open_store, seconds, store_option, workdir_option)
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import default_workdir


@click.command()
@click.option("--space", required=True, help="nb201, ofa_mbv3, or a zoo family (resnet, mobilenet_v2, ...)")
@click.option("--samples", type=count(1, example="100"), default=100, show_default=True, help="Architectures to sample")
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--threads", type=count(1, MAX_THREADS, "1"), default=None,
              help="Intra-op threads (default: the runtime's own; give the count your predictor is built for)")
@click.option("--cpus", default=None, metavar="LIST", callback=check_cpus,
              help="Pin the workers to CPUs, e.g. 1 or 2-3 (recorded in the key)")
@click.option("--batch", type=count(1, 2**31 - 1, "1"), default=1, show_default=True)
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True)
@click.option("--min-time", type=seconds(min_open=True, example="0.5"), default=0.5, show_default=True,
              help="Sampling seconds per architecture")
@click.option("--min-results", type=count(0, example="1"), default=1, show_default=True,
              help="Skip architectures that already have this many ok results (0: measure all)")
@click.option("--tag", default=None)
@click.option("--strategy", type=click.Choice(["random", "active"]), default=None,
              help="Measure --budget architectures in rounds: in a random order, or where the predictor "
                   "refitted after each round is least sure (search spaces only)")
@click.option("--budget", type=count(1, example="300"), default=None,
              help="Architectures to measure with --strategy")
@store_option
@workdir_option
def collect(space: str, samples: int, device: str, runtime: str, threads: int | None, cpus: str | None,
            batch: int, seed: int, min_time: float, min_results: int, tag: str | None, strategy: str | None,
            budget: int | None, store_url: str | None, workdir: Path | None) -> None:
    """Measure sampled architectures of a search space through the harness, into the store.

    Draws are nested: --samples 60 measures the --samples 30 draw of the same seed, and more.
    With --strategy and --budget, rounds of measurements chosen at random or where the model is
    least sure."""
    from costmeter.cli.render import print_summary_line
    from costmeter.cli.common import with_run_progress
    from costmeter.errors import ConfigError
    from costmeter.predictors import collect as run_collect
    from costmeter.predictors import collect_protocol, pinned

    if (strategy is None) != (budget is None):
        raise ConfigError("--strategy and --budget go together (e.g. --strategy active --budget 300); "
                          "without them, --samples N measures N random architectures")
    check_target(device, runtime)
    pin = _cpus(cpus)
    if strategy is not None:
        _collect_strategy(space, strategy, budget, device, runtime, threads, batch, seed, min_time, tag,
                          store_url, workdir)
        return
    store = open_store(store_url, workdir)
    try:
        with pinned(pin):
            results = with_run_progress(lambda progress: run_collect(
                space, samples, device=device, runtime=runtime, workdir=workdir or default_workdir(), store=store,
                seed=seed, threads=threads, batch=batch, protocol=collect_protocol(min_time_s=min_time),
                progress=progress, min_results=min_results, tag=tag, cpus=cpus if pin else None))
    finally:
        store.close()
    print_summary_line(results, f"{space} architectures")


def _cpus(text: str | None) -> tuple[int, ...]:
    """``--cpus`` as CPU numbers (ConfigError when malformed)."""
    if not text:
        return ()
    from costmeter.harness.executors.remote import parse_cpus

    return tuple(parse_cpus(text))


def _collect_strategy(space: str, strategy: str, budget: int, device: str, runtime: str, threads: int | None,
                      batch: int, seed: int, min_time: float, tag: str | None, store_url: str | None,
                      workdir: Path | None) -> None:
    """``bench collect --strategy S --budget N``: rounds of measurements, one line per round."""
    import math

    from costmeter.cli.common import with_run_progress
    from costmeter.predictors import collect_protocol, collect_strategy

    store = open_store(store_url, workdir)
    try:
        result = with_run_progress(lambda progress: collect_strategy(
            space, budget, strategy, device=device, runtime=runtime, workdir=workdir or default_workdir(),
            store=store, seed=seed, threads=threads, batch=batch, protocol=collect_protocol(min_time_s=min_time),
            progress=progress, tag=tag, log=click.echo))
    finally:
        store.close()
    failed = sum(1 for v in result.values if not math.isfinite(v))
    click.echo(f"{strategy}: {len(result.archs)} {space} architectures in {len(result.rounds)} rounds "
               f"({failed} failed)" + (" -- see `bench results list`" if failed else ""))


@click.group()
def kernels() -> None:
    """Kernel-level view of models: which ops a runtime fuses."""


@kernels.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--pairs", default=None, help="Op pairs to test, e.g. Conv+Relu,MatMul+Add (default: a built-in set)")
@click.option("--threads", type=count(1, MAX_THREADS, "1"), default=1, show_default=True)
@click.option("--repeats", type=count(1, example="3"), default=3, show_default=True,
              help="Interleaved rounds over every micro-benchmark")
@click.option("--min-time", type=seconds(min_open=True, example="0.3"), default=0.3, show_default=True,
              help="Sampling seconds per micro-benchmark")
@click.option("--keep-artifacts", is_flag=True, help="Keep the micro-benchmark models after measuring them")
@workdir_option
def detect(device: str, runtime: str, pairs: str | None, threads: int, repeats: int, min_time: float,
           keep_artifacts: bool, workdir: Path | None) -> None:
    """Find fused op pairs with micro-benchmarks (T1 + T2 - T12 > 0.5 min(T1, T2)); store the rules."""
    from costmeter.predictors import detect_fusion, parse_pairs
    from costmeter.predictors import rules_path

    chosen = parse_pairs(pairs) if pairs is not None else None
    check_target(device, runtime)
    wd = workdir or default_workdir()
    rule_set = detect_fusion(chosen, device=device, runtime=runtime, workdir=wd, threads=threads,
                             repeats=repeats, min_time_s=min_time, keep_artifacts=keep_artifacts)
    for row in rule_set.evidence:
        click.echo("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    click.echo(f"{len(rule_set.rules)} fusion rules; wrote {rules_path(wd, device, runtime)}")


@kernels.command()
@click.option("--model", "-m", "models", required=True, multiple=True, help=MODEL_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True, help="Whose fusion rules to apply")
@click.option("--batch", type=count(1, 2**31 - 1, "1"), default=1, show_default=True)
@workdir_option
def show(models: tuple[str, ...], device: str, runtime: str, batch: int, workdir: Path | None) -> None:
    """The kernels a runtime runs for a model, and the ops the cost model cannot price (never dropped)."""
    from costmeter.models.export import export_onnx
    from costmeter.models.source import resolve_model
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors import load_rules
    from costmeter.predictors import fuse

    wd = workdir or default_workdir()
    rules = load_rules(runtime, device, wd)
    for model in model_specs(models):
        graph = load_graph(export_onnx(resolve_model(model), wd), batch=batch)
        kgraph = fuse(graph, rules)
        click.echo(f"{model}: {len(kgraph.kernels)} kernels ({runtime} rules on {device})")
        for row in kgraph.summary():
            click.echo(f"  {row['kernel_type']:<16} x{row['count']:<4} {row['flops'] / 1e6:10.2f} MFLOP "
                       f"{row['bytes'] / 2**20:8.2f} MiB")
        unknown = kgraph.unknown_report()
        if not unknown:
            click.echo("every op is priced")
        for row in unknown:
            click.echo("  not priced: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in row.items()))


@kernels.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--threads", type=count(1, MAX_THREADS, "1"), default=1, show_default=True)
@click.option("--min-time", type=seconds(min_open=True, example="0.2"), default=0.2, show_default=True,
              help="Sampling seconds per kernel")
@click.option("--space-samples", type=count(0, example="30"), default=30, show_default=True,
              help="Search-space archs added to the prior")
@click.option("--adaptive-rounds", type=count(0, 100, "1"), default=1, show_default=True,
              help="Re-sampling rounds around >10% errors")
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True)
@click.option("--context", is_flag=True,
              help="Time image kernels between context ops, minus their baselines (default: alone)")
@click.option("--cpus", default=None, metavar="LIST", callback=check_cpus,
              help="Pin every measurement to CPUs, e.g. 1 (recorded)")
@click.option("--keep-artifacts", is_flag=True, help="Keep the micro-benchmark models after measuring them")
@store_option
@workdir_option
def sample(device: str, runtime: str, threads: int, min_time: float, space_samples: int, adaptive_rounds: int,
           seed: int, context: bool, cpus: str | None, keep_artifacts: bool, store_url: str | None,
           workdir: Path | None) -> None:
    """Measure kernel micro-benchmarks drawn from the zoo's and the spaces' kernels.

    Local runtimes that take ONNX files time them in batch workers; others (and remote devices)
    run each file through the harness, whose results go to the store."""
    from costmeter.predictors import load_rules, pinned, sample_kernels, samples_path

    check_target(device, runtime)
    wd = workdir or default_workdir()
    pin = _cpus(cpus)
    store = open_store(store_url, workdir)
    try:
        with pinned(pin):
            samples = sample_kernels(load_rules(runtime, device, wd), device=device, workdir=wd, store=store,
                                     threads=threads, min_time_s=min_time, seed=seed, space_samples=space_samples,
                                     adaptive_rounds=adaptive_rounds, log=click.echo, context=context,
                                     keep_artifacts=keep_artifacts, cpus=",".join(map(str, pin)))
    finally:
        store.close()
    click.echo(f"{len(samples.rows)} kernel samples in {samples_path(wd, device, runtime)}")


@kernels.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--output", "-o", type=OutputPath(), required=True, help="FILE.costmodel")
@click.option("--cold", is_flag=True,
              help="Fit the latencies with the weights out of cache (samples taken with --context)")
@click.option("--calibrate-on", default=None, metavar="SPACES",
              help="Comma-separated spaces collected in the working folder (`bench collect`) whose "
                   "measured networks fit a cache model on top of the kernel sum")
@store_option
@workdir_option
def fit(device: str, runtime: str, output: str, cold: bool, calibrate_on: str | None, store_url: str | None, workdir: Path | None) -> None:
    """Fit per-kernel forests on the measured kernel samples: a network predictor for `bench predict`
    and `bench lut build --predicted`, optionally calibrated on measured networks."""
    from costmeter.predictors import save_predictor
    from costmeter.predictors import fit_network_predictor

    spaces = non_empty_list(calibrate_on, "--calibrate-on", "nb201") if calibrate_on is not None else []
    store = open_store(store_url, workdir) if spaces else None
    try:
        model, extra = fit_network_predictor(workdir or default_workdir(), device, runtime, cold=cold,
                                             calibrate_on=spaces, store=store)
    finally:
        if store is not None:
            store.close()
    save_predictor(model, output, device=device, runtime=runtime, extra=extra,
                   training_rows=extra["kernel_samples"])
    click.echo(f"wrote {output}: {model.describe()}")
    if spaces and extra["kernel_timing"].startswith("isolated"):
        click.echo("note: these kernels were timed alone; calibration fits best on kernels timed in context "
                   "(`bench kernels sample --context`): see benchmarks/predictor_cpu_families.py")
