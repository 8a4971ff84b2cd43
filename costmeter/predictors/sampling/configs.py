"""Kernel micro-benchmark configurations: a prior from real models, sampling, re-sampling.

A :class:`KernelConfig` is a small op chain (the micro-benchmark ops of
:mod:`costmeter.models.onnx.microbench`) on an input shape that forms one kernel of one type,
e.g. Conv(k=5, stride 2) + HardSwish on ``[1, 72, 56, 56]``. :func:`config_from_kernel` turns any
kernel of a fused model into its config, so :func:`build_prior` collects the configs that the zoo
and the search spaces really contain. :func:`sample_configs` draws from that prior: a real config,
then with probability ``jitter`` each dimension moved within the values the prior holds (channels
scaled and rounded to multiples of 8, spatial sizes, (kernel size, stride) pairs and epilogues
of that kernel type), as nn-Meter samples around the distributions of real models. Half the
draws pick the op chain first (:func:`op_chain`), so that a chain rare in the prior is measured
too; stems (:func:`is_stem`, convs on the input image) are one chain, keep their channels and
move among the stems' sizes.
:func:`adaptive_configs` draws neighbours of configurations whose cross-validated prediction
error exceeds a threshold (10% by default). Measuring lives in
:mod:`costmeter.predictors.sampling.measure`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from costmeter.errors import ConfigError
from costmeter.predictors.kernels.fuse import Kernel, KernelGraph

SAMPLED_TYPES: tuple[str, ...] = (
    "conv", "dwconv", "fc", "matmul", "attention", "pool", "global_pool", "elementwise",
    "activation", "concat", "softmax", "layernorm", "norm", "view", "data", "se",
)
MAX_ACTIVATION_ELEMENTS = 4_000_000  # keeps one micro-benchmark under ~50 ms on a CPU core
MAX_WEIGHT_ELEMENTS = 8_000_000
MAX_MACS = 1_500_000_000  # the largest conv of the zoo at 224 px is ~0.23 G MACs
_ACTS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "SiLU", "GELU")
_CHANNEL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
# an image kernel with this many input channels or fewer reads the network's input (RGB, RGBA,
# grey) rather than a width a designer chose: its channels are kept when perturbed, and its op
# chain is told apart (":stem"), since ONNX Runtime runs such a conv with a kernel of its own
STEM_CHANNELS = 4
CHAIN_SHARE = 0.5  # share of draws whose base is picked op chain first (see sample_configs)


@dataclass(frozen=True)
class KernelConfig:
    """One micro-benchmark: ``ops`` ((op, params) pairs) applied in order to ``input_shape``."""

    kernel_type: str
    input_shape: tuple[int, ...]
    ops: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    @property
    def key(self) -> str:
        """Stable 12-hex-digit identity of the config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {"kernel_type": self.kernel_type, "input_shape": list(self.input_shape),
                "ops": [[op, {k: list(v) if isinstance(v, tuple) else v for k, v in params}]
                        for op, params in self.ops]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelConfig:
        """Inverse of :meth:`to_dict`."""
        return make_config(str(data["kernel_type"]), tuple(data["input_shape"]),
                           [(str(op), dict(params)) for op, params in data["ops"]])

    def build(self) -> Any:
        """The micro-benchmark as an ``onnx.ModelProto``."""
        from costmeter.models.onnx.microbench import chain_model

        return chain_model([(op, dict(params)) for op, params in self.ops], self.input_shape,
                           f"{self.kernel_type}_{self.key}")

    def activation_elements(self) -> int:
        """Elements of the input tensor (a size guard for micro-benchmarks)."""
        return math.prod(self.input_shape)


def make_config(kernel_type: str, input_shape: Sequence[int],
                ops: Sequence[tuple[str, Mapping[str, Any]]]) -> KernelConfig:
    """Build a :class:`KernelConfig` (params frozen as sorted tuples)."""
    frozen = tuple((op, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                     for k, v in params.items()))) for op, params in ops)
    return KernelConfig(kernel_type, tuple(int(d) for d in input_shape), frozen)


def _dims(tensor: Any) -> list[int] | None:
    if tensor is None or tensor.shape is None or not all(isinstance(d, int) for d in tensor.shape):
        return None
    return list(tensor.shape)


def _epilogue(kernel: Kernel, start: int = 1) -> list[tuple[str, dict[str, Any]]] | None:
    """Micro ops for the units after the anchor; None when one has no micro-benchmark op."""
    ops: list[tuple[str, dict[str, Any]]] = []
    produced = {o.name for u in kernel.units for o in u.outputs}
    for position, unit in enumerate(kernel.units[start:], start=start):
        kind = unit.op_type
        if kind == "QDQPair":  # an int8 kernel's requantization: quantizing the config adds it
            continue
        if kind in _ACTS or kind == "BatchNormalization":
            ops.append((kind, {}))
        elif kind in ("Add", "Mul"):
            others = [t for t in unit.inputs if t.name not in produced]
            if position == 0 and others:  # the anchor: its largest input is the flow
                others.remove(max(others, key=lambda t: math.prod(_dims(t) or [0])))
            if others and all(t.constant for t in others):
                ops.append((f"{kind}Const", {}))
            else:
                out, other = _dims(unit.outputs[0]), _dims(others[0]) if others else None
                broadcast = bool(out and other and math.prod(other) < math.prod(out))
                ops.append((kind, {"broadcast": broadcast}))
        else:
            return None
    return ops


def config_from_kernel(kernel: Kernel) -> KernelConfig | None:
    """The micro-benchmark config that rebuilds ``kernel``; None when it cannot be built."""
    op, kind = kernel.anchor, kernel.kernel_type
    x = _dims(next((t for t in op.inputs if t.name and not t.constant), None))
    if x is None or kind not in SAMPLED_TYPES:
        return None
    attrs = op.attributes
    first: tuple[str, dict[str, Any]] | None = None
    rest = _epilogue(kernel)
    if kind in ("conv", "dwconv") and len(x) == 4:
        kernel_size = int((attrs.get("kernel_shape") or [1])[0])
        stride = int((attrs.get("strides") or [1])[0])
        if kind == "dwconv":
            first = ("DWConv", {"kernel": kernel_size, "stride": stride})
        elif int(attrs.get("group", 1)) == 1:
            c_out = _dims(op.outputs[0])
            first = ("Conv", {"c_out": c_out[1] if c_out else x[1], "kernel": kernel_size,
                              "stride": stride})
    elif kind == "fc":
        out = _dims(op.outputs[0])
        if out and op.op_type == "Gemm" and len(x) == 2:
            first = ("Gemm", {"n": out[-1]})
        elif out and op.op_type == "MatMul":
            first = ("MatMul", {"n": out[-1]})
    elif kind == "matmul" and op.op_type == "MatMul":
        out = _dims(op.outputs[0])
        first = ("MatMul", {"n": out[-1], "weight": False}) if out else None
    elif kind == "attention" and len(x) == 4:
        return make_config(kind, x, [("MatMul", {"n": x[2], "weight": False}), ("MulConst", {}),
                                     ("Softmax", {}), ("MatMul", {"n": x[3], "weight": False})])
    elif kind == "pool" and len(x) == 4 and op.op_type in ("MaxPool", "AveragePool"):
        first = (op.op_type, {"kernel": int((attrs.get("kernel_shape") or [1])[0]),
                              "stride": int((attrs.get("strides") or [1])[0])})
    elif kind == "global_pool" and len(x) == 4:
        first = ("GlobalAveragePool", {})
    elif kind == "se" and len(x) == 4:
        from costmeter.predictors.kernels.blocks import se_parts

        parts = se_parts(kernel.units[1:-1])
        if parts is None:
            return None
        return make_config(kind, x, [("SE", {"c_mid": parts[0], "act": parts[1], "gate": parts[2]})])
    elif kind in ("elementwise", "activation"):
        rest = _epilogue(kernel, start=0)
        if rest:
            return make_config(kind, x, rest)
    elif kind == "concat" and len(x) == 4 and int(attrs.get("axis", 0)) in (1, -3):
        others = [_dims(t) for t in op.inputs[1:] if t.name]
        if all(o is not None for o in others):
            first = ("Concat", {"others": [o[1] for o in others if o]})
    elif kind == "softmax" and op.op_type == "Softmax":
        first = ("Softmax", {})
    elif kind == "layernorm":
        first = ("LayerNormalization", {})
    elif kind == "norm" and op.op_type == "BatchNormalization" and len(x) == 4:
        first = ("BatchNormalization", {})
    elif kind == "view" and op.op_type in ("Flatten", "Reshape") and len(x) >= 2:
        first = ("Flatten", {})
    elif kind == "data" and op.op_type == "Transpose" and len(x) >= 2:
        first = ("Transpose", {})
    if first is None or rest is None:
        return None
    return make_config(kind, x, [first, *rest])


@dataclass
class KernelPrior:
    """Observed configs per kernel type (with repeats: a common config is drawn more often)."""

    configs: dict[str, list[KernelConfig]]
    unbuildable: dict[str, int]  # kernel type -> kernels seen that no micro-benchmark rebuilds

    def counts(self) -> dict[str, int]:
        """Observed configs per kernel type."""
        return {t: len(c) for t, c in self.configs.items()}


def build_prior(kernel_graphs: Iterable[KernelGraph]) -> KernelPrior:
    """Collect the micro-benchmark configs of every kernel in ``kernel_graphs``."""
    configs: dict[str, list[KernelConfig]] = {}
    unbuildable: dict[str, int] = {}
    for kernel_graph in kernel_graphs:
        for kernel in kernel_graph.kernels:
            config = config_from_kernel(kernel)
            if config is None:
                if kernel.kernel_type not in ("constant", "shape"):
                    unbuildable[kernel.kernel_type] = unbuildable.get(kernel.kernel_type, 0) + 1
            elif config.activation_elements() <= MAX_ACTIVATION_ELEMENTS:
                configs.setdefault(config.kernel_type, []).append(config)
    return KernelPrior(configs, unbuildable)


def _round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def _values(configs: Sequence[KernelConfig], op_index: int, name: str) -> list[Any]:
    return sorted({dict(c.ops[op_index][1]).get(name) for c in configs
                   if len(c.ops) > op_index and dict(c.ops[op_index][1]).get(name) is not None})


def perturb(config: KernelConfig, pool: Sequence[KernelConfig], rng: random.Random,
            jitter: float = 0.7, scales: Sequence[float] = _CHANNEL_SCALES) -> KernelConfig:
    """Move each dimension of ``config`` with probability ``jitter`` within ``pool``'s values."""
    shape = list(config.input_shape)
    ops = [(op, dict(params)) for op, params in config.ops]
    stem = is_stem(config)  # a stem moves among the stems' sizes: the networks' input sizes
    pool = [c for c in pool if is_stem(c) == stem] or pool
    image = len(shape) == 4 and ops[0][0] not in ("MatMul", "Softmax", "LayerNormalization")
    if image:
        if rng.random() < jitter and shape[1] > STEM_CHANNELS:
            shape[1] = _round8(shape[1] * rng.choice(scales))
        spatial = sorted({c.input_shape[2] for c in pool if len(c.input_shape) == 4})
        if spatial and rng.random() < jitter:
            shape[2] = shape[3] = rng.choice(spatial)
    elif len(shape) >= 2 and rng.random() < jitter:
        shape[-1] = _round8(shape[-1] * rng.choice(scales))
        if len(shape) >= 3 and rng.random() < jitter:
            shape[-2] = max(1, int(shape[-2] * rng.choice(scales)))
    first_op, params = ops[0]
    for name in ("c_out", "n"):
        if name in params and rng.random() < jitter and params.get("weight", True):
            params[name] = _round8(params[name] * rng.choice(scales))
    pairs = _kernel_strides(pool, first_op)  # a kernel size moves with a stride seen beside it
    if "kernel" in params and pairs and rng.random() < jitter:
        params["kernel"], stride = rng.choice(pairs)
        if "stride" in params:
            params["stride"] = stride
    elif "stride" in params and "kernel" not in params:
        choices = _values(pool, 0, "stride")
        if choices and rng.random() < jitter:
            params["stride"] = rng.choice(choices)
    if "others" in params:
        params["others"] = [_round8(c * rng.choice(scales)) for c in params["others"]]
    if "c_mid" in params:  # an SE block keeps its squeeze ratio as its channels move
        params["c_mid"] = max(1, round(params["c_mid"] * shape[1] / config.input_shape[1]))
    epilogues = list(dict.fromkeys(c.ops[1:] for c in pool if c.ops[0][0] == first_op))
    if len(ops) > 1 and epilogues and rng.random() < jitter / 2:
        ops = ops[:1] + [(op, dict(p)) for op, p in rng.choice(epilogues)]
    return make_config(config.kernel_type, shape, ops)


def _kernel_strides(pool: Sequence[KernelConfig], first_op: str) -> list[tuple[Any, Any]]:
    """The (kernel size, stride) pairs that configs of ``pool`` starting with ``first_op`` hold
    (stride 1 where none is given): drawn independently, a 3x3 conv took the stride 16 of a
    ViT's patch embedding and a fifth of the 3x3 convs sampled were such convs, which no
    network contains."""
    return sorted({(dict(c.ops[0][1])["kernel"], dict(c.ops[0][1]).get("stride", 1))
                   for c in pool if c.ops[0][0] == first_op and "kernel" in dict(c.ops[0][1])})


def _fits(config: KernelConfig) -> bool:
    if config.activation_elements() > MAX_ACTIVATION_ELEMENTS:
        return False
    params = dict(config.ops[0][1])
    shape = config.input_shape
    channels_in = shape[1] if len(shape) == 4 else shape[-1]
    weights = params.get("c_out", params.get("n", 0)) * channels_in * int(params.get("kernel", 1)) ** 2
    macs = weights * math.prod(shape[2:]) if len(shape) == 4 else weights * math.prod(shape[:-1])
    return weights <= MAX_WEIGHT_ELEMENTS and macs <= MAX_MACS


def op_chain(config: KernelConfig) -> tuple[Any, ...]:
    """The ops of ``config`` without their sizes: op names, Add/Mul marked ``:broadcast`` when
    the second operand is a per-channel scale (an SE block's), e.g. ``("SiLU",)``,
    ``("Mul:broadcast",)``, ``("Conv", "HardSwish")``, ``("Gemm",)``; a conv on the network's
    input image (at most :data:`STEM_CHANNELS` channels) is ``"Conv:stem"``."""
    stem = is_stem(config)
    return tuple(f"{op}:broadcast" if dict(params).get("broadcast") else
                 f"{op}:stem" if stem and i == 0 else op
                 for i, (op, params) in enumerate(config.ops))


def is_stem(config: KernelConfig) -> bool:
    """A conv on the network's input image: at most :data:`STEM_CHANNELS` input channels."""
    return (config.ops[0][0] == "Conv" and len(config.input_shape) == 4
            and config.input_shape[1] <= STEM_CHANNELS)


def _by_chain(pool: Sequence[KernelConfig]) -> list[list[KernelConfig]]:
    """``pool`` split by :func:`op_chain`, chains in order of first appearance; stems form one
    chain whatever their epilogue (one conv per network, not one per activation)."""
    groups: dict[tuple[Any, ...], list[KernelConfig]] = {}
    for config in pool:
        chain = op_chain(config)
        groups.setdefault(chain[:1] if is_stem(config) else chain, []).append(config)
    return list(groups.values())


def sample_configs(prior: KernelPrior, counts: Mapping[str, int], seed: int = 0,
                   jitter: float = 0.7, chain_share: float = CHAIN_SHARE) -> list[KernelConfig]:
    """Draw ``counts[kernel_type]`` distinct configs per type from ``prior``, type by type.

    Each draw picks its base config, with probability ``chain_share``, from an op chain
    (:func:`op_chain`) chosen uniformly among the type's chains, else from the whole pool (so
    in proportion to how often the prior holds it). A prior of NB201 cells, ResNets and zoo
    models holds thousands of ReLU activations and a few dozen SiLUs; drawn by frequency alone,
    31 activation kernels were 31 ReLUs, and EfficientNet's SiLUs (a fifth of its time on one
    thread) were priced by a forest that had never seen one.

    Deterministic and nested: each kernel type draws from its own generator (seeded by
    ``seed`` and the type), so a larger count of one type starts with the smaller draw and
    leaves the other types' draws unchanged."""
    out: list[KernelConfig] = []
    for kernel_type, count in counts.items():
        rng = random.Random(f"{seed}-{kernel_type}")
        pool = prior.configs.get(kernel_type, [])
        if count and not pool:
            raise ConfigError(
                f"the kernel prior has no {kernel_type} kernels; add models that contain them "
                f"or drop {kernel_type} from the sample counts"
            )
        chains = _by_chain(pool)
        seen: set[str] = set()
        for _ in range(count * 20):
            if len(seen) >= count:
                break
            by_chain = rng.random() < chain_share
            base = rng.choice(rng.choice(chains) if by_chain else pool)
            config = perturb(base, pool, rng, jitter) if rng.random() < 0.85 else base
            if config.key not in seen and _fits(config):
                seen.add(config.key)
                out.append(config)
    return out


def interleave(configs: Sequence[KernelConfig]) -> list[KernelConfig]:
    """``configs`` reordered so that every prefix holds each kernel type in proportion to its
    share of the whole (the i-th of n configs of a type sits at position (i + 0.5) / n), while
    each type keeps its own order: a build that stops early has measured a balanced prefix."""
    by_type: dict[str, list[KernelConfig]] = {}
    for config in configs:
        by_type.setdefault(config.kernel_type, []).append(config)
    ranked = [((i + 0.5) / len(group), order, config)
              for order, group in enumerate(by_type.values()) for i, config in enumerate(group)]
    return [config for _, _, config in sorted(ranked, key=lambda item: item[:2])]


def adaptive_configs(configs: Sequence[KernelConfig], relative_errors: Sequence[float],
                     per_point: int = 3, threshold: float = 0.10, seed: int = 0,
                     stakes: Sequence[float] | None = None) -> list[KernelConfig]:
    """Neighbours of the configs whose |prediction / measurement - 1| exceeds ``threshold``.

    Neighbours move each dimension a little (channels x0.75..1.25, the other values of the
    same pool), so the new measurements land where the model was wrong. ``stakes``: the time
    each config's error puts at stake (ms, e.g. its measured latency); the misses are then
    visited costliest first (|error| x stake), so a cap on the neighbours keeps those of the
    misses that cost networks the most time, whatever their kernel type. Without it, in input
    order: a 90-minute build that capped each round in that order (types alphabetically) spent
    all of its 800 re-sampled kernels on activations.
    """
    if len(configs) != len(relative_errors) or (stakes is not None and len(stakes) != len(configs)):
        raise ConfigError(f"{len(configs)} configs but {len(relative_errors)} errors"
                          f"{'' if stakes is None else f' and {len(stakes)} stakes'}; align them")
    order = list(range(len(configs)))
    if stakes is not None:
        order.sort(key=lambda i: -abs(relative_errors[i]) * float(stakes[i]))
    rng = random.Random(seed)
    known = {c.key for c in configs}
    out: list[KernelConfig] = []
    for config, error in ((configs[i], relative_errors[i]) for i in order):
        if not abs(error) > threshold:
            continue
        pool = [c for c in configs if c.kernel_type == config.kernel_type]
        made = 0
        for _ in range(per_point * 10):
            if made >= per_point:
                break
            candidate = perturb(config, pool, rng, jitter=0.5, scales=(0.75, 0.875, 1.125, 1.25))
            if candidate.key not in known and _fits(candidate):
                known.add(candidate.key)
                out.append(candidate)
                made += 1
    return out
