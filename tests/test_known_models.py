"""A built-in model measured before costs the `bench run` process no torch: its content hash and
size figures come from the working folder (per version of the model code), and so do torch
eager's outputs for the parity check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from costmeter.models import known
from costmeter.models.source import resolve_model
from costmeter.results.store import ResultStore


def test_remembered_hash_and_figures_round_trip(tmp_path: Path) -> None:
    source = resolve_model("tiny_mlp")
    assert known.remembered(source, tmp_path)._hash is None  # nothing known yet
    digest, info = source.content_hash(), source.info()
    known.remember(source, tmp_path)
    again = known.remembered(resolve_model("tiny_mlp"), tmp_path)
    assert again._hash == digest and again.info() == info and again._module is None  # built nothing


def test_bench_run_and_bench_predict_share_one_id_cache(tmp_path: Path) -> None:
    """`bench run` remembers {hash, info}; `bench predict` reads the same entry (a folder used
    by both once failed every later build with "cache key ... is not a plain name"), and an
    entry `bench predict` writes is one `bench run` reads."""
    from costmeter.predictors.workflows.graphs import hashed_source

    ran = resolve_model("tiny_mlp")
    digest, info = ran.content_hash(), ran.info()
    known.remember(ran, tmp_path)
    assert hashed_source("tiny_mlp", tmp_path)._hash == digest

    other = tmp_path / "other"
    predicted = hashed_source("tiny_cnn", other)
    assert known.remembered(resolve_model("tiny_cnn"), other)._hash == predicted._hash
    # an entry left as a bare string by an older version is a miss, then rewritten
    path = other / "cache" / "ids" / f"{known.code_fingerprint()}.json"
    path.write_text(json.dumps({"tiny_cnn": predicted._hash}))
    assert hashed_source("tiny_cnn", other)._hash == predicted._hash
    assert json.loads(path.read_text())["tiny_cnn"] == {"hash": predicted._hash}
    assert info == known.remembered(resolve_model("tiny_mlp"), tmp_path).info()


def test_another_model_code_version_knows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = resolve_model("tiny_mlp")
    source.content_hash()
    known.remember(source, tmp_path)
    monkeypatch.setattr(known, "code_fingerprint", lambda: "0123456789abcdef")
    assert known.remembered(resolve_model("tiny_mlp"), tmp_path)._hash is None


def test_onnx_files_and_callables_are_not_remembered(tmp_path: Path) -> None:
    onnx_like = resolve_model("tiny_mlp")
    onnx_like.kind = "python"
    onnx_like._hash = "feedfacefeedface"
    known.remember(onnx_like, tmp_path)
    assert not (tmp_path / "cache" / "ids").exists()


def test_a_corrupt_index_is_a_cache_miss(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "ids" / f"{known.code_fingerprint()}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert known.remembered(resolve_model("tiny_mlp"), tmp_path)._hash is None


@pytest.mark.slow
def test_a_second_run_imports_no_torch_and_stores_the_same_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    quick = ["run", "--model", "tiny_mlp", "--runtime", "onnxruntime", "--workdir", str(tmp_path),
             "--store", url, "--min-time", "0.05", "--max-time", "5", "--min-count", "30",
             "--percentiles", "50", "--warmup", "2", "--warmup-time", "0", "--json"]
    code = ("import json, sys\nfrom costmeter.cli import main\nrc = main(json.loads(sys.argv[1]))\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(quick)], capture_output=True,
                              text=True, check=True, cwd=tmp_path)
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert run() == {"rc": 0, "torch": True}  # first: the model is built, hashed, exported
    assert run() == {"rc": 0, "torch": False}  # second: nothing of that again
    assert list((tmp_path / "cache" / "reference").glob("*.npz"))
    with ResultStore(url) as store:
        first, second = store.results()
    assert first.key == second.key and first.model_info == second.model_info
    assert first.extra["max_abs_diff"] == pytest.approx(second.extra["max_abs_diff"], abs=1e-6)
    assert second.extra["parity_ok"]
