"""Where models come from: the built-in zoo, an ONNX file, or a python callable.

:func:`resolve_model` turns a user spec into a :class:`ModelSource`, which knows the model's
inputs, builds the torch module on demand, makes deterministic example inputs, and gives a
content hash (the cache key of every converted artifact) and size figures (params, MACs).

Specs: a zoo name (``"resnet18"``, see :func:`zoo_names`), a search-space architecture
(``"nb201:|nor_conv_3x3~0|+|..."``, ``"ofa_mbv3:r160|k3e4,..."``), a family variant
(``"mobilenet_v3:w=0.75,d=1,r=160"``), a path to an ``.onnx`` file, or
``"package.module:function"`` (optionally prefixed ``"py:"``), where ``function()`` returns
``(torch.nn.Module, example_input)`` with the example at batch 1.

Model ids are stable, whatever command measured the model: the zoo name; ``space:<canonical
arch>`` (isomorphic spellings of one architecture map to one id); the canonical family variant;
``onnx:<content hash>`` for ONNX files (the file name is kept as ``display_name``); and
``py:pkg.mod:func`` for python callables.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from costmeter.errors import ConfigError, UnsupportedError
from costmeter.models import zoo

HASH_CHARS = 16
DEFAULT_INT_RANGE = (0, 2)  # token-free integer inputs of ONNX files: 0/1 (masks, type ids)
# example dtypes that survive the numpy round trip (torch.from_numpy) unchanged
_EXAMPLE_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                   "bool"}


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` excludes the batch dimension (-1 marks an unknown dim).

    ``dtype`` is a numpy dtype name ("float32", "int64", ...). Integer inputs (token ids) are
    drawn uniformly from ``[low, high)``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None

    def full_shape(self, batch: int) -> tuple[int, ...]:
        """Shape with the batch dimension in front."""
        return (int(batch), *self.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ModelSource:
    """A resolved model: identity, inputs, and lazily built torch module / hash / info.

    ``model_id`` is ``"resnet18"`` for zoo models, ``"nb201:<arch>"`` for search-space
    architectures, ``"resnet:w=..,d=..,r=.."`` for family variants, ``"onnx:<content hash>"``
    for ONNX files and ``"py:pkg.mod:func"`` for python callables; ``kind`` is ``"zoo"``,
    ``"space"``, ``"family"``, ``"onnx"`` or ``"python"``. ``fixed_batch`` is set when an ONNX
    file pins its batch dimension; ``display_name`` is a short human name (the file stem of an
    ONNX file, else the model id).
    """

    model_id: str
    kind: str
    inputs: list[InputSpec]
    onnx_path: str | None = None
    fixed_batch: int | None = None
    target: str | None = None  # zoo name, space/family model id, or "pkg.mod:func"
    display_name: str | None = None
    _module: Any = field(default=None, repr=False, compare=False)
    _hash: str | None = field(default=None, repr=False, compare=False)
    _info: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def has_torch(self) -> bool:
        """True when a torch module is available (every kind but ONNX files)."""
        return self.kind in _BUILT_IN or self.kind == "python"

    def build_torch(self) -> Any:
        """The torch module in eval mode, built once and cached on this object.

        Raises UnsupportedError for ONNX sources (there is no torch module behind a file).
        """
        if not self.has_torch():
            raise UnsupportedError(
                f"{self.model_id} is an ONNX file and has no torch module; "
                "use an ONNX-based runtime (e.g. onnxruntime) or give a zoo/python model"
            )
        if self._module is None:
            if self.kind == "zoo":
                self._module = zoo.build_zoo_model(str(self.target))
            elif self.kind == "space":
                from costmeter.models.spaces import build_model

                self._module = build_model(str(self.target))[0]
            elif self.kind == "family":
                from costmeter.models import families

                self._module = families.build_torch(str(self.target))
            else:
                self._module, _ = _call_python_target(str(self.target))
        return self._module

    def example_inputs(self, batch: int, seed: int = 0) -> dict[str, Any]:
        """Deterministic inputs (name -> numpy array, batch dimension included).

        Floats are standard normal; integers uniform in ``[low, high)``. Same ``batch`` and
        ``seed`` give identical arrays in every process.
        """
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}; pass a positive batch size")
        if self.fixed_batch is not None and batch != self.fixed_batch:
            raise ConfigError(
                f"{self.model_id} has a fixed batch of {self.fixed_batch} in its ONNX file; "
                f"use batch {self.fixed_batch} or re-export the model with a dynamic batch dim"
            )
        return random_inputs(self.inputs, batch, seed, self.model_id)

    def content_hash(self) -> str:
        """16-hex-digit hash: inputs + architecture + weights (python), + recipe and seed (zoo),
        or the file bytes (ONNX). Equal models give equal hashes in every process."""
        if self._hash is None:
            digest = hashlib.sha256()
            digest.update(repr([s.to_dict() for s in self.inputs]).encode())
            if self.kind == "onnx":
                _hash_onnx_file(digest, Path(str(self.onnx_path)))
            elif self.kind in _BUILT_IN:
                # built-in weights are a pure function of the recipe (code + seed); their last
                # bits can differ between CPUs (BatchNorm calibration runs ISA-specific kernels),
                # so the recipe is hashed: one built-in model gets one hash on every machine
                digest.update(f"{self.kind}|{self.target}|{zoo.ZOO_SEED}|{zoo.ZOO_RECIPE}".encode())
                _hash_torch_module(digest, self.build_torch(), with_weights=False)
            else:
                _hash_torch_module(digest, self.build_torch(), with_weights=True)
            self._hash = digest.hexdigest()[:HASH_CHARS]
        return self._hash

    def info(self) -> dict[str, Any]:
        """Size figures: ``params`` (count), ``param_bytes`` (bytes), ``macs`` (per item, batch 1)
        and ``macs_source`` ("torch.utils.flop_counter" or "onnx-graph")."""
        if self._info is None:
            self._info = self._onnx_info() if self.kind == "onnx" else self._torch_info()
        return dict(self._info)

    def _torch_info(self) -> dict[str, Any]:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        module = self.build_torch()
        params = list(module.parameters())
        tensors = [torch.from_numpy(a) for a in self.example_inputs(1).values()]
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*tensors)
        return {
            "params": sum(p.numel() for p in params),
            "param_bytes": sum(p.numel() * p.element_size() for p in params),
            # the counter only counts matmul/conv-like ops, at 2 FLOPs per multiply-accumulate
            "macs": int(counter.get_total_flops()) // 2,
            "macs_source": "torch.utils.flop_counter",
        }

    def _onnx_info(self) -> dict[str, Any]:
        import onnx

        from costmeter.models.onnx.graph import load_graph

        model = onnx.load(str(self.onnx_path))
        graph = load_graph(model, batch=self.fixed_batch or 1)
        sizes = [_initializer_size(t) for t in model.graph.initializer]
        return {
            "params": sum(n for n, _ in sizes),
            "param_bytes": sum(b for _, b in sizes),
            "macs": graph.totals()["macs"] // (self.fixed_batch or 1),
            "macs_source": "onnx-graph",
        }


_BUILT_IN = ("zoo", "space", "family")  # built here from code and a fixed seed


def zoo_names() -> list[str]:
    """Names of the built-in zoo models."""
    return list(zoo.zoo_entries())


def resolve_model(spec: str) -> ModelSource:
    """Turn a zoo name, a path to an ``.onnx`` file or ``"pkg.mod:func"`` into a ModelSource.

    Raises ConfigError (one line, with a fix) for unknown names, missing or corrupt files,
    unimportable modules, missing functions and functions returning the wrong thing.
    """
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("empty model spec; give a zoo name, an .onnx path or pkg.module:function")
    entries = zoo.zoo_entries()
    if spec in entries:
        entry = entries[spec]
        inputs = [InputSpec(i.name, i.shape, i.dtype, i.low, i.high) for i in entry.inputs]
        return ModelSource(model_id=spec, kind="zoo", inputs=inputs, target=spec)
    if spec.lower().endswith(".onnx") or os.path.isfile(spec):
        return _resolve_onnx(Path(spec))
    built_in = _resolve_built_in(spec)
    if built_in is not None:
        return built_in
    target = spec.removeprefix("py:")
    if ":" in target:
        return _resolve_python(target)
    close = difflib.get_close_matches(spec, list(entries), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"unknown model {spec!r}; {hint}choose a zoo model ({', '.join(entries)}), "
        "an .onnx file path, or pkg.module:function"
    )


def random_inputs(inputs: Sequence[InputSpec], batch: int, seed: int, model_id: str) -> dict[str, Any]:
    """Deterministic inputs for ``inputs`` at ``batch`` (name -> numpy array): floats standard
    normal, integers uniform in ``[low, high)``, booleans fair; the same in every process. The one
    recipe of :meth:`ModelSource.example_inputs`, usable where only the input specs are known (a
    python model inspected in a child)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for spec in inputs:
        if any(d < 0 for d in spec.shape):
            raise ConfigError(
                f"input {spec.name!r} of {model_id} has unknown dims {spec.shape}; "
                "export the model with fixed non-batch dimensions"
            )
        shape = spec.full_shape(batch)
        kind = np.dtype(spec.dtype).kind
        if kind == "b":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif kind in "iu":
            low = 0 if spec.low is None else spec.low
            high = low + 2 if spec.high is None else spec.high
            arrays[spec.name] = rng.integers(low, high, size=shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
    return arrays


def python_target(spec: str) -> str | None:
    """``pkg.module:function`` when :func:`resolve_model` would import and call a python
    callable for ``spec``, else None. Imports nothing of the user's (the harness then inspects
    the model in a child process). ConfigError for a malformed search-space architecture."""
    from costmeter.models import families
    from costmeter.models.spaces import split_model_id

    spec = str(spec).strip()
    if not spec or spec in zoo.zoo_entries() or spec.lower().endswith(".onnx") or os.path.isfile(spec):
        return None
    if families.is_variant(spec) or split_model_id(spec) is not None:
        return None
    target = spec.removeprefix("py:")
    return target if ":" in target else None


def _resolve_built_in(spec: str) -> ModelSource | None:
    """A search-space architecture (``nb201:|...|``) or a family variant
    (``resnet:w=..,d=..,r=..``) under its canonical id; None for other specs. ConfigError when
    the space or family is known but the encoding is malformed (saying which part)."""
    from costmeter.models import families
    from costmeter.models.spaces import get_space, split_model_id

    if families.is_variant(spec):
        model_id = families.canonical(spec)
        shape = families.input_shape(model_id)
        kind = "family"
    else:
        parsed = split_model_id(spec)
        if parsed is None:
            return None
        space, arch = parsed
        model_id = f"{space}:{arch}"
        shape = get_space(space).input_shape(arch, 1)
        kind = "space"
    inputs = [InputSpec("input", tuple(int(d) for d in shape[1:]))]
    return ModelSource(model_id=model_id, kind=kind, inputs=inputs, target=model_id)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _resolve_onnx(path: Path) -> ModelSource:
    import onnx

    if not path.is_file():
        raise ConfigError(f"ONNX file not found: {path}; check the path (or give a zoo model name)")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises DecodeError, ValidationError, OSError, ...
        raise ConfigError(
            f"{path} is not a valid ONNX model (onnx.checker failed: {_first_line(error)}); "
            "re-export the model or check that the file is complete"
        ) from error
    initializers = {t.name for t in model.graph.initializer}
    inputs: list[InputSpec] = []
    fixed: set[int] = set()
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        if dims and dims[0] > 0:
            fixed.add(dims[0])
        low, high = _int_input_range(model, value.name, initializers) if dtype.startswith(
            ("int", "uint")) else (None, None)
        inputs.append(InputSpec(value.name, tuple(dims[1:]), dtype, low, high))
    source = ModelSource(
        model_id="onnx:pending",
        kind="onnx",
        inputs=inputs,
        onnx_path=str(path.resolve()),
        fixed_batch=min(fixed) if fixed else None,
        display_name=path.stem,
    )
    source.model_id = f"onnx:{source.content_hash()}"
    return source


def _int_input_range(model: Any, name: str, initializers: set[str]) -> tuple[int, int]:
    """[low, high) for an integer input: the smallest embedding table it indexes, else 0/1."""
    tables = {t.name: t.dims for t in model.graph.initializer}
    sizes = []
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if node.input[0] in initializers and tables[node.input[0]]:
                sizes.append(int(tables[node.input[0]][axis]))
    return (0, min(sizes)) if sizes else DEFAULT_INT_RANGE


def _initializer_size(tensor: Any) -> tuple[int, int]:
    """(element count, bytes) of an ONNX initializer."""
    import numpy as np
    import onnx

    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return count, count * itemsize


def _python_callable(target: str) -> Any:
    """The function behind ``pkg.mod:func``."""
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name:
        raise ConfigError(f"bad python model spec {target!r}; write it as pkg.module:function")
    try:
        py_module = importlib.import_module(module_name)
    except Exception as error:  # ImportError or anything the module raises while importing
        raise ConfigError(
            f"cannot import module {module_name!r} for model {target!r} ({_first_line(error)}); "
            "check the module path and that its folder is on PYTHONPATH"
        ) from error
    func = getattr(py_module, func_name, None)
    if not callable(func):
        public = [n for n, v in vars(py_module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(func_name, public, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"module {module_name!r} has no function {func_name!r}{hint}; "
            "name a function that returns (torch.nn.Module, example_input)"
        )
    return func


def _call_python_target(target: str) -> tuple[Any, tuple[Any, ...]]:
    """Import ``pkg.mod:func``, call it, validate ``(module, example)``; example as a tuple."""
    import torch

    func = _python_callable(target)
    try:
        result = func()
    except Exception as error:  # user code: report what it raised
        raise ConfigError(
            f"calling {target}() failed ({_first_line(error)}); fix the function so it "
            "returns (torch.nn.Module, example_input)"
        ) from error
    fix = "return (torch.nn.Module, example), the example a tensor or tuple of tensors at batch 1"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ConfigError(f"{target}() returned {type(result).__name__}, not a pair; {fix}")
    module, example = result
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{target}() returned a {type(module).__name__} as model; {fix}")
    examples = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not examples or not all(isinstance(t, torch.Tensor) for t in examples):
        raise ConfigError(f"{target}() returned an example that is not tensors; {fix}")
    if any(t.dim() == 0 or t.shape[0] != 1 for t in examples):
        shapes = [tuple(t.shape) for t in examples]
        raise ConfigError(f"{target}() returned examples of shape {shapes}, not batch 1; {fix}")
    return module.eval(), examples


def _resolve_python(target: str) -> ModelSource:
    import torch

    module, examples = _call_python_target(target)
    inputs = []
    for index, tensor in enumerate(examples):
        name = "input" if len(examples) == 1 else f"input_{index}"
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _EXAMPLE_DTYPES:
            raise ConfigError(
                f"{target}() returned a {dtype} example, which numpy cannot represent; "
                "return float32 (or float16/int) examples and cast inside the model"
            )
        low = high = None
        if not tensor.dtype.is_floating_point and tensor.dtype is not torch.bool:
            low, high = int(tensor.min()), int(tensor.max()) + 1
        inputs.append(InputSpec(name, tuple(int(d) for d in tensor.shape[1:]), dtype, low, high))
    return ModelSource(
        model_id=f"py:{target}", kind="python", inputs=inputs, target=target, _module=module
    )


def _hash_torch_module(digest: Any, module: Any, with_weights: bool) -> None:
    """Feed the architecture and (optionally) the weight bytes of ``module`` to ``digest``.

    Architecture: the module repr, the ``forward`` source of every non-torch module class (torch's
    own classes by name, so a torch upgrade keeps the hash), and every tensor's name, dtype, shape.
    """
    import torch

    digest.update(repr(module).encode())
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: c.__qualname__):
        source = f"{cls.__module__}.{cls.__qualname__}"
        if not cls.__module__.startswith("torch."):
            try:
                source = inspect.getsource(cls.forward)
            except (OSError, TypeError):  # class defined in an interactive session
                pass
        digest.update(source.encode())
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if with_weights:
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_onnx_file(digest: Any, path: Path) -> None:
    """Feed the file bytes and any external-data files it references to digest."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({
        entry.value
        for tensor in model.graph.initializer if uses_external_data(tensor)
        for entry in tensor.external_data if entry.key == "location"
    })
    for location in locations:
        digest.update(location.encode())
        digest.update((path.parent / location).read_bytes())
