"""ONNX export and the content-addressed artifact cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from costmeter.errors import ConfigError, UnsupportedError  # noqa: E402
from costmeter.models import export  # noqa: E402
from costmeter.models.export import cached_artifact, export_onnx, onnx_cache_path  # noqa: E402
from costmeter.models.source import InputSpec, ModelSource, resolve_model  # noqa: E402


def _cache_entries(workdir: Path, subdir: str) -> list[str]:
    folder = workdir / "cache" / subdir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- cached_artifact


def test_cached_artifact_builds_once(tmp_path: Path) -> None:
    calls: list[Path] = []
    final = tmp_path / "cache" / "tflite" / "abc123-b1.tflite"

    def build(path: Path) -> None:
        calls.append(path)
        assert not final.exists()  # built aside, moved into place only when complete
        assert path.name == final.name and path.parent != final.parent
        path.write_bytes(b"model")

    first = cached_artifact(tmp_path, "tflite", "abc123-b1", ".tflite", build)
    second = cached_artifact(tmp_path, "tflite", "abc123-b1", ".tflite", build)
    assert first == second == final and final.read_bytes() == b"model"
    assert len(calls) == 1
    assert _cache_entries(tmp_path, "tflite") == [final.name]  # no temporary leftovers


def test_cached_artifact_failure_leaves_nothing(tmp_path: Path) -> None:
    def build(path: Path) -> None:
        path.write_bytes(b"half written")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        cached_artifact(tmp_path, "pte", "k1", ".pte", build)
    assert _cache_entries(tmp_path, "pte") == []


def test_cached_artifact_requires_an_output(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="without writing"):
        cached_artifact(tmp_path, "pte", "k2", ".pte", lambda path: None)
    assert _cache_entries(tmp_path, "pte") == []


def test_cached_artifact_accepts_folders(tmp_path: Path) -> None:
    def build(path: Path) -> None:
        path.mkdir()
        (path / "lib.so").write_bytes(b"x")

    result = cached_artifact(tmp_path, "tvm", "k3-host", "", build)
    assert (result / "lib.so").read_bytes() == b"x"
    assert _cache_entries(tmp_path, "tvm") == ["k3-host"]


@pytest.mark.parametrize(("subdir", "key"), [("onnx", "../escape"), ("a/b", "k"), ("onnx", "")])
def test_cached_artifact_rejects_path_like_names(tmp_path: Path, subdir: str, key: str) -> None:
    with pytest.raises(ConfigError):
        cached_artifact(tmp_path, subdir, key, ".onnx", lambda path: path.write_bytes(b""))


# ---------------------------------------------------------------- export_onnx


def test_export_has_dynamic_batch_and_matches_torch(tmp_path: Path) -> None:
    source = resolve_model("tiny_cnn")
    path = export_onnx(source, tmp_path)
    assert path == tmp_path / "cache" / "onnx" / f"{source.content_hash()}-opset17.onnx"
    assert path == onnx_cache_path(source, tmp_path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = source.example_inputs(batch)
        (got,) = session.run(None, inputs)
        with torch.no_grad():
            want = source.build_torch()(torch.from_numpy(inputs["input"])).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_second_export_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = export_onnx(resolve_model("tiny_mlp"), tmp_path)
    stamp = path.stat().st_mtime_ns

    def must_not_run(*args: object) -> None:
        raise AssertionError("exported again despite a cached file")

    monkeypatch.setattr(export, "_export_torch_to_onnx", must_not_run)
    again = export_onnx(resolve_model("tiny_mlp"), tmp_path)  # a fresh source, same content
    assert again == path and path.stat().st_mtime_ns == stamp
    assert _cache_entries(tmp_path, "onnx") == [path.name]


def test_opset_is_part_of_the_key(tmp_path: Path) -> None:
    source = resolve_model("tiny_mlp")
    path = export_onnx(source, tmp_path, opset=13)
    assert path.name.endswith("-opset13.onnx")
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 13
    with pytest.raises(ConfigError):
        export_onnx(source, tmp_path, opset=99)


def test_multi_output_model_exports_every_output_with_dynamic_batch(tmp_path: Path) -> None:
    path = export_onnx(resolve_model("bert_tiny"), tmp_path)
    outputs = onnx.load(str(path)).graph.output
    assert [o.name for o in outputs] == ["output_0", "output_1"]
    assert all(o.type.tensor_type.shape.dim[0].dim_param for o in outputs)


def test_onnx_sources_return_their_own_file(tmp_path: Path) -> None:
    onnx_file = export_onnx(resolve_model("tiny_mlp"), tmp_path / "first")
    source = resolve_model(str(onnx_file))
    assert export_onnx(source, tmp_path / "second") == onnx_file
    assert not (tmp_path / "second").exists()


def test_export_failure_is_unsupported_with_both_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def legacy(*args: object) -> None:
        raise RuntimeError("legacy cannot\nsecond line")

    def dynamo(*args: object) -> None:
        try:
            raise KeyError("root cause")
        except KeyError as cause:
            raise ValueError("\x1b[96mwrapper\x1b[0m") from cause

    monkeypatch.setattr(export, "_legacy_export", legacy)
    monkeypatch.setattr(export, "_dynamo_export", dynamo)
    with pytest.raises(UnsupportedError) as error:
        export_onnx(resolve_model("tiny_mlp"), tmp_path)
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message
    assert "legacy: RuntimeError: legacy cannot" in message
    assert "dynamo: KeyError: 'root cause'" in message
    assert _cache_entries(tmp_path, "onnx") == []


@pytest.mark.slow
def test_unexportable_model_is_unsupported(tmp_path: Path) -> None:
    class Eigen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eig(x)[0].real

    source = ModelSource("eig", "python", [InputSpec("input", (4, 4))], _module=Eigen().eval())
    with pytest.raises(UnsupportedError, match="linalg_eig"):
        export_onnx(source, tmp_path)
    assert _cache_entries(tmp_path, "onnx") == []


@pytest.mark.slow
def test_dynamo_fallback_when_legacy_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def legacy(*args: object) -> None:
        raise RuntimeError("legacy exporter unavailable")

    monkeypatch.setattr(export, "_legacy_export", legacy)
    source = resolve_model("tiny_mlp")
    path = export_onnx(source, tmp_path)
    assert not list(path.parent.glob("*.data"))  # weights inside the file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        inputs = source.example_inputs(batch)
        (got,) = session.run(None, inputs)
        with torch.no_grad():
            want = source.build_torch()(torch.from_numpy(inputs["input"])).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert os.path.getsize(path) > 4 * 26_000  # the 26k float32 weights are in the file
