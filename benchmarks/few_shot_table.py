"""The few-shot part of ``benchmarks/predictor_accuracy.py`` (its docstring explains the table):
each device in turn is the new device, the other 20 devices' models are the sources, and K of
its architectures are measured.

Beside each device's rho stands its noise ceiling (``rho-max``, as in the per-device table,
over the few-shot pool). Two counts follow per column: the literal target (mean rho >= 0.975
and no device below 0.92) and the one the noise allows, rho >= min(0.98, rho-max) - 0.01 on
each device.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from accuracy_tables import (
    Precomputed,
    cached_source_predictions,
    duplicate_pairs,
    hardware_of,
    noise_ceiling,
)

from costmeter.models.spaces import get_space
from costmeter.predictors.estimators.evaluate import metrics
from costmeter.predictors.estimators.fewshot import (
    FewShotTransfer,
    informative_rows,
    reference_architectures,
)
from costmeter.predictors.estimators.forest import ModelForest

TARGET_MEAN = 0.975
TARGET_MIN = 0.92


def within_ceiling(rho: float, ceiling: float) -> bool:
    """The target the noise allows: rho >= min(0.98, ceiling) - 0.01 (0.97 where the ceiling
    is unknown)."""
    return bool(rho >= (0.98 if not np.isfinite(ceiling) else min(0.98, ceiling)) - 0.01 - 1e-12)


def target_line(name: str, devices: list[str], rhos: list[float], ceilings: list[float]) -> str:
    """One column's verdict: mean and min rho, the literal target, and the count of devices
    within 0.01 of min(0.98, their ceiling) (with those missed)."""
    below = [d for d, r in zip(devices, rhos) if r < TARGET_MIN]
    missed = [d for d, r, c in zip(devices, rhos, ceilings) if not within_ceiling(r, c)]
    literal = np.mean(rhos) >= TARGET_MEAN and not below
    return (f"{name}: mean {np.mean(rhos):.3f}, min {np.min(rhos):.3f}; literal target (mean >= "
            f"{TARGET_MEAN}, none below {TARGET_MIN}) {'met' if literal else 'missed'}"
            + (f" (below {TARGET_MIN}: {', '.join(below)})" if below else "")
            + f"; rho >= min(0.98, rho-max) - 0.01 on {len(devices) - len(missed)}/{len(devices)}"
            + (f" (missed: {', '.join(missed)})" if missed else ""))


def few_shot(args: Any, space: str, F: Any, archs: list[str], devices: list[str], Y: np.ndarray,
             valid: np.ndarray) -> None:
    """Print the few-shot table: K target points + the other devices' predictors."""
    n = len(archs)
    started = time.perf_counter()
    cache = Path(args.sources_cache) if args.sources_cache else None
    P = cached_source_predictions(cache, space, F, Y, args.source_folds, args.n_jobs, args.source_model)
    logs = np.log(np.maximum(P, 1e-9))
    pool = np.flatnonzero(valid)
    lookup = {a: i for i, a in enumerate(archs)}
    fixed = {k: np.array([lookup[a] for a in reference_architectures(space, k=k, seed=args.seed, pool=archs)])
             for k in args.ks}
    row_ids = np.arange(n)[:, None]
    pairs = duplicate_pairs(space, archs)
    onehot = F[list(get_space(space).onehot_feature_names())].to_numpy()
    print(f"\nFew-shot: K architectures measured on the target + the other devices' {args.source_model} "
          f"models, each fitted on all of its device's traces ({args.source_folds}-fold out-of-fold predictions; "
          f"{time.perf_counter() - started:.0f} s). Spearman rho on the valid archs not measured.\n"
          "fixed: K spread over MACs (the same for every device); chosen: K chosen for the most "
          "information about the target given the sources (informative_rows).\n"
          "rho-max: the device's noise ceiling over the pool (as in the per-device table); own: the "
          "target's own model fitted on all its other traces (a ceiling); blend-all: the non-negative "
          "blend fitted on every architecture (the blend's ceiling).")
    cols = [f"{kind} K={k}" for k in args.ks for kind in ("fixed", "chosen")] + [
        f"hw-out K={args.k}", f"scratch K={args.k}"]
    header = (f"{'target':18s} | {'rho-max':>7s} | {'own':>6s} | {'blend-all':>9s}"
              + "".join(f" | {c:>11s}" for c in cols))
    print(f"{header}\n{'-' * len(header)}")
    results: dict[str, list[float]] = {c: [] for c in ["rho-max", "own", "blend-all", *cols]}
    for j, device in enumerate(devices):
        y = Y[:, j]
        line = {"rho-max": noise_ceiling(y, pairs, onehot, pool, args.seed)[2],
                "own": metrics(y[pool], P[pool, j])["spearman"]}
        lodo = [i for i in range(len(devices)) if i != j]
        blend = FewShotTransfer({devices[i]: Precomputed(P[:, i]) for i in lodo})
        line["blend-all"] = metrics(y[pool], blend.fit(row_ids[pool], y[pool]).predict(row_ids[pool]))["spearman"]
        for k in args.ks:
            chosen = informative_rows(logs[:, lodo], k, candidates=pool)
            for kind, refs in (("fixed", fixed[k]), ("chosen", chosen)):
                evaluate = np.setdiff1d(pool, refs)
                fs = FewShotTransfer({devices[i]: Precomputed(P[:, i]) for i in lodo}).fit(row_ids[refs], y[refs])
                line[f"{kind} K={k}"] = metrics(y[evaluate], fs.predict(row_ids[evaluate]))["spearman"]
            if k == args.k:
                keep = [i for i in lodo if hardware_of(devices[i]) != hardware_of(device)]
                refs = informative_rows(logs[:, keep], k, candidates=pool)
                evaluate = np.setdiff1d(pool, refs)
                fs = FewShotTransfer({devices[i]: Precomputed(P[:, i]) for i in keep}).fit(row_ids[refs], y[refs])
                line[f"hw-out K={k}"] = metrics(y[evaluate], fs.predict(row_ids[evaluate]))["spearman"]
                refs = fixed[k]
                evaluate = np.setdiff1d(pool, refs)
                scratch = ModelForest(n_jobs=args.n_jobs, min_samples_leaf=1).fit(F.iloc[refs], y[refs])
                line[f"scratch K={k}"] = metrics(y[evaluate], scratch.predict(F.iloc[evaluate]))["spearman"]
        for c, v in line.items():
            results[c].append(v)
        print(f"{device:18s} | {line['rho-max']:7.3f} | {line['own']:6.3f} | {line['blend-all']:9.3f}"
              + "".join(f" | {line[c]:11.3f}" for c in cols))
    for label, fn in (("mean", np.mean), ("min", np.min)):
        print(f"{label:18s} | {fn(results['rho-max']):7.3f} | {fn(results['own']):6.3f} | "
              f"{fn(results['blend-all']):9.3f}" + "".join(f" | {fn(results[c]):11.3f}" for c in cols))
    print(f"Targets, leaving one device out (the literal one is set at K={args.k}):")
    for c in [f"chosen K={k}" for k in args.ks] + [f"fixed K={args.k}"]:
        print("  " + target_line(c, devices, results[c], results["rho-max"]))
