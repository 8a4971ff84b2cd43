"""How ``bench predictor build`` spends its time budget (the rule, its constants and where they
come from are in the README's "The learned cost model").

A build has fixed steps -- the kernel prior (exporting and analysing the zoo's and the spaces'
models), the cache curve and the fit -- and two measuring steps whose size the budget sets:
kernel micro-benchmarks (drawn from the prior, then re-sampled around the kernels the forests
get wrong) and calibration networks. :func:`allot` gives each step its seconds; every measuring
step walks a nested, interleaved plan in chunks and stops when its seconds are spent, so a
larger budget measures a superset of what a smaller one measures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

# Estimates (s) of the fixed steps on a 2-vCPU x86 VM, 1 thread, before the build has timed
# them itself; once a step has run, its own time replaces the estimate.
FIXED_ESTIMATE_S: dict[str, float] = {"prior": 240.0, "curve": 30.0, "fit": 90.0}
# First guesses of the measuring rates (s per item), replaced by the build's own rates
SECONDS_PER_KERNEL = 1.2  # one kernel in context: kernel, baselines, cold copies, round-robin
SECONDS_PER_NETWORK = 3.0  # one network: export, worker start, warm-up, 0.5 s of sampling
# The split of the measuring time (see the README for the measurement behind it)
NETWORK_SHARE = 0.25  # calibration networks
ADAPTIVE_SHARE = 0.20  # of the kernel time: re-sampling around kernels the forests get wrong
MIN_NETWORKS_PER_FAMILY = 3
MEASURING = ("kernels", "adaptive", "networks")


@dataclass(frozen=True)
class Allotment:
    """Seconds each step may spend (fixed steps: their estimate or their measured time)."""

    prior: float
    kernels: float
    adaptive: float
    networks: float
    curve: float
    fit: float

    def of(self, step: str) -> float:
        """Seconds of ``step``."""
        return float(getattr(self, step))


def fixed_seconds(spent: Mapping[str, float], done: Mapping[str, bool]) -> dict[str, float]:
    """Seconds of the fixed steps: measured when done, else the larger of the estimate and the
    time already spent on them."""
    return {step: float(spent.get(step, 0.0)) if done.get(step) else
            max(FIXED_ESTIMATE_S[step], float(spent.get(step, 0.0)))
            for step in FIXED_ESTIMATE_S}


def allot(budget_s: float, spent: Mapping[str, float] | None = None,
          done: Mapping[str, bool] | None = None) -> Allotment:
    """The budget split: fixed steps first, then of the measuring time ``NETWORK_SHARE`` to
    networks, the rest to kernels, ``ADAPTIVE_SHARE`` of which to re-sampling."""
    fixed = fixed_seconds(spent or {}, done or {})
    measuring = max(0.0, budget_s - sum(fixed.values()))
    networks = NETWORK_SHARE * measuring
    kernels = measuring - networks
    return Allotment(prior=fixed["prior"], kernels=kernels * (1 - ADAPTIVE_SHARE),
                     adaptive=kernels * ADAPTIVE_SHARE, networks=networks,
                     curve=fixed["curve"], fit=fixed["fit"])


def minimum_budget(kernel_types: int, families: int, fixed_s: float | None = None) -> float:
    """The smallest budget (s, rounded up to a minute) that measures one kernel of every type
    and ``MIN_NETWORKS_PER_FAMILY`` networks of every calibration family, at the first-guess
    rates, after the fixed steps (``fixed_s``; default: their estimates)."""
    kernel_s = kernel_types * SECONDS_PER_KERNEL / (1 - ADAPTIVE_SHARE)
    network_s = families * MIN_NETWORKS_PER_FAMILY * SECONDS_PER_NETWORK
    measuring = max(kernel_s / (1 - NETWORK_SHARE), network_s / NETWORK_SHARE)
    fixed = sum(FIXED_ESTIMATE_S.values()) if fixed_s is None else fixed_s
    return 60.0 * math.ceil((fixed + measuring) / 60.0)


def parse_duration(text: str) -> float:
    """``"30m"``, ``"1h30m"``, ``"90s"``, ``"2h"`` or plain seconds -> seconds; ValueError
    otherwise."""
    import re

    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", value)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"malformed duration {text!r}; write e.g. 30m, 1h30m or 90s")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``, ``95`` -> ``"1m35s"``."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
