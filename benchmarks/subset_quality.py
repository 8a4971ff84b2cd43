"""How well a cheap nightly subset preserves the full suite, on simulated suite histories.

For each seed, a suite of 5 runtimes x 30 models (5 families) over ``--nights`` nights with
planted regressions (``costmeter.reports.simulated_suite``: a few runtime x family clusters
regress often, most rarely; each regression is fixed some nights later) is cut to ``--budget``
of its keys by ``choose_subset``: chosen on the earlier two thirds of the nights, scored on the
last third. Printed per seed and as means: Kendall tau of the runtimes' ranking against the full
suite's (per held-out night, averaged), the share of held-out alarm nights the subset also
flags, and the same for random subsets of the same budget. Run:

    python benchmarks/subset_quality.py [--seeds 10 --nights 120 --budget 0.1]
"""
from __future__ import annotations

import argparse

import numpy as np

from costmeter.reports.simulated_suite import SuiteModel, simulate_suite
from costmeter.reports.subset import SuiteHistory, choose_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--nights", type=int, default=120)
    parser.add_argument("--event-rate", type=float, default=0.4)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()
    model = SuiteModel(nights=args.nights, event_rate=args.event_rate)
    print(f"{'seed':>4} {'tau':>6} {'rand tau':>8} {'recall':>7} {'rand rec':>8} "
          f"{'alarms':>6} {'keys':>5}")
    rows = []
    for seed in range(args.seeds):
        sim = simulate_suite(seed, model)
        report = choose_subset(SuiteHistory(sim.p50_ms, sim.regressed, sim.keys), args.budget,
                               random_draws=args.draws, seed=seed)
        h, r = report.held_out, report.random
        rows.append((h.tau, r.tau, h.recall, r.recall))
        print(f"{seed:>4} {h.tau:6.3f} {r.tau:8.3f} {h.recall:7.3f} {r.recall:8.3f} "
              f"{h.alarms:6d} {len(report.keys):5d}")
    mean = np.nanmean(np.array(rows, dtype=float), axis=0)
    print(f"mean {mean[0]:6.3f} {mean[1]:8.3f} {mean[2]:7.3f} {mean[3]:8.3f}")
    wins = sum(a > b for a, b, *_ in rows), sum(c > d for _, _, c, d in rows)
    print(f"chosen beats random on tau in {wins[0]}/{len(rows)} seeds, on alarm recall in "
          f"{wins[1]}/{len(rows)}")


if __name__ == "__main__":
    main()
