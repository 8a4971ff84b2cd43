"""Fitting a network predictor from a working folder: kernel samples on disk, calibration
networks in the store, this machine's cache curve (what ``bench kernels fit`` runs)."""
from __future__ import annotations

from typing import Any

import numpy as np

from costmeter.errors import ConfigError
from costmeter.predictors.estimators.calibration import TrafficCalibration
from costmeter.predictors.estimators.network import NetworkPredictor


def fit_network_predictor(workdir: Any, device: str = "cpu", runtime: str = "onnxruntime",
                          cold: bool = False, calibrate_on: tuple[str, ...] | list[str] = (),
                          store: Any = None) -> tuple[NetworkPredictor, dict[str, Any]]:
    """A :class:`NetworkPredictor` from the kernel samples in ``workdir`` (``bench kernels
    sample``), calibrated on the architectures of the ``calibrate_on`` spaces collected there
    (``bench collect``) and measured in ``store``; returns it and the manifest's extra fields.

    ``cold``: fit the cold-weight latencies (samples timed in context). Calibrating measures
    this machine's cache curve (:func:`~costmeter.harness.probes.cache.measure_cache_curve`,
    a few seconds), so it is offered for the local ``cpu`` only. Raises ConfigError, saying what
    to run, when samples or networks are missing."""
    from pathlib import Path

    from costmeter.harness.probes.cache import measure_cache_curve
    from costmeter.predictors.workflows.collect import collect_spaces, export_item, measured_latencies
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.rules import load_rules
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path
    from costmeter.predictors.kernels.fuse import fuse

    workdir = Path(workdir)
    path = samples_path(workdir, device, runtime)
    rules_used = load_rules(runtime, device, workdir)
    if not path.exists():
        raise ConfigError(f"no kernel samples at {path}; run `bench kernels sample --device {device} "
                          f"--runtime {runtime}` first")
    samples = KernelSamples.load(path)
    overheads = [float(r["overhead_ms"]) for r in samples.rows if r["source"] == "measured"]
    overhead = float(np.nanmedian(overheads)) if overheads else 0.0
    extra: dict[str, Any] = {"kernel_timing": samples.method + (", cold weights" if cold else ""),
                             "overhead_ms": overhead, "kernel_samples": len(samples.rows),
                             "threads": samples.threads, "cpus": samples.cpus or None}
    unknown = [s for s in calibrate_on if s not in collect_spaces()]
    if unknown:
        raise ConfigError(f"--calibrate-on: unknown space {', '.join(unknown)}; choose from "
                          f"{', '.join(collect_spaces())}")
    graphs = network_ms = groups = None
    calibration = None
    if calibrate_on:
        if store is None:
            raise ConfigError("calibration needs the results store holding the measured networks")
        if device != "cpu":
            raise ConfigError(f"calibration measures the cache curve of this machine; it is not "
                              f"available for {device} (use the kernel sum, or calibrate on the "
                              "device itself)")
        measured = measured_latencies(store, list(calibrate_on), device, runtime,
                                      threads=samples.threads)
        if samples.threads is None:
            found = {r.key.threads for r in store.results(device=device, runtime=runtime, status="ok")
                     if r.key.model_id in measured}
            if len(found) > 1:
                raise ConfigError(f"the calibration networks were measured at several thread counts "
                                  f"({', '.join(map(str, sorted(found, key=str)))}) and the kernels "
                                  "record none; measure both at one count (`--threads`), or use "
                                  "`bench predictor build`")
        if len(measured) < 4 or len({item.space for item, _ in measured.values()}) < 2:
            raise ConfigError(f"calibration needs measured networks of at least 2 of "
                              f"{', '.join(calibrate_on)} (found {len(measured)}); run `bench "
                              f"collect --space SPACE --device {device} --runtime {runtime}` "
                              "for each")
        graphs = {m: fuse(load_graph(export_item(item, workdir)), rules_used)
                  for m, (item, _) in measured.items()}
        network_ms = [ms for _, ms in measured.values()]
        groups = [item.space for item, _ in measured.values()]
        curve_mb, curve_us = measure_cache_curve(sink=store)  # each size judged and stored
        calibration = TrafficCalibration(curve_mb=curve_mb, curve_us_per_mb=curve_us)
    extra["rules"] = rules_used.to_dict()
    model = NetworkPredictor(overhead_ms=overhead, calibration=calibration).fit(
        samples.tables(), samples.latencies(cold=cold), graphs, network_ms, groups)
    if model.calibration_ is not None:
        cal = model.calibration_
        extra["calibration"] = {"networks": len(network_ms or []), "families": sorted(set(groups or [])),
                                "terms": list(cal.terms_), "lofo_within": cal.cv_within_,
                                "lofo_rel_rmse": cal.cv_rel_rmse_,
                                "cache_curve": {"mb": list(cal.curve_mb),
                                                "us_per_mb": list(cal.curve_us_per_mb)},
                                "summary": cal.describe()}
        extra["calibration_networks"] = sorted(graphs or {})
        extra["interval"] = model.interval_state()
    return model, extra
