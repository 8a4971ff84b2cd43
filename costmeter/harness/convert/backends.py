"""The converters themselves, run inside the child process that :mod:`costmeter.harness.convert.artifacts`
starts. Each builder writes its artifact at ``request["out"]`` and returns facts (JSON-ready).

Vendor libraries are imported inside the builders: the ``.tflite`` builder may run in an
environment that has litert-torch but not ONNX, TVM or ExecuTorch.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError, UnsupportedError

TVM_LIBRARY = "lib.so"
TVM_META = "meta.json"


def build(request: dict[str, Any]) -> dict[str, Any]:
    """Dispatch on ``request["kind"]`` (tflite | pte | tvm-tune | tvm, or a quantizer such as
    onnx-int8, see :mod:`costmeter.harness.convert.quant_backends`) and build the artifact."""
    from costmeter.harness.convert import quant_backends

    if request["kind"] in quant_backends.MODEL_NAMES:
        return quant_backends.build(request)
    builders = {"tflite": build_tflite, "pte": build_pte, "tvm-tune": build_tvm_tuning, "tvm": build_tvm}
    if request["kind"] not in builders:
        raise ConfigError(f"unknown conversion {request['kind']!r}; use one of {', '.join(builders)}")
    return builders[request["kind"]](request)


def _torch_model(request: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    import torch

    from costmeter.models.source import resolve_model

    source = resolve_model(request["model"])
    module = source.build_torch().eval()
    args = tuple(torch.from_numpy(a) for a in source.example_inputs(int(request["batch"])).values())
    return module, args


def build_tflite(request: dict[str, Any]) -> dict[str, Any]:
    """torch -> ``.tflite`` with litert-torch (fixed shapes at the request's batch)."""
    import litert_torch

    module, args = _torch_model(request)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        edge_model = litert_torch.convert(module, args)
        edge_model.export(str(request["out"]))
    return {"converter": f"litert-torch {getattr(litert_torch, '__version__', '?')}"}


def build_pte(request: dict[str, Any]) -> dict[str, Any]:
    """torch.export -> XNNPACK-delegated edge program -> ExecuTorch ``.pte``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module, args = _torch_model(request)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        exported = torch.export.export(module, args)
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        program = lowered.to_executorch()
    Path(request["out"]).write_bytes(program.buffer)
    delegated, total = _delegated_share(lowered)
    return {"pte_delegated_nodes": delegated, "pte_total_nodes": total}


def _delegated_share(lowered: Any) -> tuple[int | None, int | None]:
    """(call_delegate nodes, all call nodes) of the lowered program's forward graph."""
    try:
        graph = lowered.exported_program().graph
    except (AttributeError, RuntimeError):
        return None, None
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = [n for n in calls if "call_delegate" in str(n.target)]
    return len(delegated), len(calls)


def tvm_target(mcpu: str) -> Any:
    """Target ``llvm`` with ``mcpu`` (this host's CPU as LLVM names it when empty)."""
    import os

    import tvm

    cpu = mcpu or tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


def _relax_from_onnx(request: dict[str, Any]) -> Any:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(request["onnx"])
    shapes = {k: list(v) for k, v in request["shapes"].items()}
    return from_onnx(model, shape_dict=shapes, dtype_dict=dict(request["dtypes"]))


def _relax_from_torch(request: dict[str, Any]) -> Any:
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    module, args = _torch_model(request)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_exported_program(torch.export.export(module, args))


def _frontends(request: dict[str, Any]) -> list[tuple[str, Any]]:
    """Relax importers to try in order: ONNX first, then torch.export when there is a torch model
    (TVM's ONNX importer rejects some exported graphs, e.g. float64 scalars from shape arithmetic)."""
    frontends: list[tuple[str, Any]] = [("onnx", _relax_from_onnx)]
    if request.get("model"):
        frontends.append(("torch.export", _relax_from_torch))
    return frontends


def _first_working(request: dict[str, Any], step: Any) -> tuple[Any, str]:
    """``step(import(request))`` with the first frontend for which both work; (result, frontend).
    UnsupportedError with every frontend's reason when none does."""
    reasons = []
    for name, importer in _frontends(request):
        try:
            return step(importer(request)), name
        except Exception as error:  # TVM raises many unrelated types; all mean "cannot"
            lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
            reasons.append(f"{name}: {type(error).__name__}: {lines[0][:200] if lines else ''}")
    raise UnsupportedError(f"TVM cannot import or compile the model ({'; '.join(reasons)}); use another runtime")


def build_tvm_tuning(request: dict[str, Any]) -> dict[str, Any]:
    """MetaSchedule-tune the Relax module with a global trial budget into a JSON database folder."""
    from tvm.s_tir import meta_schedule as ms

    from costmeter.harness.convert.artifacts import TVM_BUILDER_TIMEOUT_S

    out = Path(request["out"])
    out.mkdir(parents=True)
    target = tvm_target(request["mcpu"])
    fused, frontend = _first_working(request, lambda mod: _fused_for_tuning(mod, target))
    trials = int(request["trials"])
    started = time.perf_counter()
    ms.relax_integration.tune_relax(
        fused, {}, target, work_dir=str(out), max_trials_global=trials,
        num_trials_per_iter=max(1, min(64, trials)),
        builder=ms.builder.LocalBuilder(timeout_sec=TVM_BUILDER_TIMEOUT_S),
        runner=ms.runner.LocalRunner(timeout_sec=60), seed=0,
    )
    tune_s = time.perf_counter() - started
    facts = {"target": str(target), "tune_s": tune_s, "tuning_trials": trials, "tvm_frontend": frontend}
    (out / TVM_META).write_text(json.dumps(facts))
    return facts


def _fused_for_tuning(mod: Any, target: Any) -> Any:
    """Legalize and fuse the Relax module into TIR functions, the tasks MetaSchedule tunes (the
    same preparation ``compile_relax`` applies, so the database keys match at compile time)."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    passes = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with target:
        return tvm.transform.Sequential(passes)(mod)


def build_tvm(request: dict[str, Any]) -> dict[str, Any]:
    """ONNX (or torch.export) -> Relax -> compiled library (with the tuning database when given)."""
    import tvm

    out = Path(request["out"])
    target = tvm_target(request["mcpu"])
    started = time.perf_counter()

    def compile_module(mod: Any) -> Any:
        if request.get("database"):
            from tvm.s_tir import meta_schedule as ms

            database = ms.database.JSONDatabase(work_dir=str(request["database"]))
            return ms.relax_integration.compile_relax(database, mod, target, params=None)
        return tvm.compile(mod, target=target)

    executable, frontend = _first_working(request, compile_module)
    out.mkdir(parents=True)
    executable.export_library(str(out / TVM_LIBRARY))
    facts = {"target": str(target), "compile_s": time.perf_counter() - started,
             "tuned": bool(request.get("database")), "tvm_frontend": frontend}
    (out / TVM_META).write_text(json.dumps(facts))
    return facts
