"""Kernel samples cover what networks run: op chains rare in the prior are drawn, and a kernel
type with few measured kernels is priced by a model that follows the kernel's size."""
from __future__ import annotations

import collections

import numpy as np
import pandas as pd

from costmeter.models.onnx.graph import load_graph
from costmeter.predictors.kernels.features import kernel_features
from costmeter.predictors.kernels.fuse import fuse
from costmeter.predictors.kernels.rules import builtin_rules
from costmeter.predictors.sampling.configs import KernelPrior, make_config, op_chain, sample_configs

RULES = builtin_rules("onnxruntime")


def _activation_prior() -> KernelPrior:
    """Many ReLUs (NB201 cells), few SiLUs (EfficientNet), two HardSwishes."""
    relus = [make_config("activation", (1, c, s, s), [("Relu", {})])
             for c in (16, 32, 64) for s in (8, 16, 32)] * 30
    silus = [make_config("activation", (1, 32, 112, 112), [("SiLU", {})]),
             make_config("activation", (1, 144, 56, 56), [("SiLU", {})])]
    hardswish = [make_config("activation", (1, 72, 28, 28), [("HardSwish", {})])]
    return KernelPrior({"activation": relus + silus + hardswish}, {})


def test_op_chains_name_ops_and_broadcast_operands() -> None:
    scale = make_config("elementwise", (1, 8, 4, 4), [("Mul", {"broadcast": True})])
    plain = make_config("elementwise", (1, 8, 4, 4), [("Mul", {"broadcast": False})])
    conv = make_config("conv", (1, 8, 4, 4), [("Conv", {"c_out": 8, "kernel": 1}), ("HardSwish", {})])
    assert op_chain(scale) == ("Mul:broadcast",) and op_chain(plain) == ("Mul",)
    assert op_chain(conv) == ("Conv", "HardSwish")


def test_rare_op_chains_are_drawn_and_frequency_alone_misses_them() -> None:
    prior = _activation_prior()
    drawn = collections.Counter(op_chain(c)[0] for c in sample_configs(prior, {"activation": 24}, seed=0))
    by_frequency = collections.Counter(
        op_chain(c)[0] for c in sample_configs(prior, {"activation": 24}, seed=0, chain_share=0.0))
    assert drawn["SiLU"] >= 3 and drawn["HardSwish"] >= 2, drawn
    assert by_frequency["SiLU"] + by_frequency["HardSwish"] <= 1, by_frequency
    assert drawn["Relu"] >= 8  # the common chain still gets its share


def _conv_prior() -> KernelPrior:
    """A prior as networks give it: many body convs, one stem (3 input channels) per network,
    a ViT's 16x16 stride-16 patch embedding."""
    body = [make_config("conv", (1, c, s, s), [("Conv", {"c_out": c, "kernel": k, "stride": 1}),
                                               ("Relu", {})])
            for c in (16, 32, 64) for s in (14, 28, 56) for k in (1, 3)] * 10
    stems = [make_config("conv", (1, 3, s, s), [("Conv", {"c_out": 32, "kernel": 7, "stride": 2}),
                                                ("Relu", {})]) for s in (160, 224)]
    patch = [make_config("conv", (1, 3, 224, 224), [("Conv", {"c_out": 64, "kernel": 16,
                                                              "stride": 16})])]
    return KernelPrior({"conv": body + stems + patch}, {})


def test_stems_keep_their_input_channels_sizes_and_are_drawn_as_their_own_chain() -> None:
    """A conv on the input image runs a kernel of its own; drawn by frequency, a prior of one
    stem per network gives ~1 stem in 60 draws, and perturbing its 3 channels to 8 made it a
    body conv (a ResNet stem was priced 1.5-1.8x its in-network time from body convs)."""
    from costmeter.predictors.sampling.configs import is_stem

    prior = _conv_prior()
    drawn = sample_configs(prior, {"conv": 60}, seed=0)
    stems = [c for c in drawn if is_stem(c)]
    by_frequency = [c for c in sample_configs(prior, {"conv": 60}, seed=0, chain_share=0.0)
                    if is_stem(c)]
    assert len(stems) >= 8 and len(by_frequency) <= 3, (len(stems), len(by_frequency))
    assert op_chain(stems[0])[0] == "Conv:stem"
    assert {c.input_shape[1] for c in stems} == {3}
    assert {c.input_shape[2] for c in stems} <= {160, 224}  # the networks' input sizes
    pairs = {(dict(c.ops[0][1])["kernel"], dict(c.ops[0][1])["stride"]) for c in drawn}
    assert pairs <= {(1, 1), (3, 1), (7, 2), (16, 16)}, pairs  # never a 3x3 conv at stride 16


def _fc_table(sizes: list[tuple[int, int]]) -> pd.DataFrame:
    rows = {}
    for k, n in sizes:
        config = make_config("fc", (1, k), [("Gemm", {"n": n})])
        (kernel,) = [x for x in fuse(load_graph(config.build()), RULES).kernels
                     if x.kernel_type == "fc"]
        rows[config.key] = kernel_features(kernel)
    return pd.DataFrame.from_dict(rows, orient="index")


def test_a_sparse_kernel_type_is_priced_by_its_size_not_by_its_neighbours() -> None:
    from costmeter.predictors.estimators.additive import AdditiveForest
    from costmeter.predictors.estimators.forest import KernelForest, ModelForest
    from costmeter.predictors.estimators.network import (
        LINEAR_KERNEL_FEATURES,
        default_kernel_forest,
    )

    sparse_rows = 20

    # six classifiers measured, from tiny to large; memory-bound: 2 us + 0.1 ms per MB of weights
    train = _fc_table([(48, 8), (128, 64), (640, 1248), (960, 2000), (1600, 1248), (256, 256)])
    latency = lambda t: 0.002 + 0.1 * t["weight_bytes"].to_numpy() / 1e6  # noqa: E731
    asked = _fc_table([(1280, 1000), (1024, 1000)])  # EfficientNet-B0's and MobileNetV3's sizes
    truth = latency(asked)
    sparse = KernelForest(ModelForest(n_estimators=50),
                          sparse_forest=AdditiveForest(linear_features=LINEAR_KERNEL_FEATURES,
                                                       n_estimators=50),
                          sparse_below=sparse_rows).fit({"fc": train}, {"fc": latency(train)})
    plain = KernelForest(ModelForest(n_estimators=50)).fit({"fc": train}, {"fc": latency(train)})
    assert isinstance(sparse.forests_["fc"], AdditiveForest)
    assert isinstance(default_kernel_forest(10).fit({"fc": train}, {"fc": latency(train)})
                      .forests_["fc"], AdditiveForest)
    got = sparse.predict_kernels({"fc": asked})["latency_ms"].to_numpy()
    plain_got = plain.predict_kernels({"fc": asked})["latency_ms"].to_numpy()
    assert np.all(np.abs(got / truth - 1) < 0.15), (got, truth)
    assert np.any(np.abs(plain_got / truth - 1) > 0.3), (plain_got, truth)  # what it replaces
    many = pd.concat([train] * 4)  # as many rows as the threshold: the plain forest again
    assert isinstance(KernelForest(ModelForest(n_estimators=10), sparse_forest=AdditiveForest(),
                                   sparse_below=sparse_rows).fit(
        {"fc": many}, {"fc": latency(many)}).forests_["fc"], ModelForest)


def test_cold_latencies_for_the_named_kernel_types_only() -> None:
    from costmeter.predictors.sampling.samples import COLD_WEIGHT_TYPES, KernelSamples

    def row(key: str, kernel_type: str, warm: float, cold: float) -> dict:
        return {"key": key, "kernel_type": kernel_type, "config": "", "features": {},
                "raw_ms": warm, "overhead_ms": 0.0, "baseline_ms": 0.0, "latency_ms": warm,
                "cold_ms": cold, "source": "measured", "rounds": 1}

    samples = KernelSamples("cpu", "onnxruntime", method="context",
                            rows=[row("a", "fc", 0.195, 0.375), row("b", "conv", 0.41, 0.68),
                                  row("c", "se", 0.0172, 0.0377)])
    assert {"fc", "se"} <= set(COLD_WEIGHT_TYPES) and "conv" not in COLD_WEIGHT_TYPES
    mixed = samples.latencies(cold=COLD_WEIGHT_TYPES)
    assert mixed["fc"].tolist() == [0.375] and mixed["conv"].tolist() == [0.41]
    assert mixed["se"].tolist() == [0.0377]
    assert samples.latencies()["fc"].tolist() == [0.195]
    assert samples.latencies(cold=True)["conv"].tolist() == [0.68]


def test_a_constant_scale_after_a_conv_is_one_kernel_and_timed_behind_a_barrier() -> None:
    from costmeter.models.onnx.microbench import chain_model
    from costmeter.predictors.sampling.measure import _fuses_into_edge

    # ONNX Runtime folds Conv -> Mul(constant) into the conv's weights
    model = chain_model([("Conv", {"c_out": 16, "kernel": 3}), ("MulConst", {})], (1, 16, 8, 8))
    kernels = [k for k in fuse(load_graph(model), RULES).kernels if k.kernel_type != "constant"]
    assert [k.unit_types for k in kernels] == [["Conv", "Mul"]]
    # so a lone constant scale is timed after a pool, not folded into the context's conv (which
    # measured 0.1 us for a scale that NB201 cells run in 4-5 us)
    assert _fuses_into_edge(make_config("elementwise", (1, 16, 32, 32), [("MulConst", {})]), RULES)
    assert not _fuses_into_edge(make_config("elementwise", (1, 16, 32, 32), [("Mul", {})]), RULES)
