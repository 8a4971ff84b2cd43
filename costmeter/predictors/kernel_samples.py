"""Measuring kernel micro-benchmarks through the harness runner, and keeping the results.

:func:`measure_kernels` writes each :class:`~costmeter.predictors.sampling.KernelConfig` as a
tiny ONNX file, checks with the rule set that it forms exactly one kernel of its type (a config
that a runtime's rules split is reported, not measured), measures all files with the runner
(one isolated worker each; an almost empty model measured alongside gives the per-run overhead,
subtracted from every median) and returns :class:`KernelSamples`: per kernel type, the named
feature table and the latencies that :class:`~costmeter.predictors.forest.KernelForest` fits.

Kernels the runtime folds at load time (kernel type ``constant``: ops computing only from
constants) never run; :meth:`KernelSamples.add_folded` gives them rows at
:data:`FOLDED_LATENCY_MS` so they are priced (at ~0) rather than dropped.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.features import FEATURE_SCHEMA_VERSION, KERNEL_FEATURES, kernel_features
from costmeter.predictors.kernel_rules import RuleSet
from costmeter.predictors.kernels import KernelGraph, fuse
from costmeter.predictors.sampling import KernelConfig

MIN_KERNEL_MS = 1e-4  # floor of an overhead-corrected kernel latency (0.1 us)
FOLDED_LATENCY_MS = 1e-4
FOLDED_TYPES: tuple[str, ...] = ("constant",)
OVERHEAD_REPEATS = 3
_ROW_COLUMNS = ["key", "kernel_type", "config", "features", "raw_ms", "overhead_ms",
                "latency_ms", "source", "rounds"]

MeasureFn = Callable[[list[Path]], list[float]]  # ONNX files -> median latency (ms)


@dataclass
class KernelSamples:
    """Measured kernels: one row each (config, raw and corrected latency, named features)."""

    device: str
    runtime: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    split: list[KernelConfig] = field(default_factory=list)  # configs the rules cut in pieces

    def tables(self) -> dict[str, Any]:
        """kernel_type -> DataFrame of :data:`KERNEL_FEATURES` (index: config key)."""
        import pandas as pd

        out: dict[str, Any] = {}
        for kernel_type in sorted({r["kernel_type"] for r in self.rows}):
            rows = [r for r in self.rows if r["kernel_type"] == kernel_type]
            frame = pd.DataFrame([r["features"] for r in rows], index=[r["key"] for r in rows],
                                 columns=list(KERNEL_FEATURES[kernel_type]), dtype="float64")
            frame.attrs.update(feature_schema_version=FEATURE_SCHEMA_VERSION,
                               kernel_type=kernel_type)
            out[kernel_type] = frame
        return out

    def latencies(self) -> dict[str, Any]:
        """kernel_type -> overhead-corrected latencies (ms), aligned with :meth:`tables`."""
        import numpy as np

        types = sorted({r["kernel_type"] for r in self.rows})
        return {t: np.array([r["latency_ms"] for r in self.rows if r["kernel_type"] == t])
                for t in types}

    def configs(self) -> list[KernelConfig]:
        """The measured configs (folded rows have none and are skipped)."""
        return [KernelConfig.from_dict(json.loads(r["config"])) for r in self.rows if r["config"]]

    def extend(self, other: KernelSamples) -> KernelSamples:
        """Add ``other``'s rows (same device and runtime); rows with a known key are skipped."""
        if (other.device, other.runtime) != (self.device, self.runtime):
            raise ConfigError(f"cannot merge kernel samples of {other.device}/{other.runtime} "
                              f"into {self.device}/{self.runtime}; keep them apart")
        known = {r["key"] for r in self.rows}
        self.rows += [r for r in other.rows if r["key"] not in known]
        self.split += other.split
        return self

    def merge_lower(self, other: KernelSamples) -> KernelSamples:
        """Fold in a re-measurement: per config key keep the lower latency, count the rounds.

        Contention on a shared machine only adds time, so the lower of two medians taken at
        different times is the better estimate; new keys are added as in :meth:`extend`.
        """
        by_key = {r["key"]: r for r in self.rows}
        for row in other.rows:
            mine = by_key.get(row["key"])
            if mine is None:
                self.extend(KernelSamples(self.device, self.runtime, [row]))
                continue
            mine["rounds"] = int(mine.get("rounds", 1)) + 1
            if row["latency_ms"] < mine["latency_ms"]:
                mine.update(raw_ms=row["raw_ms"], overhead_ms=row["overhead_ms"],
                            latency_ms=row["latency_ms"])
        return self

    def add_folded(self, kernel_graphs: Iterable[KernelGraph]) -> KernelSamples:
        """Rows for kernels folded at load time (:data:`FOLDED_TYPES`), at FOLDED_LATENCY_MS."""
        known = {r["key"] for r in self.rows}
        for kernel_graph in kernel_graphs:
            for kernel in kernel_graph.kernels:
                if kernel.kernel_type not in FOLDED_TYPES:
                    continue
                values = kernel_features(kernel)
                key = "folded-" + json.dumps(values, sort_keys=True)
                if key not in known:
                    known.add(key)
                    self.rows.append({"key": key, "kernel_type": kernel.kernel_type, "config": "",
                                      "features": values, "raw_ms": float("nan"),
                                      "overhead_ms": float("nan"),
                                      "latency_ms": FOLDED_LATENCY_MS, "source": "folded",
                                      "rounds": 0})
        return self

    def summary(self) -> dict[str, int]:
        """Measured rows per kernel type."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["kernel_type"]] = counts.get(row["kernel_type"], 0) + 1
        return counts

    def save(self, path: Path | str) -> Path:
        """Write as CSV (features as JSON, schema version in a column); returns the path."""
        import pandas as pd

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self.rows, columns=_ROW_COLUMNS)
        frame["features"] = [json.dumps(f, sort_keys=True) for f in frame["features"]]
        frame["feature_schema_version"] = FEATURE_SCHEMA_VERSION
        frame["device"], frame["runtime"] = self.device, self.runtime
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> KernelSamples:
        """Read :meth:`save` output; StoreError for another feature schema or a bad file."""
        import pandas as pd

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"kernel sample file not found: {path}; measure kernels first")
        try:
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read kernel samples {path} ({type(error).__name__}); "
                             "measure the kernels again") from error
        versions = set(frame.get("feature_schema_version", []))
        if versions and versions != {FEATURE_SCHEMA_VERSION}:
            raise StoreError(f"kernel samples {path} use feature schema {sorted(versions)}, this "
                             f"costmeter uses {FEATURE_SCHEMA_VERSION}; measure the kernels again")
        if frame.empty:
            return cls(device="", runtime="")
        samples = cls(device=str(frame["device"].iloc[0]), runtime=str(frame["runtime"].iloc[0]))
        if "rounds" not in frame:  # written before re-measurement rounds were counted
            frame["rounds"] = (frame["source"] == "measured").astype(int)
        for record in frame[_ROW_COLUMNS].to_dict("records"):
            record["features"] = json.loads(record["features"])
            record["config"] = record["config"] if isinstance(record["config"], str) else ""
            samples.rows.append(record)
        return samples


def _runner_measure(device: str, runtime: str, workdir: Path, threads: int | None,
                    min_time_s: float, sink: Any, progress: Any) -> MeasureFn:
    from costmeter.predictors.microbench import measure_onnx, median_ms, micro_protocol

    def measure(paths: list[Path]) -> list[float]:
        results = measure_onnx(paths, device, runtime, workdir, micro_protocol(min_time_s),
                               threads, sink, tag="kernels-sample", progress=progress)
        return [median_ms(r) for r in results]

    return measure


def measure_kernels(configs: Sequence[KernelConfig], rules: RuleSet, device: str = "cpu",
                    workdir: Path | str = ".costmeter", threads: int | None = 1,
                    min_time_s: float = 0.2, sink: Any = None, measure: MeasureFn | None = None,
                    progress: Any = None) -> KernelSamples:
    """Measure ``configs`` on ``device`` with ``rules.runtime``; see the module docstring.

    Failed runs are left out of the rows (their configs are neither split nor measured);
    ``measure`` replaces the harness runner (ONNX files -> median ms), for tests.
    """
    from costmeter.predictors.graph import load_graph
    from costmeter.predictors.microbench import chain_model, write_model

    workdir = Path(workdir)
    folder = workdir / "kernels" / "micro"
    measure = measure or _runner_measure(device, rules.runtime, workdir, threads, min_time_s,
                                         sink, progress)
    samples = KernelSamples(device=device, runtime=rules.runtime)
    planned: list[tuple[KernelConfig, dict[str, float], Path]] = []
    for config in configs:
        model = config.build()
        kernels = [k for k in fuse(load_graph(model), rules).kernels
                   if k.kernel_type not in FOLDED_TYPES]
        if len(kernels) != 1 or kernels[0].kernel_type != config.kernel_type:
            samples.split.append(config)
            continue
        planned.append((config, kernel_features(kernels[0]),
                        write_model(model, folder, config.kernel_type)))
    if not planned:
        return samples
    overhead_path = write_model(chain_model([("Relu", {})], (1, 1), "overhead"), folder, "overhead")
    step = max(1, len(planned) // (OVERHEAD_REPEATS - 1))
    paths: list[Path] = []
    overhead_slots: list[int] = []
    for index, (_, _, path) in enumerate(planned):
        if index % step == 0:
            overhead_slots.append(len(paths))
            paths.append(overhead_path)
        paths.append(path)
    overhead_slots.append(len(paths))
    paths.append(overhead_path)
    medians = measure(paths)
    overhead_values = [medians[i] for i in overhead_slots if medians[i] == medians[i]]
    overhead = statistics.median(overhead_values) if overhead_values else 0.0
    kernel_medians = [m for i, m in enumerate(medians) if i not in overhead_slots]
    for (config, values, _), raw in zip(planned, kernel_medians):
        if raw != raw:  # NaN: the run failed
            continue
        samples.rows.append({
            "key": config.key, "kernel_type": config.kernel_type,
            "config": json.dumps(config.to_dict(), sort_keys=True), "features": values,
            "raw_ms": raw, "overhead_ms": overhead,
            "latency_ms": max(raw - overhead, MIN_KERNEL_MS), "source": "measured", "rounds": 1})
    return samples


def samples_path(workdir: Path | str, device: str, runtime: str) -> Path:
    """Where the kernel samples of ``runtime`` on ``device`` are kept."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device)
    return Path(workdir) / "kernels" / f"samples-{safe}-{runtime}.csv"
