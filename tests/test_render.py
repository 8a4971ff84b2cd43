"""The results table: golden outputs at 80, 120 and 200 columns, column choice, grouped notes,
and libraries' messages kept out of the terminal. Set COSTMETER_UPDATE_GOLDEN=1 to rewrite the
golden files after a deliberate change (and read the diff)."""
from __future__ import annotations

import io
import logging
import re
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from costmeter.cli import main
from costmeter.cli.columns import check_column_names, choose_columns
from costmeter.cli.logging_setup import LibraryLog
from costmeter.cli.render import merge_percentile_messages, print_results, row_of
from costmeter.errors import ConfigError
from costmeter.results.schema import (
    BenchKey,
    EnergyInfo,
    EnergyProvenance,
    Measurement,
    MemoryInfo,
    RunResult,
    Status,
    Validity,
)
from costmeter.results.store import ResultStore

GOLDEN = Path(__file__).parent / "fixtures" / "render"
PCT = (50.0, 90.0, 95.0, 99.0)
OFA = "ofa_mbv3:r160|k3e4,k5e6|k3e4,k5e6,k7e3|k5e4,k3e3|k3e6,k3e6|k5e4,k7e6"
ONE_PROCESS = ("one process: its intervals cover this process's sampling noise only, not "
               "process-to-process variation; use --processes 3 or more for intervals that do")


def result(model: str, runtime: str, median_ms: float | None, seed: int = 0, *, validity=Validity.VALID,
           reasons=(), warnings_=(ONE_PROCESS,), energy_j: float | None = None, error: str | None = None,
           n: int = 600) -> RunResult:
    key = BenchKey(model, f"hash-{model}", "cpu", runtime, 1, (1, 3, 224, 224), "float32", None)
    base = dict(key=key, run_id="run-1", started_at="2026-01-01T00:00:00+00:00",
                finished_at="2026-01-01T00:01:00+00:00")
    if median_ms is None:
        return RunResult(status=Status.FAILED, error=error, **base)
    samples = np.random.default_rng(seed).lognormal(np.log(median_ms * 1e6), 0.01, n).astype(np.int64)
    energy = EnergyInfo(reason="no RAPL counters: /sys/class/powercap absent")
    if energy_j is not None:
        energy = EnergyInfo(provenance=EnergyProvenance.COUNTER, energy_j=energy_j * n,
                            energy_per_inference_j=energy_j, window_s=1.0)
    median = float(np.median(samples))
    return RunResult(status=Status.OK, measurement=Measurement([samples.tolist()]),
                     memory=MemoryInfo(peak_rss_bytes=int(212.6 * 2**20)), energy=energy, validity=validity,
                     reasons=list(reasons), warnings=list(warnings_),
                     extra={"throughput_items_per_s": 1e9 / median, "prepare_s": 1.25, "max_abs_diff": 3.5e-6,
                            "protocol": {"percentiles": list(PCT), "confidence": 0.95}}, **base)


def results() -> list[RunResult]:
    return [
        result("mobilenet_v2", "onnxruntime", 12.2, 1),
        result("mobilenet_v2", "torch", 35.8, 2, validity=Validity.INVALID, reasons=[
            "too few effective samples for a p90 confidence interval: 600 samples, serially correlated "
            "(lag-1 r 0.82); raise --min-time or drop p90 from --percentiles",
            "too few effective samples for a p99 confidence interval: 600 samples, serially correlated "
            "(lag-1 r 0.82); raise --min-time or drop p99 from --percentiles",
            "p50 interval is +-13.16% after --max-time 60 s, wider than --max-rel-ci +-1.00%"],
            warnings_=[ONE_PROCESS, "coefficient of variation 187.4% is above --max-cv 15%: longest stall "
                       "64.7 ms (2,280x the median)"]),
        result("resnet18", "onnxruntime", 30.5, 3, energy_j=0.42),
        result(OFA, "onnxruntime", None, error="worker died with SIGSEGV: segmentation fault in the runtime"),
    ]


def render(width: int, **kw) -> str:
    out = io.StringIO()
    print_results(results(), PCT, console=Console(width=width, file=out, color_system=None, highlight=False), **kw)
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_golden_table(width: int) -> None:
    text = render(width)
    path = GOLDEN / f"table_{width}.txt"
    if os.environ.get("COSTMETER_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()
    assert max(len(line) for line in text.splitlines()) <= width


def test_every_line_fits_and_nothing_is_said_twice() -> None:
    for width in (60, 80, 100, 120, 160, 200):
        text = render(width)
        assert max(len(line) for line in text.splitlines()) <= width, width
        assert text.count("one process:") == 1  # shared by every result: once, not per row
        assert text.count("segmentation fault") == 1
        assert text.count("p50 interval is") == 1
        # the two percentile reasons are one line naming both
        assert "a p90, p99 confidence interval" in re.sub(r"\s+", " ", text)


def test_default_columns_then_wide_and_picked() -> None:
    rows = [row_of(r, PCT) for r in results()]
    default = [c.name for c in choose_columns(rows, PCT)]
    assert default == ["model", "runtime", "p50", "p99", "mad", "items", "memory", "energy", "status"]
    wide = [c.name for c in choose_columns(rows, PCT, wide=True)]
    assert {"device", "batch", "threads", "p90", "p95", "samples", "cv", "parity", "prepare"} <= set(wide)
    assert [c.name for c in choose_columns(rows, PCT, names=["status", "p99.0", "model"])] == ["status", "p99", "model"]
    text = render(200, columns=["model", "runtime", "p95"])
    assert "p95 ms [95% CI]" in text and "MAD/med" not in text and "p50" not in text.split("\n")[0]


def test_rows_that_differ_in_batch_get_a_batch_column() -> None:
    rows = [row_of(r, PCT) for r in results()[:2]]
    assert "batch" not in [c.name for c in choose_columns(rows, PCT)]
    rows[1].batch = 8
    assert "batch" in [c.name for c in choose_columns(rows, PCT)]


def test_narrow_terminals_hide_columns_and_say_which() -> None:
    text = render(60)
    assert "hidden to fit 60 columns:" in text and "--wide" in text
    assert "model" in text and "status" in text


def test_unknown_column_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown column 'latency' for --columns; known: model, runtime, .*p50, p90"):
        check_column_names(["model", "latency"], (50.0, 90.0))
    with pytest.raises(ConfigError, match="unknown column 'p75'"):
        check_column_names(["p75"], (50.0, 90.0))


def test_percentile_messages_are_merged_only_when_they_differ_in_the_percentile() -> None:
    merged = merge_percentile_messages(["no interval for p90; drop p90", "no interval for p99; drop p99",
                                        "p50 interval is wide", "p90 is loose: +-6%", "p99 is loose: +-9%"])
    assert merged == ["no interval for p90, p99; drop p90, p99", "p50 interval is wide", "p90, p99 is loose: +-6%, +-9%"]
    too_few = [f"too few samples (22) for a p{q} confidence interval at 95%: need >= {n}; raise --max-time or "
               f"drop p{q} from --percentiles" for q, n in ((90, 36), (95, 72), (99, 368))]
    assert merge_percentile_messages(too_few) == [
        "too few samples (22) for a p90, p95, p99 confidence interval at 95%: need >= 36, 72, 368; raise "
        "--max-time or drop p90, p95, p99 from --percentiles"]
    loose = ["p90 is loose: +-9.3% (78.8 ms to 94.6 ms), more than +-5%",
             "p95 is loose: +-9.2% (86.1 ms to 103 ms), more than +-5%"]
    assert merge_percentile_messages(loose) == loose  # each with its own figures
    assert merge_percentile_messages(["clock went backwards", "clock went backwards twice"]) == [
        "clock went backwards", "clock went backwards twice"]


def test_cli_columns_and_wide_on_stored_results(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultStore(url) as store:
        for r in results():
            store.write(r)
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["results", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "MAD/med" in out and "mobilenet_v2" in out and "2 results not VALID" in out
    assert main(["results", "list", "--store", url, "--columns", "id,model,status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["id", "model", "status"]
    assert main(["results", "show", "2", "--store", url, "--wide"]) == 0
    out = capsys.readouterr().out
    assert "[1] mobilenet_v2/torch@cpu b1 tauto: INVALID" in out and "prepare" in out and "samples" in out
    rc = main(["results", "list", "--store", url, "--columns", "model,speed"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "known: id, run, tag, model" in err


def test_run_refuses_an_unknown_column_before_measuring(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    rc = main(["run", "--model", "tiny_mlp", "--store", url, "--columns", "model,latency"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unknown column 'latency'" in err
    assert not (tmp_path / "r.db").exists()
    rc = main(["run", "--model", "tiny_mlp", "--store", url, "--json", "--wide"])
    assert rc == 2 and "--json" in capsys.readouterr().err


def test_library_messages_go_to_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = LibraryLog()
    log.use_workdir(tmp_path / "wd")
    log.install()
    try:
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        warnings.warn("a deprecation nobody asked about", DeprecationWarning, stacklevel=1)
        logging.getLogger("somelib").info("chatter below WARNING is not kept")
    finally:
        count = log.uninstall()
    captured = capsys.readouterr()
    assert count == 2 and captured.err == "" and captured.out == ""
    text = (tmp_path / "wd" / "logs" / "bench.log").read_text()
    assert "WARNING torchao: Failed to load" in text and "a deprecation nobody asked about" in text
    assert "chatter" not in text


def test_nothing_logged_means_no_file(tmp_path: Path) -> None:
    log = LibraryLog()
    log.use_workdir(tmp_path / "wd")
    log.install()
    assert log.uninstall() == 0
    assert not (tmp_path / "wd" / "logs").exists()


def test_torch_handlers_are_taken_off_so_its_warnings_reach_the_file(tmp_path: Path) -> None:
    """torch installs its own stderr handler when imported; under the CLI its records go to the
    log file instead (a fresh interpreter, so that torch is imported after the log is set up)."""
    code = (
        "import logging, sys\n"
        "from costmeter.cli.logging_setup import LibraryLog\n"
        "log = LibraryLog(); log.use_workdir(sys.argv[1]); log.install()\n"
        "import torch\n"
        "logging.getLogger('torch.utils._pytree').warning('register_constant() on Enum is deprecated')\n"
        "print(log.uninstall())\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wd")], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stdout.strip() == "1" and "deprecated" not in done.stderr
    assert "register_constant() on Enum is deprecated" in (tmp_path / "wd" / "logs" / "bench.log").read_text()


def test_cli_mentions_the_log_once(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.cli import bench

    @bench.command("noisy-test-command", hidden=True)
    def noisy() -> None:
        logging.getLogger("torchao").warning("Failed to load a .so")
        logging.getLogger("torchao").warning("Failed to load another .so")

    monkeypatch.chdir(tmp_path)
    try:
        assert main(["noisy-test-command"]) == 0
    finally:
        bench.commands.pop("noisy-test-command")
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "2 log messages (libraries' output, warnings) written to " \
        ".costmeter/logs/bench.log" in err
    assert "Failed to load" not in err


def test_an_error_stays_one_line_when_libraries_logged(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.cli import bench
    from costmeter.errors import ConfigError

    @bench.command("noisy-failing-test-command", hidden=True)
    def noisy() -> None:
        logging.getLogger("torchao").warning("Failed to load a .so")
        raise ConfigError("bad input; fix it")

    monkeypatch.chdir(tmp_path)
    try:
        assert main(["noisy-failing-test-command"]) == 2
    finally:
        bench.commands.pop("noisy-failing-test-command")
    assert capsys.readouterr().err.strip().splitlines() == ["error: bad input; fix it"]
    assert "Failed to load a .so" in (tmp_path / ".costmeter" / "logs" / "bench.log").read_text()


def test_costmeters_own_warnings_still_reach_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = LibraryLog()
    log.use_workdir(tmp_path / "wd")
    log.install()
    try:
        logging.getLogger("costmeter.runner").warning("2 result(s) wait in the spool")
    finally:
        log.uninstall()
    assert capsys.readouterr().err == "warning: 2 result(s) wait in the spool\n"
    assert "wait in the spool" in (tmp_path / "wd" / "logs" / "bench.log").read_text()
