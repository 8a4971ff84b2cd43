"""Measured kernel micro-benchmarks and their file: :class:`KernelSamples` (what
:func:`~costmeter.predictors.sampling.measure.measure_kernels` returns and
:class:`~costmeter.predictors.estimators.forest.KernelForest` fits)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION, KERNEL_FEATURES, kernel_features
from costmeter.predictors.kernels.fuse import KernelGraph
from costmeter.predictors.sampling.configs import KernelConfig

FOLDED_LATENCY_MS = 1e-4
# kernel types a network runs with their weights out of cache, because their weights dwarf
# their activations and every other kernel ran between two runs of them: a classifier
# (EfficientNet-B0's 1280 x 1000 layer: 0.40 ms in the network, 0.375 ms timed cold, 0.195 ms
# warm) and a squeeze-excite block at low resolution (576 channels at 3x3 px, squeezed to 144:
# 65 us per block between MobileNetV3 layers, 37.7 us timed cold, 17.2 us warm). One thread,
# x86, ONNX Runtime. Priced warm, SE blocks left MobileNetV3 variants 12-22% under.
COLD_WEIGHT_TYPES: tuple[str, ...] = ("fc", "se")
FOLDED_TYPES: tuple[str, ...] = ("constant",)
METHODS: tuple[str, ...] = ("context", "isolated")
# how each run was timed: "wall" (the monotonic clock) or "thread_cpu" (the measuring thread's
# CPU clock: time spent descheduled by other work is not counted; 1 intra-op thread only)
CLOCKS: tuple[str, ...] = ("wall", "thread_cpu")
_ROW_COLUMNS = ["key", "kernel_type", "config", "features", "raw_ms", "overhead_ms",
                "baseline_ms", "latency_ms", "cold_ms", "source", "rounds"]


@dataclass
class KernelSamples:
    """Measured kernels: one row each (config, raw and corrected latency, named features)."""

    device: str
    runtime: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    method: str = "isolated"  # how image kernels were timed: "isolated" or "context"
    split: list[KernelConfig] = field(default_factory=list)  # configs the rules cut in pieces
    threads: int | None = None  # intra-op threads the kernels ran with (None: the runtime's default)
    cpus: str = ""  # CPUs the measuring processes were pinned to ("": not pinned)
    clock: str = "wall"  # how runs were timed, one of CLOCKS

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

    def latencies(self, cold: bool | Collection[str] = False) -> dict[str, Any]:
        """kernel_type -> overhead-corrected latencies (ms), aligned with :meth:`tables`;
        ``cold``: with the weights out of cache (kernels timed in context only), for every
        kernel type (True) or for the kernel types named (e.g. :data:`COLD_WEIGHT_TYPES`)."""
        import numpy as np

        if cold and self.method != "context":
            raise ConfigError("cold-weight latencies exist only for kernels timed in context; "
                              "measure them with --context")
        types = sorted({r["kernel_type"] for r in self.rows})
        cold_types = set(types) if cold is True else set(cold or ())
        return {t: np.array([r["cold_ms" if t in cold_types else "latency_ms"]
                             for r in self.rows if r["kernel_type"] == t])
                for t in types}

    def configs(self) -> list[KernelConfig]:
        """The measured configs (folded rows have none and are skipped)."""
        return [KernelConfig.from_dict(json.loads(r["config"])) for r in self.rows if r["config"]]

    def extend(self, other: KernelSamples) -> KernelSamples:
        """Add ``other``'s rows (same device and runtime); rows with a known key are skipped."""
        if (other.device, other.runtime) != (self.device, self.runtime):
            raise ConfigError(f"cannot merge kernel samples of {other.device}/{other.runtime} "
                              f"into {self.device}/{self.runtime}; keep them apart")
        if other.rows and self.rows and other.method != self.method:
            raise ConfigError(f"cannot merge kernels timed {other.method} into samples timed "
                              f"{self.method}; measure them all one way (a new working folder)")
        if other.rows and self.rows and setting(other) != setting(self):
            raise ConfigError(f"cannot merge kernels timed at {setting(other)} into samples timed "
                              f"at {setting(self)}; use the same --threads and --cpus, or "
                              "another --workdir")
        if not self.rows:
            self.method, self.threads, self.cpus = other.method, other.threads, other.cpus
            self.clock = other.clock
        known = {r["key"] for r in self.rows}
        self.rows += [r for r in other.rows if r["key"] not in known]
        self.split += other.split
        return self

    def merge_lower(self, other: KernelSamples) -> KernelSamples:
        """Fold in a re-measurement: per config key keep the round whose kernel run was the
        fastest (with that round's baselines), count the rounds.

        Contention on a shared machine only adds time, so the lower of two medians taken at
        different times is the better estimate; new keys are added as in :meth:`extend`.
        """
        by_key = {r["key"]: r for r in self.rows}
        for row in other.rows:
            mine = by_key.get(row["key"])
            if mine is None:
                self.extend(KernelSamples(self.device, self.runtime, [row], method=other.method))
                continue
            mine["rounds"] = int(mine.get("rounds", 1)) + 1
            if row["raw_ms"] < mine["raw_ms"]:
                mine.update({k: row[k] for k in ("raw_ms", "overhead_ms", "baseline_ms",
                                                   "latency_ms", "cold_ms")})
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
                                      "overhead_ms": float("nan"), "baseline_ms": float("nan"),
                                      "latency_ms": FOLDED_LATENCY_MS,
                                      "cold_ms": FOLDED_LATENCY_MS, "source": "folded",
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
        frame["device"], frame["runtime"], frame["method"] = self.device, self.runtime, self.method
        frame["threads"] = "" if self.threads is None else int(self.threads)
        frame["cpus"], frame["clock"] = self.cpus, self.clock
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
        method = str(frame["method"].iloc[0]) if "method" in frame else "isolated"
        if method not in METHODS:
            raise StoreError(f"kernel samples {path} were timed by an unknown method {method!r}; "
                             "measure the kernels again")
        threads = frame["threads"].iloc[0] if "threads" in frame else None
        cpus = frame["cpus"].iloc[0] if "cpus" in frame else ""
        clock = str(frame["clock"].iloc[0]) if "clock" in frame else "wall"
        if clock not in CLOCKS:
            raise StoreError(f"kernel samples {path} were timed by an unknown clock {clock!r}; "
                             "measure the kernels again")
        samples = cls(device=str(frame["device"].iloc[0]), runtime=str(frame["runtime"].iloc[0]),
                      method=method, threads=None if threads != threads or threads in ("", None)
                      else int(threads), cpus="" if cpus != cpus or cpus is None else str(cpus),
                      clock=clock)
        if "rounds" not in frame:  # written before re-measurement rounds were counted
            frame["rounds"] = (frame["source"] == "measured").astype(int)
        if "baseline_ms" not in frame:  # written before kernels were timed in context
            frame["baseline_ms"] = frame["overhead_ms"]
        if "cold_ms" not in frame:
            frame["cold_ms"] = frame["latency_ms"] if method == "context" else float("nan")
        for record in frame[_ROW_COLUMNS].to_dict("records"):
            record["features"] = json.loads(record["features"])
            record["config"] = record["config"] if isinstance(record["config"], str) else ""
            samples.rows.append(record)
        return samples


def setting(samples: KernelSamples) -> str:
    """How the samples were timed, in words (threads, pinning, clock)."""
    threads = "the runtime's default threads" if samples.threads is None else \
        f"{samples.threads} thread(s)"
    clock = ", thread CPU clock" if samples.clock == "thread_cpu" else ""
    return threads + (f" on CPUs {samples.cpus}" if samples.cpus else ", unpinned") + clock
