"""Model sources: the zoo, ONNX files, python callables, and every bad input."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from costmeter.errors import ConfigError, UnsupportedError  # noqa: E402
from costmeter.models import zoo  # noqa: E402
from costmeter.models.source import InputSpec, ModelSource, resolve_model, zoo_names  # noqa: E402

PUBLISHED = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "vit_tiny", "bert_tiny",
]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- zoo


def test_zoo_names_cover_the_published_and_tiny_models() -> None:
    assert set(zoo_names()) == {*PUBLISHED, "tiny_mlp", "tiny_cnn"}
    assert set(zoo.REFERENCE_PARAMS) == set(PUBLISHED)
    for count, where in zoo.REFERENCE_PARAMS.values():
        assert count > 1_000_000 and where  # every figure names its source


@pytest.mark.parametrize("name", PUBLISHED)
def test_zoo_parameter_count_matches_reference_within_1_percent(name: str) -> None:
    model = zoo.zoo_entries()[name].build()  # architecture only: no seeding or calibration
    params = sum(p.numel() for p in model.parameters())
    reference, _ = zoo.REFERENCE_PARAMS[name]
    assert abs(params - reference) / reference < 0.01


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_zoo_outputs_stay_order_one(name: str) -> None:
    source = resolve_model(name)
    inputs = [torch.from_numpy(a) for a in source.example_inputs(1).values()]
    with torch.no_grad():
        out = source.build_torch()(*inputs)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    # BatchNorm calibration keeps random-weight outputs O(1), not vanishing (~1e-9 without it)
    assert 1e-3 < float(out.abs().max()) < 1e3


def test_zoo_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = zoo.build_zoo_model("tiny_cnn")
    assert torch.equal(torch.rand(3), expected)
    second = zoo.build_zoo_model("tiny_cnn")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert not first.training


def test_tiny_mlp_info_matches_hand_count() -> None:
    info = resolve_model("tiny_mlp").info()
    assert info["params"] == (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
    assert info["param_bytes"] == 4 * info["params"]
    assert info["macs"] == 64 * 128 + 128 * 128 + 128 * 10
    assert info["macs_source"] == "torch.utils.flop_counter"


def test_tiny_cnn_macs_match_hand_count() -> None:
    conv1 = 16 * 32 * 32 * (3 * 9)
    conv2 = 32 * 16 * 16 * (16 * 9)
    conv3 = 64 * 8 * 8 * (32 * 9)
    assert resolve_model("tiny_cnn").info()["macs"] == conv1 + conv2 + conv3 + 64 * 10


def test_build_torch_is_cached_in_eval_mode() -> None:
    source = resolve_model("tiny_mlp")
    assert source.kind == "zoo" and source.has_torch() and source.model_id == "tiny_mlp"
    module = source.build_torch()
    assert module is source.build_torch() and not module.training


def test_example_inputs_are_deterministic_with_batch() -> None:
    source = resolve_model("tiny_cnn")
    a, b = source.example_inputs(3, seed=7), source.example_inputs(3, seed=7)
    assert list(a) == ["input"] and a["input"].shape == (3, 3, 32, 32)
    assert a["input"].dtype == np.float32
    np.testing.assert_array_equal(a["input"], b["input"])
    assert not np.array_equal(a["input"], source.example_inputs(3, seed=8)["input"])
    with pytest.raises(ConfigError):
        source.example_inputs(0)


def test_bert_tiny_takes_token_ids() -> None:
    source = resolve_model("bert_tiny")
    assert source.inputs == [InputSpec("input_ids", (128,), "int64", 0, 30522)]
    ids = source.example_inputs(2)["input_ids"]
    assert ids.shape == (2, 128) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 30522 and len(np.unique(ids)) > 100
    hidden, pooled = source.build_torch()(torch.from_numpy(ids))
    assert hidden.shape == (2, 128, 128) and pooled.shape == (2, 128)


def test_content_hash_is_stable_and_distinguishes_models() -> None:
    first = resolve_model("tiny_mlp").content_hash()
    assert first == resolve_model("tiny_mlp").content_hash()
    assert len(first) == 16 and int(first, 16) >= 0
    assert first != resolve_model("tiny_cnn").content_hash()


def test_content_hash_is_the_same_in_another_process() -> None:
    code = "from costmeter.models.source import resolve_model; " \
           "print(resolve_model('tiny_mlp').content_hash())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert other == resolve_model("tiny_mlp").content_hash()


def test_zoo_content_hash_follows_the_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    before = resolve_model("tiny_mlp").content_hash()
    widened = resolve_model("tiny_mlp")
    widened._module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                          torch.nn.Linear(256, 10))
    assert widened.content_hash() != before
    monkeypatch.setattr(zoo, "ZOO_RECIPE", zoo.ZOO_RECIPE + 1)
    assert resolve_model("tiny_mlp").content_hash() != before


# ---------------------------------------------------------------- ONNX files


def _linear_onnx(path: Path, batch_dim: int | str = "N") -> Path:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_onnx_source_from_file(tmp_path: Path) -> None:
    path = _linear_onnx(tmp_path / "lin.onnx")
    source = resolve_model(str(path))
    assert (source.model_id, source.kind, source.onnx_path) == (
        f"onnx:{source.content_hash()}", "onnx", str(path))
    assert source.display_name == "lin"
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(path.read_bytes())
    assert resolve_model(str(copy)).model_id == source.model_id  # the id follows the content
    assert source.inputs == [InputSpec("x", (4,), "float32")] and source.fixed_batch is None
    assert not source.has_torch()
    assert source.example_inputs(5)["x"].shape == (5, 4)
    info = source.info()
    assert info == {"params": 15, "param_bytes": 60, "macs": 12, "macs_source": "onnx-graph"}
    with pytest.raises(UnsupportedError):
        source.build_torch()


def test_onnx_content_hash_follows_file_bytes(tmp_path: Path) -> None:
    path = _linear_onnx(tmp_path / "lin.onnx")
    before = resolve_model(str(path)).content_hash()
    assert before == resolve_model(str(path)).content_hash()
    model = onnx.load(str(path))
    doubled = numpy_helper.from_array(np.full((4, 3), 2, np.float32), "W")
    model.graph.initializer[0].CopyFrom(doubled)
    onnx.save(model, str(path))
    assert resolve_model(str(path)).content_hash() != before


def test_onnx_fixed_batch_is_enforced(tmp_path: Path) -> None:
    source = resolve_model(str(_linear_onnx(tmp_path / "fixed.onnx", batch_dim=1)))
    assert source.fixed_batch == 1 and source.example_inputs(1)["x"].shape == (1, 4)
    with pytest.raises(ConfigError, match="fixed batch"):
        source.example_inputs(2)


def test_onnx_int_input_range_comes_from_embedding_table(tmp_path: Path) -> None:
    table = numpy_helper.from_array(np.zeros((50, 8), np.float32), "E")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"])], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])], [table],
    )
    path = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    source = resolve_model(str(path))
    assert source.inputs == [InputSpec("ids", (6,), "int64", 0, 50)]
    assert source.example_inputs(4)["ids"].max() < 50


# ---------------------------------------------------------------- python callables


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "cm_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch

        class Pair(torch.nn.Module):
            def forward(self, x, ids):
                return x.sum(-1) + ids.float().sum(-1)

        def good():
            torch.manual_seed(0)
            return torch.nn.Linear(4, 2), torch.randn(1, 4)

        def pair():
            return Pair(), (torch.randn(1, 3), torch.tensor([[2, 5, 9]]))

        def not_a_pair():
            return torch.nn.Linear(4, 2)

        def not_a_module():
            return "linear", torch.randn(1, 4)

        def not_tensors():
            return torch.nn.Linear(4, 2), [1.0, 2.0]

        def batch_two():
            return torch.nn.Linear(4, 2), torch.randn(2, 4)

        def raises():
            raise RuntimeError("weights missing")

        def bf16():
            return torch.nn.Linear(4, 2), torch.randn(1, 4, dtype=torch.bfloat16)
    """))
    (tmp_path / "cm_test_broken_module.py").write_text("raise ImportError('needs foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in (name, "cm_test_broken_module"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    return name


def test_python_source(user_module: str) -> None:
    source = resolve_model(f"{user_module}:good")
    assert (source.kind, source.model_id) == ("python", f"py:{user_module}:good")
    assert source.inputs == [InputSpec("input", (4,), "float32")]
    assert isinstance(source.build_torch(), torch.nn.Linear)
    assert source.info()["macs"] == 8 and source.info()["params"] == 10
    assert resolve_model(f"py:{user_module}:good").content_hash() == source.content_hash()
    changed = resolve_model(f"{user_module}:good")  # python sources hash their weight bytes
    with torch.no_grad():
        changed.build_torch().weight[0, 0] += 1.0
    assert changed.content_hash() != source.content_hash()


def test_python_source_with_tuple_example(user_module: str) -> None:
    source = resolve_model(f"{user_module}:pair")
    assert source.inputs == [
        InputSpec("input_0", (3,), "float32"), InputSpec("input_1", (3,), "int64", 2, 10)
    ]
    ids = source.example_inputs(4, seed=1)["input_1"]
    assert ids.shape == (4, 3) and ids.min() >= 2 and ids.max() < 10


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        ("not_a_pair", "not a pair"),
        ("not_a_module", "as model"),
        ("not_tensors", "not tensors"),
        ("batch_two", "not batch 1"),
        ("raises", "weights missing"),
        ("bf16", "numpy cannot represent"),
        ("missing_func", "has no function"),
    ],
)
def test_python_source_bad_functions(user_module: str, func: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model(f"{user_module}:{func}")
    assert expected in _one_line(error)


def test_python_missing_function_suggests_close_name(user_module: str) -> None:
    with pytest.raises(ConfigError, match="did you mean good"):
        resolve_model(f"{user_module}:goood")


@pytest.mark.parametrize(
    "spec", ["cm_no_such_module_xyz:build", "cm_test_broken_module:build", "py::build", "mod:"]
)
def test_python_unimportable_or_malformed(user_module: str, spec: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model(spec)
    message = _one_line(error)
    assert "import" in message or "pkg.module:function" in message


# ---------------------------------------------------------------- other bad input


def test_unknown_zoo_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model("resnet19")
    message = _one_line(error)
    assert "did you mean" in message and "resnet18" in message


def test_unknown_name_without_close_match_lists_the_zoo() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model("qqqqqq")
    assert "did you mean" not in _one_line(error) and "tiny_mlp" in str(error.value)


def test_empty_spec() -> None:
    with pytest.raises(ConfigError):
        resolve_model("  ")


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as error:
        resolve_model(str(tmp_path / "nope.onnx"))
    _one_line(error)


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ConfigError, match="onnx.checker failed") as error:
        resolve_model(str(path))
    _one_line(error)


def test_onnx_file_failing_the_checker(tmp_path: Path) -> None:
    good = _linear_onnx(tmp_path / "ok.onnx")
    model = onnx.load(str(good))
    model.graph.node[0].input[0] = "undefined_tensor"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ConfigError, match="not a valid ONNX model"):
        resolve_model(str(tmp_path / "bad.onnx"))


def test_truncated_onnx_file(tmp_path: Path) -> None:
    data = _linear_onnx(tmp_path / "ok.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="onnx.checker failed"):
        resolve_model(str(tmp_path / "cut.onnx"))


def test_model_source_is_a_plain_dataclass() -> None:
    source = ModelSource("x", "zoo", [InputSpec("input", (64,))], target="tiny_mlp")
    assert source.build_torch()[0].in_features == 64


def test_search_space_architectures_are_model_sources() -> None:
    from costmeter.models.spaces import get_space

    arch = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    source = resolve_model(f"nb201:{arch}")
    assert source.model_id == f"nb201:{arch}" and source.has_torch()
    assert source.inputs[0].shape == (3, 32, 32)
    assert source.info()["params"] == get_space("nb201").param_count(arch)
    assert resolve_model(f"nb201:{arch}").content_hash() == source.content_hash()
    with pytest.raises(ConfigError, match="nor_conv_9x9"):
        resolve_model("nb201:|nor_conv_9x9~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|")
