"""Calibrating a lookup table on measured whole networks, so that its budgets hold when measured.

A table's sum (blocks timed in isolation, plus one per-run overhead) misses what a whole network
pays and its blocks timed alone do not: weights and activations that the other blocks evicted
from the caches, layout changes between blocks. On ofa_mbv3 (ONNX Runtime, one thread, x86 CPU)
random networks measured 20-40 % slower than their sums, and how much slower moved with the
machine's state between passes. :func:`calibrate_lut` gives a table what kernel-level network
predictors have (:mod:`costmeter.predictors.estimators.calibration` and
:mod:`~costmeter.predictors.estimators.conformal`):

1. ``networks`` architectures of the table's space at its resolutions are drawn, network ``i``
   with seed ``seed + i`` (nested: a larger set holds the smaller one);
2. they are measured through the harness runner (one isolated worker each, as ``bench run``),
   interleaved with one fixed reference network (ref, n1, ref, n2, ..., ref): the spread of the
   reference's medians is the machine's drift during the pass (:class:`Interleaved`);
3. each network's weights and activations (MB) are the sums over its blocks of the network
   terms of the blocks' fused kernel graphs (:func:`~costmeter.predictors.estimators.calibration.network_terms`);
4. a :class:`~costmeter.predictors.estimators.calibration.TrafficCalibration` is fitted on
   (table sum, terms) -> measured median: per-run intercept, share of the sum and costs per MB,
   all within the same bounds as for network predictors (non-negative costs), its terms chosen
   by leave-one-group-out; the groups are :data:`FOLDS` interleaved folds of the draws (network
   ``i`` in group ``i mod FOLDS``), since random networks of one space have no families;
5. split-conformal scores: each network's measured latency against its prediction by the
   calibration fitted without its group (``cv_predicted_``), as plain log residuals (the blocks'
   run-to-run spread says little about a network's error, so no normalisation).

Assumptions of the interval: the networks asked about are exchangeable with the random
calibration draws (a search that selects one end of the space breaks this: on ofa_mbv3 the
networks a budgeted NSGA-II search returned measured about 10% below the calibrated prediction,
while the draws were unbiased), and they run in the machine state of the calibration pass, one
process, one thread setting (the reference network's drift since the pass is stored to show how
far that holds). Coverage is measured by ``examples/nas_search.py`` (share of returned networks
within the budget), not assumed.

The result (:class:`LutCalibration`) is stored in the table's manifest under ``calibration``
(lookup-table format version 2); ``predict``/``satisfies`` of the table then use it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.calibration import BASE_COLUMN, TrafficCalibration
from costmeter.predictors.estimators.conformal import ConformalCalibration, min_rows

FOLDS = 5
SEED = 1000  # first draw's seed; `bench lut check` draws from seed 0
REFERENCE_SEED = 7
DEFAULT_NETWORKS = 30
MIN_NETWORKS = max(10, min_rows(0.9, two_sided=False) + 1)
METHOD = ("split-conformal (log residuals of the calibration networks, each predicted by a "
          "calibration fitted without its group of draws; no spread normalisation)")
MeasureFn = Callable[[Sequence[str]], np.ndarray]  # architectures -> median latency (ms)


# ----------------------------------------------------------------------------- networks
def calibration_archs(space: str, n: int, resolutions: Sequence[int], seed: int = SEED) -> list[str]:
    """``n`` architectures, the ``i``-th drawn with seed ``seed + i`` (nested draws)."""
    from costmeter.models.spaces import lut_blocks

    sampler = lut_blocks(space)
    return [sampler.sample_at(1, resolutions, seed=seed + i)[0] for i in range(n)]


def reference_arch(space: str, resolutions: Sequence[int]) -> str:
    """The fixed reference network of a space: one seeded draw at the middle resolution."""
    from costmeter.models.spaces import lut_blocks

    middle = sorted(int(r) for r in resolutions)[len(resolutions) // 2]
    return lut_blocks(space).sample_at(1, [middle], seed=REFERENCE_SEED)[0]


@dataclass
class Interleaved:
    """Networks measured between passes of a reference network: median and 10th percentile
    (ms, NaN where failed), errors, and the reference's median before, between and after them."""

    archs: list[str]
    measured_ms: np.ndarray
    p10_ms: np.ndarray
    errors: list[str | None]
    reference: str
    reference_ms: np.ndarray

    def drift_pct(self) -> float:
        """Signed drift over the pass (%): the median of the reference's last quarter of passes
        over that of its first quarter, minus one; NaN with fewer than 2 passes."""
        ref = self.reference_ms[np.isfinite(self.reference_ms)]
        if ref.size < 2:
            return float("nan")
        quarter = max(1, ref.size // 4)
        return float((np.median(ref[-quarter:]) / np.median(ref[:quarter]) - 1) * 100)

    def spread_pct(self) -> float:
        """Range of the reference's medians over their median (%): drift plus noise."""
        ref = self.reference_ms[np.isfinite(self.reference_ms)]
        return float(np.ptp(ref) / np.median(ref) * 100) if ref.size >= 2 else float("nan")

    def describe(self) -> str:
        """One line: the reference's median, drift and range over the pass."""
        ref = self.reference_ms[np.isfinite(self.reference_ms)]
        if not ref.size:
            return "reference network: no pass measured"
        return (f"reference network measured {ref.size} times in between: median "
                f"{np.median(ref):.3f} ms, drift {self.drift_pct():+.1f} % (last quarter of its "
                f"passes against the first), range {self.spread_pct():.1f} % of its median")


def measure_interleaved(space: str, archs: Sequence[str], reference: str, device: str = "cpu",
                        runtime: str = "onnxruntime", workdir: Path | str = ".costmeter",
                        threads: int | None = 1, min_time_s: float = 0.5, store: Any = None,
                        tag: str | None = None, measure: MeasureFn | None = None,
                        progress: Any = None) -> Interleaved:
    """Measure ``archs`` in the order ref, a1, ref, a2, ..., ref through the harness runner
    (:func:`~costmeter.predictors.lut.check.measure_networks`); ``measure`` replaces the
    harness (architectures in that order -> median ms), for tests."""
    from costmeter.predictors.lut.check import measure_networks

    order = [reference]
    for arch in archs:
        order += [arch, reference]
    if measure is None:
        median, p10, errors = measure_networks(space, order, device, runtime, workdir, threads,
                                               min_time_s, store, tag=tag, progress=progress)
    else:
        median = np.asarray(measure(order), dtype=np.float64)
        p10, errors = median.copy(), [None if np.isfinite(m) else "failed" for m in median]
    return Interleaved(list(archs), median[1::2], p10[1::2], list(errors[1::2]), reference,
                       median[0::2])


# ----------------------------------------------------------------------------- terms
def block_terms(space: str, resolutions: Sequence[int], device: str, runtime: str,
                workdir: Path | str) -> dict[str, tuple[float, float]]:
    """key -> (weight MB, activation MB) of every block of ``space`` at ``resolutions``, from
    the block's fused kernel graph (exports cached in ``workdir``)."""
    from costmeter.predictors.estimators.calibration import network_terms
    from costmeter.predictors.lut.blocks import space_blocks
    from costmeter.predictors.lut.measure import block_graphs

    graphs, _ = block_graphs(space_blocks(space, resolutions), device, runtime, workdir)
    out = {}
    for key, graph in graphs.items():
        terms = network_terms(graph)
        out[key] = (terms["weight_mb"], terms["activation_mb"])
    return out


def cache_curve(device: str, workdir: Path | str, store: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """This machine's cache curve (MB, us per MB): the one cached in ``workdir`` (written by
    ``bench predictor build`` or an earlier calibration), else measured now and cached."""
    from costmeter.predictors.workflows.graphs import read_json, write_json
    from costmeter.workdir import Workdir

    path = Workdir.of(workdir).cache_curve(device)
    data = read_json(path)
    if not (isinstance(data, dict) and len(data.get("mb") or ()) >= 2):
        from costmeter.harness.probes.cache import measure_cache_curve

        sizes, costs = measure_cache_curve(sink=store)  # each size judged and stored
        data = {"mb": list(sizes), "us_per_mb": list(costs)}
        write_json(path, data)
    return tuple(float(v) for v in data["mb"]), tuple(float(v) for v in data["us_per_mb"])


# ----------------------------------------------------------------------------- the calibration
class LutCalibration:
    """A table's calibration: ``traffic`` (fitted :class:`TrafficCalibration` on the table's
    sums), ``conformal`` (:class:`ConformalCalibration` of its out-of-group log residuals),
    ``terms`` (block key -> (weight MB, activation MB)) and ``info`` (networks, reference and
    drift, dates)."""

    def __init__(self, traffic: TrafficCalibration, conformal: ConformalCalibration,
                 terms: dict[str, tuple[float, float]], info: dict[str, Any]) -> None:
        self.traffic, self.conformal, self.terms, self.info = traffic, conformal, terms, info
        self._dense: dict[tuple[str, tuple[int, ...]], tuple[Any, ...]] = {}

    def network_terms(self, space: str, resolutions: Sequence[int],
                      encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weight MB, activation MB) per encoded architecture: the blocks' terms summed with the
        table's dense gather (the two columns stand where the table keeps mean and variance)."""
        from costmeter.models.spaces import lut_blocks

        cached = (space, tuple(resolutions))
        if cached not in self._dense:
            self._dense[cached] = lut_blocks(space).dense_tables(
                lambda key: self.terms.get(key, (float("nan"), float("nan"))), resolutions, 0.0)
        weight, activation = lut_blocks(space).dense_predict(self._dense[cached], encoded)
        if not (np.isfinite(weight).all() and np.isfinite(activation).all()):
            raise ConfigError("the table's calibration lacks the terms of some blocks; run "
                              "`bench lut calibrate` again")
        return weight, activation

    def adjust(self, sum_ms: np.ndarray, weight_mb: np.ndarray, activation_mb: np.ndarray) -> np.ndarray:
        """Calibrated latency (ms) from table sums (ms, overhead included) and network terms."""
        import pandas as pd

        frame = pd.DataFrame({BASE_COLUMN: sum_ms, "weight_mb": weight_mb,
                              "activation_mb": activation_mb})
        return np.maximum(self.traffic.predict(frame), 1e-9)

    def describe(self) -> str:
        """One line: how many networks, what was kept, out-of-group figures."""
        t = self.traffic
        kept = t.describe().replace("kernel sum", "table sum").replace(
            "leave-one-family-out over", "leave-one-group-out over").replace("families", "groups of draws").replace("out of family", "out of group")
        return (f"calibrated on {self.info.get('networks')} measured networks "
                f"({self.info.get('calibrated_at', '?')}): {kept}; out-of-group bias "
                f"{t.cv_bias_ * 100:+.1f} % (table sum alone: "
                f"{self.info.get('sum_bias_pct', float('nan')):+.1f} %)")

    def state(self) -> dict[str, Any]:
        """JSON-ready: traffic state, conformal state (sorted scores), block terms, info."""
        conformal = {**self.conformal.state(),
                     "scale": "log latency, one scale for every network (no spread normalisation)"}
        return {"traffic": self.traffic.state(), "conformal": conformal,
                "block_terms": {k: [float(w), float(a)] for k, (w, a) in sorted(self.terms.items())},
                "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: Any) -> LutCalibration:
        """The calibration written by :meth:`state`; ConfigError when it is unreadable."""
        try:
            terms = {str(k): (float(v[0]), float(v[1])) for k, v in state["block_terms"].items()}
            traffic, conformal = state["traffic"], state["conformal"]
            info = dict(state.get("info") or {})
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise ConfigError("the lookup table's calibration is unreadable; run `bench lut "
                              "calibrate` again") from None
        return cls(TrafficCalibration.from_state(traffic), ConformalCalibration.from_state(conformal),
                   terms, info)


def fit_calibration(table: Any, archs: Sequence[str], measured_ms: Any,
                    terms: dict[str, tuple[float, float]], curve: tuple[Sequence[float], Sequence[float]],
                    folds: int = FOLDS, info: dict[str, Any] | None = None) -> LutCalibration:
    """Fit the calibration of ``table`` on networks ``archs`` and their measured medians (ms,
    NaN where failed: left out); see the module docstring."""
    from costmeter.models.spaces import get_space

    y = np.asarray(measured_ms, dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < MIN_NETWORKS:
        raise ConfigError(f"only {int(ok.sum())} of {len(y)} calibration networks were measured; "
                          f"at least {MIN_NETWORKS} are needed -- check the runtime with `bench run`")
    kept = [a for a, good in zip(archs, ok) if good]
    encoded = get_space(table.space).to_array(kept)
    base = table.predict(encoded, calibrated=False)[0]
    cal = LutCalibration(TrafficCalibration(curve[0], curve[1]), ConformalCalibration(), terms, {})
    weight, activation = cal.network_terms(table.space, table.resolutions, encoded)
    import pandas as pd

    frame = pd.DataFrame({BASE_COLUMN: base, "weight_mb": weight, "activation_mb": activation})
    groups = np.flatnonzero(ok) % max(2, int(folds))
    cal.traffic.fit(frame, y[ok], groups)
    predicted = np.maximum(cal.traffic.cv_predicted_, 1e-9)
    cal.conformal.fit(np.log(predicted), np.zeros(len(predicted)), y[ok], method=METHOD,
                      data=f"the {len(predicted)} calibration networks, each predicted by the "
                           f"calibration fitted without its group ({max(2, int(folds))} groups)")
    cal.info = {**(info or {}), "networks": int(ok.sum()), "folds": max(2, int(folds)),
                "sum_bias_pct": float(np.median(base / y[ok] - 1) * 100),
                "calibrated_bias_pct": float(np.median(predicted / y[ok] - 1) * 100),
                "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return cal


def calibrate_lut(table: Any, networks: int = DEFAULT_NETWORKS, seed: int = SEED,
                  workdir: Path | str = ".costmeter", min_time_s: float = 0.5, store: Any = None,
                  measure: MeasureFn | None = None,
                  curve: tuple[Sequence[float], Sequence[float]] | None = None,
                  terms: dict[str, tuple[float, float]] | None = None,
                  progress: Any = None) -> tuple[LutCalibration, Interleaved]:
    """Measure ``networks`` drawn networks interleaved with the reference, fit the calibration,
    and set it on ``table`` (saved by the caller with ``table.save``). ``measure``, ``curve``
    and ``terms`` replace the harness, the cache probe and the block exports, for tests."""
    if networks < MIN_NETWORKS:
        raise ConfigError(f"a calibration needs at least {MIN_NETWORKS} networks (a 90% bound "
                          f"needs 9 residuals), got {networks}; use --networks 30")
    archs = calibration_archs(table.space, networks, table.resolutions, seed)
    reference = reference_arch(table.space, table.resolutions)
    table.predict(archs + [reference], calibrated=False)  # every block is in the table
    terms = terms if terms is not None else block_terms(
        table.space, table.resolutions, table.device, table.runtime, workdir)
    curve = curve if curve is not None else cache_curve(table.device, workdir, store)
    run = measure_interleaved(table.space, archs, reference, table.device, table.runtime, workdir,
                              table.manifest.get("threads"), min_time_s, store,
                              tag=f"lut-calibrate:{table.space}", measure=measure, progress=progress)
    info = {"seed": int(seed), "reference": reference,
            "reference_ms": [float(v) for v in run.reference_ms], "drift_pct": run.drift_pct(),
            "reference_median_ms": float(np.nanmedian(run.reference_ms)),
            "min_time_s": float(min_time_s)}
    calibration = fit_calibration(table, archs, run.measured_ms, terms, curve, FOLDS, info)
    table.set_calibration(calibration)
    return calibration, run
