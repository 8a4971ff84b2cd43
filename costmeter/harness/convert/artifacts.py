"""torch / ONNX -> ``.tflite``, ``.pte`` and TVM libraries, through the content-addressed cache.

Every conversion runs in a child process (``python -m costmeter.harness.convert.artifacts REQUEST.json``):
a converter that crashes (TVM and the TFLite converter can abort the process) costs one
``unsupported`` result, never the run. The child writes the artifact at the path the cache gives
it and a small JSON reply; :func:`costmeter.models.export.cached_artifact` moves the artifact
into place atomically.

- ``tflite``: torch -> ``.tflite`` with ``litert-torch``, one file per batch (fixed shapes; NCHW
  layout kept). litert-torch is heavy (~1.2 GB) and pins old packages, so it may live in its own
  environment: :func:`litert_python` finds the interpreter that has it.
- ``pte``: ``torch.export`` -> XNNPACK-partitioned edge program -> ExecuTorch ``.pte``.
- ``tvm``: the model's ONNX file -> Relax (TVM's torch.export importer when the ONNX importer
  rejects the graph and a torch model exists) -> ``tvm.compile`` for ``llvm`` with the host's
  ``-mcpu`` (or the ``mcpu`` option), exported as ``<key>.tvm/{lib.so,meta.json}``. With
  ``tuning_trials > 0`` a MetaSchedule database is built first, cached apart by model hash,
  batch, target and budget; its tuning time is reported as ``tune_s``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from costmeter.errors import ConfigError, UnavailableError, UnsupportedError

CONVERTED_KINDS = ("tflite", "pte", "tvm")
LITERT_PYTHON_ENV = "COSTMETER_LITERT_PYTHON"
CONVERT_TIMEOUT_S = 1800.0
TUNE_TIMEOUT_PER_TRIAL_S = 60.0
TVM_BUILDER_TIMEOUT_S = 180.0  # each builder worker spends ~35 s importing tvm on 2 slow cores

CommandRunner = Callable[..., "subprocess.CompletedProcess[bytes]"]


@dataclass
class Converted:
    """A converted artifact: its path and facts about the conversion (seconds, target, ...)."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)


def litert_python(env: dict[str, str] | None = None) -> str | None:
    """The Python interpreter that has ``litert_torch``: ``$COSTMETER_LITERT_PYTHON``, this one,
    or ``.venv-litert/bin/python`` beside this environment; None when none is found."""
    env = os.environ if env is None else env
    if env.get(LITERT_PYTHON_ENV):
        return env[LITERT_PYTHON_ENV]
    if importlib.util.find_spec("litert_torch") is not None:
        return sys.executable
    sibling = Path(sys.prefix).parent / ".venv-litert" / "bin" / "python"
    return str(sibling) if sibling.exists() else None


def converter_problem(kind: str) -> str | None:
    """None when the converter for ``kind`` can run here; else why not, with the fix."""
    if kind == "tflite":
        if litert_python() is None:
            return ("the .tflite converter (litert-torch) is not installed; it needs its own "
                    "environment (its pins conflict with other runtimes): `make setup-test` creates "
                    ".venv-litert beside .venv, or `python -m venv DIR && DIR/bin/pip install "
                    f"litert-torch` and set {LITERT_PYTHON_ENV}=DIR/bin/python")
        return None
    if kind == "pte":
        if importlib.util.find_spec("executorch") is None:
            return "executorch is not installed; install it with: pip install 'costmeter[edge]'"
        return None
    if kind == "tvm":
        if importlib.util.find_spec("tvm") is None:
            return "apache-tvm is not installed; install it with: pip install 'costmeter[tvm]'"
        return None
    return None


def host_cpu_fingerprint(cpuinfo: str = "/proc/cpuinfo") -> str:
    """A short hash of this host's CPU (machine, model name, flags): the cache key of a library
    compiled for "the host's -mcpu" without importing TVM to ask LLVM."""
    text = ""
    try:
        lines = Path(cpuinfo).read_text(errors="replace").splitlines()
        wanted = ("model name", "flags", "Features", "CPU part", "CPU implementer")
        seen: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip()
            if name in wanted and name not in seen:
                seen[name] = value.strip()
        text = json.dumps(seen, sort_keys=True)
    except OSError:
        text = platform.processor()
    return hashlib.sha256(f"{platform.machine()}|{text}".encode()).hexdigest()[:12]


def convert(kind: str, source: Any, workdir: Path | str, batch: int, options: dict[str, str] | None = None,
            *, run: CommandRunner | None = None) -> Converted:
    """Convert ``source`` (a ModelSource) for ``kind`` at ``batch``; cached by content hash.

    Raises UnavailableError when the converter is missing and UnsupportedError when it rejects
    the model (the runner records an ``unsupported`` result). ``run`` is the process seam
    (default: the launcher, :func:`costmeter.harness.launcher.launched_run`).
    """
    from costmeter.harness.launcher import launched_run
    from costmeter.models.export import cached_artifact

    run = run or launched_run
    if kind not in CONVERTED_KINDS:
        raise ConfigError(f"no converter for artifact kind {kind!r}; use one of {', '.join(CONVERTED_KINDS)}")
    problem = converter_problem(kind)
    if problem:
        raise UnavailableError(problem)
    options = dict(options or {})
    model_hash = source.content_hash()
    if kind in ("tflite", "pte"):
        if not source.has_torch():
            raise UnsupportedError(f"{source.model_id} is an ONNX file; the {kind} converter needs a torch "
                                   "model (give a zoo or pkg.module:function model)")
        python = litert_python() if kind == "tflite" else sys.executable
        request = {"kind": kind, "model": _model_spec(source), "batch": batch}
        meta: dict[str, Any] = {}
        path = cached_artifact(workdir, kind, f"{model_hash}-b{batch}", f".{kind}",
                               lambda out: meta.update(_run_child(request, out, str(python), run)))
        return Converted(path, meta)
    return _convert_tvm(source, workdir, batch, options, model_hash, run)


def _convert_tvm(source: Any, workdir: Path | str, batch: int, options: dict[str, str], model_hash: str,
                 run: CommandRunner) -> Converted:
    from costmeter.models.export import cached_artifact, export_onnx

    trials_text = options.get("tuning_trials", "0") or "0"
    if not trials_text.isdigit():
        raise ConfigError(f"malformed tuning_trials={trials_text!r}; give a whole number of trials, e.g. 64")
    trials = int(trials_text)
    mcpu = options.get("mcpu") or ""
    target_id = f"mcpu-{mcpu}" if mcpu else f"host-{host_cpu_fingerprint()}"
    if not all(c.isalnum() or c in "-_." for c in target_id):
        raise ConfigError(f"malformed mcpu={mcpu!r}; give an LLVM CPU name such as cortex-a76 or znver4")
    onnx_path = str(export_onnx(source, workdir))
    shapes = {spec.name: [batch, *spec.shape] for spec in source.inputs}
    dtypes = {spec.name: spec.dtype for spec in source.inputs}
    base = {"onnx": onnx_path, "shapes": shapes, "dtypes": dtypes, "mcpu": mcpu, "batch": batch,
            "model": _model_spec(source) if source.has_torch() else None}
    meta: dict[str, Any] = {"tuning_trials": trials}
    database = None
    if trials > 0:
        tune_meta: dict[str, Any] = {}
        started = time.perf_counter()
        database = cached_artifact(
            workdir, "tvm-tuning", f"{model_hash}-b{batch}-{target_id}-t{trials}", "",
            lambda out: tune_meta.update(_run_child({**base, "kind": "tvm-tune", "trials": trials}, out,
                                                    sys.executable, run,
                                                    timeout_s=CONVERT_TIMEOUT_S + trials * TUNE_TIMEOUT_PER_TRIAL_S)))
        meta["tuning_cached"] = not tune_meta
        saved = database / "meta.json"
        meta["tune_s"] = json.loads(saved.read_text()).get("tune_s") if saved.is_file() else None
        meta["tune_s_this_run"] = time.perf_counter() - started if tune_meta else 0.0
    compile_meta: dict[str, Any] = {}
    key = f"{model_hash}-b{batch}-{target_id}-t{trials}"
    path = cached_artifact(workdir, "tvm", key, ".tvm", lambda out: compile_meta.update(_run_child(
        {**base, "kind": "tvm", "database": str(database) if database else None}, out, sys.executable, run)))
    saved = path / "meta.json"
    if saved.is_file():
        meta.update({k: v for k, v in json.loads(saved.read_text()).items()
                     if k in ("target", "compile_s", "tvm_frontend")})
    return Converted(path, meta)


def _model_spec(source: Any) -> str:
    """The spec that resolves to ``source`` again in a child process."""
    if source.kind == "zoo":
        return str(source.target)
    if source.kind == "python":
        return f"py:{source.target}"
    return str(source.onnx_path)


def _run_child(request: dict[str, Any], out: Path, python: str, run: CommandRunner,
               timeout_s: float = CONVERT_TIMEOUT_S) -> dict[str, Any]:
    """Run one conversion in a child process; its reply's ``meta``, or UnsupportedError."""
    import costmeter

    from costmeter.harness.launcher import scratch_dir

    with scratch_dir("convert-") as tmp:
        request_path = tmp / "request.json"
        reply_path = tmp / "reply.json"
        log_path = tmp / "log.txt"
        request_path.write_text(json.dumps({**request, "out": str(out), "reply": str(reply_path)}))
        env = dict(os.environ)
        root = str(Path(costmeter.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        with open(log_path, "wb") as log:
            try:
                proc = run([python, "-m", "costmeter.harness.convert.artifacts", str(request_path)], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise UnsupportedError(f"the {request['kind']} converter ran past {timeout_s:g} s; lower "
                                       "tuning_trials or convert a smaller model") from None
            except OSError as exc:
                raise UnavailableError(f"cannot start the converter's Python {python!r} ({exc.strerror}); "
                                       f"check {LITERT_PYTHON_ENV} or the environment") from None
        if reply_path.is_file():
            reply = json.loads(reply_path.read_text())
            if reply.get("status") == "ok":
                return dict(reply.get("meta", {}))
            raise UnsupportedError(str(reply.get("error")))
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise UnsupportedError(f"the {request['kind']} converter died ({how})"
                               + (f": {tail[0][:300]}" if tail else "") + "; this model cannot be converted")


# ----------------------------------------------------------------------------- child side


def _child_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    from costmeter.harness.convert import backends as convert_backends

    started = time.perf_counter()
    try:
        meta = convert_backends.build(request)
        reply: dict[str, Any] = {"status": "ok", "meta": {**meta, "convert_s": time.perf_counter() - started}}
    except UnsupportedError as exc:
        reply = {"status": "unsupported", "error": str(exc)}
    except Exception as exc:  # every converter failure means "cannot convert this model"
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        first = lines[0][:300] if lines else ""
        reply = {"status": "unsupported",
                 "error": f"the {request['kind']} converter rejected the model ({type(exc).__name__}: {first}); "
                          "simplify the model (no data-dependent control flow, standard ops) or pick another runtime"}
    tmp = Path(request["reply"] + ".tmp")
    tmp.write_text(json.dumps(reply))
    tmp.replace(request["reply"])
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1]))
