"""False-alarm and detection rates of regression verdicts on simulated nightly histories.

Each simulated key has ``--nights`` nights of history plus tonight (see
``costmeter.reports.simulated_history`` for the noise: AR(1) per-run samples, stalls, a
night-to-night offset with SD drawn per key in 1-2%, per-process levels). Null keys have no
change; step keys are slower by 3%, 7% or 15% tonight only (the first night of the step, which is
what a nightly gate has to catch). Printed, side by side, per method:

- ``two-run, no history``: tonight vs last night, the run-to-run noise assumed
  (``--assumed-noise``), as ``bench report regress`` does for a key without stored history;
- ``two-run, history``: tonight vs last night, the noise measured over the stored nights;
- ``window:N``: tonight vs the distribution of the last N nights (t-test, prediction interval);
- ``asv step detection``: ``asv.step_detect.detect_steps`` + ``detect_regressions`` (threshold
  = ours) on the series of nightly levels (history + tonight); "flagged" means a regression
  whose first slow point is tonight; ``asv anywhere`` counts a regression at any point.

Every key is judged alone (its q-value equals its p-value): a nightly report over many keys
applies Benjamini-Hochberg on top, which can only make flags rarer. Targets (issue 12): at most
1% of null keys flagged; at least 95% of 7% steps detected. Run:

    python benchmarks/regression_power.py [--null-keys 2000 --step-keys 400 --seed 0]

``asv`` is a benchmark-only dependency (``pip install asv`` or ``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np

from costmeter.reports.regression import RegressionSettings
from costmeter.reports.regression_stats import (
    RunLevel,
    compare_runs,
    compare_window,
    decide,
    run_level,
    run_noise,
)
from costmeter.reports.simulated_history import NoiseModel, simulate_key

STEPS = (0.03, 0.07, 0.15)
AFTER = 3  # nights judged from the first night of the step on
METHODS = ("two-run, no history", "two-run, history", "window", "asv step detection",
           "asv anywhere")


def load_asv():
    """asv's step detection module, or exit with a hint when asv is not installed."""
    try:
        from asv import step_detect
    except ImportError:
        sys.exit("regression_power: the asv package is missing; install it with "
                 "`pip install asv` (or `pip install -e .[bench]`) to compare with its step "
                 "detection")
    return step_detect


def verdicts_at(levels: list[RunLevel], t: int, first: int, window: int,
                settings: RegressionSettings, step_detect) -> dict[str, str]:
    """Each method's verdict on night ``t`` of one simulated key, given the nights before it
    (the last ``window`` of them as history). asv sees the whole series up to night ``t`` and
    flags it when a regression's first slow point is a judged night (``first`` to ``t``);
    "asv anywhere" when it reports a regression at any point of the series."""
    tonight, last, history = levels[t], levels[t - 1], levels[max(0, t - window):t]
    rule = {"threshold": settings.threshold, "alpha": settings.alpha}

    def judged(row: dict) -> str:
        return decide(row["ratio"], row["ratio_low"], row["ratio_high"], row["p_value"],
                      **rule)[0]

    assumed = run_noise([], min_history=settings.min_history,
                        assumed_sd=settings.assumed_run_sd)
    measured = run_noise([lv.log_level for lv in history], min_history=settings.min_history,
                         assumed_sd=settings.assumed_run_sd)
    out = {
        "two-run, no history": judged(compare_runs(last, tonight, assumed, settings.confidence)),
        "two-run, history": judged(compare_runs(last, tonight, measured, settings.confidence)),
        "window": judged(compare_window(history, tonight, min_history=settings.min_history,
                                        assumed_sd=settings.assumed_run_sd,
                                        confidence=settings.confidence)),
    }
    series = [lv.level_ms for lv in levels[: t + 1]]
    _, _, jumps = step_detect.detect_regressions(step_detect.detect_steps(series),
                                                 threshold=settings.threshold)
    jumps = jumps or []
    new = any(first <= j[1] <= t for j in jumps)
    out["asv step detection"] = "regressed" if new else "unchanged"
    out["asv anywhere"] = "regressed" if jumps else "unchanged"
    return out


def key_verdicts(rng: np.random.Generator, model: NoiseModel, settings: RegressionSettings, *,
                 nights: int, step: float, step_detect) -> list[dict[str, str]]:
    """Verdicts on the first ``AFTER`` nights of a key whose step (0 for a null key) starts
    after ``nights`` nights of history; the first verdict also carries ``sd``, the SD of the
    key's history levels (log units)."""
    history = simulate_key(rng, model, nights + AFTER, step=step, step_at=nights)
    levels = [run_level(night, settings.n_batches) for night in history]
    out = [verdicts_at(levels, t, nights, nights, settings, step_detect)
           for t in range(nights, nights + AFTER)]
    out[0]["sd"] = float(np.std([lv.log_level for lv in levels[:nights]], ddof=1))
    return out


def one_night_bound(sd: float, nights: int, step: float = 0.07, null_rate: float = 0.01) -> float:
    """Detection probability of the best one-night rule that knows the run-level SD ``sd`` (log
    units) and flags ``null_rate`` of null keys (two-sided), tonight against the mean of
    ``nights`` normal nights: ``Phi(log(1 + step) / (sd sqrt(1 + 1/nights)) - z)``."""
    from scipy import stats

    spread = sd * np.sqrt(1.0 + 1.0 / nights)
    return float(stats.norm.cdf(np.log1p(step) / spread - stats.norm.ppf(1 - null_rate / 2)))


def _share(keys: list[list[dict[str, str]]], method: str, flags: tuple[str, ...],
           nights: int) -> float:
    return float(np.mean([any(v[method] in flags for v in key[:nights]) for key in keys]))


def rates(model: NoiseModel, settings: RegressionSettings, *, nights: int, null_keys: int,
          step_keys: int, seed: int, step_detect) -> dict[int, dict[str, dict[str, float]]]:
    """For 1 and ``AFTER`` nights judged, per method: share of null keys regressed, of null keys
    flagged either way, and of step keys regressed per step size."""
    rng = np.random.default_rng(seed)
    null = [key_verdicts(rng, model, settings, nights=nights, step=0.0, step_detect=step_detect)
            for _ in range(null_keys)]
    stepped = {step: [key_verdicts(rng, model, settings, nights=nights, step=step,
                                   step_detect=step_detect) for _ in range(step_keys)]
               for step in STEPS}
    tables: dict[int, dict[str, dict[str, float]]] = {}  # 0: the history SD summary
    for judged in (1, AFTER):
        table: dict[str, dict[str, float]] = {m: {} for m in METHODS}
        for m in METHODS:
            table[m]["null regressed"] = _share(null, m, ("regressed",), judged)
            table[m]["null flagged"] = _share(null, m, ("regressed", "improved"), judged)
            for step, keys in stepped.items():
                table[m][f"{step:.0%} step"] = _share(keys, m, ("regressed",), judged)
        tables[judged] = table
    tables[0] = {"sd": {"median": float(np.median([key[0]["sd"] for key in null])),
                        "p90": float(np.quantile([key[0]["sd"] for key in null], 0.9))}}
    return tables


def print_table(title: str, table: dict[str, dict[str, float]], window: int) -> None:
    columns = ["null regressed", "null flagged", *[f"{s:.0%} step" for s in STEPS]]
    print(f"\n{title}")
    print(f"{'method':<24}" + "".join(f"{c:>16}" for c in columns))
    for method, row in table.items():
        name = f"window:{window}" if method == "window" else method
        print(f"{name:<24}" + "".join(f"{row[c] * 100:>15.1f}%" for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-keys", type=int, default=2000)
    parser.add_argument("--step-keys", type=int, default=400, help="keys per step size")
    parser.add_argument("--nights", type=int, default=20, help="history nights before tonight")
    parser.add_argument("--samples", type=int, default=300, help="per-run samples per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--assumed-noise", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    step_detect = load_asv()
    import asv

    settings = RegressionSettings(threshold=args.threshold, history_runs=args.nights,
                                  assumed_run_sd=args.assumed_noise)
    base = NoiseModel(samples=args.samples)
    print(f"regression_power: {args.null_keys} null keys, {args.step_keys} keys per step, "
          f"{args.nights} history nights + tonight, {args.samples} samples per process; "
          f"threshold {settings.threshold:.0%}, alpha {settings.alpha}, confidence "
          f"{settings.confidence}, assumed noise {settings.assumed_run_sd:.0%}; "
          f"asv {asv.__version__}; seed {args.seed}")
    print(f"noise: AR(1) phi U{base.phi}, within-run SD {base.within_sd:.0%}, stalls "
          f"{base.stall_share:.1%} x U{base.stall_factor}, process SD {base.process_sd:.1%}")
    bounds = ", ".join(f"SD {sd:.1%}: {one_night_bound(sd, args.nights):.1%}"
                       for sd in (0.01, 0.015, 0.02, 0.025))
    print(f"reference: the best one-night rule that knows a key's run-level SD and flags 1% of "
          f"null keys finds a 7% step on its first night with probability {bounds}")
    scenarios = [(f"{p} process(es) per night, night-to-night SD U[1%, 2%] per key",
                  replace(base, processes=p)) for p in args.processes]
    scenarios += [(f"1 process per night, night-to-night SD {sd:.0%}",
                   replace(base, processes=1, run_sd=(sd, sd))) for sd in (0.01, 0.02)]
    for index, (title, model) in enumerate(scenarios):
        started = time.perf_counter()
        tables = rates(model, settings, nights=args.nights, null_keys=args.null_keys,
                       step_keys=args.step_keys, seed=args.seed + index, step_detect=step_detect)
        seconds = time.perf_counter() - started
        sd = tables[0]["sd"]
        print(f"\n=== {title}  [{seconds:.0f} s]")
        print(f"run-level SD over the history nights of null keys (night offset + within-run "
              f"noise): median {sd['median']:.2%}, 90th percentile {sd['p90']:.2%}")
        print_table("first night of the step (what tonight's gate sees):", tables[1],
                    args.nights)
        print_table(f"any of the first {AFTER} nights (each judged against the nights before "
                    "it; null: any flag in 3 nights):", tables[AFTER], args.nights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
