"""The steps of ``bench predictor build`` (:mod:`costmeter.predictors.workflows.build`), each
walking its share of the budget in chunks and recording what it did after every chunk."""
from __future__ import annotations

import contextlib
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterator

from costmeter.errors import ConfigError
from costmeter.predictors.workflows import budget as rule
from costmeter.predictors.workflows.build import (
    ADAPTIVE_ROUND_MAX, FOREST_TREES, KERNEL_CHUNK, KERNEL_PLAN_SCALE, MAX_NETWORK_ROUNDS,
    MAX_NETWORKS_PER_FAMILY, NETWORK_CHUNK, PRIOR_SPACE_SAMPLES, BuildProgress, BuildResult,
    BuildSeams, BuildSpec, save_state)
from costmeter.predictors.workflows.graphs import read_json, write_json
from costmeter.workdir import Workdir


def check_budget(spec: BuildSpec, state: dict[str, Any]) -> None:
    """ConfigError when the budget cannot measure one kernel of every type and a few networks
    of every calibration family, after the fixed steps (their measured time once they ran)."""
    from costmeter.predictors.sampling.prior import DEFAULT_COUNTS

    fixed = sum(rule.fixed_seconds(state["spent_s"], state["done"]).values())
    minimum = rule.minimum_budget(len(DEFAULT_COUNTS), len(spec.calibrate_on), fixed)
    if spec.budget_s < minimum:
        raise ConfigError(f"--budget {rule.format_duration(spec.budget_s)} is below the "
                          f"minimum of {rule.format_duration(minimum)} here (one kernel of "
                          f"each of {len(DEFAULT_COUNTS)} types and "
                          f"{rule.MIN_NETWORKS_PER_FAMILY} networks of each of "
                          f"{len(spec.calibrate_on)} families, after the fixed steps); "
                          f"give --budget {rule.format_duration(minimum)} or more (30m for "
                          "the accuracy the README reports)")


class BuildRun:
    """One run of a build: the spec, its working folder and state, and the steps."""

    def __init__(self, spec: BuildSpec, wd: Workdir, state: dict[str, Any], store: Any,
                 progress: Callable[[BuildProgress], None] | None, seams: BuildSeams) -> None:
        from costmeter.predictors.kernels.rules import load_rules

        self.spec, self.wd, self.state, self.store = spec, wd, state, store
        self.progress, self.seams = progress, seams
        self.rules = load_rules(spec.runtime, spec.device, wd.root)
        state.setdefault("items", {})  # items measured per step (for its rate)
        self._prior: Any = None
        self._samples: Any = None
        self._curve: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    # -- bookkeeping
    def allotment(self) -> rule.Allotment:
        return rule.allot(self.spec.budget_s, self.state["spent_s"], self.state["done"])

    def left(self, step: str) -> float:
        """Seconds ``step`` may still spend."""
        return self.allotment().of(step) - self.state["spent_s"].get(step, 0.0)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the block's seconds to ``step`` and save the state, even when interrupted."""
        started = self.seams.clock()
        try:
            yield
        finally:
            spent = self.state["spent_s"]
            spent[step] = spent.get(step, 0.0) + self.seams.clock() - started
            save_state(self.wd, self.spec, self.state)

    def report(self, step: str, done: int, total: int, note: str = "", status: str = "") -> None:
        if self.progress is None:
            return
        spent = sum(self.state["spent_s"].values())
        self.progress(BuildProgress(step, done, total, spent, self.spec.budget_s,
                                    self.seconds_left(), note, status))

    def seconds_left(self) -> float:
        """Estimated seconds to the end: what each step may still spend of its share (a step
        whose plan runs out ends sooner), and the fit."""
        allotment, spent, done = self.allotment(), self.state["spent_s"], self.state["done"]
        left = 0.0 if done.get("fit") and spent.get("fit") else allotment.fit
        for step in ("prior", "curve"):
            if not done.get(step):
                left += max(0.0, allotment.of(step) - spent.get(step, 0.0))
        for step in rule.MEASURING:
            left += max(0.0, allotment.of(step) - spent.get(step, 0.0))
        return left

    def chunk(self, step: str, largest: int, first_guess_s: float) -> int:
        """Items to measure next: ``largest``, or fewer when the step's seconds left would not
        cover them at its measured rate (so a step overruns its share by one item at most)."""
        items = self.state["items"].get(step, 0)
        rate = self.state["spent_s"].get(step, 0.0) / items if items else first_guess_s
        return int(max(1, min(largest, math.ceil(self.left(step) / max(rate, 1e-3)))))

    def check_budget(self) -> None:
        """See :func:`check_budget`."""
        check_budget(self.spec, self.state)

    # -- 1. prior
    def prior(self) -> None:
        from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION
        from costmeter.predictors.sampling.configs import KernelConfig, KernelPrior
        from costmeter.predictors.sampling.measure import KernelSamples

        # the prior holds float configs from float models: a build at another precision (which
        # quantizes each micro-benchmark) reuses it
        path = self.wd.build_prior(self.spec.device, self.spec.runtime)
        data = read_json(path) if self.state["done"].get("prior") or self.spec.precision != "fp32" else None
        if data is not None and data.get("feature_schema") != FEATURE_SCHEMA_VERSION:
            data = None  # a prior of older kernel types (before the se blocks): analyse again
        if data is None:
            self.report("prior", 0, 1, "exporting and analysing the zoo's and the spaces' models")
            with self.timed("prior"):
                from costmeter.predictors.sampling.configs import build_prior
                from costmeter.predictors.sampling.prior import prior_graphs

                graphs = (self.seams.prior_graphs() if self.seams.prior_graphs else
                          prior_graphs(self.wd.root, self.rules, PRIOR_SPACE_SAMPLES))
                found = build_prior(graphs)
                folded = KernelSamples(self.spec.device, self.spec.runtime).add_folded(graphs).rows
                data = {"configs": {t: [c.to_dict() for c in cs] for t, cs in found.configs.items()},
                        "unbuildable": found.unbuildable, "folded": folded,
                        "feature_schema": FEATURE_SCHEMA_VERSION}
                write_json(path, data)
                self.state["done"]["prior"] = True
        self._prior = KernelPrior({t: [KernelConfig.from_dict(c) for c in cs]
                                   for t, cs in data["configs"].items()}, data["unbuildable"])
        self._folded = data["folded"]
        self.report("prior", 1, 1, f"kernel prior: {sum(self._prior.counts().values())} kernels "
                                   f"of {len(self._prior.configs)} types")

    # -- 2. and 3. kernels
    def samples(self) -> Any:
        """The folder's kernel samples (timed in context, at this build's threads and CPUs)."""
        from costmeter.predictors.sampling.measure import KernelSamples, samples_path, setting

        if self._samples is None:
            path = samples_path(self.wd.root, self.spec.device, self.spec.runtime, self.spec.precision)
            mine = KernelSamples(self.spec.device, self.spec.runtime, method="context",
                                 threads=self.spec.threads, cpus=self.spec.cpus_text,
                                 clock=self.spec.clock)
            if path.exists():
                found = KernelSamples.load(path)
                if found.rows and (found.method, setting(found)) != (mine.method, setting(mine)):
                    raise ConfigError(
                        f"{path} holds kernels timed {found.method} at {setting(found)}; build "
                        "with those settings, or use another --workdir")
                mine.extend(found)
            self._samples = mine
        return self._samples

    def kernel_plan(self) -> list[Any]:
        from costmeter.predictors.sampling.configs import interleave, sample_configs
        from costmeter.predictors.sampling.prior import DEFAULT_COUNTS

        counts = {t: n * KERNEL_PLAN_SCALE for t, n in DEFAULT_COUNTS.items()
                  if self._prior.configs.get(t)}
        return interleave(sample_configs(self._prior, counts, seed=self.spec.seed))

    def kernels(self) -> None:
        plan = self.kernel_plan()
        record = self.state["kernels"]
        self._walk("kernels", plan, record, "kernels timed in context")

    def adaptive(self) -> None:
        from costmeter.predictors.sampling.configs import KernelConfig, adaptive_configs
        from costmeter.predictors.sampling.prior import cross_validated_errors

        record = self.state["adaptive"]
        while self.left("adaptive") > 0:
            if record["position"] >= len(record["planned"]):
                if record.get("settled_at") == len(self.samples().rows):
                    return
                with self.timed("adaptive"):
                    configs, errors = cross_validated_errors(self.samples())
                    latency = {r["key"]: r["latency_ms"] for r in self.samples().rows}
                    extra = [c for c in adaptive_configs(configs, errors, 2, 0.10,
                                                         self.spec.seed + 1 + record["round"],
                                                         stakes=[latency[c.key] for c in configs])
                             if c.key not in latency][:ADAPTIVE_ROUND_MAX]
                    large = sum(abs(e) > 0.10 for e in errors)
                    record.update(round=record["round"] + 1, planned=[c.to_dict() for c in extra],
                                  position=0)
                    if not extra:
                        record["settled_at"] = len(self.samples().rows)
                self.report("adaptive", 0, len(extra),
                            f"round {record['round']}: the forests miss {large} of {len(errors)} "
                            f"kernels by >10% out of fold; measuring {len(extra)} neighbours "
                            "(more --budget measures more)" if errors else
                            f"round {record['round']}: no kernel type has 10 measured kernels to "
                            "cross-validate yet, so none is re-sampled (more --budget measures more)")
                if not extra:
                    return
            plan = [KernelConfig.from_dict(c) for c in record["planned"]]
            self._walk("adaptive", plan, record, f"re-sampling, round {record['round']}")
            if record["position"] < len(record["planned"]):
                return  # out of time within this round

    def _walk(self, step: str, plan: list[Any], record: dict[str, Any], what: str) -> None:
        """Measure ``plan`` from ``record['position']`` in chunks while ``step`` has time."""
        from costmeter.predictors.sampling.measure import measure_kernels, samples_path

        samples = self.samples()
        path = samples_path(self.wd.root, self.spec.device, self.spec.runtime, self.spec.precision)
        while record["position"] < len(plan) and self.left(step) > 0:
            known = {r["key"] for r in samples.rows}
            size = self.chunk(step, KERNEL_CHUNK, rule.SECONDS_PER_KERNEL)
            chunk = plan[record["position"]: record["position"] + size]
            todo = [c for c in chunk if c.key not in known]
            with self.timed(step):
                self.state["items"][step] = self.state["items"].get(step, 0) + len(todo)
                if todo:
                    measured = measure_kernels(
                        todo, self.rules, self.spec.device, self.wd.root, threads=self.spec.threads,
                        min_time_s=self.spec.kernel_time_s, sink=self.store,
                        measure=self.seams.kernel_measure, context=True,
                        keep_artifacts=self.spec.keep_artifacts, cpus=self.spec.cpus_text,
                        clock=self.spec.clock, precision=self.spec.precision)
                    samples.extend(measured)
                    samples.save(path)
                record["position"] += len(chunk)
            self.report(step, record["position"], len(plan), status=f"{what}: {len(samples.rows)} in all")

    # -- 4. networks
    def network_plan(self) -> list[Any]:
        from costmeter.predictors.workflows.collect import plan

        plans = [plan(f, MAX_NETWORKS_PER_FAMILY, seed=self.spec.seed) for f in self.spec.calibrate_on]
        return [p[i] for i in range(max(map(len, plans))) for p in plans if i < len(p)]

    def networks(self) -> None:
        measured: dict[str, Any] = self.state["networks"]
        plan = self.network_plan()
        for round_number in range(1, MAX_NETWORK_ROUNDS + 1):
            todo = [i for i in plan if len(measured.get(i.model_id, {}).get("ms", [])) < round_number]
            while todo and self.left("networks") > 0:
                size = self.chunk("networks", NETWORK_CHUNK, rule.SECONDS_PER_NETWORK)
                chunk, todo = todo[:size], todo[size:]
                with self.timed("networks"):
                    self.state["items"]["networks"] = self.state["items"].get("networks", 0) + len(chunk)
                    found = self.measure_networks(chunk)
                    for item in chunk:
                        entry = measured.setdefault(item.model_id, {"family": item.space, "ms": []})
                        entry["ms"].append(float(found.get(item.model_id, float("nan"))))
                        if round_number == 1 and math.isfinite(entry["ms"][-1]):
                            self.rows_of(item.model_id)  # analysed now, while its export is fresh
                done = sum(1 for i in plan if len(measured.get(i.model_id, {}).get("ms", [])) >= round_number)
                self.report("networks", done, len(plan),
                            status=f"calibration networks, round {round_number}")
            if todo:
                return

    def measure_networks(self, items: list[Any]) -> dict[str, float]:
        """Fastest run (ms) of each item, timed in a batch worker at the build's threads and
        clock, pinned (inherited)."""
        if self.seams.network_measure is not None:
            return dict(self.seams.network_measure(items))
        from costmeter.predictors.workflows.graphs import hashed_source, model_file

        files = {item.model_id: model_file(hashed_source(item.model_id, self.wd.root), self.wd.root,
                                           self.spec.precision) for item in items}
        return time_networks(files, self.spec.threads, self.spec.clock,
                             self.spec.network_time_s, self.spec.runtime)

    def rows_of(self, model_id: str) -> Any:
        """A calibration network's kernel rows (kept in the working folder's graph cache)."""
        if self.seams.network_rows is not None:
            return self.seams.network_rows(model_id)
        from costmeter.predictors.workflows.graphs import network_rows

        return network_rows(model_id, self.wd.root, self.rules, precision=self.spec.precision)[1]

    # -- 5. curve
    def curve(self) -> None:
        path = self.wd.cache_curve(self.spec.device)
        data = read_json(path)
        if not (self.state["done"].get("curve") and data and data.get("cpus") == list(self.spec.cpus)):
            self.report("curve", 0, 1, "measuring this machine's cache curve")
            with self.timed("curve"):
                from costmeter.harness.probes.cache import measure_cache_curve

                sizes, costs = (self.seams.cache_curve() if self.seams.cache_curve else
                                measure_cache_curve(sink=self.store))  # each size judged and stored
                data = {"mb": list(sizes), "us_per_mb": list(costs), "cpus": list(self.spec.cpus)}
                write_json(path, data)
                self.state["done"]["curve"] = True
        self._curve = (tuple(data["mb"]), tuple(data["us_per_mb"]))
        self.report("curve", 1, 1)

    # -- 6. fit
    def fit(self, output: Path) -> BuildResult:
        self.report("fit", 0, 1, "fitting kernel forests and the calibration")
        self.state["spent_s"]["fit"] = 0.0
        with self.timed("fit"):
            model, extra, counts = self._fit()
            from costmeter.predictors.artifacts import save_predictor
            from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION

            manifest = save_predictor(model, output, device=self.spec.device,
                                      runtime=self.spec.runtime, extra=extra,
                                      feature_schema=f"kernels/v{FEATURE_SCHEMA_VERSION}",
                                      training_rows=extra["kernel_samples"])
            answered = self.answer_zoo(model, manifest)
            self.state["done"]["fit"] = True
            freed = 0 if self.spec.keep_artifacts else self.drop_exports()
        notes = [f"answered the {answered} zoo models ahead (`bench predict` returns them from the "
                 "cache)" if answered else "",
                 f"removed {freed / 1e9:.1f} GB of ONNX exports (their kernel rows are kept; "
                 "--keep-artifacts keeps them)" if freed else ""]
        self.report("fit", 1, 1, "; ".join(n for n in notes if n))
        return BuildResult(Path(output), manifest, extra["calibration"],
                           dict(self.state["spent_s"]), extra["kernel_samples"], counts)

    def answer_zoo(self, model: Any, manifest: dict[str, Any]) -> int:
        """Keep the new predictor's answers for the zoo's models (their kernel rows are cached
        by the prior), so that asking about one loads no predictor file; returns how many."""
        if self.seams.prior_graphs is not None:
            return 0  # a test's fake prior analyses no zoo model
        from costmeter.models.source import zoo_names
        from costmeter.predictors.workflows.predict import cache_answers

        return cache_answers(model, manifest, list(zoo_names()), self.wd.root)

    def drop_exports(self) -> int:
        """Delete the ONNX exports of the prior's models and the calibration networks (bytes
        freed): their kernel rows are in the graph cache, and a new round re-exports."""
        from costmeter.predictors.sampling.prior import prior_specs
        from costmeter.predictors.workflows.graphs import drop_export

        if self.seams.prior_graphs is not None or self.seams.network_rows is not None:
            return 0  # a test's fake models have no exports
        specs = [*prior_specs(PRIOR_SPACE_SAMPLES), *self.state["networks"]]
        return sum(drop_export(spec, self.wd.root) for spec in specs)

    def quantization(self) -> dict[str, Any]:
        """The int8 recipe for the manifest (nothing at fp32)."""
        if self.spec.precision == "fp32":
            return {}
        from costmeter.predictors.sampling.quantized import CALIBRATION_SAMPLES

        return {"quantization": {
            "method": "static", "format": "QDQ", "weights": "int8 per-channel",
            "activations": "uint8 per-tensor", "calibration_method": "MinMax",
            "networks_calibration": "random:32 (as `bench run --precision int8`)",
            "micro_benchmark_calibration": f"random:{CALIBRATION_SAMPLES}",
            "tool": "onnxruntime.quantization"}}

    def _fit(self) -> tuple[Any, dict[str, Any], dict[str, int]]:
        import numpy as np

        from costmeter.predictors.estimators.calibration import TrafficCalibration
        from costmeter.predictors.estimators.kernel_choice import choose_kernel_model, kernel_cv_error
        from costmeter.predictors.estimators.network import NetworkPredictor, kernel_models
        from costmeter.predictors.sampling.measure import KernelSamples
        from costmeter.predictors.sampling.samples import COLD_WEIGHT_TYPES

        known = {x["key"] for x in self.samples().rows}
        samples = KernelSamples(self.spec.device, self.spec.runtime, method="context",
                                rows=self.samples().rows + [r for r in self._folded
                                                            if r["key"] not in known])
        measured = {m: e for m, e in self.state["networks"].items()
                    if any(math.isfinite(v) for v in e["ms"])}
        families = sorted({e["family"] for e in measured.values()})
        if len(measured) < 4 or len(families) < 2 or not samples.rows:
            raise ConfigError(f"the budget measured {len(samples.rows)} kernels and {len(measured)} "
                              f"calibration networks ({', '.join(families) or 'no family'}); a "
                              "calibration needs 4 networks of 2 families: give a larger --budget")
        names = sorted(measured)
        rows = {m: self.rows_of(m) for m in names}
        latency = [min(v for v in measured[m]["ms"] if math.isfinite(v)) for m in names]
        groups = [measured[m]["family"] for m in names]
        overheads = [float(r["overhead_ms"]) for r in samples.rows if r["source"] == "measured"]
        overhead = float(np.nanmedian(overheads)) if overheads else 0.0
        tables, latencies = samples.tables(), samples.latencies(cold=COLD_WEIGHT_TYPES)
        models = kernel_models(FOREST_TREES)
        fitted = {name: NetworkPredictor(kernels, overhead, TrafficCalibration(*self._curve)).fit(
                      tables, latencies, rows, latency, groups) for name, kernels in models.items()}
        kernel_cv = {name: kernel_cv_error(kernels, tables, latencies) for name, kernels in models.items()}
        chosen, rule = choose_kernel_model(fitted, latency, kernel_cv)
        model = fitted[chosen]
        cal = model.calibration_
        counts = {f: groups.count(f) for f in families}
        calibration = {"networks": len(names), "families": counts, "terms": list(cal.terms_),
                       "coef": dict(zip(("scale", "intercept_ms", "ms_per_weight_mb",
                                         "ms_per_activation_mb", "ms_per_missing_weight_mb"),
                                        map(float, cal.coef_))),
                       "lofo_within": cal.cv_within_, "lofo_rel_rmse": cal.cv_rel_rmse_,
                       "lofo_mape_pct": cal.cv_mape_, "lofo_bias": cal.cv_bias_,
                       "lofo_by_family": cal.cv_by_family_,
                       "kernel_sum_within": cal.kernel_sum_within_, "tolerance": cal.tolerance,
                       "cache_curve": {"mb": list(self._curve[0]), "us_per_mb": list(self._curve[1])},
                       "summary": cal.describe()}
        calibration["kernel_model"], calibration["kernel_model_rule"] = chosen, rule
        calibration["kernel_models"] = {name: {"lofo_within": m.calibration_.cv_within_,
                                               "lofo_rel_rmse": m.calibration_.cv_rel_rmse_,
                                               "kernel_cv_error": (kernel_cv[name] if math.isfinite(
                                                   kernel_cv[name]) else None)}
                                        for name, m in fitted.items()}
        extra = {"threads": self.spec.threads, "cpus": self.spec.cpus_text or None,
                 "precision": self.spec.precision, **self.quantization(),
                 "clock": self.spec.clock, "kernel_timing": "context", "overhead_ms": overhead,
                 "cold_weight_types": list(COLD_WEIGHT_TYPES),
                 "kernel_samples": len(samples.rows), "rules": self.rules.to_dict(),
                 "calibration": calibration, "calibration_networks": names,
                 "interval": model.interval_state(),
                 "build": {"budget_s": self.spec.budget_s, "seed": self.spec.seed,
                           "spent_s": {k: round(v, 1) for k, v in self.state["spent_s"].items()},
                           "network_rounds": _rounds(measured)}}
        return model, extra, counts


def network_protocol(min_time_s: float = 0.5) -> Any:
    """How a build times a network: 3 warm-up runs, then at least 10 runs and ``min_time_s``,
    going on to twice that while the median is not within +-2% (the build keeps the fastest
    run -- other work on a shared machine only adds time -- so a noisy network costs a
    bounded time)."""
    from costmeter.harness.config import ProtocolConfig

    return ProtocolConfig(warmup_count=3, warmup_s=0.2, min_count=10, min_time_s=min_time_s,
                          max_time_s=2 * min_time_s, percentiles=(50.0,), auto_min_count=False,
                          max_cv=0.3, max_rel_ci=0.02)


def time_networks(files: dict[str, Any], threads: int, clock: str, min_time_s: float = 0.5,
                  runtime: str = "onnxruntime") -> dict[str, float]:
    """Fastest run (ms, NaN when it failed) of each ONNX file (key -> path), each timed alone
    with :func:`network_protocol`, one after the other in a batch worker."""
    from costmeter.predictors.sampling.measure import time_files

    entries = [{"key": key, "onnx": str(path)} for key, path in files.items()]
    lines = time_files(entries, "cpu", runtime, threads, network_protocol(min_time_s), clock)
    return {key: float(lines[key]["min_ms"]) if key in lines and "min_ms" in lines[key]
            else float("nan") for key in files}


def _rounds(measured: dict[str, Any]) -> float:
    """Mean measurements per calibration network."""
    return statistics.fmean(len(e["ms"]) for e in measured.values()) if measured else 0.0
