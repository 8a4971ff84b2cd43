"""Property: whatever arguments and files `bench` is given, it exits 0, 1 or 2 and never prints a
traceback; every refusal is one line on stderr.

Hypothesis draws a command and, for each of its options, a value from a pool of hostile and
plausible values (empty lists, extreme and non-finite numbers, unknown names, paths under a
regular file or in folders that do not exist or cannot be written, generated CSV / JSON / zip /
random-byte files) or free text. The CLI runs in-process (``costmeter.cli.main``) with
COSTMETER_DEBUG set, so an exception that is not mapped to a one-line error escapes and fails
the example with its traceback.

Commands that measure (run, collect, lut check, calibrate) get a short protocol. In the default
run each of their examples also carries one value known to be invalid (so the default run stays
fast while their whole argument handling is exercised); the `slow` variant drops that and lets
valid combinations measure. Commands whose valid runs take minutes whatever their settings
(lut build, kernels detect|sample) always carry one invalid value. Everything is written under a temporary
folder that is also the working directory; absolute paths outside it are only ones that
cannot be written (/proc).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmeter.cli import main

ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"


@dataclass(frozen=True)
class Pool:
    """Values for one kind of option: ``good`` (plausible), ``bad`` (always refused), and
    whether free text may be drawn too (``text``: as is; ``path``: as a name in the temp folder)."""

    good: tuple[str, ...]
    bad: tuple[str, ...]
    free: str | None = "text"


INT = Pool(("0", "1", "2"), ("-1", "0x1", "", "nan", "1e400", "99999999999999999999999", "²", "1.5", " "))
SECONDS = Pool(("0.01", "0"), ("nan", "inf", "-inf", "1e400", "-1", "x", "", "99999999999"))
FRACTION = Pool(("0.1", "0.5"), ("nan", "2", "-0.1", "", "x", "inf"))
FLOAT = Pool(("0.5", "1"), ("nan", "inf", "-inf", "1e400", "x", ""))
LIST = Pool(("1", "1,2"), ("", ",", "1,,2", "x", "0", "-1", "99999999999999999999999999", "²", "1;2"))
DEVICE = Pool(("cpu", "fake"), ("tpu", "", ",", "cuda:x", "ssh://", "adb://", "cpu,tpu"), None)
RUNTIME = Pool(("onnxruntime", "fake", "torch"), ("bogus", "", ",", "onnxruntime,bogus"), None)
MODEL = Pool(("tiny_mlp", "m", ARCH, f"nb201:{ARCH}"),
             ("resnet19", "", ",", "{dynamic}", "{regular}", "{missing}.onnx", "@{missing}", "nb201:garbage",
              "resnet:w=x,d=1,r=1", "no_such_pkg_q:f", "json:loads", "not a module:f", "{gen}.onnx"), None)
OPTION = Pool(("opt_level=basic", "latency_us=50"),
              ("opt_level=bogus", "nosuch=1", "=", "x", "inter_op_threads=-1", "latency_us=nan", "fault=bogus"))
SPACE = Pool(("nb201",), ("nosuch", "", "NB201", ":"), None)
SELECTOR = Pool(("latest", "tag:imported", "latest~1"), ("bogus", "run:", "date:x", "latest~x", "sha:", ""))
IN = Pool(("{traces}", "{gen}", "{gen}.csv", "{gen}.csv", "{gen}.json", "{gen}.costmodel", "{gen}.costmodel",
           "{csv}", "{not_zip}", "{manifest}", "{bad_json}", "{extreme}", "{no_device}"),
          ("{missing}", "{root}", "{regular}/x"), "path")
SUITE_FILE = Pool(("{suite}", "{suite_option}", "{bad_toml}", "{gen}.toml", "{gen}.toml", "{gen}.toml"),
                  ("{missing}.toml", "{root}", "{regular}/x.toml"), "path")
SHA = Pool(("abc1234", "0123456789abcdef"), ("xyz", "", "abc", "g" * 7))
FARM = Pool(("local",), ("bogus", "", "ray://", "ray:/x"), None)
NIGHTLY_BASELINE = Pool(("last-good", "window:2"), ("bogus", "window:1", "window:x", "", "window:-2"), None)
OUT = Pool(("{root}/out.csv", "{root}/out.json", "{root}/out.png"), ("{regular}/x", "{missing}/x", "/proc/x", ""),
           "path")
DIR = Pool(("{root}/outdir",), ("{regular}/d", "{missing}/d", "/proc/d", ""), "path")
STORE = Pool(("{store}",), ("sqlite:///{regular}/x.db", "bogus://", "", "sqlite:////proc/x/y.db"), None)
CPUS = Pool(("0",), ("7-3", "x", "", "0-99999999", "-", "1,"), None)
PAIRS = Pool(("Conv+Relu",), (",", "", "Conv+", "+", "Conv+Nope"))
TEXT = Pool(("a", "imported", "gold_6240"), ())
FLAG = Pool(("",), ())


def choice(*good: str) -> Pool:
    return Pool(good, ("bogus", ""), None)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    options: dict[str, Pool] = field(default_factory=dict)
    arguments: tuple[Pool, ...] = ()
    measures: bool = False  # poisoned in the default run
    budget: tuple[str, ...] = ()  # appended: a short protocol for valid runs
    always_poisoned: bool = False  # a valid run takes minutes: poisoned in every run


SELECTION = {"--device": TEXT, "--runtime": TEXT, "--run": SELECTOR, "--accuracy": IN, "--no-published": FLAG,
             "--store": STORE}
COMMANDS: tuple[Command, ...] = (
    Command(("run",), {"-d": DEVICE, "-r": RUNTIME, "-m": MODEL, "-b": LIST, "-t": LIST, "-o": OPTION,
                       "--cpus": CPUS, "--tag": TEXT, "--json": FLAG, "--processes": INT, "--store": STORE,
                       "--workdir": DIR, "--percentiles": Pool(("50",), ("", "nan", "0", "100", "x", "50,,")),
                       "--max-cv": FLOAT, "--max-rel-ci": FRACTION, "--no-parity": FLAG},
            measures=True, budget=("--min-time", "0", "--max-time", "0.05", "--min-count", "1", "--warmup", "0",
                                   "--warmup-time", "0", "--timeout", "60")),
    Command(("traces", "import"), {"--space": SPACE, "--device": TEXT, "--runtime": TEXT, "--batch": INT,
                                   "--tag": TEXT, "--store": STORE}, (IN,)),
    Command(("predictor", "fit"), {"--space": SPACE, "--device": TEXT, "--runtime": TEXT, "--holdout": FRACTION,
                                   "--target": choice("latency", "peak_memory", "energy"),
                                   "--seed": INT, "-o": OUT, "--store": STORE}),
    Command(("predictor", "eval"), {"--space": SPACE, "--device": TEXT, "--split": choice("random", "family"),
                                    "--train": FRACTION, "--held-out": TEXT, "--seed": INT, "-o": OUT,
                                    "--store": STORE}, (IN,)),
    Command(("predict",), {"-m": MODEL, "--no-breakdown": FLAG, "--workdir": DIR}, (IN,)),
    Command(("results", "list"), {"--run-id": TEXT, "--tag": TEXT, "--model-id": TEXT, "--runs": FLAG,
                                  "--store": STORE}),
    Command(("results", "show"), {"--samples": FLAG, "--store": STORE}, (INT,)),
    Command(("results", "export"), {"--format": choice("csv", "json", "parquet"), "-o": OUT, "--tag": TEXT,
                                    "--store": STORE}),
    Command(("report", "pareto"), {"--x": choice("latency_p50", "params"), "--y": choice("top1", "macs"),
                                   "--x-goal": choice("min", "max"), "--ref": Pool(("1,1",), ("a,b", "", "1")),
                                   "--out": OUT, **SELECTION}),
    Command(("report", "table"), {"--format": choice("md", "html", "csv", "tex"), "--out": OUT, **SELECTION}),
    Command(("report", "regress"), {"--baseline": SELECTOR, "--current": SELECTOR, "--threshold": FRACTION,
                                    "--alpha": FRACTION, "--min-samples": INT, "--history-runs": INT,
                                    "--assumed-noise": FRACTION, "--no-history": FLAG, "--out": DIR,
                                    "--store": STORE}),
    Command(("report", "predictor"), {"--input": IN, "--band": FRACTION, "--out": DIR,
                                      "--image-format": choice("png", "svg")}),
    Command(("report", "roofline"), {"--device": TEXT, "--run": SELECTOR, "--calibration": IN, "--kernels": IN,
                                     "--out": OUT, "--store": STORE}),
    Command(("report", "history"), {"--out": DIR, "--baseline": SELECTOR, "--current": SELECTOR, "--tag": TEXT,
                                    "--threshold": FRACTION, "--store": STORE}),
    Command(("report", "subset"), {"--history": SELECTOR, "--budget": FRACTION, "--by": choice("keys", "time"),
                                   "--rank-by": TEXT, "--held-out": FRACTION, "--json": OUT, "--store": STORE}),
    Command(("calibrate",), {"--device": DEVICE, "--backend": choice("numpy"), "--gemm-size": Pool(("16", "64"),
                             INT.bad), "--copy-mib": Pool(("1",), INT.bad), "--repeats": Pool(("1",), INT.bad),
                             "--dtype": choice("float32", "float64"), "--threads": INT, "--max-time": SECONDS,
                             "--store": STORE, "--workdir": DIR},
            measures=True, budget=("--max-time", "0.2")),
    Command(("lut", "build"), {"--space": SPACE, "--device": DEVICE, "--runtime": RUNTIME, "--resolution": LIST,
                               "--predicted": FLAG, "--predictor": IN, "--threads": INT, "--min-time": SECONDS,
                               "--interleave": INT, "-o": OUT, "--store": STORE, "--workdir": DIR}, measures=True,
            always_poisoned=True),
    Command(("lut", "check"), {"--networks": INT, "--predictor": IN, "--device": TEXT, "--seed": INT,
                               "--store": STORE}, (IN,), measures=True,
            budget=("--min-time", "0.01", "--networks", "2")),
    Command(("kernels", "detect"), {"--device": DEVICE, "--runtime": RUNTIME, "--pairs": PAIRS, "--threads": INT,
                                    "--repeats": INT, "--min-time": SECONDS, "--workdir": DIR}, measures=True,
            always_poisoned=True),
    Command(("kernels", "show"), {"-m": MODEL, "--device": DEVICE, "--runtime": RUNTIME, "--batch": INT,
                                  "--workdir": DIR}),
    Command(("kernels", "sample"), {"--device": DEVICE, "--runtime": RUNTIME, "--threads": INT,
                                    "--min-time": SECONDS, "--space-samples": INT, "--adaptive-rounds": INT,
                                    "--seed": INT, "--store": STORE, "--workdir": DIR}, measures=True,
            always_poisoned=True),
    Command(("kernels", "fit"), {"--device": DEVICE, "--runtime": RUNTIME, "-o": OUT, "--cold": FLAG,
                                 "--calibrate-on": TEXT, "--store": STORE, "--workdir": DIR}),
    Command(("suite", "run"), {"--sha": SHA, "--tag": TEXT, "--resume": FLAG, "--farm": FARM, "--quiet": FLAG,
                               "--store": STORE, "--workdir": DIR}, (SUITE_FILE,), measures=True),
    Command(("suite", "subset"), {"--history": SELECTOR, "--budget": FRACTION, "--by": choice("keys", "time"),
                                  "--rank-by": TEXT, "--json": OUT, "--store": STORE}, (SUITE_FILE,)),
    Command(("nightly",), {"--sha": SHA, "--baseline": NIGHTLY_BASELINE, "--out": DIR, "--threshold": FRACTION,
                           "--alpha": FRACTION, "--quiet": FLAG, "--farm": FARM, "--store": STORE},
            (SUITE_FILE,), measures=True),
    Command(("results", "replay"), {"--store": STORE, "--workdir": DIR}),
    Command(("results", "check"), {"--store": STORE}),
    Command(("collect",), {"--space": SPACE, "--samples": INT, "--device": DEVICE, "--runtime": RUNTIME,
                           "--threads": INT, "--batch": INT, "--seed": INT, "--min-results": INT,
                           "--store": STORE, "--workdir": DIR}, measures=True,
            budget=("--min-time", "0.01", "--samples", "2")),
)

# --- generated files -----------------------------------------------------------------------------
_CELLS = (ARCH, "1e300", "-0", "nan", "", "1e-320", "9223372036854775807", "1", '"', "x", "inf", "-5", "0.3")
_HEADERS = ("arch", "latency_ms", "gold_6240_ms", "device", "model", "onnx", "index", "")
_KEYS = ("format", "payload", "entries", "space", "device", "runtime", "kind", "sha256", "version", "features",
         "blocks", "schema_version")

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-2**70, 2**70) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4),
                                                                inner, max_size=4),
    max_leaves=12)


@st.composite
def csv_text(draw: Any) -> str:
    header = draw(st.lists(st.sampled_from(_HEADERS), min_size=1, max_size=4))
    rows = draw(st.lists(st.lists(st.sampled_from(_CELLS), min_size=len(header), max_size=len(header)),
                         max_size=4))
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def _zip(manifest: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("manifest.json", manifest)
        z.writestr("model.skops", payload)
    return buffer.getvalue()


_TOML_KEYS = {
    "suite": ("id", "tag", "timeout_s", "processes", "python_path", "repository", "parity", "nosuch"),
    "protocol": ("warmup", "warmup_time_s", "min_count", "min_time_s", "max_time_s", "percentiles", "max_rel_ci"),
    "matrix": ("devices", "runtimes", "batches", "threads"),
    "options.onnxruntime": ("opt_level", "inter_op_threads", "nosuch"),
    "options.fake": ("latency_us", "fault"),
    "store": ("retry_window_s", "busy_timeout_s"),
    "[models]": ("zoo", "onnx", "space", "samples", "seed", "python", "runtimes", "batches"),
}
_TOML_STRINGS = ("tiny_mlp", "fake", "cpu", "onnxruntime", "nb201", "bogus", "", "x:y", "json:loads", "all",
                 "0", "raise", "..", "tpu")
toml_scalar = st.one_of(st.integers(-3, 3), st.sampled_from([2**63, -(2**63) - 1, 10**30]),
                        st.sampled_from(["0.05", "0.0", "-1.0", "inf", "nan", "1e308"]).map(float),
                        st.sampled_from(_TOML_STRINGS), st.booleans())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


@st.composite
def toml_text(draw: Any) -> str:
    """A suite file: known sections and keys with plausible and hostile values."""
    lines = []
    for section in draw(st.lists(st.sampled_from(sorted(_TOML_KEYS)), min_size=1, max_size=5)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(_TOML_KEYS[section]), max_size=4, unique=True)):
            value = draw(toml_scalar | st.lists(toml_scalar, max_size=3))
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


file_bytes = st.one_of(
    st.binary(max_size=200),
    toml_text().map(str.encode),
    toml_text().map(str.encode),
    csv_text().map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(_zip, json_values.map(json.dumps), st.binary(max_size=64)),
)

# --- arguments -----------------------------------------------------------------------------------
free_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


def _value(pool: Pool, poison: bool) -> st.SearchStrategy[str]:
    if poison:
        return st.sampled_from(pool.bad)
    fixed = st.sampled_from(pool.good + pool.bad)
    if pool.free == "text":
        return st.one_of(fixed, fixed, fixed, free_text)
    if pool.free == "path":  # a name in the temporary folder, never an absolute path elsewhere
        return st.one_of(fixed, fixed, fixed, free_text.map(lambda t: "{root}/" + t.replace("/", "_")))
    return fixed


@st.composite
def invocation(draw: Any, poison_measuring: bool) -> list[str]:
    command = draw(st.sampled_from(COMMANDS))
    names = draw(st.lists(st.sampled_from(sorted(command.options)), max_size=5, unique=True)) \
        if command.options else []
    target = None
    if command.always_poisoned or (poison_measuring and command.measures):
        target = draw(st.sampled_from(sorted(n for n, p in command.options.items() if p.bad)))
        names = [*dict.fromkeys([*names, target])]
    argv = list(command.words)
    for pool in command.arguments:
        if draw(st.booleans()) or pool is not INT:
            argv.append(draw(_value(pool, False)))
    for name in names:
        pool = command.options[name]
        if pool is FLAG:
            argv.append(name)
            continue
        argv += [name, draw(_value(pool, name == target))]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--nosuch", "-Z", "--", "--help"])))
    return [*argv, *command.budget]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The scene of the bad-input table (store with traces, a regular file, malformed files)."""
    from test_bad_input import build_scene

    return dict(build_scene(tmp_path_factory.mktemp("fuzz")).paths)


def _check(argv: list[str], content: bytes, paths: dict[str, str], monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture) -> None:
    root = Path(paths["root"])
    gen = root / "gen"
    for suffix in ("", ".csv", ".json", ".costmodel", ".onnx", ".toml"):
        Path(f"{gen}{suffix}").write_bytes(content)
    args = [_fill(a, {**paths, "gen": str(gen)}) for a in argv]
    monkeypatch.chdir(root)
    monkeypatch.setenv("COSTMETER_HOME", str(root / "wd"))
    monkeypatch.setenv("COSTMETER_STORE", paths["store"])
    monkeypatch.setenv("COSTMETER_DEBUG", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a valid --farm local writes no token under $HOME
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc in (0, 1, 2), (args, rc, err)
    assert "Traceback" not in err, (args, err)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, (args, err)


def _fill(text: str, paths: dict[str, str]) -> str:
    """``{root}/x`` -> the scene's root folder + ``/x`` (free text is never format()ted)."""
    for name, value in paths.items():
        text = text.replace("{" + name + "}", value)
    return text


FAST = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@FAST
@given(argv=invocation(poison_measuring=True), content=file_bytes)
def test_hostile_arguments_never_traceback(argv: list[str], content: bytes, folder: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _check(argv, content, folder, monkeypatch, capsys)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(argv=invocation(poison_measuring=False), content=file_bytes)
def test_hostile_and_valid_arguments_never_traceback(argv: list[str], content: bytes, folder: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    _check(argv, content, folder, monkeypatch, capsys)


def test_the_property_can_fail(folder: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    """An unmapped exception in a command is reported, not swallowed: the check fails on it."""
    from costmeter.cli import results_cmd

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(results_cmd, "open_store", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _check(["results", "list"], b"", folder, monkeypatch, capsys)
    monkeypatch.delenv("COSTMETER_DEBUG")
    assert main(["results", "list"]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
