"""Measure sampled architectures into the results store (``bench collect``).

:func:`plan` draws architectures from a search space (``nb201``, ``ofa_mbv3``, ...) or variants
of a zoo family (``resnet``, ``mobilenet_v2``, ``mobilenet_v3``, ``efficientnet``; see
:mod:`costmeter.models.families`). :func:`collect` measures them all through the harness runner
(one isolated worker each) into the store under their stable model ids -- ``space:<canonical
arch>`` or the canonical family variant, the same ids ``bench run --model`` gives them -- so a
stored row says what it measured without any local file. Their ONNX files come from the one
content-addressed exporter (:func:`costmeter.models.export.export_onnx`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from costmeter.errors import ConfigError
from costmeter.models import families
from costmeter.models.spaces import get_space, space_names, split_model_id


def search_spaces() -> tuple[str, ...]:
    """The registered search spaces."""
    return space_names()


def collect_spaces() -> tuple[str, ...]:
    """Everything ``bench collect`` can draw from: search spaces, then zoo families."""
    return search_spaces() + families.FAMILIES


@dataclass(frozen=True)
class CollectItem:
    """One architecture to measure: its space (or family), canonical encoding and input shape."""

    space: str
    arch: str
    input_shape: tuple[int, ...]

    @property
    def model_id(self) -> str:
        """The stable model id (``nb201:<arch>``; a family variant is its own id)."""
        return self.arch if self.space in families.FAMILIES else f"{self.space}:{self.arch}"

    @property
    def family(self) -> str:
        """The family used for held-out-family splits (the space name)."""
        return self.space


def item_of(model_id: str) -> CollectItem | None:
    """The CollectItem behind a stored model id, or None when the id is no space architecture
    or family variant (a zoo model, an ONNX file, a python callable)."""
    if families.is_variant(model_id):
        try:
            canonical = families.canonical(model_id)
        except ConfigError:
            return None
        return CollectItem(canonical.split(":", 1)[0], canonical, families.input_shape(canonical))
    try:
        parsed = split_model_id(model_id)
    except ConfigError:
        return None
    if parsed is None:
        return None
    space, arch = parsed
    return CollectItem(space, arch, tuple(get_space(space).input_shape(arch, batch=1)))


def collect_protocol(min_time_s: float = 0.5, min_count: int = 10) -> Any:
    """A short protocol for architecture sweeps: median-oriented, no percentile CIs. Sampling goes
    on past the minimums until the median is within +-2%: enough for a cost model whose own errors
    are several percent."""
    from costmeter.harness.config import ProtocolConfig

    return ProtocolConfig(warmup_count=3, warmup_s=0.2, min_count=min_count, min_time_s=min_time_s,
                          max_time_s=max(20.0, 10 * min_time_s), percentiles=(50.0,),
                          auto_min_count=False, max_cv=0.3, max_rel_ci=0.02)


def plan(space: str, samples: int, seed: int = 0) -> list[CollectItem]:
    """``samples`` distinct architectures of ``space`` (deterministic for a seed; nested: a
    larger draw with the same seed starts with the smaller one)."""
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1 (got {samples})")
    if space in families.FAMILIES:
        archs = families.sample(space, samples, seed)
        return [CollectItem(space, a, families.input_shape(a)) for a in archs]
    if space not in search_spaces():
        raise ConfigError(f"unknown space {space!r}; use one of {', '.join(collect_spaces())}")
    module = get_space(space)
    return [CollectItem(space, str(a), tuple(module.input_shape(a, batch=1)))
            for a in module.sample(samples, seed=seed)]


def build_torch(item: CollectItem) -> Any:
    """The torch module of an item."""
    from costmeter.models.source import resolve_model

    return resolve_model(item.model_id).build_torch()


def export_item(item: CollectItem, workdir: Path | str) -> Path:
    """The item's ONNX file (dynamic batch) from the content-addressed export cache."""
    from costmeter.models.export import export_onnx
    from costmeter.models.source import resolve_model

    return export_onnx(resolve_model(item.model_id), workdir)


def collect(space: str, samples: int, device: str = "cpu", runtime: str = "onnxruntime",
            workdir: Path | str = ".costmeter", store: Any = None, seed: int = 0,
            threads: int | None = None, batch: int = 1, protocol: Any = None,
            progress: Callable[..., None] | None = None, min_results: int = 1,
            tag: str | None = None, cpus: str | None = None, precision: str = "fp32",
            calibration: str | None = None) -> list[Any]:
    """Measure ``samples`` architectures of ``space``; returns their RunResults.

    Everything is validated before anything runs (unknown space, device or runtime raise a
    ConfigError/UnavailableError and nothing is written). Each result goes to ``store`` as it
    finishes. An architecture that already has ``min_results`` ok results in the store for this
    device, runtime and batch is not measured again (0 measures everything; 2 gives every
    architecture a second, later measurement, e.g. to take the lower of two medians on a
    shared machine); only results at ``threads`` count, when given. ``cpus`` records the pinning (e.g. ``"1"``) in each result's key; the
    caller pins this process (:func:`~costmeter.predictors.workflows.build.pinned`), and the
    workers inherit it. ``precision`` (fp32 or int8, with ``calibration`` as ``--calibration``
    takes it) is part of what counts as measured: fp32 results never stand in for int8 ones.
    """
    from costmeter.harness.config import RunConfig
    from costmeter.harness.quantize.precision import with_precision
    from costmeter.harness.runner import Runner, validate

    items = plan(space, samples, seed)
    protocol = protocol or collect_protocol()
    tag = tag or f"collect:{space}"
    if store is not None and min_results > 0:
        frame = store.query(device=device, runtime=runtime, status="ok")
        if len(frame):  # results at another thread count or precision measure something else
            same = (frame["batch"] == batch) & (frame["precision"] == precision)
            if threads is not None and "threads" in frame:
                same &= frame["threads"] == threads
            frame = frame.loc[same]
        counts = frame["model_id"].value_counts().to_dict() if len(frame) else {}
        items = [i for i in items if counts.get(i.model_id, 0) < min_results]
    base = RunConfig(model="placeholder", device=device, runtime=runtime, batch=batch,
                     threads=threads, protocol=protocol, check_outputs=False,
                     workdir=str(workdir), tag=tag, options=(("cpus", cpus),) if cpus else ())
    base = with_precision(base, precision, calibration)
    _check_runtime(base)
    jobs = validate([replace(base, model=item.model_id) for item in items])
    return Runner(store, Path(workdir), progress=progress).run(jobs, tag=tag)


def collect_strategy(space: str, budget: int, strategy: str = "active", device: str = "cpu",
                     runtime: str = "onnxruntime", workdir: Path | str = ".costmeter", store: Any = None,
                     seed: int = 0, threads: int | None = None, batch: int = 1, protocol: Any = None,
                     progress: Callable[..., None] | None = None, tag: str | None = None,
                     log: Callable[[str], None] | None = None) -> Any:
    """Measure ``budget`` architectures of the search space ``space`` one round at a time
    (``bench collect --strategy random|active --budget N``): ``random`` takes a seeded random
    order, ``active`` refits the default predictor after each round and measures next where it
    is least sure (:func:`~costmeter.predictors.estimators.active.space_collection`). Each
    round's results go to ``store`` as they finish; an architecture the store already holds for
    this device, runtime and batch is taken from it rather than measured again. Returns the
    :class:`~costmeter.predictors.estimators.active.CollectionResult` (latencies in ms, NaN where
    a measurement failed). Unknown spaces, strategies, devices or runtimes and a budget beyond
    the space are refused before anything runs."""
    import numpy as np

    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import Runner, validate
    from costmeter.predictors.estimators.active import STRATEGIES, space_collection

    if space not in search_spaces():
        raise ConfigError(f"--strategy needs a search space ({', '.join(search_spaces())}), not {space!r}; "
                          "zoo families are collected with --samples")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    protocol = protocol or collect_protocol()
    tag = tag or f"collect:{space}:{strategy}"
    base = RunConfig(model="placeholder", device=device, runtime=runtime, batch=batch, threads=threads,
                     protocol=protocol, check_outputs=False, workdir=str(workdir), tag=tag)
    _check_runtime(base)
    module = get_space(space)

    def stored() -> dict[str, float]:
        if store is None:
            return {}
        frame = store.query(device=device, runtime=runtime, status="ok")
        if not len(frame):
            return {}
        rows = frame.loc[frame["batch"] == batch]
        medians = rows.dropna(subset=["latency_p50_ms"]).groupby("model_id")["latency_p50_ms"].min()
        return {str(k): float(v) for k, v in medians.items()}  # the lowest median: load only adds

    def measure(archs: list[str]) -> Any:
        items = [CollectItem(space, str(a), tuple(module.input_shape(a, batch=1))) for a in archs]
        known = stored()
        todo = [i for i in items if i.model_id not in known]
        if todo:
            jobs = validate([replace(base, model=item.model_id) for item in todo])
            for result in Runner(store, Path(workdir), progress=progress).run(jobs, tag=tag):
                if result.measurement is not None and str(getattr(result.status, "value", "")) == "ok":
                    known[result.key.model_id] = float(np.median(result.measurement.all_samples_ns())) / 1e6
        return np.asarray([known.get(i.model_id, np.nan) for i in items], dtype=np.float64)

    return space_collection(space, budget, measure, strategy=strategy, seed=seed, log=log)


def _check_runtime(config: Any) -> None:
    """Fail before exporting anything when the device or runtime is unknown or missing."""
    from costmeter.harness.runner import check_runtime

    kind = check_runtime(config)
    if kind != "onnx":
        raise ConfigError(f"bench collect measures ONNX files; runtime {config.runtime!r} takes "
                          f"{kind} artifacts; use an ONNX runtime such as onnxruntime")


def measured_latencies(store: Any, spaces: list[str] | tuple[str, ...], device: str = "cpu",
                       runtime: str = "onnxruntime",
                       threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """model_id -> (CollectItem, latency ms) of every architecture of ``spaces`` (search spaces
    or families) measured on ``device``/``runtime`` at ``precision`` in ``store`` (at ``threads``
    when given).

    A model measured several times keeps the lowest of its medians: on a shared machine other
    work only ever adds time (an int8 result is never the lowest fp32 one)."""
    import numpy as np

    from costmeter.results.fidelity import precision_name

    out: dict[str, Any] = {}
    for result in store.results(device=device, runtime=runtime, status="ok"):
        if result.measurement is None or (threads is not None and result.key.threads != threads):
            continue
        if precision_name(dict(result.key.options).get("precision")) != precision:
            continue
        item = item_of(result.key.model_id)
        if item is None or item.space not in spaces:
            continue
        median = float(np.median(result.measurement.all_samples_ns())) / 1e6
        previous = out.get(result.key.model_id, (item, float("inf")))[1]
        out[result.key.model_id] = (item, min(median, previous))
    return out
