"""Precision settings, calibration/accuracy input sets and fidelity figures, without runtimes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from costmeter.errors import ConfigError
from costmeter.harness.config import RunConfig
from costmeter.harness.quantize import data as qdata
from costmeter.harness.quantize.fidelity_run import _judge_precision
from costmeter.harness.quantize.precision import (
    check_precision,
    config_precision,
    expand_precisions,
    normalize_precision,
    parse_precision_list,
    with_precision,
)
from costmeter.models.source import resolve_model
from costmeter.results.fidelity import fidelity
from costmeter.results.schema import Validity


@dataclass
class FakeAdapter:
    name: str
    precisions: tuple[str, ...] = ("fp32",)
    precision_unsupported: dict[str, str] = field(default_factory=dict)
    option_names: tuple[str, ...] = ()


ADAPTERS = {
    "ort": FakeAdapter("ort", ("fp32", "int8")),
    "ov": FakeAdapter("ov", ("fp32", "fp16", "bf16", "int8")),
    "tvm": FakeAdapter("tvm", ("fp32",), {"int8": "no int8 path"}),
    "compile": FakeAdapter("compile"),
}


def _get(kind: str, name: str) -> FakeAdapter:
    return ADAPTERS[name]


def test_precision_names_normalize_and_unknown_names_are_refused() -> None:
    assert [normalize_precision(p) for p in ("float32", "FP16", "bfloat16", "i8")] == ["fp32", "fp16", "bf16", "int8"]
    with pytest.raises(ConfigError, match="fp32, fp16, bf16, int8"):
        normalize_precision("int4")
    assert parse_precision_list("all") is None
    assert parse_precision_list("int8,fp32,int8") == ["int8", "fp32"]


def test_fp32_adds_no_option_so_its_key_equals_a_plain_run() -> None:
    plain = RunConfig(model="tiny_cnn", runtime="ort")
    assert with_precision(plain, "fp32", "random:8").options == plain.options
    int8 = with_precision(plain, "int8", None)
    assert dict(int8.options) == {"precision": "int8", "calibration": "random:32"}
    assert config_precision(int8.options) == "int8" and config_precision(plain.options) == "fp32"
    assert config_precision({"precision": "default"}) == "fp32"  # OpenVINO's plugin default


def test_a_precision_the_runtime_cannot_run_names_the_ones_it_can() -> None:
    with pytest.raises(ConfigError) as error:
        check_precision(ADAPTERS["ort"], "bf16")
    assert str(error.value) == ("runtime ort cannot run bf16; it runs fp32, int8 (pick one of those with "
                                "--precision, or another runtime)")
    check_precision(ADAPTERS["tvm"], "int8")  # explained: becomes an unsupported result instead


def test_all_expands_to_each_runtimes_precisions_and_explained_refusals() -> None:
    configs = [RunConfig(model="m", runtime=r) for r in ("ort", "ov", "tvm", "compile")]
    expanded = expand_precisions(configs, None, "random:4", _get)
    got = [(c.runtime, config_precision(c.options)) for c in expanded]
    assert got == [("ort", "fp32"), ("ort", "int8"), ("ov", "fp32"), ("ov", "fp16"), ("ov", "bf16"),
                   ("ov", "int8"), ("tvm", "fp32"), ("tvm", "int8"), ("compile", "fp32")]
    int8 = {c.runtime: dict(c.options) for c in expanded if config_precision(c.options) == "int8"}
    assert int8["ort"]["calibration"] == int8["ov"]["calibration"] == "random:4"
    assert "calibration" not in int8["tvm"]  # TVM's schema takes none: its int8 is an unsupported result
    with pytest.raises(ConfigError, match="runtime compile cannot run int8; it runs fp32"):
        expand_precisions(configs, ["int8"], None, _get)
    with pytest.raises(ConfigError, match="give the precision once"):
        expand_precisions([RunConfig(model="m", runtime="ov", options=(("precision", "f32"),))], ["int8"], None, _get)


@pytest.mark.parametrize("spec", ["random:0", "random:", "random:-3", "random:x"])
def test_random_calibration_needs_at_least_one_sample(spec: str) -> None:
    with pytest.raises(ConfigError, match="random:N needs N >= 1"):
        qdata.parse_calibration_spec(spec)


def test_calibration_file_that_does_not_fit_the_model_names_input_and_shapes(tmp_path: Path) -> None:
    source = resolve_model("tiny_cnn")
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(ConfigError) as error:
        qdata.load_npz_set(str(path), source, "calibration")
    assert "input 'input' has shape (4, 3, 16, 16)" in str(error.value)
    assert "expects (N, 3, 32, 32)" in str(error.value)
    np.savez(path, a=np.zeros((4, 3, 32, 32), np.float32), b=np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match=r"has arrays \['a', 'b'\].*takes \['input'\]"):
        qdata.load_npz_set(str(path), source, "calibration")
    np.savez(path, input=np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="no 'labels' array"):
        qdata.load_npz_set(str(path), source, "accuracy data", with_labels=True)
    np.savez(path, input=np.zeros((4, 3, 32, 32), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(ConfigError, match="one int per sample"):
        qdata.load_npz_set(str(path), source, "accuracy data", with_labels=True)


def test_calibration_identity_is_the_hash_of_its_inputs(tmp_path: Path) -> None:
    source = resolve_model("tiny_cnn")
    a = qdata.random_set(source, 4, qdata.CALIBRATION_SEED, "random:4")
    b = qdata.random_set(source, 4, qdata.CALIBRATION_SEED, "random:4")
    held = qdata.random_set(source, 4, qdata.HELDOUT_SEED, "held-out")
    assert a.sha == b.sha and a.count == 4
    assert held.sha != a.sha and not np.allclose(held.arrays["input"], a.arrays["input"])
    changed = {"input": a.arrays["input"].copy()}
    changed["input"][0, 0, 0, 0] += 1e-3
    assert qdata.digest_arrays(changed) != a.sha
    path = tmp_path / "calib.npz"
    np.savez(path, whatever=a.arrays["input"])  # one input: the array's name may differ
    option = qdata.calibration_option(str(path), [source], tmp_path)
    assert option == f"sha:{a.sha}"
    loaded, cached = qdata.calibration_set(option, source, tmp_path)
    assert cached.is_file() and loaded.sha == a.sha


def test_fidelity_figures_on_known_outputs() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10))
    same = fidelity([ref], [ref.copy()])
    assert same["fidelity_max_abs_diff"] == 0 and same["fidelity_cosine"] == pytest.approx(1.0)
    assert same["fidelity_top1_agreement"] == 1.0 and same["fidelity_samples"] == 50
    shifted = ref.copy()
    shifted[:5] = -shifted[:5]  # 5 of 50 samples flipped: their arg-max moves
    got = fidelity([ref], [shifted], labels=ref.argmax(1))
    assert got["fidelity_top1_agreement"] == pytest.approx(0.9)
    assert got["fidelity_cosine"] == pytest.approx(0.8)  # 45 samples at +1, 5 at -1
    assert got["accuracy_top1_fp32"] == 1.0 and got["accuracy_delta_pp"] == pytest.approx(-10.0)
    assert got["fidelity_max_abs_diff"] == pytest.approx(2 * np.abs(ref[:5]).max())
    hidden = fidelity([rng.standard_normal((4, 8, 16))], [rng.standard_normal((4, 8, 16))])
    assert hidden["fidelity_top1_agreement"] is None  # not a classifier output
    with pytest.raises(ValueError, match="structure differs"):
        fidelity([ref], [ref[:, :5]])


@dataclass
class _Result:
    extra: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validity: Validity = Validity.VALID


def test_a_run_that_fell_back_to_fp32_is_invalid_not_labelled_int8() -> None:
    fell_back = _Result({"precision_compute_share": 0.0, "precision_evidence": "0/12 conv/matmul ops integer"})
    _judge_precision(fell_back, "int8", Validity)
    assert fell_back.validity is Validity.INVALID and fell_back.extra["precision_effective"] == "fp32"
    assert "asked for int8 but the runtime ran its compute ops in fp32 (0/12" in fell_back.reasons[0]
    partly = _Result({"int8_compute_ops": 3, "compute_ops": 4})
    _judge_precision(partly, "int8", Validity)
    assert partly.validity is Validity.VALID and partly.extra["precision_effective"] == "mixed (75% int8)"
    assert "only 75% of the compute ops ran in int8" in partly.warnings[0]
    full = _Result({"precision_compute_share": 1.0})
    _judge_precision(full, "bf16", Validity)
    assert full.extra["precision_effective"] == "bf16" and not full.warnings


def test_runtime_all_skips_runtimes_without_the_precision_and_names_them() -> None:
    configs = [RunConfig(model="m", runtime=r) for r in ("ort", "compile")]
    skipped: list[str] = []
    expanded = expand_precisions(configs, ["int8"], None, _get, skipped)
    assert [(c.runtime, config_precision(c.options)) for c in expanded] == [("ort", "int8")]
    assert skipped == ["runtime compile cannot run int8; it runs fp32"]


def test_every_real_runtimes_precisions_pass_its_option_schema() -> None:
    """`--precision all --runtime all` builds options every runtime's schema accepts: the
    quantizing runtimes carry the calibration set, TVM (int8 only explained) carries none."""
    from costmeter.devices.base import get_runtime
    from costmeter.harness.validation import check_settings

    runtimes = ("torch", "torch_compile", "onnxruntime", "openvino", "tvm", "litert", "executorch")
    configs = [RunConfig(model="tiny_cnn", runtime=r, options=(("cpus", "0"),)) for r in runtimes]
    expanded = expand_precisions(configs, None, "random:4", get_runtime)
    for config in expanded:
        check_settings(config)  # ConfigError (unknown option ...) would fail the test
    int8 = {c.runtime: dict(c.options) for c in expanded if config_precision(c.options) == "int8"}
    assert set(int8) == {"torch", "onnxruntime", "openvino", "tvm", "litert", "executorch"}
    assert int8["tvm"] == {"cpus": "0", "precision": "int8"}
    assert all(o["calibration"] == "random:4" for r, o in int8.items() if r != "tvm")
