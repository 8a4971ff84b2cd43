"""End-to-end kernel sampling: prior from the zoo and the search spaces, measure, re-sample.

:func:`sample_kernels` is what ``bench kernels sample`` runs: build the prior from the kernel
graphs of every zoo model and of samples of the search spaces (:func:`prior_graphs`), draw
``counts`` configurations per kernel type, measure them through the runner, then
``adaptive_rounds`` times find the kernels whose cross-validated forest error exceeds
``threshold`` (:func:`cross_validated_errors`) and measure neighbours of those. The samples are
saved to (and, when present, extended from) the working folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from costmeter.errors import ConfigError
from costmeter.predictors.kernels.rules import RuleSet
from costmeter.predictors.sampling.measure import KernelSamples, measure_kernels, samples_path
from costmeter.predictors.sampling.configs import adaptive_configs, build_prior, sample_configs

# per kernel type; fc is 1-2 kernels of a CNN but 4-14% of its time on one thread (a classifier's
# weights come from memory), so it gets more draws than its kernel count alone would; pools
# likewise (three measured pools priced NB201's 3x3 average pools at 2.8x their time)
DEFAULT_COUNTS: dict[str, int] = {
    "conv": 260, "dwconv": 200, "fc": 80, "pool": 40, "global_pool": 40, "elementwise": 200,
    "activation": 150, "view": 8, "norm": 8, "concat": 8, "softmax": 8, "layernorm": 8,
    "matmul": 12, "data": 8, "se": 60,
}
PRIOR_SPACES: tuple[str, ...] = ("nb201", "ofa_mbv3")


def prior_graphs(workdir: Path | str, rules: RuleSet, space_samples: int = 30,
                 seed: int = 100, spaces: Sequence[str] = PRIOR_SPACES) -> list[Any]:
    """Kernel graphs of every zoo model and of ``space_samples`` samples of each space (their
    rows are kept in the working folder's graph cache too)."""
    from costmeter.predictors.workflows.graphs import hashed_source, kernel_graph, remember_rows

    graphs = []
    for spec in prior_specs(space_samples, seed, spaces):
        source = hashed_source(spec, workdir)
        graphs.append(kernel_graph(source, workdir, rules))
        remember_rows(source, workdir, rules, graphs[-1])  # `bench predict` of these is warm
    return graphs


def prior_specs(space_samples: int = 30, seed: int = 100,
                spaces: Sequence[str] = PRIOR_SPACES) -> list[str]:
    """Model ids of the prior: every zoo model and ``space_samples`` samples of each space."""
    from costmeter.models.source import zoo_names
    from costmeter.predictors.workflows.collect import plan

    specs = list(zoo_names())
    for space in spaces:
        specs += [item.model_id for item in plan(space, space_samples, seed=seed)]
    return specs


def cross_validated_errors(samples: KernelSamples, folds: int = 5,
                           n_estimators: int = 60) -> tuple[list[Any], list[float]]:
    """(configs, out-of-fold relative errors pred/measured - 1) of the measured kernels.

    One model per kernel type, the kind a predictor fits (:func:`~costmeter.predictors.
    estimators.network.default_kernel_forest`); types with fewer than ``2 * folds`` rows are
    skipped.
    """
    import numpy as np
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    from costmeter.predictors.estimators.network import default_kernel_forest

    by_key = {c.key: c for c in samples.configs()}
    tables, latencies = samples.tables(), samples.latencies()
    configs: list[Any] = []
    errors: list[float] = []
    template = default_kernel_forest(n_estimators).forest
    for kernel_type, table in tables.items():
        y = latencies[kernel_type]
        if len(table) < 2 * folds:
            continue
        predicted = np.zeros(len(y))
        for train, test in KFold(folds, shuffle=True, random_state=0).split(table):
            forest = clone(template).fit(table.iloc[train], y[train])
            predicted[test] = forest.predict(table.iloc[test])
        for key, p, t in zip(table.index, predicted, y):
            if key in by_key:
                configs.append(by_key[key])
                errors.append(float(p / t - 1))
    return configs, errors


def sample_kernels(rules: RuleSet, device: str = "cpu", workdir: Path | str = ".costmeter",
                   counts: Mapping[str, int] | None = None, store: Any = None,
                   threads: int | None = 1, min_time_s: float = 0.2, seed: int = 0,
                   space_samples: int = 30, adaptive_rounds: int = 1, per_point: int = 2,
                   adaptive_max: int = 160, threshold: float = 0.10,
                   graphs: Sequence[Any] | None = None, log: Any = None,
                   measure: Any = None, context: bool = False, keep_artifacts: bool = False,
                   cpus: str = "") -> KernelSamples:
    """Measure kernel samples for ``rules.runtime`` on ``device``; see the module docstring.

    Kernel types that the prior does not contain are skipped. Existing samples in the working
    folder are extended (configs already measured are not measured again). ``log`` receives
    one-line progress messages; ``measure`` replaces the measuring (groups of ONNX files ->
    median ms). ``context``: image kernels timed in context (see
    :func:`~costmeter.predictors.sampling.measure.measure_kernels`); samples already in the folder
    must have been timed the same way, at the same ``threads`` and ``cpus`` (the pinning of
    this process, recorded). Micro-benchmark files are removed once measured unless
    ``keep_artifacts``.
    """
    say = log or (lambda message: None)
    graphs = list(graphs) if graphs is not None else prior_graphs(workdir, rules, space_samples)
    prior = build_prior(graphs)
    say(f"kernel prior: {prior.counts()}; without a micro-benchmark: {prior.unbuildable}")
    path = samples_path(workdir, device, rules.runtime)
    method = "context" if context else "isolated"
    samples = KernelSamples.load(path) if path.exists() else KernelSamples(device, rules.runtime)
    if not samples.rows:
        samples = KernelSamples(device, rules.runtime, method=method, threads=threads, cpus=cpus)
    elif samples.method != method:
        raise ConfigError(f"{path} holds kernels timed {samples.method}; time the new ones the same "
                          f"way ({'--context' if samples.method == 'context' else 'without --context'})"
                          " or use another --workdir")
    wanted = {t: n for t, n in (counts or DEFAULT_COUNTS).items() if n and prior.configs.get(t)}
    known = {r["key"] for r in samples.rows}
    configs = [c for c in sample_configs(prior, wanted, seed=seed) if c.key not in known]
    kwargs = dict(device=device, workdir=workdir, threads=threads, min_time_s=min_time_s,
                  sink=store, measure=measure, context=context, keep_artifacts=keep_artifacts,
                  cpus=cpus)
    samples.extend(measure_kernels(configs, rules, **kwargs))
    say(f"measured {len(configs)} kernel configs")
    for round_index in range(adaptive_rounds):
        measured, errors = cross_validated_errors(samples)
        latency = {r["key"]: r["latency_ms"] for r in samples.rows}
        extra = adaptive_configs(measured, errors, per_point, threshold, seed + 1 + round_index,
                                 stakes=[latency[c.key] for c in measured])
        extra = extra[:adaptive_max]
        large = sum(abs(e) > threshold for e in errors)
        say(f"adaptive round {round_index + 1}: the forests miss {large} of {len(errors)} kernels "
            f"by more than {threshold:.0%} out of fold; measuring {len(extra)} neighbours there "
            "(usual after a first draw: more rounds, --adaptive-rounds, or a larger `bench "
            "predictor build --budget` measure more where the forests are wrong)")
        if not extra:
            break
        samples.extend(measure_kernels(extra, rules, **kwargs))
    samples.add_folded(graphs)
    samples.save(path)
    return samples
