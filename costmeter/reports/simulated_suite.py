"""Simulated nightly histories of a whole suite, with planted regressions, for the subset chooser.

The numbers are synthetic; the structure is what makes a cheap subset possible or not:

- keys are (contestant, item) pairs: every model (item) of the suite runs on every runtime
  (contestant); items belong to families (conv, depthwise, transformer, ...);
- a key's log p50 is ``size(item) + speed(contestant) + affinity(contestant, family) +
  quirk(key) + noise``: runtimes differ by a few percent overall but by tens of percent per
  family, so the overall ranking of runtimes depends on the mix of families a subset holds;
- every night each key gets independent noise (``night_sd``) and every contestant a shared
  offset (``machine_sd``);
- regressions are events: on a night, a (contestant, family) cluster slows down by 8-20% (each
  of its keys with probability ``hit_share``) and is fixed ``fix_after`` nights later. Clusters
  differ in how often they regress (propensities drawn from a gamma distribution with shape
  ``hot_shape``: a few clusters regress often, most rarely), so the past says something about
  the future, as it does in real code bases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

FAMILIES = ("conv", "depthwise", "transformer", "mlp", "detector")
RUNTIMES = ("onnxruntime", "openvino", "torch", "torch_compile", "tvm")


@dataclass(frozen=True)
class SuiteModel:
    """Shape of a simulated suite. Standard deviations are of natural logs (0.01 = 1%).

    ``models_per_family`` items in each of ``families``; ``runtimes`` contestants on one device;
    ``nights`` of history. ``speed_sd``: overall runtime speed differences. ``affinity_sd``:
    runtime x family interaction. ``quirk_sd``: per-key interaction. ``night_sd``: per-key noise
    each night; ``machine_sd``: per-runtime offset each night. ``event_rate``: expected
    regression events per night; ``hot_shape``: gamma shape of cluster propensities (smaller =
    more concentrated); ``hit_share``: share of a cluster's keys an event slows;
    ``slowdown``: (low, high) relative slowdown; ``fix_after``: (low, high) nights until fixed.
    """

    families: tuple[str, ...] = FAMILIES
    models_per_family: int = 6
    runtimes: tuple[str, ...] = RUNTIMES
    nights: int = 90
    speed_sd: float = 0.06
    affinity_sd: float = 0.20
    quirk_sd: float = 0.05
    night_sd: float = 0.015
    machine_sd: float = 0.01
    event_rate: float = 0.3
    hot_shape: float = 0.3
    hit_share: float = 0.8
    slowdown: tuple[float, float] = (0.08, 0.20)
    fix_after: tuple[int, int] = (3, 10)


@dataclass
class SimulatedSuite:
    """A simulated suite's history.

    ``p50_ms``: nights x keys (index ``night-000``..., columns key ids ``runtime|model``).
    ``regressed``: same shape, True on the night a planted regression starts in that key.
    ``keys``: per key id: label, contestant (runtime), item (model), family, cost_s (simulated
    measuring time: proportional to latency, at least one second).
    """

    p50_ms: pd.DataFrame
    regressed: pd.DataFrame
    keys: pd.DataFrame


def simulate_suite(seed: int = 0, model: SuiteModel | None = None) -> SimulatedSuite:
    """A seeded simulated history (see the module doc for the structure)."""
    model = model or SuiteModel()
    rng = np.random.default_rng(seed)
    items = [(f"{family}{i}", family) for family in model.families
             for i in range(model.models_per_family)]
    runtimes = list(model.runtimes)
    sizes = rng.uniform(np.log(0.5), np.log(50.0), len(items))
    speed = rng.normal(0.0, model.speed_sd, len(runtimes))
    affinity = rng.normal(0.0, model.affinity_sd, (len(runtimes), len(model.families)))
    family_index = {f: j for j, f in enumerate(model.families)}
    keys, base = [], []
    for r, runtime in enumerate(runtimes):
        for i, (item, family) in enumerate(items):
            keys.append({"key": f"{runtime}|{item}", "label": f"{item}/{runtime}@cpu b1 t4",
                         "contestant": f"cpu/{runtime}", "item": item, "family": family,
                         "runtime_index": r, "family_index": family_index[family]})
            base.append(sizes[i] + speed[r] + affinity[r, family_index[family]]
                        + rng.normal(0.0, model.quirk_sd))
    info = pd.DataFrame(keys).set_index("key")
    base = np.asarray(base)
    n_nights, n_keys = model.nights, len(info)
    logs = np.tile(base, (n_nights, 1))
    logs += rng.normal(0.0, model.night_sd, (n_nights, n_keys))
    logs += rng.normal(0.0, model.machine_sd, (n_nights, len(runtimes)))[:, info["runtime_index"]]
    regressed = np.zeros((n_nights, n_keys), dtype=bool)
    clusters = [(r, f) for r in range(len(runtimes)) for f in range(len(model.families))]
    propensity = rng.gamma(model.hot_shape, 1.0, len(clusters))
    propensity /= propensity.sum()
    for night in range(1, n_nights):
        for _ in range(rng.poisson(model.event_rate)):
            r, f = clusters[rng.choice(len(clusters), p=propensity)]
            members = np.flatnonzero((info["runtime_index"].to_numpy() == r)
                                     & (info["family_index"].to_numpy() == f))
            hit = members[rng.random(len(members)) < model.hit_share]
            if len(hit) == 0:
                continue
            fixed = min(n_nights, night + int(rng.integers(model.fix_after[0],
                                                           model.fix_after[1] + 1)))
            logs[night:fixed, hit] += np.log1p(rng.uniform(*model.slowdown))
            regressed[night, hit] = True
    nights = [f"night-{n:03d}" for n in range(n_nights)]
    p50 = pd.DataFrame(np.exp(logs), index=nights, columns=info.index)
    info["cost_s"] = np.maximum(1.0, np.exp(base) * 0.5)
    return SimulatedSuite(
        p50_ms=p50,
        regressed=pd.DataFrame(regressed, index=nights, columns=info.index),
        keys=info[["label", "contestant", "item", "family", "cost_s"]],
    )
