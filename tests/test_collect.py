"""bench collect: plans, family variants, end-to-end measurement into a store, bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from costmeter.errors import ConfigError, UnavailableError
from costmeter.models import families
from costmeter.predictors.workflows.collect import (
    collect,
    collect_protocol,
    item_of,
    measured_latencies,
    plan,
)


def test_plans_are_deterministic_distinct_and_shaped() -> None:
    first = plan("nb201", 5, seed=3)
    assert first == plan("nb201", 5, seed=3) and first != plan("nb201", 5, seed=4)
    assert len({i.model_id for i in first}) == 5
    assert all(i.input_shape == (1, 3, 32, 32) and i.model_id == f"nb201:{i.arch}" for i in first)
    assert all(item_of(i.model_id) == i for i in first)
    variants = plan("mobilenet_v2", 4, seed=0)
    for item in variants:
        family, width, depth, resolution = families.parse(item.arch)
        assert family == "mobilenet_v2" and item.input_shape == (1, 3, resolution, resolution)
        assert width in families.WIDTHS["mobilenet_v2"] and depth in families.DEPTHS["mobilenet_v2"]


def test_bad_spaces_and_variants_are_refused_with_a_fix() -> None:
    with pytest.raises(ConfigError, match="unknown space 'nb999'.*nb201"):
        plan("nb999", 3)
    with pytest.raises(ConfigError, match="--samples must be >= 1"):
        plan("nb201", 0)
    with pytest.raises(ConfigError, match="bad family variant"):
        families.parse("resnet:w=1")
    with pytest.raises(ConfigError, match="resnet depth 19"):
        families.parse("resnet:w=1,d=19,r=224")
    with pytest.raises(ConfigError, match="unknown family"):
        families.parse("vgg:w=1,d=1,r=224")


@pytest.mark.parametrize(("variant", "zoo_name"), [
    ("resnet:w=1,d=18,r=224", "resnet18"),
    ("mobilenet_v2:w=1,d=1,r=224", "mobilenet_v2"),
    ("mobilenet_v3:w=1,d=1,r=224", "mobilenet_v3_large"),
    ("mobilenet_v3:w=1,d=0,r=224", "mobilenet_v3_small"),
    ("efficientnet:w=1,d=1,r=224", "efficientnet_b0"),
])
def test_default_variants_have_the_zoo_models_parameter_counts(variant: str, zoo_name: str) -> None:
    from costmeter.models.zoo import build_zoo_model

    def count(module: object) -> int:
        return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]

    assert count(families.build_torch(variant)) == count(build_zoo_model(zoo_name))


def test_variants_scale_as_asked() -> None:
    def params(spec: str) -> int:
        return sum(p.numel() for p in families.build_torch(spec).parameters())

    assert params("mobilenet_v2:w=0.5,d=1,r=160") < params("mobilenet_v2:w=1,d=1,r=160")
    assert params("efficientnet:w=1,d=0.5,r=128") < params("efficientnet:w=1,d=1,r=128")
    assert params("resnet:w=1,d=10,r=128") < params("resnet:w=1,d=34,r=128")


def test_collect_measures_into_the_store_and_skips_what_it_has(workdir: Path) -> None:
    from costmeter.results.store import ResultStore

    protocol = collect_protocol(min_time_s=0.02, min_count=3)
    with ResultStore(f"sqlite:///{workdir / 'store.db'}") as store:
        results = collect("nb201", 2, workdir=workdir, store=store, seed=7, threads=1,
                          protocol=protocol)
        assert [r.status.value for r in results] == ["ok", "ok"]
        # stable ids: the stored rows name the architectures themselves, no local manifest
        assert {r.key.model_id for r in results} == {i.model_id for i in plan("nb201", 2, seed=7)}
        assert set(measured_latencies(store, ["nb201"])) == {r.key.model_id for r in results}
        stored = store.query(tag="collect:nb201")
        assert len(stored) == 2 and (stored["latency_p50_ms"] > 0).all()
        again = collect("nb201", 2, workdir=workdir, store=store, seed=7, protocol=protocol)
        assert again == [] and len(store.query()) == 2
        second = collect("nb201", 2, workdir=workdir, store=store, seed=7, protocol=protocol,
                         min_results=2)  # a second round for every architecture
        assert len(second) == 2 and len(store.query()) == 4
    assert not (workdir / "collect").exists()


def test_collect_refuses_a_missing_runtime_before_writing_anything(workdir: Path) -> None:
    with pytest.raises((ConfigError, UnavailableError)):
        collect("nb201", 2, runtime="no_such_runtime", workdir=workdir)
    assert not (workdir / "collect").exists()
    assert not (workdir / "cache").exists()


def test_bench_run_and_bench_collect_give_one_architecture_one_id(workdir: Path) -> None:
    """The same architecture measured by `bench run` and by `bench collect` lands under one
    model id and one benchmark key in the store."""
    from costmeter.harness.config import RunConfig
    from costmeter.harness.runner import Runner, validate
    from costmeter.results.store import ResultStore

    protocol = collect_protocol(min_time_s=0.02, min_count=3)
    item = plan("nb201", 1, seed=11)[0]
    spelled = item.arch.replace("|+|", "| + |").replace("|", " |", 1)  # a sloppier spelling
    with ResultStore(f"sqlite:///{workdir / 'store.db'}") as store:
        collected = collect("nb201", 1, workdir=workdir, store=store, seed=11, threads=1,
                            protocol=protocol)
        config = RunConfig(model=f"nb201:{item.arch}", threads=1, protocol=protocol,
                           check_outputs=False, workdir=str(workdir))
        ran = Runner(store, workdir).run(validate([config]))
        assert collected[0].key.model_id == ran[0].key.model_id == item.model_id
        assert collected[0].key.digest() == ran[0].key.digest()
        assert set(store.query()["model_id"]) == {item.model_id}
    assert spelled != item.arch


def test_measured_latencies_keep_precisions_apart(workdir: Path) -> None:
    """An int8 result of an architecture (faster) never stands in for its fp32 latency."""
    from costmeter.results.schema import BenchKey, Measurement, RunResult, Status
    from costmeter.results.store import ResultStore

    item = plan("nb201", 1, seed=3)[0]

    def stored(median_ms: float, options: tuple[tuple[str, str], ...]) -> RunResult:
        key = BenchKey(item.model_id, "h", "cpu", "onnxruntime", 1, (1, 3, 32, 32), "float32", 1, options)
        return RunResult(key=key, status=Status.OK, run_id="r", started_at="2026-12-01T00:00:00",
                         finished_at="2026-12-01T00:00:01", measurement=Measurement([[int(median_ms * 1e6)] * 5]))

    with ResultStore(f"sqlite:///{workdir / 'store.db'}") as store:
        store.write(stored(2.0, ()))
        store.write(stored(0.5, (("precision", "int8"), ("calibration", "random:8"))))
        fp32 = measured_latencies(store, ["nb201"], threads=1)
        int8 = measured_latencies(store, ["nb201"], threads=1, precision="int8")
    assert fp32[item.model_id][1] == pytest.approx(2.0) and int8[item.model_id][1] == pytest.approx(0.5)
