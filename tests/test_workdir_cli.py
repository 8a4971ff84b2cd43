"""`bench workdir du|clean`, `bench predict` from the working folder's caches, and the build's
bad input at the command line (one line, exit 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from costmeter.cli import main
from costmeter.workdir import Workdir

sys.path.insert(0, str(Path(__file__).parent))
import test_build  # noqa: E402  (fake seams of the build)


def _fill(wd: Workdir) -> dict[str, Path]:
    files = {"caches": wd.onnx_cache / "a-opset17.onnx", "micro": wd.micro_models / "run-1" / "k.onnx",
             "tmp": wd.tmp / "w" / "x.json", "samples": wd.kernel_samples("cpu", "onnxruntime"),
             "store": wd.store_path, "lut": wd.lut / "t.json", "build": wd.build_state("cpu", "onnxruntime")}
    for kind, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (1000 if kind != "caches" else 5000))
    return files


def test_du_shows_each_kind_and_clean_frees_only_the_safe_ones(tmp_path: Path, capsys) -> None:
    wd = Workdir(tmp_path / "wd")
    files = _fill(wd)
    assert main(["workdir", "du", "--workdir", str(wd.root)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()}
    assert "5.0 KB" in lines["caches"] and lines["caches"].startswith("*")
    assert "2.0 KB" in lines["samples"] and not lines["samples"].startswith("*")  # samples + build state
    assert "11.0 KB" in lines["total"]
    assert main(["workdir", "clean", "--workdir", str(wd.root)]) == 0
    assert "freed 7.0 KB (3 files" in capsys.readouterr().out
    assert not files["caches"].exists() and not files["micro"].exists() and not files["tmp"].exists()
    assert all(files[k].exists() for k in ("samples", "store", "lut", "build"))
    assert not wd.micro_models.exists()  # emptied folders go too
    assert main(["workdir", "clean", "--kind", "store", "--workdir", str(wd.root)]) == 0
    assert not files["store"].exists() and files["samples"].exists()


def test_clean_refuses_an_unknown_kind_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["workdir", "clean", "--kind", "everything", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose from caches" in err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A kernel-level predictor from a build with fake hardware, and its working folder."""
    from costmeter.predictors.workflows.build import build_predictor

    root = tmp_path_factory.mktemp("built")
    out, wd = root / "m.costmodel", root / "wd"
    build_predictor(test_build.spec(), out, wd, seams=test_build.seams())
    return out, wd


def test_predict_answers_warm_without_torch_or_sklearn_and_checks_threads(built, capsys) -> None:
    out, wd = built
    assert main(["predict", str(out), "-m", "tiny_cnn", "--workdir", str(wd)]) == 0  # cold: exports
    cold = capsys.readouterr().out
    assert cold.startswith("tiny_cnn\t") and "1 thread(s)" in cold
    code = ("import sys; from costmeter.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'sklearn', 'skops', 'onnx') if m in sys.modules)); sys.exit(rc)")
    warm = subprocess.run([sys.executable, "-c", code, "predict", str(out), "-m", "tiny_cnn",
                           "--workdir", str(wd)], capture_output=True, text=True, timeout=120)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.splitlines()[-1] == "[]"
    assert warm.stdout.rsplit("\n", 2)[0].strip() == cold.strip()  # the same answer
    assert main(["predict", str(out), "-m", "tiny_cnn", "--threads", "4", "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 thread(s), not 4" in err


def test_a_family_variant_keeps_its_commas(built, capsys) -> None:
    out, wd = built
    variant = "mobilenet_v3:w=0.5,d=0,r=96"
    assert main(["predict", str(out), "-m", variant, "-m", "tiny_cnn", "--no-breakdown", "--workdir", str(wd)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [variant, "tiny_cnn"]


def test_bad_build_input_is_one_line_and_exit_2(built, tmp_path: Path, capsys) -> None:
    _, wd = built
    cases = [
        (["--threads", "1", "--budget", "2m"], "below the minimum"),
        (["--threads", "1", "--budget", "thirty"], "malformed duration"),
        (["--threads", "0", "--budget", "30m"], "--threads '0' must be a whole number in [1, "),
        (["--threads", "1", "--budget", "30m", "--cpus", "4096"], "may not use"),
        (["--threads", "1", "--budget", "30m", "--target", "90"], "--target '90' must be a number in (0, 1]"),
        (["--threads", "1", "--budget", "30m", "--calibrate-on", "resnet"], "at least 2 families"),
    ]
    for args, message in cases:
        rc = main(["predictor", "build", *args, "-o", str(tmp_path / "x.costmodel"),
                   "--workdir", str(tmp_path / "fresh")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, (args, err)
        assert not (tmp_path / "fresh").exists(), args  # nothing written for refused input
    # another thread count than the build already in that folder
    rc = main(["predictor", "build", "--threads", "2", "--budget", "30m", "-o", str(tmp_path / "x.costmodel"),
               "--workdir", str(wd)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "holds a build made with --threads 1" in err
    assert not (tmp_path / "x.costmodel").exists()
    state = json.loads(Workdir(wd).build_state("cpu", "onnxruntime").read_text())
    assert state["identity"]["threads"] == 1


def test_rows_outlive_their_export(built) -> None:
    """Kernel rows stay in the graph cache when the export is dropped, so asking again neither
    exports nor analyses (the build drops the exports it made)."""
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.workflows.graphs import drop_export, hashed_source, network_rows

    _, wd = built
    rules = builtin_rules("onnxruntime")
    key, rows = network_rows("tiny_mlp", wd, rules)
    from costmeter.models.export import onnx_cache_path

    export = onnx_cache_path(hashed_source("tiny_mlp", wd), wd)
    assert export.exists() and drop_export("tiny_mlp", wd) > 0 and not export.exists()
    again_key, again = network_rows("tiny_mlp", wd, rules)
    assert (again_key, again) == (key, rows) and not export.exists()


def test_answers_kept_ahead_are_what_loading_the_file_answers(built, monkeypatch) -> None:
    """Answers kept ahead (as the build keeps its predictor's answers for the zoo's models) are
    what `bench predict` returns, without loading the file. Models whose kernel rows are not
    cached yet are left for later (nothing is exported ahead)."""
    from costmeter.predictors.artifacts import load_predictor
    from costmeter.predictors.workflows import predict
    from costmeter.predictors.workflows.graphs import network_rows

    out, wd = built
    fresh = wd.parent / "ahead"
    rules = predict.predictor_rules(predict.manifest_of(out), fresh)
    network_rows("tiny_mlp", fresh, rules)
    predictor = load_predictor(out)
    manifest = predict.manifest_of(out)
    assert predict.cache_answers(predictor, manifest, ["tiny_mlp", "tiny_cnn"], fresh) == 1
    loaded = predict.answers_of(predictor, {"tiny_mlp": network_rows("tiny_mlp", fresh, rules)[1]})

    def refuse(*_):
        raise AssertionError("the predictor file was loaded")

    monkeypatch.setattr(predict, "_answer", refuse)
    _, answers = predict.predict_models(out, ["tiny_mlp"], fresh)
    assert answers == [loaded["tiny_mlp"]]
