"""The batch prediction API: lazy import, round trips, refusals, and analytic vs ONNX features."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmeter.errors import ConfigError
from costmeter.predictors.api import ForestPredictor
from costmeter.models.spaces import nb201, ofa_mbv3


def _fit(space: str, n: int = 300) -> object:
    """An ArchPredictor fitted on a latency that is a smooth function of the MACs."""
    from costmeter.predictors.estimators.arch import ArchPredictor
    from costmeter.predictors.estimators.forest import ModelForest

    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    archs = module.sample(n, seed=1)
    macs = module.features(archs)["macs_total"].to_numpy()
    latency = 0.2 + macs / 1e8
    return ArchPredictor(space, ModelForest(n_estimators=16), device="cpu",
                         runtime="onnxruntime").fit(archs, latency)


@pytest.fixture(scope="module", params=["nb201", "ofa_mbv3"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from costmeter.predictors.artifacts import save_predictor

    estimator = _fit(request.param)
    path = tmp_path_factory.mktemp("api") / f"{request.param}.costmodel"
    save_predictor(estimator, path)
    return request.param, estimator, path


def test_import_costmeter_stays_light() -> None:
    code = ("import sys, costmeter; heavy = [m for m in ('numpy', 'sklearn', 'torch', 'onnxruntime')"
            " if m in sys.modules]; print(heavy); from costmeter import load_predictor, load_lut; "
            "print(load_predictor.__module__, load_lut.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "costmeter.predictors.api costmeter.predictors.api"]


def test_round_trip_predicts_like_the_estimator(saved: tuple) -> None:
    from costmeter import load_predictor

    space, estimator, path = saved
    model = load_predictor(path, device="cpu", runtime="onnxruntime")
    assert isinstance(model, ForestPredictor) and model.space == space
    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    archs = module.sample(50, seed=9)
    mean, std = model.predict(archs)
    want_mean, want_std = estimator.predict_with_uncertainty(archs)
    assert mean == pytest.approx(want_mean) and std == pytest.approx(want_std)
    assert mean.shape == (50,) and (std >= 0).all()
    budget = float(np.median(mean))
    assert (model.satisfies(archs, budget) == (mean <= budget)).all()
    assert model.satisfies(archs, budget, sigmas=2.0).sum() <= model.satisfies(archs, budget).sum()


@pytest.mark.parametrize("saved", ["ofa_mbv3"], indirect=True)
def test_ofa_predictions_do_not_depend_on_the_encoding_or_chunking(saved: tuple,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.predictors import api

    _, _, path = saved
    model = api.load_predictor(path)
    array = ofa_mbv3.sample_array(30, seed=4)
    strings = [ofa_mbv3.format_arch(r) for r in array]
    dicts = [ofa_mbv3.to_ofa_dict(s) for s in strings]
    whole = model.predict(array)[0]
    monkeypatch.setattr(api, "CHUNK_ROWS", 7)
    monkeypatch.setattr(ofa_mbv3, "DECODE_CHUNK", 5)
    assert model.predict(strings)[0] == pytest.approx(whole)
    assert model.predict(dicts)[0] == pytest.approx(whole)


def test_refusals_name_what_differs(saved: tuple, tmp_path: Path) -> None:
    from costmeter import load_predictor

    space, _, path = saved
    with pytest.raises(ConfigError, match="device 'cpu', not 'cuda'"):
        load_predictor(path, device="cuda")
    with pytest.raises(ConfigError, match="runtime 'onnxruntime', not 'openvino'"):
        load_predictor(path, runtime="openvino")
    other = "nb201" if space == "ofa_mbv3" else "ofa_mbv3"
    with pytest.raises(ConfigError, match=f"space '{space}', not '{other}'"):
        load_predictor(path, space=other)
    model = load_predictor(path)
    for bad in (0, -5, float("inf")):
        with pytest.raises(ValueError, match="budget must be positive"):
            model.satisfies(nb201.sample(2) if space == "nb201" else ofa_mbv3.sample(2), bad)


def test_architectures_outside_the_space_raise_value_errors(saved: tuple) -> None:
    from costmeter import load_predictor

    space, _, path = saved
    model = load_predictor(path)
    if space == "nb201":
        with pytest.raises(ValueError, match="edge 1->2 has unknown op 'conv_7x7'; allowed: none"):
            model.predict(["|none~0|+|none~0|conv_7x7~1|+|none~0|none~1|none~2|"])
    else:
        with pytest.raises(ValueError, match="stage 2 block 1 expand.* = 5 is not allowed; allowed: 3, 4, 6"):
            model.predict(["r160|k3e4,k3e4|k3e5,k3e4|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4"])
        with pytest.raises(ValueError, match="stage 3 has 1 blocks; allowed depths: 2, 3, 4"):
            model.predict(["r160|k3e4,k3e4|k3e4,k3e4|k3e4|k3e4,k3e4|k3e4,k3e4"])


def test_a_kernel_level_file_is_not_a_batch_predictor(tmp_path: Path) -> None:
    import pandas as pd

    from costmeter import load_predictor
    from costmeter.predictors.artifacts import save_predictor
    from costmeter.predictors.estimators.forest import KernelForest, ModelForest

    table = pd.DataFrame({"flops": np.arange(1.0, 21.0)})
    forest = KernelForest(ModelForest(n_estimators=4)).fit({"conv": table}, {"conv": np.arange(1.0, 21.0)})
    save_predictor(forest, tmp_path / "k.costmodel", device="cpu", runtime="onnxruntime")
    with pytest.raises(ConfigError, match="holds a KernelForest"):
        load_predictor(tmp_path / "k.costmodel")


def test_load_predictor_also_opens_lookup_tables(tmp_path: Path) -> None:
    from costmeter import load_lut, load_predictor
    from tests.test_lut import synthetic_table

    json_path, _ = synthetic_table("nb201").save(tmp_path / "nb201_cpu")
    archs = nb201.sample(20, seed=2)
    by_predictor = load_predictor(json_path, device="cpu").predict(archs)
    by_lut = load_lut(json_path, runtime="onnxruntime").predict(archs)
    assert by_predictor[0] == pytest.approx(by_lut[0])
    with pytest.raises(ConfigError, match="runtime 'onnxruntime', not 'tvm'"):
        load_predictor(json_path, runtime="tvm")


# ----------------------------------------------------------------------------- fast OFA decoding
@st.composite
def ofa_strings(draw: st.DrawFn) -> str:
    """Canonical strings, some of them damaged by one edit."""
    seed = draw(st.integers(0, 10_000))
    text = ofa_mbv3.format_arch(ofa_mbv3.sample_array(1, seed=seed)[0])
    edit = draw(st.sampled_from(["none", "replace", "delete", "insert"]))
    if edit == "none":
        return text
    position = draw(st.integers(0, len(text) - 1))
    char = draw(st.sampled_from(list("0123456789ke|, rx")))
    if edit == "replace":
        return text[:position] + char + text[position + 1:]
    if edit == "delete":
        return text[:position] + text[position + 1:]
    return text[:position] + char + text[position:]


@settings(max_examples=300, deadline=None)
@given(ofa_strings())
def test_fast_decoder_agrees_with_the_space_parser(text: str) -> None:
    """``to_array`` of strings (vectorised decoder first) against parsing string by string."""
    try:
        expected = ofa_mbv3._validate_array(np.stack([ofa_mbv3.parse(text)]))
    except ConfigError as error:
        with pytest.raises(ConfigError) as raised:
            ofa_mbv3.to_array([text])
        assert str(raised.value) == str(error)
        return
    assert (ofa_mbv3.to_array([text]) == expected).all()
    assert (ofa_mbv3.to_array([text, text]) == np.vstack([expected, expected])).all()


def test_the_vectorised_decoder_is_used_for_canonical_strings() -> None:
    """The fast path really decodes (it is not silently falling back to the parser)."""
    from costmeter.models.spaces.ofa_mbv3.strings import decode_canonical

    strings = ofa_mbv3.sample(50, seed=3)
    decoded = decode_canonical(strings)
    assert decoded is not None
    assert (decoded == ofa_mbv3.sample_array(50, seed=3)).all()
    assert decode_canonical(["r176|k3e4"]) is None


# ----------------------------------------------------------------------------- the two paths agree
@pytest.mark.parametrize("space", ["nb201", "ofa_mbv3"])
def test_analytic_features_match_the_exported_onnx_graph(space: str, tmp_path: Path) -> None:
    """MACs computed from the encoding alone equal those counted on the exported ONNX graph,
    in total and (ofa_mbv3) for the depthwise convolutions; the graph has no unknown op."""
    from costmeter.predictors.workflows.collect import CollectItem, export_item
    from costmeter.models.onnx.graph import load_graph

    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    archs = module.sample(3, seed=21)
    if space == "ofa_mbv3":  # the smallest and the largest resolution
        archs = ["r128|" + archs[0].split("|", 1)[1], "r224|" + archs[1].split("|", 1)[1], archs[2]]
    features = module.features(archs)
    for i, arch in enumerate(archs):
        item = CollectItem(space, arch, tuple(module.input_shape(arch, 1)))
        graph = load_graph(export_item(item, tmp_path))
        assert not graph.unknown_ops() and not graph.incomplete_ops()
        assert graph.totals()["macs"] == features.loc[i, "macs_total"]
        if space == "ofa_mbv3":  # macs_depthwise counts the elastic blocks, not the fixed first
            depthwise = sum(op.macs for op in graph.ops if op.op_type == "Conv"
                            and int(op.attributes.get("group", 1)) > 1)
            h0 = -(-int(features.loc[i, "resolution"]) // 2)
            first_block = ofa_mbv3.STEM_WIDTH * 9 * h0 * h0
            assert depthwise - first_block == features.loc[i, "macs_depthwise"]
