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
batches = [1, 2]

[options.fake]
latency_us = "{latency_us}"
jitter = "0.01"

[[models]]
spec = {models}
"""


def write_suite(folder: Path, suite_id: str = "tiny", models: tuple[str, ...] = ("m1", "m2"),
                latency_us: float = 20.0) -> Path:
    """A tiny fake-runtime suite file in ``folder``; its path."""
    path = folder / f"{suite_id}.toml"
    listed = "[" + ", ".join(f'"{m}"' for m in models) + "]"
    path.write_text(TINY_SUITE.format(suite_id=suite_id, models=listed, latency_us=latency_us))
    return path


def bench_env(workdir: Path) -> dict[str, str]:
    """Environment of a `bench` child: this checkout importable, the working folder given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COSTMETER_HOME"] = str(workdir)
    env.pop("COSTMETER_STORE", None)
    return env


def bench_popen(args: list[str], workdir: Path, cwd: Path) -> subprocess.Popen:
    """Start `bench ARGS` as a child process (stdout and stderr captured)."""
    code = "import sys; from costmeter.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=bench_env(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench(args: list[str], workdir: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `bench ARGS` to the end."""
    proc = bench_popen(args, workdir, cwd)
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
