"""Device-farm overhead: the same suite run locally (``Runner``) and through a local Ray farm.

The suite: 20 small benchmarks (tiny_mlp and tiny_cnn on ONNX Runtime, batches 1-16, 1 or 2
threads) with a short protocol. Exports are warmed up first (both sides then find them cached). The
farm is a one-node local Ray cluster holding the ``cpu`` device (capacity 1), so both sides run
the benchmarks one after another and the difference is what the farm adds: Ray task submission
and placement, the task's start on a Ray worker, validation on the node, the ledger's bookkeeping
and returning the result. The cluster start and the farm's first, cold run (a Ray worker and the
ledger actor starting, exports into the device's folder) are excluded and printed apart; each
side writes to its own SQLite store. Rounds alternate local and farm, so machine load hits both
alike.

Prints per round and as medians: wall time of each side, the ratio farm / local (target <= 1.10),
the per-job overhead (farm - local) / jobs (target <= 50 ms), the gap between jobs on the device
(the end of one benchmark to the start of the next, as the results' timestamps record it: the
per-job scheduling cost, measured apart from the benchmarks' own run-to-run noise) and how long
the first benchmark took to start. On a loaded machine the wall-time figures carry the
benchmarks' own noise (several percent per round): read the gap as the farm's cost per job.

Usage: python benchmarks/farm_overhead.py [--rounds 3] [--jobs 20] [--min-time 0.2]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def suite(n: int, min_time: float, workdir: Path) -> list:
    """``n`` small RunConfigs: models x batches x threads, cycled."""
    from costmeter.harness.config import ProtocolConfig, RunConfig

    protocol = ProtocolConfig(warmup_count=5, warmup_s=0.05, min_count=100, min_time_s=min_time,
                              max_time_s=max(2.0, 4 * min_time), max_rel_ci=0.05)
    grid = itertools.cycle(itertools.product(("tiny_mlp", "tiny_cnn"), (1, 2, 4, 8, 16), (1, 2)))
    return [RunConfig(model=m, device="cpu", runtime="onnxruntime", batch=b, threads=t, protocol=protocol,
                      workdir=str(workdir), check_outputs=False)
            for m, b, t in itertools.islice(grid, n)]


def gaps_s(results: list) -> list[float]:
    """Seconds between one benchmark's end and the next one's start, in start order."""
    spans = sorted((datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.finished_at)) for r in results)
    return [(nxt[0] - prev[1]).total_seconds() for prev, nxt in zip(spans, spans[1:])]


def first_start_s(results: list, t0: datetime) -> float:
    """Seconds from the call to the first benchmark's start."""
    return min((datetime.fromisoformat(r.started_at) - t0).total_seconds() for r in results)


def run_local(configs: list, workdir: Path, db: Path) -> tuple[float, float, list]:
    from costmeter.harness.runner import Runner, validate
    from costmeter.results.store import ResultStore

    with ResultStore(f"sqlite:///{db}") as store:
        t0, wall0 = datetime.now(timezone.utc), time.perf_counter()
        results = Runner(store, workdir).run(validate(configs))
        return time.perf_counter() - wall0, first_start_s(results, t0), results


def run_farm(configs: list, workdir: Path, db: Path) -> tuple[float, float, list]:
    from costmeter.harness.executors.ray_farm import run_on_farm
    from costmeter.results.store import ResultStore

    with ResultStore(f"sqlite:///{db}") as store:
        t0, wall0 = datetime.now(timezone.utc), time.perf_counter()
        results = run_on_farm(configs, "local", store, workdir)
        return time.perf_counter() - wall0, first_start_s(results, t0), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds of sampling per benchmark")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token file

    from costmeter.harness.executors.ray_farm import farm_session
    from costmeter.harness.runner import validate

    with tempfile.TemporaryDirectory(prefix="farm-overhead-") as tmp:
        workdir = Path(tmp)
        configs = suite(args.jobs, args.min_time, workdir)
        print(f"suite: {len(configs)} benchmarks; load average before: {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        run_local(configs[:2], workdir, workdir / "warm.db")  # export tiny_mlp and tiny_cnn once
        validate(configs)
        t0 = time.perf_counter()
        with farm_session("local", ["cpu"]):
            print(f"local Ray cluster started in {time.perf_counter() - t0:.1f} s (excluded)")
            # The first farm run starts a Ray worker and the ledger actor and exports into the
            # device's folder: a once-per-cluster cost, shown apart and excluded from the rounds.
            wall, first, _ = run_farm(configs[:2], workdir, workdir / "warm-farm.db")
            print(f"first farm run (2 benchmarks, cold: worker and ledger start, exports): {wall:.2f} s, first "
                  f"benchmark started after {first:.2f} s (excluded)")
            rows = []
            for i in range(args.rounds):
                order = (("local", run_local), ("farm", run_farm)) if i % 2 == 0 else \
                        (("farm", run_farm), ("local", run_local))
                wall: dict[str, float] = {}
                first: dict[str, float] = {}
                gaps: dict[str, list[float]] = {}
                for name, fn in order:
                    wall[name], first[name], results = fn(configs, workdir, workdir / f"{name}-{i}.db")
                    bad = [r.error for r in results if r.status.value != "ok"]
                    if bad:
                        raise SystemExit(f"{name} round {i}: {len(bad)} benchmarks failed: {bad[0]}")
                    gaps[name] = gaps_s(results)
                per_job = (wall["farm"] - wall["local"]) / len(configs)
                rows.append((wall["local"], wall["farm"], wall["farm"] / wall["local"], per_job,
                             statistics.median(gaps["local"]), statistics.median(gaps["farm"]),
                             first["local"], first["farm"]))
                print(f"round {i}: local {wall['local']:.2f} s  farm {wall['farm']:.2f} s  ratio {rows[-1][2]:.3f}  "
                      f"overhead {per_job * 1e3:+.0f} ms/job  gap between jobs local {rows[-1][4] * 1e3:.0f} ms, "
                      f"farm {rows[-1][5] * 1e3:.0f} ms (median)  first start local {first['local']:.2f} s, "
                      f"farm {first['farm']:.2f} s", flush=True)
        local, farm, ratio, per_job, gap_local, gap_farm, first_local, first_farm = \
            (statistics.median(col) for col in zip(*rows))
        print(f"median over {args.rounds} rounds: local {local:.2f} s  farm {farm:.2f} s  ratio {ratio:.3f} "
              f"(target <= 1.10)  overhead {per_job * 1e3:+.0f} ms/job (target <= 50)")
        print(f"  scheduling cost per job (end of one benchmark to the start of the next, median): local "
              f"{gap_local * 1e3:.0f} ms, farm {gap_farm * 1e3:.0f} ms, difference "
              f"{(gap_farm - gap_local) * 1e3:+.0f} ms; first benchmark started after local {first_local:.2f} s, "
              f"farm {first_farm:.2f} s")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
