"""The cheapest path to a new device: accuracy against the number of measured architectures.

Replays ``bench collect --strategy random|active`` on the measured latency tables (HELP data
release, Lee et al., NeurIPS 2021, MIT; 21 devices each; see ``benchmarks/predictor_accuracy.py``):
for each device in turn as the new device, a fixed random 30% of the valid architectures is the
test set and the rest the pool that "measuring" draws from (a table lookup). Curves, each point a
predictor fitted on the architectures measured so far (``--model default``: the space's
``arch.default_regressor``, 32 trees here; ``--model previous``: the earlier default, a ridge on
the one-hot encoding times an unshrunk forest), scored on the test set:

- ``random``: a seeded random order of the pool (nested: the 50 are the first 50 of the 100);
- ``active``: 10 random, then rounds growing by 25% taken where the predictor is least sure
  (largest relative spread of its trees, spread out by farthest-point thinning;
  :func:`~costmeter.predictors.estimators.active.run_collection`);
- ``fs+active``: the first 10 chosen for their information about the target given the other 20
  devices (:func:`~costmeter.predictors.estimators.fewshot.informative_rows`), predictions by
  few-shot transfer from those devices' models (fitted on all their traces, 5-fold out of fold)
  with the device's own model joining the blend (``local``), the next rounds where that
  prediction is least sure.

Per device and point: Spearman rho and the share within ±10% of the measurement. Summary: the
number of measured architectures each strategy needs to reach random's accuracy at 900
(both rho, within 0.005, and ±10%, within 1 point), per device and its median (target: active
<= 300 on the median device).

    python benchmarks/new_device_cost.py [--space nb201|fbnet] [--devices a,b] [--n-jobs 1]
        [--model default|previous] [--sources-cache FILE.npz]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_tables import (  # noqa: E402
    DATA,
    SOURCE_MODELS,
    SPACES,
    Precomputed,
    cached_source_predictions,
    latency_model,
    load,
)

from costmeter.models.spaces import get_space  # noqa: E402
from costmeter.predictors.estimators.active import run_collection  # noqa: E402
from costmeter.predictors.estimators.evaluate import metrics  # noqa: E402
from costmeter.predictors.estimators.fewshot import FewShotTransfer, informative_rows  # noqa: E402

CHECKPOINTS = (10, 25, 50, 100, 200, 300, 400, 900)
STRATEGIES = ("random", "active", "fs+active")


def curves(space: str, F: Any, y: np.ndarray, pool: np.ndarray, test: np.ndarray,
           sources: dict[str, np.ndarray], args: Any) -> dict[str, dict[int, tuple[float, float]]]:
    """strategy -> checkpoint -> (rho, % within ±10%) on ``test`` for one device."""
    names = list(F.columns)
    X = F.assign(row=np.arange(len(F)))
    out: dict[str, dict[int, tuple[float, float]]] = {s: {} for s in STRATEGIES}

    def model() -> Any:
        return latency_model(space, args.model, features=names, n_estimators=32, n_jobs=args.n_jobs)

    def score(label: str) -> Any:
        def on_round(n: int, predictor: Any, _rows: np.ndarray) -> None:
            if n in CHECKPOINTS and predictor is not None:
                m = metrics(y[test], predictor.predict(X.iloc[test]))
                out[label][n] = (m["spearman"], m["within_10_pct"])
        return on_round

    def measure(rows: list[int]) -> np.ndarray:
        return y[np.asarray(rows, dtype=np.int64)]

    def features(rows: list[int]) -> Any:
        return X.iloc[np.asarray(rows, dtype=np.int64)]

    order = np.random.default_rng(args.seed).permutation(pool)
    for n in CHECKPOINTS:
        rows = order[:n]
        est = model().fit(X.iloc[rows], y[rows])
        m = metrics(y[test], est.predict(X.iloc[test]))
        out["random"][n] = (m["spearman"], m["within_10_pct"])
    rows_pool = list(pool)
    run_collection(rows_pool, measure, CHECKPOINTS[-1],
                   fit=lambda rows, v: model().fit(features(rows), v), features=features,
                   strategy="active", seed=args.seed, checkpoints=CHECKPOINTS,
                   on_round=score("active"))
    source_preds = {d: Precomputed(p) for d, p in sources.items()}
    logs = np.log(np.column_stack(list(sources.values())))
    refs = informative_rows(logs, 10, candidates=pool)

    def transfer(rows: list[int], v: np.ndarray) -> Any:
        local = model() if len(rows) >= 2 * args.cv else None
        return FewShotTransfer(source_preds, local=local, cv=args.cv).fit(features(rows), v)

    run_collection(rows_pool, measure, CHECKPOINTS[-1], fit=transfer, features=features,
                   strategy="active", seed=args.seed, references=list(refs),
                   checkpoints=CHECKPOINTS, on_round=score("fs+active"))
    return out


RHO_SLACK, WITHIN_SLACK = 0.005, 1.0


def needed(curve: dict[int, tuple[float, float]], goal: tuple[float, float], slack: bool = True) -> int | None:
    """Fewest checkpoint count whose rho and ±10% both reach ``goal`` (None if none does); with
    ``slack``, within ``RHO_SLACK`` and ``WITHIN_SLACK`` points of it (random's own 900-point
    figure moves by about that much between seeds), else exactly."""
    rho_slack, within_slack = (RHO_SLACK, WITHIN_SLACK) if slack else (1e-9, 1e-9)
    for n in CHECKPOINTS:
        rho, within = curve.get(n, (np.nan, np.nan))
        if rho >= goal[0] - rho_slack and within >= goal[1] - within_slack:
            return n
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None)
    parser.add_argument("--space", choices=SPACES, default="nb201")
    parser.add_argument("--devices", default=None, help="comma-separated subset of target devices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cv", type=int, default=3, help="folds of the local model in fs+active")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--model", choices=SOURCE_MODELS, default="default",
                        help="latency model of every device and curve: the space's default "
                             "(arch.default_regressor) or the previous one, for comparison")
    parser.add_argument("--sources-cache", default=None,
                        help="an .npz file keeping the source models' predictions between runs")
    args = parser.parse_args(argv)
    path = Path(args.path) if args.path else DATA / f"{args.space}_latency.csv.gz"
    started = time.perf_counter()
    archs, _, devices, Y = load(path, args.space)
    F = get_space(args.space).features(archs)
    valid = F["connected"].to_numpy() > 0 if "connected" in F.columns else np.ones(len(F), bool)
    rows = np.flatnonzero(valid)
    shuffled = np.random.default_rng(args.seed + 1).permutation(rows)
    test = np.sort(shuffled[: int(0.3 * rows.size)])
    pool = np.sort(shuffled[int(0.3 * rows.size):])
    cache = Path(args.sources_cache) if args.sources_cache else None
    P = cached_source_predictions(cache, args.space, F, Y, 5, args.n_jobs, args.model)
    targets = args.devices.split(",") if args.devices else devices
    print(f"{args.space}: {len(pool)} pool and {len(test)} test architectures, {len(targets)} target "
          f"devices; source models ready in {time.perf_counter() - started:.0f} s")
    head = "".join(f" | {n:>10d}" for n in CHECKPOINTS)
    print(f"\n{'device':16s} {'strategy':10s}{head}   (rho ±10%)")
    need: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    strict: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for device in targets:
        j = devices.index(device)
        sources = {d: P[:, i] for i, d in enumerate(devices) if i != j}
        t0 = time.perf_counter()
        result = curves(args.space, F, Y[:, j], pool, test, sources, args)
        goal = result["random"][CHECKPOINTS[-1]]
        for strategy in STRATEGIES:
            cells = "".join(f" | {result[strategy][n][0]:.3f} {result[strategy][n][1]:3.0f}"
                            if n in result[strategy] else f" | {'':>10s}" for n in CHECKPOINTS)
            count = needed(result[strategy], goal)
            exact = needed(result[strategy], goal, slack=False)
            need[strategy].append(float(count) if count is not None else np.inf)
            strict[strategy].append(float(exact) if exact is not None else np.inf)
            print(f"{device:16s} {strategy:10s}{cells}   reaches random@900 at "
                  f"{count if count is not None else '>900'} "
                  f"(exactly: {exact if exact is not None else '>900'})", flush=True)
        print(f"{'':16s} ({time.perf_counter() - t0:.0f} s)")
    print("\nArchitectures needed to reach random's accuracy at 900 (rho and ±10% both), median "
          "over devices: " + ", ".join(f"{s} {np.median(v):g}" for s, v in need.items())
          + " (target: active <= 300); without the seed slack: "
          + ", ".join(f"{s} {np.median(v):g}" for s, v in strict.items()))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
