"""Wall time of ``bench predict F.costmodel -m MODEL`` for a kernel-level predictor (issue 18
target: under 1 s warm for a zoo model), as a user runs it: a new process each time.

Three cases, each run ``--repeats`` times (median and range printed):

- cold: the working folder's caches of this model emptied (export, graph analysis, answer);
- new answer: the model's export and kernel rows cached, its answer not (loads the predictor
  file: scikit-learn through skops);
- warm: everything cached (the second question about a model).

    python benchmarks/predict_latency.py F.costmodel --workdir DIR [--model mobilenet_v3_large]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def bench(*args: str) -> float:
    """Seconds of one ``bench`` process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from costmeter.cli import main; sys.exit(main(sys.argv[1:]))",
                    *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("costmodel")
    parser.add_argument("--workdir", required=True, help="its caches are left alone: DIR-latency is used")
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from costmeter.workdir import Workdir

    scratch = Path(args.workdir + "-latency")  # its own folder: the user's caches stay as they were
    shutil.rmtree(scratch, ignore_errors=True)
    copy = Workdir(scratch)
    command = ("predict", args.costmodel, "-m", args.model, "--workdir", str(copy.root))
    rows = {}
    for case in ("cold", "new answer", "warm"):
        times = []
        for _ in range(args.repeats if case != "cold" else 1):
            if case == "cold":
                shutil.rmtree(copy.root / "cache", ignore_errors=True)
            if case == "new answer":
                shutil.rmtree(copy.prediction_cache, ignore_errors=True)
            times.append(bench(*command))
        rows[case] = times
    load = os.getloadavg()
    print(f"bench predict {Path(args.costmodel).name} -m {args.model} (load average {load[0]:.1f} on "
          f"{os.cpu_count()} CPUs):")
    for case, times in rows.items():
        print(f"  {case:<11} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max "
              f"{max(times):.2f}, n={len(times)})")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
