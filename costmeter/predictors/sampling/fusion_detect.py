"""Which op pairs a runtime fuses on a device, found with micro-benchmarks (nn-Meter's test).

For each pair (op1, op2) three tiny ONNX models are measured through the harness runner: op1
alone, op2 alone (on op1's output shape) and op1 followed by op2. With the per-run overhead of
an almost empty model subtracted from each median, the pair is *fused* when

    T1 + T2 - T12 > 0.5 * min(T1, T2)

(saving more than half of the cheaper op means the second op no longer runs as its own kernel).
Each measurement is repeated ``repeats`` times, interleaved, and the medians are compared.
The detected pairs are turned into chain rules (anchor, then an optional normalization step,
an optional binary step, an optional activation step — the order exporters emit) and stored as
JSON in the working folder, where :func:`costmeter.predictors.kernels.rules.load_rules` finds
them.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from costmeter.errors import ConfigError, MeasurementError
from costmeter.workdir import Workdir
from costmeter.predictors.kernels.rules import (
    ACTIVATION_TYPES,
    BINARY_TYPES,
    FusionRule,
    RuleSet,
    Step,
    builtin_rules,
    save_rules,
)
from costmeter.models.onnx.microbench import APPLY_OPS, TOKEN_OPS, chain_model, write_model

FUSION_THRESHOLD = 0.5  # nn-Meter: fused when the saving exceeds half of the cheaper op

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Conv", "BatchNormalization"), ("Conv", "Relu"), ("Conv", "Clip"), ("Conv", "HardSwish"),
    ("Conv", "HardSigmoid"), ("Conv", "Sigmoid"), ("Conv", "SiLU"), ("Conv", "Add"),
    ("DWConv", "Relu"), ("DWConv", "HardSwish"), ("DWConv", "SiLU"),
    ("Gemm", "Relu"), ("Gemm", "Sigmoid"), ("Gemm", "HardSwish"),
    ("MatMul", "AddConst"), ("MatMul", "GELU"), ("AddConst", "GELU"),
    ("Add", "Relu"), ("Add", "LayerNormalization"), ("MaxPool", "Relu"),
)
# the micro-benchmark op -> (ONNX op type in rules, operand kind when it is a binary op)
_RULE_TYPE: dict[str, tuple[str, str]] = {
    "DWConv": ("Conv", "any"), "AddConst": ("Add", "const"), "MulConst": ("Mul", "const"),
    "Add": ("Add", "tensor"), "Mul": ("Mul", "tensor"),
}
IMAGE_SHAPE = (1, 16, 56, 56)
TOKEN_SHAPE = (1, 64, 128)
GEMM_SHAPE = (1, 16)  # dim 0 is the symbolic batch (1 when measured); a wide output
_OP_PARAMS: dict[str, dict[str, Any]] = {
    "Conv": {"kernel": 1}, "DWConv": {"kernel": 3}, "MaxPool": {"kernel": 3, "stride": 1},
    "AveragePool": {"kernel": 3, "stride": 1}, "Gemm": {"n": 65536}, "MatMul": {"n": 128},
}

MeasureFn = Callable[[list[Path]], list[float]]  # ONNX files -> median latency in ms


@dataclass(frozen=True)
class PairTiming:
    """Overhead-corrected medians (ms) of one pair and the verdict."""

    op1: str
    op2: str
    t1_ms: float
    t2_ms: float
    t12_ms: float
    overhead_ms: float

    @property
    def saving_ms(self) -> float:
        """T1 + T2 - T12: time saved by running the pair together (ms)."""
        return self.t1_ms + self.t2_ms - self.t12_ms

    @property
    def fused(self) -> bool:
        """nn-Meter's rule: the saving exceeds half of the cheaper op's time."""
        return self.saving_ms > FUSION_THRESHOLD * min(self.t1_ms, self.t2_ms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready evidence row (times in ms, verdict included)."""
        return {"op1": self.op1, "op2": self.op2, "t1_ms": self.t1_ms, "t2_ms": self.t2_ms,
                "t12_ms": self.t12_ms, "overhead_ms": self.overhead_ms,
                "saving_ms": self.saving_ms, "fused": self.fused}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"Conv+Relu,Gemm+Relu"`` -> pairs; ConfigError naming the bad item."""
    pairs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        first, sep, second = item.partition("+")
        if not sep or first not in APPLY_OPS or second not in APPLY_OPS:
            raise ConfigError(
                f"bad op pair {item!r}; write OP1+OP2 with ops from {', '.join(APPLY_OPS)}"
            )
        pairs.append((first, second))
    if not pairs:
        raise ConfigError("no op pairs given; write e.g. Conv+Relu,Gemm+Relu")
    return pairs


def _input_shape(op: str) -> tuple[int, ...]:
    if op == "Gemm":
        return GEMM_SHAPE
    return TOKEN_SHAPE if op in TOKEN_OPS or op in ("GELU", "AddConst") else IMAGE_SHAPE


def pair_models(op1: str, op2: str) -> tuple[Any, Any, Any]:
    """(op1 alone, op2 alone on op1's output shape, op1 then op2) as ONNX models."""
    from costmeter.models.onnx.microbench import GraphBuilder

    shape = _input_shape(op1)
    first = (op1, _OP_PARAMS.get(op1, {}))
    second = (op2, _OP_PARAMS.get(op2, {}) if op2 != "MatMul" else {"n": shape[-1]})
    probe = GraphBuilder()
    _, mid_shape = probe.apply(first[0], probe.input(shape), shape, **first[1])
    return (chain_model([first], shape, f"{op1}"), chain_model([second], mid_shape, f"{op2}"),
            chain_model([first, second], shape, f"{op1}_{op2}"))


def _runner_measure(device: str, runtime: str, workdir: Path, threads: int | None,
                    min_time_s: float, sink: Any) -> MeasureFn:
    from costmeter.predictors.sampling.micro_measure import measure_onnx, median_ms, micro_protocol

    def measure(paths: list[Path]) -> list[float]:
        results = measure_onnx(paths, device, runtime, workdir, micro_protocol(min_time_s),
                               threads, sink, tag="kernels-detect")
        failed = [r for r in results if r.error]
        if failed:
            raise MeasurementError(
                f"fusion micro-benchmark {failed[0].key.model_id} failed ({failed[0].error}); "
                "check the runtime with `bench run` on a small model"
            )
        return [median_ms(r) for r in results]

    return measure


def detect_fusion(pairs: Sequence[tuple[str, str]] | None = None, device: str = "cpu",
                  runtime: str = "onnxruntime", workdir: Path | str = ".costmeter",
                  threads: int | None = 1, repeats: int = 3, min_time_s: float = 0.3,
                  sink: Any = None, measure: MeasureFn | None = None,
                  save: bool = True, keep_artifacts: bool = False) -> RuleSet:
    """Measure ``pairs`` on ``device``/``runtime``, derive and (``save``) store the rule set.

    Returns the detected :class:`RuleSet` (``source="detected"``, one evidence row per pair:
    medians in ms, overhead, saving, verdict). ``measure`` replaces the harness runner (a
    function from ONNX files to median ms), for tests and remote devices. The micro-benchmark
    files are removed once measured unless ``keep_artifacts``.
    """
    import shutil

    pairs = list(pairs or DEFAULT_PAIRS)
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1 (got {repeats})")
    for pair in pairs:
        parse_pairs("+".join(pair))
    workdir = Path(workdir)
    folder = Workdir.of(workdir).detect_models
    measure = measure or _runner_measure(device, runtime, workdir, threads, min_time_s, sink)
    overhead_path = write_model(chain_model([("Relu", {})], (1, 1), "overhead"), folder, "overhead")
    files = [overhead_path]
    for op1, op2 in pairs:
        files += [write_model(m, folder, stem) for m, stem in
                  zip(pair_models(op1, op2), (op1, op2, f"{op1}_{op2}"))]
    try:
        rounds = [measure(files) for _ in range(repeats)]  # interleaved: each round runs every file
    finally:
        if not keep_artifacts:
            for path in files:
                path.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
    medians = [statistics.median(r[i] for r in rounds) for i in range(len(files))]
    overhead = medians[0]
    timings = []
    for index, (op1, op2) in enumerate(pairs):
        t1, t2, t12 = (max(0.0, m - overhead) for m in medians[1 + 3 * index: 4 + 3 * index])
        timings.append(PairTiming(op1, op2, t1, t2, t12, overhead))
    rule_set = rules_from_pairs(timings, runtime, device)
    if save:
        save_rules(rule_set, workdir)
    return rule_set


def _rule_type(op: str) -> tuple[str, str]:
    return _RULE_TYPE.get(op, (op, "any"))


def rules_from_pairs(timings: Sequence[PairTiming], runtime: str, device: str) -> RuleSet:
    """Chain rules from pair verdicts: per anchor, optional [normalization][binary][activation].

    A follower that is itself an anchor's required partner (e.g. bias Add then GELU) becomes a
    two-step rule anchored at the first op. Composite spellings come from the built-in set.
    """
    followers: dict[tuple[str, str], list[str]] = {}
    for timing in timings:
        if timing.fused:
            followers.setdefault(_rule_type(timing.op1), []).append(timing.op2)
    rules = []
    for (anchor, anchor_operand), ops in followers.items():
        groups: dict[str, list[str]] = {"norm": [], "binary": [], "act": []}
        operands: set[str] = set()
        for op in ops:
            rule_type, operand = _rule_type(op)
            if rule_type in BINARY_TYPES:
                groups["binary"].append(rule_type)
                operands.add(operand)
            elif rule_type in ACTIVATION_TYPES or rule_type in ("SiLU", "GELU"):
                groups["act"].append(rule_type)
            else:
                groups["norm"].append(rule_type)
        binary_operand = operands.pop() if len(operands) == 1 else "any"
        present = [g for g in ("norm", "binary", "act") if groups[g]]
        follower_steps = {g: Step(tuple(dict.fromkeys(groups[g])), optional=True,
                                  operand=binary_operand if g == "binary" else "any")
                          for g in present}
        if anchor in BINARY_TYPES:  # an elementwise anchor: one two-step rule per partner group
            for group in present:
                step = follower_steps[group]
                rules.append(FusionRule(
                    f"detected_{anchor.lower()}_{anchor_operand}_{group}",
                    (Step((anchor,), operand=anchor_operand),
                     Step(step.types, operand=step.operand))))
        else:
            rules.append(FusionRule(f"detected_{anchor.lower()}",
                                    (Step((anchor,)), *(follower_steps[g] for g in present))))
    # longer chains first, so that e.g. Conv's rule claims Conv+Add before Add+Relu would
    rules.sort(key=lambda r: (r.steps[0].types[0] in BINARY_TYPES, -len(r.steps)))
    return RuleSet(runtime=runtime, rules=tuple(rules),
                   composites=builtin_rules(runtime).composites or ("SiLU", "GELU"),
                   blocks=builtin_rules(runtime).blocks,
                   device=device, source="detected",
                   evidence=tuple(t.to_dict() for t in timings))
