"""``bench traces import`` and ``bench predictor fit|build|eval``: measurements in, cost models out
(``bench predict`` is in :mod:`.predict_cmd`)."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import (OutputPath, check_cpus, check_target, count, fraction, input_file,
                                  non_empty_list, open_store, query_frame, split_list, store_option,
                                  workdir_option)
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import default_workdir



@click.group()
def traces() -> None:
    """Measurements made elsewhere."""


@traces.command("import")
@click.argument("path", type=input_file())
@click.option("--space", default=None, help="Search space of the arch column (nb201, ofa_mbv3)")
@click.option("--device", default=None, help="Device name(s) for a single latency column, or the columns to take")
@click.option("--runtime", default="unknown", show_default=True)
@click.option("--batch", type=count(1, 2**31 - 1, "1"), default=1, show_default=True)
@click.option("--tag", default="imported", show_default=True)
@click.option("--force", is_flag=True, help="Import a file imported before again, under a new run id")
@store_option
@workdir_option
def import_(path: str, space: str | None, device: str | None, runtime: str, batch: int, tag: str,
            force: bool, store_url: str | None, workdir: Path | None) -> None:
    """Load measured latencies (CSV/Parquet: arch or ONNX path + latency ms) into the store:
    all rows or none; a file imported before is a no-op unless --force."""
    from costmeter.results.traces import import_traces

    store = open_store(store_url, workdir)
    try:
        summary = import_traces(path, store, space=space, device=device, runtime=runtime, batch=batch, tag=tag,
                                force=force)
    finally:
        store.close()
    if summary.already:
        click.echo(f"already imported: {summary.source} (sha256 {summary.source_sha256[:12]}) is run "
                   f"{summary.run_id} with {summary.n_results} measurements; nothing written "
                   "(--force imports it again under a new run id)")
        return
    click.echo(f"imported {summary.n_results} measurements for {len(summary.devices)} device(s) "
               f"({', '.join(map(str, summary.devices))}) as run {summary.run_id} from {summary.source} "
               f"(sha256 {summary.source_sha256[:12]})")


@click.group()
def predictor() -> None:
    """Fit and evaluate latency predictors."""


@predictor.command()
@click.option("--space", default=None, help="Search space (nb201, ofa_mbv3, ...): a forest on its analytic "
              "features; without it, a whole-model predictor on the ONNX graphs of the stored models")
@click.option("--device", required=True, help="Device whose stored measurements train the model")
@click.option("--runtime", default=None, help="Only measurements of this runtime")
@click.option("--target", type=click.Choice(["latency", "peak_memory", "energy"]), default="latency",
              show_default=True, help="What to learn: median latency (ms), peak memory above the "
              "process's baseline (bytes) or energy per inference (J)")
@click.option("--holdout", type=fraction("0.2", min_open=False), default=0.2, show_default=True,
              help="Share held out for the metrics in the manifest")
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True)
@click.option("--output", "-o", type=OutputPath(), required=True, help="FILE.costmodel")
@store_option
@workdir_option
def fit(space: str | None, device: str, runtime: str | None, target: str, holdout: float, seed: int,
        output: str, store_url: str | None, workdir: Path | None) -> None:
    """Fit a predictor of latency, peak memory or energy (whichever the stored results or imported
    traces hold) and save it with a manifest: on a search space, the default model (a ridge base
    on the one-hot encoding times a forest on the analytic features) with its interval
    calibration, or
    (no --space) a whole-model predictor on ONNX graph features, the analytic peak activation
    memory among them. A space's forest records its training architectures, so that
    `bench predictor eval` scores only others."""
    from costmeter.predictors import fit_from_results, get_target, save_predictor

    spec = get_target(target)
    if space is None:
        from costmeter.predictors import fit_graph_target

        store = open_store(store_url, workdir)
        try:
            pred, scores, digest = fit_graph_target(store, device=device, runtime=runtime, target=target,
                                                    workdir=workdir or default_workdir(), holdout=holdout,
                                                    seed=seed)
        finally:
            store.close()
        what = "models"
    else:
        frame = query_frame(store_url, workdir)
        pred, scores, digest = fit_from_results(frame, space=space, device=device, runtime=runtime,
                                                holdout=holdout, seed=seed, target=target)
        what = "architectures"
        trained = _training_models(frame, space, device, runtime, spec.column)
    save_predictor(pred, output, training_hash=digest, metrics=scores,
                   extra={"target": spec.name, "target_column": spec.column, "unit": spec.unit,
                          **({"training_models": trained} if space is not None else {})})
    shown = ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if k in ("spearman", "mape_pct", "within_10_pct"))
    click.echo(f"wrote {output} ({spec.name} of {pred.n_train_} {what}; held-out: "
               f"{shown or 'not enough data'})")


def _training_models(frame, space: str, device: str, runtime: str | None, column: str) -> list[str]:
    """Digests of the architectures a space's forest was trained on (see `bench predictor eval`)."""
    from costmeter.models.spaces import get_space
    from costmeter.predictors import training_digests
    from costmeter.results.traces import training_frame

    archs = training_frame(frame, space, device=device, runtime=runtime, statistic=column)["arch"]
    return training_digests([get_space(space).canonical(a) for a in archs])


@predictor.command()
@click.option("--device", default="cpu", show_default=True, help="This machine's CPU")
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--threads", type=count(1, MAX_THREADS, "1"), required=True,
              help="Intra-op threads of every measurement (and of the latencies it will predict)")
@click.option("--cpus", default=None, metavar="LIST", callback=check_cpus,
              help="Pin every step to these CPUs, e.g. 1 or 2-3 (recommended on a shared machine)")
@click.option("--budget", required=True, metavar="DURATION",
              help="Total wall time of the build, e.g. 30m or 1h30m; a larger one measures more "
                   "and extends an earlier build in the same folder")
@click.option("--calibrate-on", default="resnet,mobilenet_v2,nb201", show_default=True, metavar="FAMILIES",
              help="Families whose measured networks calibrate the kernel sum (at least 2)")
@click.option("--target", type=fraction("0.9", max_open=False), default=None,
              help="Share of networks you need within ±10% (e.g. 0.9): says so plainly when the estimate is below")
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True,
              help="Seed of every draw (kernels, networks)")
@click.option("--keep-artifacts", is_flag=True, help="Keep the micro-benchmark models after measuring them")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Precision the predicted networks run at; int8 quantizes micro-benchmarks and "
                   "networks with ONNX Runtime's static QDQ recipe (that of `bench run --precision int8`)")
@click.option("--output", "-o", type=OutputPath(), required=True, help="FILE.costmodel")
@store_option
@workdir_option
def build(device: str, runtime: str, threads: int, cpus: str | None, budget: str, calibrate_on: str,
          target: float | None, seed: int, keep_artifacts: bool, precision: str, output: str,
          store_url: str | None, workdir: Path | None) -> None:
    """Build a kernel-level predictor of this machine in one resumable step: kernel micro-benchmarks,
    calibration networks, the cache curve and the fit, within --budget. Ctrl-C keeps what was
    measured; the same command resumes. Prints the leave-one-family-out estimate."""
    from costmeter.errors import ConfigError
    from costmeter.predictors import BuildSpec, build_predictor, check_build, parse_duration

    try:
        budget_s = parse_duration(budget)
    except ValueError as error:
        raise ConfigError(f"--budget: {error}") from None
    check_target(device, runtime)
    cpu_list: tuple[int, ...] = ()
    if cpus:
        from costmeter.harness.executors.remote import parse_cpus

        cpu_list = tuple(parse_cpus(cpus))
    spec = BuildSpec(device=device, runtime=runtime, threads=threads, cpus=cpu_list, budget_s=budget_s,
                     calibrate_on=tuple(split_list(calibrate_on)), seed=seed, keep_artifacts=keep_artifacts,
                     precision=precision)
    check_build(spec, workdir or default_workdir())  # before the store or the folder is written
    store = open_store(store_url, workdir)
    try:
        with _BuildDisplay() as display:
            result = build_predictor(spec, output, workdir or default_workdir(), store=store,
                                     progress=display.update)
    except KeyboardInterrupt:
        click.echo("interrupted: what was measured is kept; run the same command to resume", err=True)
        raise
    finally:
        store.close()
    _print_build(result, spec, target)


def _print_build(result, spec, target: float | None) -> None:
    from costmeter.predictors import format_duration

    cal = result.calibration
    pinning = f"pinned to CPU {spec.cpus_text}" if spec.cpus else "not pinned"
    families = ", ".join(f"{f} {n}" for f, n in cal["families"].items())
    click.echo(f"wrote {result.output}: {result.kernels} kernels timed in context and {cal['networks']} "
               f"calibration networks ({families}), {spec.precision}, {spec.threads} thread(s), {pinning}; "
               f"{format_duration(sum(result.spent_s.values()))} of {format_duration(spec.budget_s)}")
    click.echo(f"calibration: {cal['summary']}")
    if cal.get("kernel_models"):
        tried = ", ".join(f"{name} {v['lofo_within']:.0%}"
                          + (f" (kernels out of fold: {v['kernel_cv_error']:.1%} off)"
                             if v.get("kernel_cv_error") is not None else "")
                          for name, v in cal["kernel_models"].items())
        why = {"networks": "ahead out of family by more than twice its standard error",
               "kernels": "the networks did not tell them apart; better on its kernels"}
        rule = cal.get("kernel_model_rule")
        click.echo(f"kernel models (leave-one-family-out within ±{cal['tolerance']:.0%}): {tried}; "
                   f"kept {cal['kernel_model']}" + (f" ({why[rule]})" if rule in why else ""))
    by_family = ", ".join(f"{f} {v:.0%}" for f, v in cal["lofo_by_family"].items())
    click.echo(f"leave-one-family-out estimate: {cal['lofo_within']:.0%} of networks within "
               f"±{cal['tolerance']:.0%} (MAPE {cal['lofo_mape_pct']:.1f}%, median error "
               f"{cal['lofo_bias']:+.1%}; {by_family}); the raw kernel sum: {cal['kernel_sum_within']:.0%}")
    if target is not None and cal["lofo_within"] < target:
        click.echo(f"BELOW TARGET: the estimate {cal['lofo_within']:.0%} is below the {target:.0%} you need. "
                   f"A larger --budget measures more kernels and networks (the same command with "
                   f"--budget {format_duration(spec.budget_s * 3)} extends this build); see the README "
                   "for the accuracy each budget reached on held-out families")


class _BuildDisplay:
    """One rich progress display on stderr: the budget spent with an estimate of the time left,
    the current step, and its notes above the bars. It appears with the first report, so a
    build refused before it starts prints its one-line error alone."""

    bar = None

    def __enter__(self) -> "_BuildDisplay":
        return self

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self.bar.__enter__()
        self.total = self.bar.add_task("budget", total=1, info="")
        self.step = self.bar.add_task("", total=None, info="")
        self.last_note = ""

    def update(self, event) -> None:
        from costmeter.predictors import format_duration

        if self.bar is None:
            self._start()
        budget = round(event.budget_s)
        self.bar.update(self.total, total=budget, completed=min(round(event.spent_s), budget),
                        info=f"{format_duration(event.spent_s)} spent, about {format_duration(event.left_s)} left")
        self.bar.update(self.step, description=event.step, total=max(event.total, 1), completed=event.done,
                        info=event.status)
        if event.note and event.note != self.last_note:
            self.bar.console.print(f"{event.step}: {event.note}")
            self.last_note = event.note

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@predictor.command("eval")
@click.argument("model_file", required=False, type=input_file())
@click.option("--space", default=None, help="Cross-validate a fresh forest on this space's stored data instead")
@click.option("--device", default=None)
@click.option("--runtime", default=None)
@click.option("--split", type=click.Choice(["random", "family"]), default="random", show_default=True)
@click.option("--train", "train_share", type=fraction("0.8"), default=0.8, show_default=True,
              help="Training share (random split)")
@click.option("--held-out", default=None, help="Comma-separated families to test on (family split)")
@click.option("--seed", type=count(0, 2**32 - 1, "0"), default=0, show_default=True)
@click.option("--in-sample", is_flag=True,
              help="Score a predictor file on every stored row, its training rows included (labelled IN-SAMPLE)")
@click.option("--output", "-o", type=OutputPath(), default=None,
              help="Write per-model predictions (CSV) for `bench report predictor`")
@store_option
@workdir_option
def eval_(model_file: str | None, space: str | None, device: str | None, runtime: str | None, split: str,
          train_share: float, held_out: str | None, seed: int, in_sample: bool, output: str | None,
          store_url: str | None, workdir: Path | None) -> None:
    """RMSE, MAPE, share within ±5/10/15%, Spearman and Kendall, overall and per family.

    A predictor file is scored only on stored rows it was not trained on (its manifest says
    which); a fresh forest (--space/--device) is cross-validated."""
    from costmeter.errors import ConfigError
    from costmeter.predictors import family_of, metrics_table

    label = "held out"
    if model_file:
        evaluation = _evaluate_file(model_file, store_url, workdir, in_sample)
        ids, families = evaluation.ids, evaluation.families
        measured, predicted = evaluation.measured_ms, evaluation.predicted_ms
        if evaluation.in_sample:
            label = "IN-SAMPLE"
            click.echo("IN-SAMPLE: these rows include the predictor's own training rows; the figures "
                       "overstate its accuracy on models it has not seen", err=True)
        else:
            click.echo(f"{len(ids)} stored models the predictor was not trained on "
                       f"({evaluation.left_out} training rows left out)")
    elif space and device:
        ids, archs, measured, predicted = _cross_validate(query_frame(store_url, workdir), space, device,
                                                          runtime, split, train_share, held_out, seed)
        families = [family_of(i) if split != "family" else _family(a) for i, a in zip(ids, archs)]
    else:
        raise ConfigError("give a predictor file, or --space and --device to cross-validate a fresh forest")
    table = metrics_table(measured, predicted, families, overall_label=f"overall ({label})")
    click.echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if output:
        import pandas as pd

        pd.DataFrame({"model_id": ids, "family": families, "measured_ms": measured,
                      "predicted_ms": predicted, "in_sample": label == "IN-SAMPLE"}).to_csv(output, index=False)
        click.echo(f"wrote {output}")


def _evaluate_file(model_file: str, store_url: str | None, workdir: Path | None, in_sample: bool):
    from costmeter.predictors import evaluate_arch_predictor, evaluate_network_predictor
    from costmeter.predictors import is_network_predictor, read_manifest

    if is_network_predictor(read_manifest(model_file)):
        store = open_store(store_url, workdir)
        try:
            return evaluate_network_predictor(model_file, store, workdir or default_workdir(), in_sample)
        finally:
            store.close()
    return evaluate_arch_predictor(model_file, query_frame(store_url, workdir), in_sample)


def _family(arch: str) -> str:
    from costmeter.predictors import family_of

    return family_of(arch)


def _cross_validate(frame, space, device, runtime, split, train_share, held_out, seed):
    import numpy as np

    from costmeter.errors import ConfigError
    from costmeter.predictors import ArchPredictor
    from costmeter.predictors import family_of, family_split, random_split
    from costmeter.results.traces import training_frame

    data = training_frame(frame, space, device=device, runtime=runtime)
    archs, y = list(data["arch"]), data["latency_ms"].to_numpy(dtype=np.float64)
    if split == "family":
        if not held_out:
            raise ConfigError("--split family needs --held-out FAMILY[,FAMILY]")
        tr, te = family_split([family_of(a) for a in archs], non_empty_list(held_out, "--held-out", "resnet"))
    else:
        tr, te = random_split(len(archs), train=train_share, seed=seed)
    model = ArchPredictor(space=space, device=device, runtime=runtime).fit([archs[i] for i in tr], y[tr])
    test_archs = [archs[i] for i in te]
    return [f"{space}:{a}" for a in test_archs], test_archs, y[te], model.predict(test_archs)
