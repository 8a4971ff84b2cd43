"""``bench collect`` (measure sampled architectures) and ``bench kernels detect`` (fusion rules)."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import open_store, store_option, workdir_option
from costmeter.harness.config import default_workdir


@click.command()
@click.option("--space", required=True, help="nb201, ofa_mbv3, or a zoo family (resnet, mobilenet_v2, ...)")
@click.option("--samples", default=100, show_default=True, help="Architectures to sample")
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--batch", default=1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--min-time", default=0.5, show_default=True, help="Sampling seconds per architecture")
@click.option("--min-results", default=1, show_default=True,
              help="Skip architectures that already have this many ok results (0: measure all)")
@click.option("--tag", default=None)
@store_option
@workdir_option
def collect(space: str, samples: int, device: str, runtime: str, threads: int | None, batch: int, seed: int,
            min_time: float, min_results: int, tag: str | None, store_url: str | None, workdir: Path | None) -> None:
    """Measure sampled architectures of a search space through the harness, into the store."""
    from costmeter.cli.render import print_summary_line
    from costmeter.cli.common import with_run_progress
    from costmeter.predictors.collect import collect as run_collect
    from costmeter.predictors.collect import collect_protocol

    store = open_store(store_url, workdir)
    try:
        results = with_run_progress(lambda progress: run_collect(
            space, samples, device=device, runtime=runtime, workdir=workdir or default_workdir(), store=store,
            seed=seed, threads=threads, batch=batch, protocol=collect_protocol(min_time_s=min_time),
            progress=progress, min_results=min_results, tag=tag))
    finally:
        store.close()
    print_summary_line(results, f"{space} architectures")


@click.group()
def kernels() -> None:
    """Kernel-level view of models: which ops a runtime fuses."""


@kernels.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--pairs", default=None, help="Op pairs to test, e.g. Conv+Relu,MatMul+Add (default: a built-in set)")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Interleaved rounds over every micro-benchmark")
@click.option("--min-time", default=0.3, show_default=True, help="Sampling seconds per micro-benchmark")
@workdir_option
def detect(device: str, runtime: str, pairs: str | None, threads: int, repeats: int, min_time: float,
           workdir: Path | None) -> None:
    """Find fused op pairs with micro-benchmarks (T1 + T2 - T12 > 0.5 min(T1, T2)); store the rules."""
    from costmeter.predictors.fusion_detect import detect_fusion, parse_pairs
    from costmeter.predictors.kernel_rules import rules_path

    wd = workdir or default_workdir()
    chosen = parse_pairs(pairs) if pairs else None
    rule_set = detect_fusion(chosen, device=device, runtime=runtime, workdir=wd, threads=threads,
                             repeats=repeats, min_time_s=min_time)
    for row in rule_set.evidence:
        click.echo("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    click.echo(f"{len(rule_set.rules)} fusion rules; wrote {rules_path(wd, device, runtime)}")
