"""``bench predict`` on a kernel-level predictor file, answering from the working folder's caches.

Loading a predictor file (scikit-learn forests through skops) costs seconds; so does exporting
a model. A warm answer needs neither: the model's kernel rows come from the graph cache
(:func:`~costmeter.predictors.workflows.graphs.network_rows`) and the answer itself from
``cache/predictions``, keyed by the predictor payload's SHA-256 and the rows' key -- both
content hashes, so a refitted predictor or a changed model never reuses an old answer. The file
is loaded only for models it has not answered yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from costmeter.errors import ConfigError
from costmeter.workdir import Workdir

NETWORK_ESTIMATOR = "costmeter.predictors.estimators.network.NetworkPredictor"
ANSWER_VERSION = 2


def is_network_predictor(manifest: dict[str, Any]) -> bool:
    """Whether a manifest describes a kernel-level :class:`NetworkPredictor`."""
    return manifest.get("estimator") == NETWORK_ESTIMATOR


def check_threads(manifest: dict[str, Any], threads: int | None, path: Path | str) -> None:
    """ConfigError when ``threads`` is given and differs from the thread count the predictor
    was built for (a latency at 1 thread says nothing about 4)."""
    built = (manifest.get("extra") or {}).get("threads")
    if threads is not None and built is not None and int(built) != int(threads):
        raise ConfigError(f"{path} predicts latencies at {built} thread(s), not {threads}; build "
                          f"a predictor with `bench predictor build --threads {threads}`")


def predictor_precision(manifest: dict[str, Any]) -> str:
    """The precision a kernel-level predictor's networks run at (fp32 for files that do not say)."""
    return str((manifest.get("extra") or {}).get("precision") or "fp32")


def check_precision(manifest: dict[str, Any], precision: str | None, path: Path | str) -> None:
    """ConfigError when ``precision`` is given and differs from the predictor's (an int8
    latency says nothing about fp32)."""
    built = predictor_precision(manifest)
    if precision is not None and precision != built:
        raise ConfigError(f"{path} predicts latencies at {built}, not {precision}; build a "
                          f"predictor with `bench predictor build --precision {precision}`")


def predictor_rules(manifest: dict[str, Any], workdir: Path | str) -> Any:
    """The fusion rules the predictor was fitted under (kept in its manifest), else the
    working folder's rules for its device and runtime."""
    from costmeter.predictors.kernels.rules import RuleSet, load_rules

    extra = manifest.get("extra") or {}
    if extra.get("rules"):
        return RuleSet.from_dict(extra["rules"])
    return load_rules(manifest.get("runtime") or "onnxruntime", manifest.get("device") or "cpu",
                      workdir)


def manifest_of(model_file: Path | str) -> dict[str, Any]:
    """The manifest of a predictor file, its sizes and schema checked but read without its
    payload (a 200-tree payload is tens of MB to inflate and hash). Enough to answer from the
    cache: answers are keyed by the manifest's payload hash, and a model not answered yet is
    answered by :func:`~costmeter.predictors.artifacts.load_predictor`, which checks the
    payload against it."""
    from costmeter.predictors.artifacts import peek_manifest

    return peek_manifest(model_file)


def interval_of(manifest: dict[str, Any], path: Path | str) -> Any:
    """The conformal calibration kept in a kernel-level predictor's manifest (extra
    ``interval``), read without its payload; ConfigError, saying how to get one, when the
    predictor was built without measured networks."""
    from costmeter.predictors.estimators.conformal import ConformalCalibration

    state = (manifest.get("extra") or {}).get("interval")
    if not state:
        raise ConfigError(f"{path} has no interval calibration (fitted without measured networks, "
                          "or by an older costmeter); build it with `bench predictor build` or "
                          "`bench kernels fit --calibrate-on SPACE,SPACE`")
    return ConformalCalibration.from_state(state)


def predict_models(model_file: Path | str, specs: Sequence[str], workdir: Path | str,
                   threads: int | None = None,
                   precision: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, one answer per spec) from a kernel-level predictor file.

    An answer: ``model``, ``latency_ms``, ``std_ms`` (one sigma), ``kernel_std_ms`` (the
    kernels' part of it, the conformal intervals' scale), ``kernel_sum_ms``,
    ``calibrated``, ``in_range`` and ``breakdown`` (per kernel type: ``kernel_type``, ``count``,
    ``latency_ms``, ``share``). Each model is analysed at the predictor's precision (int8: its
    quantized graph). Raises ConfigError for another thread count or precision, or a file that
    is not kernel-level."""
    from costmeter.predictors.workflows.graphs import network_rows, read_json, write_json

    manifest = manifest_of(model_file)
    if not is_network_predictor(manifest):
        raise ConfigError(f"{model_file} is not a kernel-level predictor; give architectures of "
                          f"its space ({manifest.get('space')}) instead")
    check_threads(manifest, threads, model_file)
    check_precision(manifest, precision, model_file)
    rules = predictor_rules(manifest, workdir)
    built = predictor_precision(manifest)
    payload = str((manifest.get("payload") or {}).get("sha256", ""))[:16]
    folder = Workdir.of(workdir).prediction_cache
    answers: dict[str, dict[str, Any]] = {}
    missing: dict[str, tuple[Path, Any]] = {}
    for spec in specs:
        key, rows = network_rows(spec, workdir, rules, precision=built)
        path = folder / f"{payload}-{key}.json"
        cached = read_json(path)
        if cached is not None and cached.get("version") == ANSWER_VERSION:
            answers[spec] = {**cached["answer"], "model": spec}
        else:
            missing[spec] = (path, rows)
    if missing:
        for spec, answer in _answer(model_file, {s: r for s, (_, r) in missing.items()}).items():
            write_json(missing[spec][0], {"version": ANSWER_VERSION, "answer": answer})
            answers[spec] = answer
    return manifest, [answers[s] for s in specs]


def _answer(model_file: Path | str, rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from costmeter.predictors.artifacts import load_predictor

    return answers_of(load_predictor(model_file), rows)


def cache_answers(predictor: Any, manifest: dict[str, Any], specs: Sequence[str],
                  workdir: Path | str) -> int:
    """Answer ``specs`` with an in-memory ``predictor`` whose file has ``manifest`` and keep the
    answers in ``cache/predictions``, as :func:`predict_models` would (so the first question
    about them loads no predictor file). Only models whose kernel rows are already in the graph
    cache are answered; returns how many."""
    from costmeter.predictors.workflows.graphs import cached_network_rows, write_json

    rules = predictor_rules(manifest, workdir)
    payload = str((manifest.get("payload") or {}).get("sha256", ""))[:16]
    found = {spec: cached_network_rows(spec, workdir, rules, precision=predictor_precision(manifest))
             for spec in specs}
    found = {spec: hit for spec, hit in found.items() if hit is not None}
    if not found:
        return 0
    answers = answers_of(predictor, {spec: rows for spec, (_, rows) in found.items()})
    folder = Workdir.of(workdir).prediction_cache
    for spec, (key, _) in found.items():
        write_json(folder / f"{payload}-{key}.json", {"version": ANSWER_VERSION, "answer": answers[spec]})
    return len(found)


def answers_of(predictor: Any, rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One answer (see :func:`predict_models`) per model of ``rows`` (kernel rows by model)."""
    frame = predictor.predict_frame(rows)
    parts = predictor.breakdown(rows)
    out = {}
    for spec, row in frame.iterrows():
        kernels = parts.loc[[spec]].reset_index()
        out[str(spec)] = {
            "model": str(spec), "latency_ms": float(row["latency_ms"]), "std_ms": float(row["std_ms"]),
            "kernel_std_ms": float(row["kernel_std_ms"]),
            "kernel_sum_ms": float(row["kernel_sum_ms"]), "calibrated": bool(row["calibrated"]),
            "in_range": bool(row["in_range"]),
            "breakdown": [{"kernel_type": str(k["kernel_type"]), "count": int(k["count"]),
                           "latency_ms": float(k["latency_ms"]), "share": float(k["share"])}
                          for _, k in kernels.iterrows()]}
    return out
