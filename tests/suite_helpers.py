"""Helpers of the suite, spool and fault tests: a tiny fake-runtime suite, `bench` as a child
process, and the processes a run left behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import costmeter

ROOT = Path(costmeter.__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"

# 2 models x 2 batches on the fake runtime: each job is one short worker process.
TINY_SUITE = """\
[suite]
id = "{suite_id}"
tag = "nightly"
timeout_s = 60
{suite_extra}
[protocol]
warmup = 1
warmup_time_s = 0
min_count = 5
min_time_s = 0.01
max_time_s = 0.3
percentiles = [50]

[matrix]
devices = ["fake"]
runtimes = ["fake"]
batches = {batches}

[options.fake]
latency_us = "{latency_us}"
jitter = "0.01"

[[models]]
spec = {models}
"""


def write_suite(folder: Path, suite_id: str = "tiny", models: tuple[str, ...] = ("m1", "m2"),
                latency_us: float = 20.0, batches: tuple[int, ...] = (1, 2), extra: str = "") -> Path:
    """A tiny fake-runtime suite file in ``folder`` (``extra``: more lines of its [suite]); its path."""
    path = folder / f"{suite_id}.toml"
    listed = "[" + ", ".join(f'"{m}"' for m in models) + "]"
    path.write_text(TINY_SUITE.format(suite_id=suite_id, models=listed, latency_us=latency_us,
                                      batches=list(batches), suite_extra=extra))
    return path


def bench_env(workdir: Path, pythonpath: tuple[str, ...] = ()) -> dict[str, str]:
    """Environment of a `bench` child: this checkout (and ``pythonpath``) importable, the
    working folder given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COSTMETER_HOME"] = str(workdir)
    env.pop("COSTMETER_STORE", None)
    return env


def bench_popen(args: list[str], workdir: Path, cwd: Path, pythonpath: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start `bench ARGS` as a child process (stdout and stderr captured)."""
    code = "import sys; from costmeter.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=bench_env(workdir, pythonpath),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench(args: list[str], workdir: Path, cwd: Path, timeout: float = 300,
          pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `bench ARGS` to the end."""
    proc = bench_popen(args, workdir, cwd, pythonpath)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def marked_processes(workdir: Path) -> list[int]:
    """Live processes started for runs under ``workdir`` (their environment names one of its
    run folders): what would be orphans once every run has ended."""
    needle = f"COSTMETER_RUN_DIR={workdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def plant_nights(db: Path, suite_path: Path, workdir: Path,
                 nights: list[tuple[str, float, str]], start: str | None = None,
                 step_s: float = 86400.0) -> list[str]:
    """Store past nights of a suite as if `bench nightly` had run them: for each (git SHA,
    latency level in us, gate) one complete suite run, ``step_s`` apart from ``start`` (default:
    so that the last one is one step ago), every job a
    VALID result of 200 samples at that level (1% noise). Returns their run ids."""
    from datetime import datetime, timedelta, timezone

    import numpy as np

    from costmeter.harness.config import SuiteConfig
    from costmeter.harness.runner import make_key, validate
    from costmeter.results import journal
    from costmeter.results.schema import Measurement, RunResult, Status, Validity
    from costmeter.results.store import ResultStore

    suite = SuiteConfig.from_toml(suite_path)
    jobs = suite.expand(workdir)
    keys = [make_key(p) for p in validate([j.config for j in jobs])]
    rng = np.random.default_rng(0)
    run_ids = []
    with ResultStore(f"sqlite:///{db}") as store:
        for night, (sha, level_us, gate) in enumerate(nights):
            first = datetime.fromisoformat(start) if start else \
                datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=step_s * len(nights))
            moment = first + timedelta(seconds=step_s * night)
            run_id = f"planted-{night:02d}"
            run = journal.SuiteRun(run_id, suite.suite_id, "nightly", sha, suite.sha256,
                                   journal.RUNNING, None, len(jobs), moment, None)
            with store.transaction() as conn:
                journal.plan_run(conn, run, [(j.key, j.label) for j in jobs])
            level = level_us * 1e3 * rng.normal(1.0, 0.01)
            for job, key in zip(jobs, keys):
                samples = (level * rng.normal(1.0, 0.01, 200)).astype(int).tolist()
                stamp = moment.isoformat() + "+00:00"
                result = RunResult(key=key, status=Status.OK, run_id=run_id, started_at=stamp,
                                   finished_at=stamp, measurement=Measurement(samples_ns=[samples]),
                                   validity=Validity.VALID, tag="nightly",
                                   environment={"git_sha": sha},
                                   extra={"suite_id": suite.suite_id, "job_key": job.key})
                store.write_once(result, f"{run_id}-{job.key}", job=journal.JobRef(run_id, job.key))
            with store.transaction() as conn:
                journal.finish_run(conn, run_id)
                journal.set_gate(conn, run_id, gate, {"planted": True})
            run_ids.append(run_id)
    return run_ids
