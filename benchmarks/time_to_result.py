"""Time to result: the wall time of one ``bench run`` against the measurement inside it.

Runs ``bench run --model mobilenet_v2 --runtime onnxruntime`` (the command a new user types)
as a subprocess, cold (a fresh working folder: nothing exported, nothing cached) and then warm
(the same folder again), and reads from the stored result the measurement's own warm-up plus
sampling time. The difference is what the tool costs on top of measuring: interpreter and
library start, model resolution, export, the worker's start, parity, environment capture,
statistics, the store and the table.

Targets: at most 3 s on top of the measurement warm, 8 s cold.

With ``--source DIR`` (repeatable) the command runs from each source tree in turn (PYTHONPATH),
interleaved round by round, so a before/after comparison sees the same machine load::

    python benchmarks/time_to_result.py --rounds 5 --source /tmp/before --source .

Prints each run, then per source and phase the median (and range) of wall time, measurement
and overhead, and the load average while it ran. The machine's load moves these figures: compare
sources only within one invocation.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = {"cold": 8.0, "warm": 3.0}


@dataclass
class Timing:
    """One ``bench run``: its wall time and the measurement it held (seconds)."""

    source: str
    phase: str
    wall_s: float
    warmup_s: float
    sampling_s: float
    export_s: float | None
    prepare_session_s: float | None

    @property
    def measured_s(self) -> float:
        return self.warmup_s + self.sampling_s

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.measured_s


def bench_command(python: str, workdir: Path, model: str, runtime: str, extra: list[str]) -> list[str]:
    """``bench run`` as a user types it (the console script's entry point, run by ``python``)."""
    return [python, "-m", "costmeter.cli", "run", "--model", model, "--runtime", runtime,
            "--workdir", str(workdir), *extra]


def last_result(source: Path, workdir: Path, python: str) -> dict[str, float | None]:
    """Warm-up, sampling, export and session-preparation seconds of the newest stored result,
    read in a separate interpreter from ``source`` (so the store code matches the writer)."""
    code = (
        "import json, sys\n"
        "from costmeter.results.store import ResultStore\n"
        "store = ResultStore(sys.argv[1])\n"
        "frame = store.query()\n"
        "r = store.get(int(frame['result_id'].max()))\n"
        "m = r.measurement\n"
        "print(json.dumps({'status': r.status.value, 'error': r.error,\n"
        "  'warmup_s': m.warmup_s if m else 0.0, 'sampling_s': m.sampling_s if m else 0.0,\n"
        "  'export_s': r.extra.get('export_s'), 'prepare_session_s': r.extra.get('prepare_session_s')}))\n"
    )
    import json

    env = dict(os.environ, PYTHONPATH=str(source))
    done = subprocess.run([python, "-c", code, f"sqlite:///{workdir / 'results.db'}"], env=env,
                          cwd=workdir.parent, capture_output=True, text=True, check=True)
    data = json.loads(done.stdout)
    if data["status"] != "ok":
        raise RuntimeError(f"the benchmark did not produce a measurement: {data['error']}")
    return data


def run_once(source: Path, workdir: Path, phase: str, args: argparse.Namespace) -> Timing:
    """One timed ``bench run`` from ``source`` in ``workdir``."""
    env = dict(os.environ, PYTHONPATH=str(source), COLUMNS="120")
    command = bench_command(args.python, workdir, args.model, args.runtime, args.bench_args)
    start = time.perf_counter()
    # cwd outside any checkout: `python -m` puts the working directory first on sys.path
    done = subprocess.run(command, env=env, cwd=workdir.parent, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"bench run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    data = last_result(source, workdir, args.python)
    return Timing(str(source), phase, wall, float(data["warmup_s"]), float(data["sampling_s"]),
                  data["export_s"], data["prepare_session_s"])


def describe(values: list[float]) -> str:
    """Median and range, in seconds."""
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", type=Path, default=None,
                        help="source tree to run costmeter from (repeatable; default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3, help="cold+warm pairs per source")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--python", default=sys.executable, help="interpreter with costmeter's dependencies")
    parser.add_argument("bench_args", nargs="*", help="more `bench run` arguments (after --)")
    args = parser.parse_args(argv)
    sources = [s.resolve() for s in (args.source or [REPO])]
    scratch = Path(tempfile.mkdtemp(prefix="time-to-result-"))
    timings: list[Timing] = []
    loads = []
    try:
        for round_index in range(args.rounds):
            order = sources if round_index % 2 == 0 else list(reversed(sources))
            for source in order:
                workdir = scratch / f"r{round_index}-{sources.index(source)}"
                for phase in ("cold", "warm"):
                    timing = run_once(source, workdir, phase, args)
                    loads.append(os.getloadavg()[0])
                    timings.append(timing)
                    print(f"round {round_index + 1} {phase:4s} {source}: wall {timing.wall_s:6.2f} s, "
                          f"measurement {timing.measured_s:5.2f} s (warm-up {timing.warmup_s:.2f} + "
                          f"sampling {timing.sampling_s:.2f}), overhead {timing.overhead_s:5.2f} s; "
                          f"export {timing.export_s or 0:.2f} s, session {timing.prepare_session_s or 0:.2f} s",
                          flush=True)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{args.model} on {args.runtime}, {args.rounds} rounds per source; load average (1 min) "
          f"while running: median {statistics.median(loads):.1f}, range {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")
    for source in sources:
        print(f"\n{source}")
        for phase in ("cold", "warm"):
            chosen = [t for t in timings if t.source == str(source) and t.phase == phase]
            overhead = statistics.median(t.overhead_s for t in chosen)
            verdict = "meets" if overhead <= TARGET_S[phase] else "misses"
            print(f"  {phase}: wall {describe([t.wall_s for t in chosen])}  measurement "
                  f"{describe([t.measured_s for t in chosen])}  overhead {describe([t.overhead_s for t in chosen])}"
                  f"  -> {verdict} the {TARGET_S[phase]:g} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
