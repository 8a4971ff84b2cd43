"""Bad input against every `bench` command: exit 2, exactly one line on stderr, no traceback,
and the store and the files around it exactly as they were.

The cases run in-process with COSTMETER_DEBUG set, so an exception that ``bench`` does not map
to a one-line error escapes and fails the case with its traceback instead of hiding behind the
last-resort "internal error" line.
"""
from __future__ import annotations

import gzip
import sqlite3
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from costmeter.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"
ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"


SUITE = """[suite]
id = "bad-input"
[protocol]
warmup = 0
warmup_time_s = 0
min_count = 1
min_time_s = 0
max_time_s = 0.05
percentiles = [50]
[matrix]
devices = {devices}
runtimes = {runtimes}
{extra}
[[models]]
zoo = ["tiny_mlp"]
"""


@dataclass
class Scene:
    """A store with imported traces and the files the bad cases name ({name} in their argv)."""

    root: Path
    paths: dict[str, str]

    @property
    def store(self) -> Path:
        return self.root / "results.db"


def _dynamic_onnx(path: Path) -> None:
    """An ONNX file whose non-batch dimension is unknown."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    return build_scene(tmp_path_factory.mktemp("bad_input"))


def build_scene(root: Path) -> Scene:
    """Fill ``root``: the store (traces imported), a regular file, malformed files, a dynamic ONNX."""
    with gzip.open(FIXTURE, "rt") as f:
        head = "".join(f.readline() for _ in range(41))
    traces = root / "traces.csv"
    traces.write_text(head)
    store_url = f"sqlite:///{root / 'results.db'}"
    assert main(["traces", "import", str(traces), "--space", "nb201", "--store", store_url]) == 0
    regular = root / "regular.txt"
    regular.write_text("a regular file\n")
    malformed_csv = root / "malformed.csv"
    malformed_csv.write_text('arch,latency_ms\n"unterminated,1\n\x00\x01,,,\n')
    extreme = root / "extreme.csv"
    extreme.write_text(f"arch,latency_ms\n{ARCH},1e300\n")
    no_device = root / "no_device.csv"
    no_device.write_text(f"arch,latency_ms,device\n{ARCH},1,\n")
    not_zip = root / "not_a_zip.costmodel"
    not_zip.write_text("{}")
    manifest = root / "bad_manifest.costmodel"
    with zipfile.ZipFile(manifest, "w") as z:
        z.writestr("manifest.json", '{"format": [1, 2], "payload": {"sha256": 5}}')
        z.writestr("model.skops", b"")
    bad_json = root / "bad_lut.json"
    bad_json.write_text('{"entries": "nope", "space": 3')
    dynamic = root / "dynamic.onnx"
    _dynamic_onnx(dynamic)
    (root / "wd").mkdir()
    suite = root / "suite.toml"
    suite.write_text(SUITE.format(devices='["fake"]', runtimes='["fake"]', extra=""))
    suite_option = root / "suite_option.toml"
    suite_option.write_text(SUITE.format(devices='["cpu"]', runtimes='["onnxruntime"]',
                                         extra='[options.onnxruntime]\nopt_level = "bogus"\n'))
    suite_batch = root / "suite_batch.toml"
    suite_batch.write_text(SUITE.format(devices='["cpu"]', runtimes='["onnxruntime"]', extra="")
                           .replace('zoo = ["tiny_mlp"]', 'zoo = ["resnet18"]\nbatches = [2000000]'))
    bad_toml = root / "bad.toml"
    bad_toml.write_text('[suite\nid = "x"\n')
    paths = {"root": str(root), "traces": str(traces), "regular": str(regular), "csv": str(malformed_csv),
             "extreme": str(extreme), "no_device": str(no_device), "not_zip": str(not_zip), "manifest": str(manifest),
             "bad_json": str(bad_json), "dynamic": str(dynamic), "missing": str(root / "missing"),
             "store": store_url, "suite": str(suite), "suite_option": str(suite_option),
             "suite_batch": str(suite_batch), "bad_toml": str(bad_toml)}
    return Scene(root, paths)


# (argv with {name} placeholders, a fragment the one-line error must contain)
CASES: list[tuple[list[str], str]] = [
    # bench run: lists, numbers, options, models, devices, paths
    (["run", "-m", "tiny_mlp", "--batch", ""], "--batch"),
    (["run", "-m", "tiny_mlp", "--threads", ","], "--threads"),
    (["run", "-m", "tiny_mlp", "--percentiles", ""], "--percentiles"),
    (["run", "-m", "tiny_mlp", "--percentiles", "50,nan"], "--percentiles"),
    (["run", "-m", "tiny_mlp", "-o", "opt_level=bogus"], "disable|basic|extended|all"),
    (["run", "-m", "tiny_mlp", "-o", "nosuch=1"], "opt_level"),
    (["run", "-m", "tiny_mlp", "-o", "inter_op_threads=-3"], "inter_op_threads"),
    (["run", "-m", "tiny_mlp", "-o", "=1"], "NAME=VALUE"),
    (["run", "-m", "tiny_mlp", "-m", "{dynamic}"], "unknown dims"),
    (["run", "-m", "tiny_mlp", "-m", "resnet19"], "resnet18"),
    (["run", "-m", "resnet18", "--batch", "2000000"], "free"),
    (["run", "-m", "tiny_mlp", "--batch", "99999999999999999999999999"], "--batch"),
    (["run", "-m", "tiny_mlp", "--threads", "1000000"], "--threads"),
    (["run", "-m", "tiny_mlp", "--min-time", "1e400"], "--min-time"),
    (["run", "-m", "tiny_mlp", "--max-time", "inf"], "--max-time"),
    (["run", "-m", "tiny_mlp", "--timeout", "-1"], "--timeout"),
    (["run", "-m", "tiny_mlp", "--warmup", "99999999999999999999"], "--warmup"),
    (["run", "-m", "tiny_mlp", "--max-rel-ci", "1"], "--max-rel-ci"),
    (["run", "-m", "tiny_mlp", "--min-time", "5", "--max-time", "1"], "--max-time"),
    (["run", "-m", "tiny_mlp", "--device", ""], "--device"),
    (["run", "-m", "tiny_mlp", "--device", "tpu"], "unknown device"),
    (["run", "-m", "tiny_mlp", "--runtime", " , "], "--runtime"),
    (["run", "-m", "tiny_mlp", "--runtime", "tensorflow"], "unknown runtime"),
    (["run", "-m", "not a module:f"], "package.module:function"),
    (["run", "-m", " , "], "no model"),
    (["run", "-m", "@{missing}"], "model list"),
    (["run", "-m", "{not_zip}"], "not_a_zip.costmodel"),
    (["run", "-m", "tiny_mlp", "--cpus", "7-3"], "--cpus"),
    (["run", "-m", "tiny_mlp", "--workdir", "{regular}/wd"], "is a file"),
    (["run", "--device", "fake", "--runtime", "fake", "-m", "m", "-o", "latency_us=nan"], "latency_us"),
    (["run", "--device", "fake", "--runtime", "fake", "-m", "m", "-o", "fault=bogus"], "segfault"),
    # bench traces import
    (["traces", "import", "{missing}.csv", "--space", "nb201"], "not exist"),
    (["traces", "import", "{csv}", "--space", "nb201"], "malformed.csv"),
    (["traces", "import", "{extreme}", "--space", "nb201", "--device", "d"], "latenc"),
    (["traces", "import", "{extreme}", "--space", "nb201"], "--device"),
    (["traces", "import", "{no_device}", "--space", "nb201"], "row 1"),
    (["traces", "import", "{traces}", "--space", "nosuch"], "nosuch"),
    (["traces", "import", "{traces}", "--space", "nb201", "--batch", "0"], "--batch"),
    (["traces", "import", "{root}", "--space", "nb201"], "directory"),
    # bench predictor fit|eval, bench predict
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", "{regular}/x.costmodel"], "is a file"),
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", "{missing}/x.costmodel"],
     "does not exist"),
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "-o", "/proc/x.costmodel"], "/proc"),
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "--holdout", "nan", "-o", "{root}/x"],
     "--holdout"),
    (["predictor", "fit", "--space", "nb201", "--device", "nosuch", "-o", "{root}/x.costmodel"], "nosuch"),
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "--target", "energy", "-o",
      "{root}/x.costmodel"], "targets they hold: latency (latency_p50_ms)"),
    (["predictor", "fit", "--device", "gold_6240", "--target", "peak_memory", "-o", "{root}/x.costmodel"],
     "hold no peak_memory values"),
    (["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "--target", "power", "-o",
      "{root}/x.costmodel"], "power"),
    (["predictor", "eval", "{manifest}"], "bad_manifest.costmodel"),
    (["predictor", "eval", "{not_zip}"], "not_a_zip.costmodel"),
    (["predictor", "eval", "{missing}.costmodel"], "not exist"),
    (["predictor", "eval", "--space", "nb201", "--device", "gold_6240", "--train", "2"], "--train"),
    (["predictor", "eval", "--space", "nb201", "--device", "gold_6240", "--split", "family"], "--held-out"),
    (["predictor", "eval", "--space", "nb201", "--device", "gold_6240", "--split", "bogus"], "bogus"),
    (["predictor", "eval", "--space", "nb201", "--device", "gold_6240", "-o", "{regular}/p.csv"], "is a file"),
    (["predict", "{manifest}", "-m", ARCH], "bad_manifest.costmodel"),
    (["predict", "{not_zip}", "-m", ARCH], "not_a_zip.costmodel"),
    (["predict", "{missing}", "-m", ARCH], "not exist"),
    (["predict", "{bad_json}", "-m", "fbnet:" + "|".join(["k3_e1"] * 22)], "bad_lut.json"),
    # bench results
    (["results", "show", "0"], "RESULT_ID"),
    (["results", "show", "99999999999999999999999"], "RESULT_ID"),
    (["results", "show", "123456"], "123456"),
    (["results", "list", "--store", "sqlite:///{regular}/x.db"], "is a file"),
    (["results", "list", "--store", "sqlite:///{missing}/x.db"], "does not exist"),
    (["results", "list", "--store", "bogus://x"], "store"),
    (["results", "list", "--store", ""], "--store is empty"),
    (["results", "export", "--format", "xml", "-o", "{root}/x.xml"], "xml"),
    (["results", "export", "--format", "csv", "-o", "{regular}/x.csv"], "is a file"),
    (["results", "export", "--format", "csv", "-o", "{missing}/x.csv"], "does not exist"),
    (["results", "export", "--format", "csv", "-o", "/proc/x.csv"], "/proc"),
    (["results", "export", "--format", "csv", "-o", "{root}"], "is a directory"),
    (["results", "export", "--format", "json", "-o", ""], "--output is empty"),
    # bench report *
    (["report", "pareto", "--x", "bogus"], "bogus"),
    (["report", "pareto", "--ref", "a,b"], "reference point"),
    (["report", "pareto", "--out", "{missing}/front.png"], "does not exist"),
    (["report", "table", "--format", "docx"], "docx"),
    (["report", "table", "--accuracy", "{csv}"], "malformed.csv"),
    (["report", "table", "--out", "{regular}/t.md"], "is a file"),
    (["report", "table", "--run", "bogus:1"], "bogus"),
    (["report", "regress", "--baseline", "bogus:1", "--current", "latest"], "bogus"),
    (["report", "regress", "--baseline", "latest", "--current", "latest", "--threshold", "nan"], "--threshold"),
    (["report", "regress", "--baseline", "latest", "--current", "latest", "--out", "{regular}/r"], "is a file"),
    (["report", "predictor", "--input", "{csv}"], "malformed.csv"),
    (["report", "predictor", "--input", "{traces}", "--band", "inf"], "--band"),
    (["report", "predictor", "--input", "{missing}.csv"], "not exist"),
    (["report", "roofline", "--kernels", "{csv}"], "bench calibrate"),
    (["report", "roofline", "--calibration", "{missing}"], "not exist"),
    (["report", "roofline", "--out", "{missing}/r.png"], "does not exist"),
    (["report", "history", "--out", "{regular}/site"], "is a file"),
    (["report", "history", "--out", "{root}/site", "--baseline", "bogus"], "bogus"),
    (["report", "subset", "--history", "tag:imported", "--budget", "nan"], "--budget"),
    (["report", "subset", "--history", "tag:imported", "--budget", "0.1", "--json", "{missing}/s.json"],
     "does not exist"),
    (["calibrate", "--gemm-size", "100000000"], "--gemm-size"),
    (["calibrate", "--copy-mib", "99999999999"], "--copy-mib"),
    (["calibrate", "--repeats", "0"], "--repeats"),
    (["calibrate", "--dtype", "bogus"], "bogus"),
    (["calibrate", "--device", "tpu"], "tpu"),
    (["calibrate", "--workdir", "{regular}/wd"], "is a file"),
    # bench lut *
    (["lut", "build", "--space", "nosuch"], "nosuch"),
    (["lut", "build", "--space", "nb201", "--resolution", ""], "--resolution"),
    (["lut", "build", "--space", "fbnet", "--resolution", "224"], "resolution 224 is not in the space"),
    (["lut", "build", "--space", "nb201", "--threads", "0"], "--threads"),
    (["lut", "build", "--space", "nb201", "--min-time", "nan"], "--min-time"),
    (["lut", "build", "--space", "nb201", "-o", "{regular}/t.json"], "is a file"),
    (["lut", "build", "--space", "nb201", "--runtime", "bogus"], "bogus"),
    (["lut", "build", "--space", "nb201", "--predicted", "--predictor", "{not_zip}"], "not_a_zip.costmodel"),
    (["lut", "check", "{bad_json}"], "bad_lut.json"),
    (["lut", "check", "{missing}.json"], "not exist"),
    (["lut", "check", "{bad_json}", "--networks", "0"], "--networks"),
    (["lut", "calibrate", "{bad_json}"], "bad_lut.json"),
    (["lut", "calibrate", "{missing}.json"], "not exist"),
    (["lut", "calibrate", "{bad_json}", "--networks", "5"], "--networks"),
    (["lut", "calibrate", "{bad_json}", "--min-time", "0"], "--min-time"),
    # bench kernels *
    (["kernels", "detect", "--pairs", ","], "op pairs"),
    (["kernels", "detect", "--pairs", ""], "op pairs"),
    (["kernels", "detect", "--pairs", "Conv+Nope"], "Nope"),
    (["kernels", "detect", "--runtime", "bogus"], "bogus"),
    (["kernels", "detect", "--repeats", "0"], "--repeats"),
    (["kernels", "show", "-m", "nosuch_model"], "nosuch_model"),
    (["kernels", "show", "-m", "tiny_mlp", "--batch", "0"], "--batch"),
    (["kernels", "sample", "--device", "tpu"], "tpu"),
    (["kernels", "sample", "--min-time", "-1"], "--min-time"),
    (["kernels", "fit", "-o", "{regular}/k.costmodel"], "is a file"),
    (["kernels", "fit", "-o", "{root}/k.costmodel", "--calibrate-on", ","], "--calibrate-on"),
    # bench collect
    (["collect", "--space", "nosuch"], "nosuch"),
    (["collect", "--space", "nb201", "--samples", "0"], "--samples"),
    (["collect", "--space", "nb201", "--device", "tpu"], "tpu"),
    (["collect", "--space", "nb201", "--batch", "0"], "--batch"),
    (["collect", "--space", "nb201", "--runtime", "bogus"], "bogus"),
    (["collect", "--space", "nb201", "--threads", "-2"], "--threads"),
    # bench suite, bench nightly, bench results replay|check
    (["suite", "run", "{missing}.toml"], "not exist"),
    (["suite", "run", "{bad_toml}"], "bad.toml"),
    (["suite", "run", "{suite_option}", "--sha", "abc1234"], "disable|basic|extended|all"),
    (["suite", "run", "{suite_batch}", "--sha", "abc1234"], "free"),
    (["suite", "run", "{suite}", "--farm", "bogus"], "--farm"),
    (["suite", "run", "{suite}", "--workdir", "{regular}/wd"], "is a file"),
    (["suite", "subset", "{suite}", "--history", "tag:x", "--budget", "nan"], "--budget"),
    (["suite", "subset", "{suite}", "--history", "latest", "--budget", "0.1"], "history"),
    (["suite", "subset", "{suite}", "--history", "tag:x", "--budget", "0.1", "--json", "{missing}/s.json"],
     "does not exist"),
    (["nightly", "{suite}", "--baseline", "bogus"], "--baseline"),
    (["nightly", "{suite}", "--out", "{regular}/report"], "is a file"),
    (["nightly", "{suite}", "--threshold", "nan"], "--threshold"),
    (["nightly", "{suite_option}", "--sha", "abc1234", "--out", "{root}/nightly"], "disable|basic|extended|all"),
    (["results", "replay", "--workdir", "{regular}/wd"], "is a file"),
    (["results", "check", "--store", "sqlite:///{missing}/x.db"], "does not exist"),
    # unknown commands and options
    (["nosuch"], "nosuch"),
    (["run", "-m", "tiny_mlp", "--nosuch"], "--nosuch"),
    ([], "missing command"),
    (["report"], "missing command"),
]


def _dump(store: Path) -> list[str]:
    """Every statement that would rebuild the store: schema and rows."""
    conn = sqlite3.connect(store)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime) of every file under ``root`` (SQLite's journal files aside)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal"))}


def _case_id(case: tuple[list[str], str]) -> str:
    return " ".join(case[0])[:70] or "no-args"


@pytest.mark.parametrize("argv,fragment", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv: list[str], fragment: str, scene: Scene,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTMETER_HOME", str(scene.root / "wd"))
    monkeypatch.setenv("COSTMETER_STORE", scene.paths["store"])
    monkeypatch.setenv("COSTMETER_DEBUG", "1")
    args = [a.format(**scene.paths) for a in argv]
    store, files = _dump(scene.store), _files(scene.root)
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stdout: {out[-500:]!r}; stderr: {err[-1500:]!r}"
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert fragment.format(**scene.paths) in lines[0], lines[0]
    assert _dump(scene.store) == store, "the store changed"
    assert _files(scene.root) == files, "files were written or removed"


def test_a_broken_validation_fails_this_test(scene: Scene, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With runtime options no longer checked, a bad option goes into the benchmark key again
    and the case above fails: the table can fail."""
    from costmeter.harness import validation

    monkeypatch.setattr(validation, "check_options", lambda *a, **k: None)
    monkeypatch.setenv("COSTMETER_STORE", scene.paths["store"])
    monkeypatch.setenv("COSTMETER_HOME", str(scene.root / "wd"))
    with pytest.raises(AssertionError):
        test_bad_input_is_one_line_exit_2_and_writes_nothing(
            ["run", "--device", "fake", "--runtime", "fake", "-m", "m", "-o", "nosuch=1", "--min-time", "0",
             "--max-time", "0.05", "--min-count", "1", "--warmup", "0", "--warmup-time", "0", "--percentiles",
             "50", "--store", "sqlite:///{root}/other.db"],
            "nosuch", scene, capsys, monkeypatch)
