"""``bench traces import``, ``bench predictor fit|eval`` and ``bench predict``: the cost model."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import (MODEL_HELP, OutputPath, count, fraction, input_file, model_specs,
                                  non_empty_list, open_store, query_frame, store_option, workdir_option)
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
    traces hold) and save it with a manifest: a forest on a search space's analytic features, or
    (no --space) a whole-model predictor on ONNX graph features, the analytic peak activation
    memory among them."""
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
    save_predictor(pred, output, training_hash=digest, metrics=scores,
                   extra={"target": spec.name, "target_column": spec.column, "unit": spec.unit})
    shown = ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if k in ("spearman", "mape_pct", "within_10_pct"))
    click.echo(f"wrote {output} ({spec.name} of {pred.n_train_} {what}; held-out: "
               f"{shown or 'not enough data'})")


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
@click.option("--output", "-o", type=OutputPath(), default=None,
              help="Write per-model predictions (CSV) for `bench report predictor`")
@store_option
@workdir_option
def eval_(model_file: str | None, space: str | None, device: str | None, runtime: str | None, split: str,
          train_share: float, held_out: str | None, seed: int, output: str | None,
          store_url: str | None, workdir: Path | None) -> None:
    """RMSE, MAPE, share within ±5/10/15%, Spearman and Kendall, overall and per family."""
    from costmeter.errors import ConfigError
    from costmeter.predictors import family_of, metrics_table

    frame = query_frame(store_url, workdir)
    if model_file:
        from costmeter.predictors import load_artifact as load_predictor
        from costmeter.results.traces import training_frame

        pred = load_predictor(model_file)
        test = training_frame(frame, pred.space, device=pred.device, runtime=pred.runtime)
        archs, measured = list(test["arch"]), test["latency_ms"].to_numpy()
        predicted = pred.predict(archs)
        ids = [f"{pred.space}:{a}" for a in archs]
    elif space and device:
        ids, archs, measured, predicted = _cross_validate(frame, space, device, runtime, split, train_share,
                                                          held_out, seed)
    else:
        raise ConfigError("give a predictor file, or --space and --device to cross-validate a fresh forest")
    families = [family_of(i) if split != "family" else _family(a) for i, a in zip(ids, archs)]
    table = metrics_table(measured, predicted, families)
    click.echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if output:
        import pandas as pd

        pd.DataFrame({"model_id": ids, "family": families, "measured_ms": measured,
                      "predicted_ms": predicted}).to_csv(output, index=False)
        click.echo(f"wrote {output}")


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


@click.command()
@click.argument("model_file", type=input_file())
@click.option("--model", "-m", "archs", required=True, multiple=True,
              help="Repeatable, one architecture per value (space: prefix optional), or @FILE with one "
                   "per line. For a kernel-level predictor (`bench kernels fit`): " + MODEL_HELP)
@click.option("--breakdown/--no-breakdown", default=True, show_default=True,
              help="Per kernel type latencies (kernel-level predictors)")
@workdir_option
def predict(model_file: str, archs: tuple[str, ...], breakdown: bool, workdir: Path | None) -> None:
    """Predicted latency ± uncertainty (ms) of architectures, from a saved predictor or a lookup
    table (TABLE.json from `bench lut build`)."""
    from costmeter.predictors import load_artifact as load_predictor, read_manifest
    from costmeter.predictors import NetworkPredictor
    from costmeter.models.spaces import split_model_id

    if Path(model_file).suffix.lower() in (".json", ".csv"):
        _predict_with_table(model_file, archs)
        return
    pred = load_predictor(model_file)
    if isinstance(pred, NetworkPredictor):
        manifest = read_manifest(model_file)
        _predict_networks(pred, model_specs(archs), manifest, breakdown, workdir)
        return
    from costmeter.predictors import GraphTargetPredictor

    if isinstance(pred, GraphTargetPredictor):
        _predict_graph_target(pred, model_specs(archs), workdir)
        return
    items = [a for value in archs for a in (model_specs((value,)) if value.startswith("@")
                                             else [value.strip()])]
    clean = [(split_model_id(a) or (pred.space, a))[1] for a in items]
    from costmeter.predictors import get_target

    mean, std = pred.predict_with_uncertainty(clean)
    spec = get_target(getattr(pred, "target_", "latency"))
    for arch, m, s in zip(clean, mean, std):
        value = f"{m:.4g} ms ± {s:.2g}" if spec.unit == "ms" else \
            f"{spec.name} {spec.format(m)} ± {spec.format(s)}"
        click.echo(f"{pred.space}:{arch}\t{value} ({pred.device or '?'}, {pred.runtime or '?'})")


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


def _predict_with_table(path: str, archs: tuple[str, ...]) -> None:
    """Sum each architecture's block entries in a lookup table (any space that has one)."""
    from costmeter.errors import ConfigError
    from costmeter.models.spaces import get_space, split_model_id
    from costmeter.predictors import load_lut

    table = load_lut(path)
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
    for arch, m, s in zip(clean, mean, unc):
        click.echo(f"{table.space}:{arch}\t{m:.4g} ms ± {s:.2g} ({table.device}, {table.runtime}; "
                   "lookup table)")


def _predict_networks(pred, models: list[str], manifest: dict, breakdown: bool, workdir: Path | None) -> None:
    """Export each model, apply the runtime's fusion rules, print the network prediction and its kernels."""
    from costmeter.models.export import export_onnx
    from costmeter.models.source import resolve_model
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors import load_rules
    from costmeter.predictors import fuse

    wd = workdir or default_workdir()
    device, runtime = manifest.get("device") or "cpu", manifest.get("runtime") or "onnxruntime"
    rules = load_rules(runtime, device, wd)
    graphs = {m: fuse(load_graph(export_onnx(resolve_model(m), wd)), rules) for m in models}
    frame = pred.predict_frame(graphs)
    parts = pred.breakdown(graphs) if breakdown else None
    click.echo(pred.describe())
    for name, row in frame.iterrows():
        note = "" if row["calibrated"] or pred.calibration_ is None else \
            "; outside the calibration networks' range, not calibrated"
        click.echo(f"{name}\t{row['latency_ms']:.4g} ms ± {row['std_ms']:.2g} ({device}, {runtime}; "
                   f"kernel sum {row['kernel_sum_ms']:.4g} ms{note})")
        if parts is not None:
            for (_, kernel_type), k in parts.loc[[name]].iterrows():
                click.echo(f"  {kernel_type:<16} x{int(k['count']):<4} {k['latency_ms']:9.4f} ms "
                           f"{k['share']:6.1%}")
