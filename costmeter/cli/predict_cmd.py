"""``bench predict``: predicted latency (or another target) of models from a saved predictor or a
lookup table, with calibrated intervals and budget checks where the file has them."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from costmeter.cli.common import MODEL_HELP, count, fraction, input_file, model_specs, workdir_option
from costmeter.cli.params import FiniteRange
from costmeter.devices.options import MAX_THREADS
from costmeter.harness.config import default_workdir

if TYPE_CHECKING:
    from costmeter.cli.network_bounds import NetworkBounds

MAX_BUDGET_MS = 1e9


@click.command()
@click.argument("model_file", type=input_file())
@click.option("--model", "-m", "archs", required=True, multiple=True,
              help="Repeatable, one architecture per value (space: prefix optional), or @FILE with one "
                   "per line. For a kernel-level predictor (`bench predictor build`): " + MODEL_HELP)
@click.option("--threads", type=count(1, MAX_THREADS, "1"), default=None,
              help="The thread count you will run at; refused when the predictor was built for another")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
              help="The precision you will run at; refused when a kernel-level predictor was built for another")
@click.option("--breakdown/--no-breakdown", default=True, show_default=True,
              help="Per kernel type latencies (kernel-level predictors)")
@click.option("--coverage", type=fraction("0.9"), default=None,
              help="Print a conformal interval that holds the measured latency with this probability")
@click.option("--budget-ms", type=FiniteRange(0.0, MAX_BUDGET_MS, min_open=True, example="25"), default=None,
              help="Say whether each latency stays within this budget (ms) with probability --confidence")
@click.option("--confidence", type=fraction("0.9"), default=0.9, show_default=True,
              help="Probability behind --budget-ms")
@workdir_option
def predict(model_file: str, archs: tuple[str, ...], threads: int | None, precision: str | None, breakdown: bool,
            coverage: float | None, budget_ms: float | None, confidence: float, workdir: Path | None) -> None:
    """Predicted latency ± uncertainty (ms) of models, from a saved predictor or a lookup table
    (TABLE.json from `bench lut build`); with --coverage a calibrated interval, with --budget-ms
    whether the latency stays within it with probability --confidence (search-space and
    calibrated kernel-level predictors)."""
    from costmeter.errors import ConfigError
    from costmeter.predictors import is_network_predictor, manifest_of

    asked = "--coverage" if coverage is not None else "--budget-ms" if budget_ms is not None else None
    table = Path(model_file).suffix.lower() in (".json", ".csv")
    manifest = None if table else manifest_of(model_file)
    if precision is not None and not (manifest and is_network_predictor(manifest)):
        raise ConfigError("--precision checks a kernel-level predictor (`bench predictor build`); "
                          f"{model_file} records its precision in its manifest -- leave --precision out")
    if table:
        _predict_with_table(model_file, archs, coverage, budget_ms, confidence)
        return
    if is_network_predictor(manifest):
        from costmeter.predictors import interval_of

        bounds = None
        if asked:  # checked before any model is exported
            from costmeter.cli.network_bounds import NetworkBounds

            bounds = NetworkBounds(interval_of(manifest, model_file), coverage, budget_ms, confidence)
        _predict_networks(model_file, model_specs(archs), threads, breakdown, workdir, bounds, precision)
        return
    from costmeter.models.spaces import split_model_id
    from costmeter.predictors import load_artifact as load_predictor

    pred = load_predictor(model_file)
    from costmeter.predictors import GraphTargetPredictor

    if isinstance(pred, GraphTargetPredictor):
        if asked:
            raise ConfigError(f"{asked} needs a search-space .costmodel; whole-model predictors "
                              f"({pred.target}) have no interval calibration yet")
        _predict_graph_target(pred, model_specs(archs), workdir)
        return
    items = [a for value in archs for a in (model_specs((value,)) if value.startswith("@")
                                             else [value.strip()])]
    clean = [(split_model_id(a) or (pred.space, a))[1] for a in items]
    from costmeter.predictors import get_target

    spec = get_target(getattr(pred, "target_", "latency"))
    if budget_ms is not None and spec.unit != "ms":
        raise ConfigError(f"--budget-ms is a latency budget; {model_file} predicts {spec.name}")

    def value(v: float) -> str:
        return f"{v:.4g} ms" if spec.unit == "ms" else f"{spec.name} {spec.format(v)}"

    def spread(v: float, digits: int = 2) -> str:
        return f"{v:.{digits}g}" if spec.unit == "ms" else spec.format(v)

    if coverage is not None:
        mean, lower, upper = pred.predict_interval(clean, coverage)
        shown = [f"{value(m)} [{spread(lo, 4)}, {spread(hi, 4)}] ({coverage:.0%} interval, "
                 for m, lo, hi in zip(mean, lower, upper)]
    else:
        mean, std = pred.predict_with_uncertainty(clean)
        shown = [f"{value(m)} ± {spread(s)} (" for m, s in zip(mean, std)]
    within = pred.satisfies(clean, budget_ms, confidence=confidence) if budget_ms is not None else None
    for i, (arch, text) in enumerate(zip(clean, shown)):
        note = "" if within is None else \
            f"; within {budget_ms:g} ms at {confidence:.0%}: {'yes' if within[i] else 'no'}"
        click.echo(f"{pred.space}:{arch}\t{text}{pred.device or '?'}, {pred.runtime or '?'}){note}")


def _predict_graph_target(pred, models: list[str], workdir: Path | None) -> None:
    """Export each model and print the predicted target with its analytic peak activations."""
    import pandas as pd

    from costmeter.models.export import export_onnx
    from costmeter.models.onnx.graph import load_graph
    from costmeter.models.source import resolve_model
    from costmeter.predictors import get_target, memory_features

    wd = workdir or default_workdir()
    table = pd.DataFrame.from_dict({m: memory_features(load_graph(export_onnx(resolve_model(m), wd)))
                                    for m in models}, orient="index")
    spec = get_target(pred.target)
    for name, value in zip(models, pred.predict(table)):
        live = float(table.loc[name, "peak_activation_bytes"])
        click.echo(f"{name}\t{spec.name} {spec.format(value)} ({pred.device or '?'}, {pred.runtime or '?'}; "
                   f"analytic peak activations {live / 2**20:.4g} MiB)")


def _predict_with_table(path: str, archs: tuple[str, ...], coverage: float | None = None,
                        budget_ms: float | None = None, confidence: float = 0.9) -> None:
    """Each architecture's latency from a lookup table (any space that has one): its calibrated
    prediction, or the sum of its block entries when the table is uncalibrated; intervals and
    budgets need a calibrated table (``bench lut calibrate``)."""
    from costmeter.errors import ConfigError
    from costmeter.models.spaces import get_space, split_model_id
    from costmeter.predictors import load_lut

    table = load_lut(path)
    if (coverage is not None or budget_ms is not None) and not table.calibrated:
        raise ConfigError(f"{'--coverage' if coverage is not None else '--budget-ms'} needs a calibrated "
                          f"lookup table and {path} is uncalibrated; run `bench lut calibrate {path}`")
    items = [a for value in archs for a in (model_specs((value,)) if value.startswith("@")
                                             else [value.strip()])]
    clean = []
    for item in items:
        space, arch = split_model_id(item) or (table.space, get_space(table.space).canonical(item))
        if space != table.space:
            raise ConfigError(f"{item[:60]!r} is a {space} architecture but {path} prices "
                              f"{table.space}; give {table.space} architectures or a {space} table")
        clean.append(arch)
    mean, unc = table.predict(clean)
    kind = "calibrated lookup table" if table.calibrated else "lookup table, uncalibrated"
    shown = [f"{m:.4g} ms ± {s:.2g}" for m, s in zip(mean, unc)]
    if coverage is not None:
        _, lower, upper = table.predict(clean, coverage=coverage)
        shown = [f"{m:.4g} ms [{lo:.4g}, {hi:.4g}] ({coverage:.0%} interval)"
                 for m, lo, hi in zip(mean, lower, upper)]
    within = table.satisfies(clean, budget_ms, confidence=confidence) if budget_ms is not None else None
    for i, (arch, text) in enumerate(zip(clean, shown)):
        note = "" if within is None else \
            f"; within {budget_ms:g} ms at {confidence:.0%}: {'yes' if within[i] else 'no'}"
        click.echo(f"{table.space}:{arch}\t{text} ({table.device}, {table.runtime}; {kind}){note}")


def _predict_networks(model_file: str, models: list[str], threads: int | None, breakdown: bool,
                      workdir: Path | None, bounds: NetworkBounds | None = None,
                      precision: str | None = None) -> None:
    """Each model's prediction and kernels, from the working folder's caches where it can."""
    from costmeter.predictors import predict_models

    manifest, answers = predict_models(model_file, models, workdir or default_workdir(), threads=threads,
                                       precision=precision)
    extra = manifest.get("extra") or {}
    device, runtime = manifest.get("device") or "cpu", manifest.get("runtime") or "onnxruntime"
    built = extra.get("threads")
    setting = f"{built} thread(s)" if built is not None else "threads not recorded"
    if extra.get("cpus"):
        setting += f" on CPU {extra['cpus']}"
    if built is not None and threads is None:
        setting += " (--threads checks yours)"
    if extra.get("precision", "fp32") != "fp32":
        setting += f", {extra['precision']}"
    for answer in answers:
        note = "" if answer["calibrated"] or not extra.get("calibration") else "; kernel sum, not calibrated"
        if extra.get("calibration") and not answer["in_range"] and answer["calibrated"]:
            note = "; outside the calibration networks' sizes"
        shown, verdict = bounds.text(answer) if bounds else (f"± {answer['std_ms']:.2g}", "")
        click.echo(f"{answer['model']}\t{answer['latency_ms']:.4g} ms {shown} ({device}, "
                   f"{runtime}, {setting}; kernel sum {answer['kernel_sum_ms']:.4g} ms{note}){verdict}")
        if breakdown:
            for k in answer["breakdown"]:
                click.echo(f"  {k['kernel_type']:<16} x{k['count']:<4} {k['latency_ms']:9.4f} ms {k['share']:6.1%}")
