"""bench collect: plans, family variants, end-to-end measurement into a store, bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from costmeter.errors import ConfigError, UnavailableError
from costmeter.models import families
from costmeter.predictors.workflows.collect import (
    collect,
    collect_protocol,
    load_manifest,
    manifest_path,
    plan,
)


def test_plans_are_deterministic_distinct_and_shaped() -> None:
    first = plan("nb201", 5, seed=3)
    assert first == plan("nb201", 5, seed=3) and first != plan("nb201", 5, seed=4)
    assert len({i.stem for i in first}) == 5
    assert all(i.input_shape == (1, 3, 32, 32) and i.model_id == f"onnx:{i.stem}" for i in first)
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
        manifest = load_manifest(workdir)
        assert {r.key.model_id for r in results} == set(manifest)
        assert {i.arch for i in manifest.values()} == {i.arch for i in plan("nb201", 2, seed=7)}
        stored = store.query(tag="collect:nb201")
        assert len(stored) == 2 and (stored["latency_p50_ms"] > 0).all()
        again = collect("nb201", 2, workdir=workdir, store=store, seed=7, protocol=protocol)
        assert again == [] and len(store.query()) == 2
        second = collect("nb201", 2, workdir=workdir, store=store, seed=7, protocol=protocol,
                         min_results=2)  # a second round for every architecture
        assert len(second) == 2 and len(store.query()) == 4
    assert len(manifest_path(workdir).read_text().splitlines()) == 2


def test_collect_refuses_a_missing_runtime_before_writing_anything(workdir: Path) -> None:
    with pytest.raises((ConfigError, UnavailableError)):
        collect("nb201", 2, runtime="no_such_runtime", workdir=workdir)
    assert not manifest_path(workdir).exists()
    assert not (workdir / "collect").exists()
