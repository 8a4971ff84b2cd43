"""How long capturing the environment takes: the first call in a process (CPU model, library
versions, git state) and the later ones (load, affinity, frequencies, memory), which every
worker pays once per benchmark. Target: later calls under 50 ms.

    python benchmarks/environment_capture.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    from costmeter.harness.environment import capture

    start = time.perf_counter()
    capture()
    first = time.perf_counter() - start
    later = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        capture()
        later.append(time.perf_counter() - start)
    median = statistics.median(later)
    print(f"first capture {first * 1e3:.1f} ms; later captures median {median * 1e3:.2f} ms "
          f"(max {max(later) * 1e3:.2f} ms) over {args.repeats}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs -> {'meets' if median < 0.05 else 'misses'} the 50 ms target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
