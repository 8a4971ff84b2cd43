"""`bench predictor build`: one resumable workflow under a time budget (fake hardware seams:
a fake clock, kernels and networks timed by formulas, a fixed cache curve)."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.predictors.workflows import budget as rule
from costmeter.predictors.workflows.build import BuildSeams, BuildSpec, build_predictor, load_state
from costmeter.workdir import Workdir

ROOT = Path(__file__).resolve().parents[1]
CURVE = ((1.0, 16.0, 32.0, 64.0), (10.0, 12.0, 30.0, 50.0))


def prior_graphs() -> list:
    """Kernel graphs of small chains: convs, depthwise convs, activations, adds, pools, fc."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.configs import make_config

    configs = [make_config("conv", (1, c, s, s), [("Conv", {"c_out": o, "kernel": k}), ("Relu", {})])
               for c in (8, 16) for o in (16, 32) for s in (8, 16) for k in (1, 3)]
    configs += [make_config("dwconv", (1, c, s, s), [("DWConv", {"kernel": 3, "stride": 1})])
                for c in (8, 16, 24) for s in (8, 16)]
    configs += [make_config("activation", (1, c, 8, 8), [("Sigmoid", {})]) for c in (8, 16, 32)]
    configs += [make_config("global_pool", (1, c, 8, 8), [("GlobalAveragePool", {})]) for c in (8, 16)]
    rules = builtin_rules("onnxruntime")
    return [fuse(load_graph(c.build()), rules) for c in configs]


def kernel_ms(groups: list[list[Path]]) -> list[list[float]]:
    """Medians by formula: the overhead model 0.01 ms, others by file name and size."""
    return [[0.01 if p.name.startswith("overhead") else 0.02 + p.stat().st_size / 2e6 for p in g]
            for g in groups]


def network_ms(items: list) -> dict[str, float]:
    return {i.model_id: 1.0 + (sum(map(ord, i.model_id)) % 50) / 10 for i in items}


def network_rows(model_id: str):
    """Rows of a few real convs whose count and sizes follow the id, so networks differ."""
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.estimators.rows import NetworkRows
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.configs import make_config

    size = 1 + sum(map(ord, model_id)) % 7
    config = make_config("conv", (1, 16, 8, 8), [("Conv", {"c_out": 8 * size, "kernel": 3}), ("Relu", {})])
    rows = NetworkRows.of(fuse(load_graph(config.build()), builtin_rules("onnxruntime")))
    return NetworkRows(rows.kernels * size, {"weight_mb": 0.004 * size * size,
                                             "activation_mb": 0.02 * size, "kernels": float(size)})


@pytest.fixture(autouse=True)
def small_forests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer trees and a shorter kernel plan: the fake kernels need neither, and tests run faster."""
    from costmeter.predictors.workflows import build_steps

    monkeypatch.setattr(build_steps, "FOREST_TREES", 16)
    monkeypatch.setattr(build_steps, "KERNEL_PLAN_SCALE", 1)


class Clock:
    """A fake clock: every reading advances it by ``step`` seconds."""

    def __init__(self, step: float = 20.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def measured_keys(groups: list[list[Path]]) -> list[str]:
    """Config keys of the kernels in measured files (their graph is named ``<type>_<key>``)."""
    import onnx

    names = [onnx.load(str(p), load_external_data=False).graph.name for g in groups for p in g]
    return [n.rsplit("_", 1)[-1] for n in names if len(n.rsplit("_", 1)[-1]) == 12]


def seams(clock: Clock | None = None, measured: list | None = None, kernel=kernel_ms) -> BuildSeams:
    def measure(groups):
        if measured is not None:
            measured.extend(measured_keys(groups))
        return kernel(groups)

    return BuildSeams(kernel_measure=measure, network_measure=network_ms, prior_graphs=prior_graphs,
                      network_rows=network_rows, cache_curve=lambda: CURVE, clock=clock or Clock())


def spec(**change) -> BuildSpec:
    values = dict(threads=1, budget_s=600.0, calibrate_on=("resnet", "mobilenet_v2", "nb201"))
    values.update(change)
    return BuildSpec(**values)


def test_a_build_writes_a_calibrated_predictor_recording_its_settings(tmp_path: Path) -> None:
    from costmeter.predictors.artifacts import load_predictor, read_manifest

    out = tmp_path / "m.costmodel"
    result = build_predictor(spec(), out, tmp_path / "wd", seams=seams())
    manifest = read_manifest(out)
    extra = manifest["extra"]
    assert extra["threads"] == 1 and extra["cpus"] is None and extra["kernel_timing"] == "context"
    assert extra["build"]["budget_s"] == 600.0 and extra["rules"]["runtime"] == "onnxruntime"
    assert set(result.networks) == {"resnet", "mobilenet_v2", "nb201"}
    assert len(extra["calibration_networks"]) == sum(result.networks.values())
    counts = list(result.networks.values())
    assert max(counts) - min(counts) <= 1  # families interleaved: each weighs the same
    # the build spent its budget, give or take a chunk, and no step more than its share
    allotment = rule.allot(600.0, result.spent_s, {s: True for s in ("prior", "curve", "fit")})
    for step in rule.MEASURING:
        assert result.spent_s[step] <= allotment.of(step) + 2 * 20.0, step
    assert sum(result.spent_s.values()) <= 600.0 + 3 * 20.0
    assert 0.0 <= result.calibration["lofo_within"] <= 1.0
    assert load_predictor(out).calibration_ is not None


def irregular_kernel_ms(groups: list[list[Path]]) -> list[list[float]]:
    """:func:`kernel_ms` times a factor no kernel model can read off the features (so that
    cross-validation finds kernels to re-sample, as on real hardware)."""
    base = kernel_ms(groups)
    return [[t * (1 + 0.5 * math.sin(p.stat().st_size)) for t, p in zip(times, g)]
            for times, g in zip(base, groups)]


def test_more_budget_extends_the_same_build_with_a_superset(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path

    wd = tmp_path / "wd"
    small = build_predictor(spec(budget_s=600.0), tmp_path / "a.costmodel", wd,
                            seams=seams(kernel=irregular_kernel_ms))
    kernels_small = {r["key"] for r in KernelSamples.load(samples_path(wd, "cpu", "onnxruntime")).rows}
    state_small = load_state(Workdir(wd), spec())
    large = build_predictor(spec(budget_s=1200.0), tmp_path / "b.costmodel", wd,
                            seams=seams(kernel=irregular_kernel_ms))
    kernels_large = {r["key"] for r in KernelSamples.load(samples_path(wd, "cpu", "onnxruntime")).rows}
    state_large = load_state(Workdir(wd), spec(budget_s=1200.0))
    assert kernels_small < kernels_large
    assert set(state_small["networks"]) < set(state_large["networks"])
    assert large.kernels > small.kernels


def test_a_fresh_larger_build_draws_the_smaller_ones_plan_first(tmp_path: Path) -> None:
    """Nested draws: a fresh build with twice the budget measures what the smaller one did."""
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path

    keys = []
    for budget, name in ((600.0, "a"), (1200.0, "b")):
        build_predictor(spec(budget_s=budget), tmp_path / f"{name}.costmodel", tmp_path / name, seams=seams())
        keys.append({r["key"] for r in KernelSamples.load(samples_path(tmp_path / name, "cpu", "onnxruntime")).rows
                     if r["source"] == "measured"})
        keys[-1] = (keys[-1], set(load_state(Workdir(tmp_path / name), spec(budget_s=budget))["networks"]))
    (kernels_a, networks_a), (kernels_b, networks_b) = keys
    assert networks_a < networks_b
    assert len(kernels_a & kernels_b) >= 0.8 * len(kernels_a)  # re-sampling depends on what was measured


def test_a_budget_below_the_minimum_is_refused_before_anything_runs(tmp_path: Path) -> None:
    measured: list = []
    with pytest.raises(ConfigError, match=r"below the minimum of \d+m.*give --budget"):
        build_predictor(spec(budget_s=120.0), tmp_path / "m.costmodel", tmp_path / "wd",
                        seams=seams(measured=measured))
    assert measured == [] and not (tmp_path / "m.costmodel").exists() and not (tmp_path / "wd").exists()


@pytest.mark.parametrize("change", [dict(threads=2, cpus=(0, 1)), dict(cpus=(0,)),
                                    dict(calibrate_on=("resnet", "nb201"))])
def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path, change: dict) -> None:
    if "cpus" in change and not set(change["cpus"]) <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    wd = tmp_path / "wd"
    build_predictor(spec(), tmp_path / "a.costmodel", wd, seams=seams())
    measured: list = []
    with pytest.raises(ConfigError, match="holds a build made with --threads 1 --cpus \\(unpinned\\)"):
        build_predictor(spec(**change), tmp_path / "b.costmodel", wd, seams=seams(measured=measured))
    assert measured == []


def test_threads_beyond_the_pinned_cpus_and_unknown_families_are_refused() -> None:
    with pytest.raises(ConfigError, match="share cores"):
        BuildSpec(threads=2, cpus=(0,))
    with pytest.raises(ConfigError, match="at least 2 families"):
        BuildSpec(calibrate_on=("resnet", "nope"))
    with pytest.raises(ConfigError, match="this machine's CPU"):
        BuildSpec(device="cuda")


def test_a_full_disk_is_one_error_and_keeps_what_was_measured(tmp_path: Path) -> None:
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path

    calls = {"n": 0}

    def filling(groups):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "wd" / "x"))
        return kernel_ms(groups)

    wd = tmp_path / "wd"
    with pytest.raises(StoreError, match="disk is full.*rerun the same command to resume"):
        build_predictor(spec(), tmp_path / "m.costmodel", wd, seams=seams(kernel=filling))
    kept = KernelSamples.load(samples_path(wd, "cpu", "onnxruntime")).rows
    assert kept and load_state(Workdir(wd), spec())["kernels"]["position"] > 0
    build_predictor(spec(), tmp_path / "m.costmodel", wd, seams=seams())  # resumes
    assert (tmp_path / "m.costmodel").exists()


def test_pinning_holds_during_the_build_and_is_undone(tmp_path: Path) -> None:
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    seen = []

    def measure(groups):
        seen.append(os.sched_getaffinity(0))
        return kernel_ms(groups)

    result = build_predictor(spec(cpus=(cpu,)), tmp_path / "m.costmodel", tmp_path / "wd",
                             seams=seams(kernel=measure))
    assert seen and all(s == {cpu} for s in seen)
    assert os.sched_getaffinity(0) == allowed
    assert result.manifest["extra"]["cpus"] == str(cpu)


def test_ctrl_c_then_the_same_call_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A build in a child process gets SIGINT mid-way; the same call measures only the rest."""
    wd = tmp_path / "wd"
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        import test_build as t
        from costmeter.predictors.workflows import build_steps
        from costmeter.predictors.workflows.build import build_predictor
        build_steps.FOREST_TREES, build_steps.KERNEL_PLAN_SCALE = 16, 1  # as the parent's fixture
        def slow(groups):
            time.sleep(0.3)
            return t.kernel_ms(groups)
        s = t.seams(kernel=slow)
        s.clock = time.monotonic
        build_predictor(t.spec(budget_s=3600.0), {str(tmp_path / 'm.costmodel')!r}, {str(wd)!r}, seams=s)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, text=True)
    state_path = Workdir(wd).build_state("cpu", "onnxruntime")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if state.get("kernels", {}).get("position", 0) >= 48:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)  # a loaded machine can take a while to unwind
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    from costmeter.predictors.sampling.measure import KernelSamples, samples_path

    before = {r["key"] for r in KernelSamples.load(samples_path(wd, "cpu", "onnxruntime")).rows}
    position = json.loads(state_path.read_text())["kernels"]["position"]
    assert position >= 48 and len(before) >= 48
    measured: list = []
    build_predictor(spec(budget_s=3600.0), tmp_path / "m.costmodel", wd, seams=seams(measured=measured))
    again = set(measured)
    assert again, "the resumed build measured nothing"
    after = KernelSamples.load(samples_path(wd, "cpu", "onnxruntime"))
    assert before <= {r["key"] for r in after.rows}
    assert json.loads(state_path.read_text())["kernels"]["position"] > position
    assert not any(key in again for key in before), "kernels measured before the interrupt were measured again"


def test_budget_rule_splits_and_grows_monotonically() -> None:
    small, large = rule.allot(1800.0), rule.allot(5400.0)
    for step in rule.MEASURING:
        assert large.of(step) > small.of(step) > 0
    measuring = 1800.0 - sum(rule.FIXED_ESTIMATE_S.values())
    assert small.networks == pytest.approx(rule.NETWORK_SHARE * measuring)
    assert small.kernels + small.adaptive + small.networks == pytest.approx(measuring)
    assert rule.parse_duration("1h30m") == 5400 and rule.parse_duration("90s") == 90
    assert rule.format_duration(5400) == "1h30m"
    with pytest.raises(ValueError):
        rule.parse_duration("30 minutes")


def test_the_build_keeps_the_kernel_model_the_evidence_favours(tmp_path: Path) -> None:
    from costmeter.predictors.artifacts import load_predictor, read_manifest
    from costmeter.predictors.estimators.kernel_choice import RULE_KERNELS, RULE_NETWORKS
    from costmeter.predictors.estimators.network import KERNEL_MODELS

    out = tmp_path / "m.costmodel"
    build_predictor(spec(), out, tmp_path / "wd", seams=seams())
    cal = read_manifest(out)["extra"]["calibration"]
    assert set(cal["kernel_models"]) == set(KERNEL_MODELS) and cal["kernel_model"] in KERNEL_MODELS
    tried, kept = cal["kernel_models"], cal["kernel_model"]
    assert all(0 < v["kernel_cv_error"] < 10 for v in tried.values())
    if cal["kernel_model_rule"] == RULE_NETWORKS:
        assert tried[kept]["lofo_within"] == max(v["lofo_within"] for v in tried.values())
    else:
        assert cal["kernel_model_rule"] == RULE_KERNELS
        assert tried[kept]["kernel_cv_error"] == min(v["kernel_cv_error"] for v in tried.values())
    assert cal["lofo_within"] == tried[kept]["lofo_within"]  # the printed estimate is the kept model's
    kinds = {type(f).__name__ for f in load_predictor(out).kernel_forest_.forests_.values()}
    if kept == "additive":
        assert kinds == {"AdditiveForest"}
    else:  # forests, with the additive model only for sparse types
        assert "ModelForest" in kinds


def test_a_lead_on_the_networks_counts_only_beyond_its_noise() -> None:
    import pandas as pd

    from costmeter.predictors.estimators.kernel_choice import (
        RULE_KERNELS,
        RULE_NETWORKS,
        choose_kernel_model,
        kernel_cv_error,
        significantly_ahead,
    )
    from costmeter.predictors.estimators.network import kernel_models

    measured = np.ones(120)

    class Fitted:
        def __init__(self, off: np.ndarray) -> None:  # each network's relative error
            within = float(np.mean(np.abs(off) <= 0.1))
            self.calibration_ = type("C", (), {"cv_within_": within, "tolerance": 0.1,
                                               "cv_rel_rmse_": float(np.sqrt(np.mean(off ** 2))),
                                               "cv_predicted_": measured * (1 + off)})()

    base = np.where(np.arange(120) < 90, 0.05, 0.2)  # 90 of 120 within
    four_more = base.copy()
    four_more[90:94] = 0.05  # 94 of 120: four networks, within noise when others disagree
    four_more[:10] = 0.2  # ... and it loses ten others while gaining fourteen
    four_more[94:104] = 0.05
    forty_more = np.full(120, 0.05)
    forty_more[:2] = 0.2
    assert not significantly_ahead(np.abs(four_more) <= 0.1, np.abs(base) <= 0.1)
    assert significantly_ahead(np.abs(forty_more) <= 0.1, np.abs(base) <= 0.1)
    # its false-alarm rate, measured: two equally good models (each network within with
    # probability 0.8, independently), 4,000 builds of 120 networks; one-sided, so about 2%
    sim = np.random.default_rng(1)
    alarms = np.mean([significantly_ahead(sim.random(120) < 0.8, sim.random(120) < 0.8)
                      for _ in range(4000)])
    assert 0.005 < alarms < 0.04
    cv = {"additive": 0.1, "forest": 0.2}
    assert choose_kernel_model({"additive": Fitted(base), "forest": Fitted(four_more)}, measured, cv) \
        == ("additive", RULE_KERNELS)
    assert choose_kernel_model({"additive": Fitted(base), "forest": Fitted(forty_more)}, measured, cv) \
        == ("forest", RULE_NETWORKS)
    assert choose_kernel_model({"additive": Fitted(base), "forest": Fitted(four_more)}, measured,
                               {"additive": 0.3, "forest": 0.2}) == ("forest", RULE_KERNELS)
    # the kernel figure itself: out of fold, weighted by latency; a forest cannot follow a size
    # past what it saw, the additive model's linear base can
    rng = np.random.default_rng(0)
    flops = np.exp(rng.uniform(np.log(1e5), np.log(1e8), 40))  # 40 kernels over 3 decades
    table = pd.DataFrame({"flops": flops, "bytes_read": flops / 10, "bytes_written": flops / 20,
                          "weight_bytes": np.zeros(40)})
    latency = 1e-8 * flops * np.exp(rng.normal(0, 0.05, 40))  # 5% noise
    models = kernel_models(32)
    errors = {n: kernel_cv_error(m, {"conv": table}, {"conv": latency}) for n, m in models.items()}
    assert 0 < errors["additive"] < 0.06 and errors["forest"] > 2 * errors["additive"]
    assert np.isnan(kernel_cv_error(models["additive"], {"conv": table[:5]}, {"conv": latency[:5]}))


def test_a_prior_of_older_kernel_types_is_analysed_again(tmp_path: Path) -> None:
    """A working folder's prior from before the se blocks (no feature schema in it) would plan no
    se kernels while the networks' rows hold them: the build analyses the models again."""

    calls: list[int] = []

    def counted_prior() -> list:
        calls.append(1)
        return prior_graphs()

    wd = tmp_path / "wd"
    out = tmp_path / "m.costmodel"
    build_predictor(spec(), out, wd, seams=replace(seams(), prior_graphs=counted_prior))
    path = Workdir(wd).build_prior("cpu", "onnxruntime")
    data = json.loads(path.read_text())
    assert len(calls) == 1 and data["feature_schema"] >= 3
    build_predictor(spec(), out, wd, seams=replace(seams(), prior_graphs=counted_prior))
    assert len(calls) == 1  # the same schema: the folder's prior is reused
    del data["feature_schema"]
    path.write_text(json.dumps(data))
    build_predictor(spec(), out, wd, seams=replace(seams(), prior_graphs=counted_prior))
    assert len(calls) == 2 and "feature_schema" in json.loads(path.read_text())
