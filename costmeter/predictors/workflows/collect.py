"""Measure sampled architectures into the results store (``bench collect``).

:func:`plan` draws architectures from a search space (``nb201``, ``ofa_mbv3``) or variants of a
zoo family (``resnet``, ``mobilenet_v2``, ``mobilenet_v3``, ``efficientnet``; see
:mod:`costmeter.models.families`). :func:`collect` exports each to ONNX under
``<workdir>/collect/<space>/`` (named by the architecture, written once), measures them all
through the harness runner (one isolated worker each) into the store, and appends one line per
architecture to ``<workdir>/collect/manifest.jsonl`` so that a stored result's ``model_id``
(``onnx:<stem>``) leads back to its space, family and encoding.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.models import families

SEARCH_SPACES: tuple[str, ...] = ("nb201", "ofa_mbv3")
SPACES: tuple[str, ...] = SEARCH_SPACES + families.FAMILIES
MANIFEST = "manifest.jsonl"
OPSET = 17


@dataclass(frozen=True)
class CollectItem:
    """One architecture to measure; ``model_id`` is the runner's id of its ONNX file."""

    space: str
    arch: str
    stem: str
    input_shape: tuple[int, ...]

    @property
    def model_id(self) -> str:
        """The id the runner gives the ONNX file (``onnx:<stem>``)."""
        return f"onnx:{self.stem}"

    @property
    def family(self) -> str:
        """The family used for held-out-family splits (the space name)."""
        return self.space


def collect_protocol(min_time_s: float = 0.5, min_count: int = 10) -> Any:
    """A short protocol for architecture sweeps: median-oriented, no percentile CIs."""
    from costmeter.harness.config import ProtocolConfig

    return ProtocolConfig(warmup_count=3, warmup_s=0.2, min_count=min_count, min_time_s=min_time_s,
                          max_time_s=max(20.0, 10 * min_time_s), percentiles=(50.0,),
                          auto_min_count=False, max_cv=0.3)


def _space_module(space: str) -> Any:
    if space in families.FAMILIES:
        return None
    if space not in SEARCH_SPACES:
        raise ConfigError(f"unknown space {space!r}; use one of {', '.join(SPACES)}")
    return importlib.import_module(f"costmeter.models.spaces.{space}")


def _stem(space: str, arch: str) -> str:
    readable = "".join(ch if ch.isalnum() else "-" for ch in arch)[:60].strip("-")
    digest = hashlib.sha256(f"{space}|{arch}".encode()).hexdigest()[:8]
    return f"{space}-{readable}-{digest}"


def plan(space: str, samples: int, seed: int = 0) -> list[CollectItem]:
    """``samples`` distinct architectures of ``space`` (deterministic for a seed)."""
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1 (got {samples})")
    module = _space_module(space)
    if module is None:
        archs = families.sample(space, samples, seed)
        shapes = [families.input_shape(a) for a in archs]
    else:
        archs = list(module.sample(samples, seed=seed))
        shapes = [tuple(module.input_shape(a, batch=1)) for a in archs]
    return [CollectItem(space, str(a), _stem(space, str(a)), tuple(s)) for a, s in zip(archs, shapes)]


def build_torch(item: CollectItem) -> Any:
    """The torch module of an item."""
    module = _space_module(item.space)
    return families.build_torch(item.arch) if module is None else module.build_torch(item.arch)


def export_item(item: CollectItem, workdir: Path | str) -> Path:
    """``<workdir>/collect/<space>/<stem>.onnx`` (dynamic batch, legacy exporter), once."""
    import torch

    path = Path(workdir) / "collect" / item.space / f"{item.stem}.onnx"
    if path.exists():
        return path
    module = build_torch(item).eval()
    example = torch.randn(*item.input_shape)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              do_constant_folding=True)
    except Exception as error:  # the exporter raises many unrelated types
        raise UnsupportedError(f"ONNX export of {item.space} {item.arch!r} failed "
                               f"({type(error).__name__}); report the architecture") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def manifest_path(workdir: Path | str) -> Path:
    """Where the collect manifest (one JSON line per architecture) is kept."""
    return Path(workdir) / "collect" / MANIFEST


def _append_manifest(workdir: Path | str, items: list[CollectItem], paths: list[Path]) -> None:
    known = load_manifest(workdir)
    path = manifest_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for item, onnx_path in zip(items, paths):
            if item.model_id not in known:
                record = {**asdict(item), "model_id": item.model_id, "onnx": str(onnx_path)}
                handle.write(json.dumps(record) + "\n")
                known[item.model_id] = item


def load_manifest(workdir: Path | str) -> dict[str, CollectItem]:
    """model_id -> CollectItem for every architecture collected in ``workdir``."""
    path = manifest_path(workdir)
    if not path.is_file():
        return {}
    items: dict[str, CollectItem] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            item = CollectItem(record["space"], record["arch"], record["stem"],
                               tuple(record["input_shape"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} line {number} is malformed ({type(error).__name__}); "
                              "delete the line or the file and collect again") from error
        items[item.model_id] = item
    return items


def onnx_path(item: CollectItem, workdir: Path | str) -> Path:
    """Where :func:`export_item` keeps the item's ONNX file."""
    return Path(workdir) / "collect" / item.space / f"{item.stem}.onnx"


def collect(space: str, samples: int, device: str = "cpu", runtime: str = "onnxruntime",
            workdir: Path | str = ".costmeter", store: Any = None, seed: int = 0,
            threads: int | None = None, batch: int = 1, protocol: Any = None,
            progress: Callable[..., None] | None = None, min_results: int = 1,
            tag: str | None = None) -> list[Any]:
    """Measure ``samples`` architectures of ``space``; returns their RunResults.

    Everything is validated before anything runs (unknown space, device or runtime raise a
    ConfigError/UnavailableError and nothing is written). Each result goes to ``store`` as it
    finishes. An architecture that already has ``min_results`` ok results in the store for this
    device, runtime and batch is not measured again (0 measures everything; 2 gives every
    architecture a second, later measurement, e.g. to take the lower of two medians on a
    shared machine).
    """
    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import Runner, validate

    items = plan(space, samples, seed)
    protocol = protocol or collect_protocol()
    tag = tag or f"collect:{space}"
    if store is not None and min_results > 0:
        frame = store.query(device=device, runtime=runtime, status="ok")
        counts = (frame.loc[frame["batch"] == batch, "model_id"].value_counts().to_dict()
                  if len(frame) else {})
        items = [i for i in items if counts.get(i.model_id, 0) < min_results]
    base = RunConfig(model="placeholder", device=device, runtime=runtime, batch=batch,
                     threads=threads, protocol=protocol, check_outputs=False,
                     workdir=str(workdir), tag=tag)
    _check_runtime(base)
    paths = [export_item(item, workdir) for item in items]
    _append_manifest(workdir, items, paths)
    jobs = validate([replace(base, model=str(p)) for p in paths])
    return Runner(store, Path(workdir), progress=progress).run(jobs, tag=tag)


def _check_runtime(config: Any) -> None:
    """Fail before exporting anything when the device or runtime is unknown or missing."""
    from costmeter.harness.runner import check_runtime

    kind = check_runtime(config)
    if kind != "onnx":
        raise ConfigError(f"bench collect measures ONNX files; runtime {config.runtime!r} takes "
                          f"{kind} artifacts; use an ONNX runtime such as onnxruntime")


def measured_latencies(workdir: Path | str, store: Any, spaces: list[str] | tuple[str, ...],
                       device: str = "cpu", runtime: str = "onnxruntime") -> dict[str, Any]:
    """model_id -> (CollectItem, latency ms) of every architecture of ``spaces`` collected in
    ``workdir`` and measured on ``device``/``runtime`` in ``store``.

    A model measured several times keeps the lowest of its medians: on a shared machine other
    work only ever adds time."""
    import numpy as np

    manifest = load_manifest(workdir)
    out: dict[str, Any] = {}
    for result in store.results(device=device, runtime=runtime, status="ok"):
        item = manifest.get(result.key.model_id)
        if item is None or item.space not in spaces or result.measurement is None:
            continue
        median = float(np.median(result.measurement.all_samples_ns())) / 1e6
        previous = out.get(result.key.model_id, (item, float("inf")))[1]
        out[result.key.model_id] = (item, min(median, previous))
    return out
