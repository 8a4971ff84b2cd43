"""Latency lookup tables: block keys, sums, files, refusals, real and predicted builds, checks."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from costmeter.errors import ConfigError, StoreError
from costmeter.models.spaces.nb201 import lut as nb201_lut
from costmeter.models.spaces.ofa_mbv3 import lut as ofa_lut
from costmeter.predictors.lut import blocks
from costmeter.predictors.lut.table import LatencyTable, LutEntry, build_lut, load_table
from costmeter.predictors.lut.check import check_lut, record_check, sample_archs
from costmeter.models.spaces import nb201, ofa_mbv3
from costmeter.predictors.kernels.features import FEATURE_SCHEMA_VERSION


def synthetic_table(space: str, resolutions: tuple[int, ...] | None = None, seed: int = 0,
                    overhead_ms: float = 0.005) -> LatencyTable:
    """A table with random positive entries for every block of the space."""
    res = blocks.check_resolutions(space, resolutions)
    rng = np.random.default_rng(seed)
    entries = []
    for spec in blocks.space_blocks(space, res):
        latency = float(rng.uniform(0.01, 1.0))
        entries.append(LutEntry(spec.key, spec.kind, latency, latency + overhead_ms,
                                float(rng.uniform(0.0, 0.01)), 20, "measured"))
    manifest = {"space": space, "device": "cpu", "runtime": "onnxruntime", "threads": 1,
                "resolutions": list(res), "overhead_ms": overhead_ms}
    return LatencyTable(manifest, entries)


@pytest.fixture(scope="module")
def block_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder shared by the tests that export block modules (exports are cached)."""
    return tmp_path_factory.mktemp("lut-wd")


# ----------------------------------------------------------------------------- keys
def test_keys_follow_ofa_spelling() -> None:
    spec = ofa_lut.block_spec(224, stage=1, first=True, kernel=5, expand=6)
    assert spec.key == ("expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2"
                        "-idskip:0-se:1-hs:0")
    assert ofa_lut.fixed_specs(224)[0].key == "Conv-input:224x224x3-output:112x112x16"
    assert ofa_lut.block_spec(224, 3, False, 3, 4).idskip  # stage 4, later block: skip


@pytest.mark.parametrize("space", ["ofa_mbv3", "nb201"])
def test_table_keys_cover_every_block_of_random_archs(space: str) -> None:
    every = {spec.key for spec in blocks.space_blocks(space)}
    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    missing = {spec.key for arch in module.sample(300, seed=7)
               for spec in blocks.arch_blocks(space, arch)} - every
    assert not missing
    assert len(every) == (1255 if space == "ofa_mbv3" else 22)


def test_restricted_resolutions_cover_their_archs() -> None:
    table = synthetic_table("ofa_mbv3", (160, 224))
    archs = sample_archs("ofa_mbv3", 100, (160, 224), seed=3)
    assert table.missing_keys(archs) == []
    assert {ofa_mbv3.to_array([a])[0, 0] for a in archs} == {160, 224}


@pytest.mark.parametrize("space", ["ofa_mbv3", "nb201"])
def test_blocks_add_up_to_the_whole_network(space: str) -> None:
    """The blocks' torch modules, run one after the other, hold exactly the network's FLOPs
    and produce the shapes their keys promise."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def flops(module: torch.nn.Module, *inputs: torch.Tensor) -> tuple[int, torch.Tensor]:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = module(*inputs)
        return counter.get_total_flops(), out

    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    arch = module.sample(1, seed=11)[0]
    if space == "ofa_mbv3":  # the smallest resolution keeps the forward passes cheap
        arch = "r128|" + arch.split("|", 1)[1]
    total, _ = flops(module.build_torch(arch), torch.randn(*module.input_shape(arch)))
    summed = 0
    for spec in blocks.arch_blocks(space, arch):
        inputs = [torch.randn(*spec.input_shape()) for _ in range(blocks.block_input_count(spec))]
        count, out = flops(blocks.build_block_module(spec), *inputs)
        h, w, c = spec.output_hwc
        assert tuple(out.shape[1:]) in ((c, h, w), (c,))
        summed += count
    assert summed == total


# ----------------------------------------------------------------------------- sums
@pytest.mark.parametrize("space", ["ofa_mbv3", "nb201"])
def test_estimate_is_the_sum_of_its_entries(space: str) -> None:
    table = synthetic_table(space)
    module = ofa_mbv3 if space == "ofa_mbv3" else nb201
    archs = module.sample(50, seed=5)
    for arch in archs[:10]:
        keys = table.keys_of(arch)
        by_hand = math.fsum(table.entries[k].latency_ms for k in keys) + table.overhead_ms
        assert table.estimate(arch) == pytest.approx(by_hand, rel=1e-12)
        raw = math.fsum(table.entries[k].raw_ms for k in keys)
        assert table.estimate(arch, corrected=False) == pytest.approx(raw, rel=1e-12)
    batch = table.estimate_batch(archs)
    assert batch == pytest.approx([table.estimate(a) for a in archs], rel=1e-12)


def test_batch_accepts_every_ofa_encoding() -> None:
    table = synthetic_table("ofa_mbv3")
    array = ofa_mbv3.sample_array(40, seed=2)
    strings = [ofa_mbv3.format_arch(row) for row in array]
    dicts = [ofa_mbv3.to_ofa_dict(s) for s in strings]
    expected = table.estimate_batch(array)
    assert table.estimate_batch(strings) == pytest.approx(expected)
    assert table.estimate_batch(dicts) == pytest.approx(expected)
    mean, unc = table.predict(array)
    assert (unc > 0).all() and mean == pytest.approx(expected)


def test_uncertainty_is_the_root_sum_square_of_block_spreads() -> None:
    table = synthetic_table("nb201")
    arch = nb201.sample(1, seed=4)[0]
    spreads = [table.entries[k].spread_ms for k in table.keys_of(arch)]
    assert table.predict([arch])[1][0] == pytest.approx(math.sqrt(sum(s * s for s in spreads)))


def test_satisfies_and_bad_budgets() -> None:
    table = synthetic_table("nb201")
    archs = nb201.sample(30, seed=1)
    mean = table.estimate_batch(archs)
    budget = float(np.median(mean))
    assert (table.satisfies(archs, budget) == (mean <= budget)).all()
    for bad in (0, -1.0, float("nan"), "fast"):
        with pytest.raises(ValueError, match="budget"):
            table.satisfies(archs, bad)


# ----------------------------------------------------------------------------- refusals and files
def test_architecture_outside_the_space_names_the_field() -> None:
    table = synthetic_table("ofa_mbv3", (160,))
    good = ofa_mbv3.format_arch(ofa_mbv3.sample_array(1, seed=0)[0]).split("|", 1)[1]
    with pytest.raises(ConfigError, match="kernel.*9.*allowed: 3, 5, 7"):
        table.estimate_batch([f"r160|k9e4,k3e4|{good.split('|', 1)[1]}"])
    with pytest.raises(ConfigError, match="resolution 176 is not in this table.*160"):
        table.estimate_batch([f"r176|{good}"])
    with pytest.raises(ConfigError, match="unknown op 'conv_5x5'"):
        synthetic_table("nb201").estimate_batch(["|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|"])


def test_round_trip_and_refusals(tmp_path: Path) -> None:
    table = synthetic_table("ofa_mbv3", (160, 224))
    json_path, csv_path = table.save(tmp_path / "ofa_cpu")
    assert json_path.suffix == ".json" and csv_path.is_file()
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["key", "kind", "input", "output"] and "latency_ms" in header
    archs = sample_archs("ofa_mbv3", 20, (160, 224), seed=9)
    for path in (json_path, csv_path):
        loaded = load_table(path, device="cpu", runtime="onnxruntime", resolutions=[224])
        assert loaded.estimate_batch(archs) == pytest.approx(table.estimate_batch(archs))
    with pytest.raises(ConfigError, match="device 'cpu', not 'cuda'"):
        load_table(json_path, device="cuda")
    with pytest.raises(ConfigError, match="runtime 'onnxruntime', not 'openvino'"):
        load_table(json_path, runtime="openvino")
    with pytest.raises(ConfigError, match="resolutions 160, 224, not 192"):
        load_table(json_path, resolutions=[160, 192])
    with pytest.raises(ConfigError, match="space 'ofa_mbv3', not 'nb201'"):
        load_table(json_path, space="nb201")


def test_foreign_and_damaged_files_are_refused(tmp_path: Path) -> None:
    json_path, _ = synthetic_table("nb201").save(tmp_path / "t")
    body = json.loads(json_path.read_text())
    cases = {"version": {**body, "format_version": 99}, "format": {**body, "format": "x"},
             "latency": {**body, "entries": [{**body["entries"][0], "latency_ms": -1}]}}
    for name, damaged in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(damaged))
        with pytest.raises(StoreError):
            load_table(path)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a readable lookup table"):
        load_table(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="not found"):
        load_table(tmp_path / "absent.json")


def test_default_paths_name_space_device_runtime_and_resolutions(tmp_path: Path) -> None:
    from costmeter.predictors.lut.table import default_lut_path

    assert default_lut_path(tmp_path, "nb201", "cpu", "onnxruntime").name == "nb201-cpu-onnxruntime.json"
    assert default_lut_path(tmp_path, "ofa_mbv3", "cuda:1", "onnxruntime", [224, 160],
                            predicted=True).name == "ofa_mbv3-cuda_1-onnxruntime-r160-224-predicted.json"
    assert default_lut_path(tmp_path, "ofa_mbv3", "cpu", "tvm").parent == tmp_path / "lut"


def test_bad_build_options_fail_before_anything_runs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.models.spaces import nb201

    with pytest.raises(ConfigError, match="resolution 150 is not in the space"):
        build_lut("ofa_mbv3", resolutions=[150], workdir=tmp_path)
    with pytest.raises(ConfigError, match="unknown search space 'nosuch'"):
        build_lut("nosuch", workdir=tmp_path)
    # a space that does not declare lookup-table blocks is refused by name, with the ones that do
    monkeypatch.setattr(nb201, "CAPABILITIES", frozenset({"enumerate", "index"}))
    with pytest.raises(ConfigError, match="space 'nb201' has no lookup-table blocks; "
                                          "spaces that have it: ofa_mbv3"):
        build_lut("nb201", workdir=tmp_path)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="unknown device"):
        build_lut("nb201", device="tpu", workdir=tmp_path)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- real builds
def test_measured_nb201_table(block_workdir: Path) -> None:
    """A real table: every block measured with ONNX Runtime, several chunks, one worker each."""
    from costmeter.results.store import ResultStore

    out = block_workdir / "nb201_cpu"
    store = ResultStore(f"sqlite:///{block_workdir / 'results.db'}")
    table = build_lut("nb201", workdir=block_workdir, min_time_s=0.01, chunk_size=8, output=out,
                      sink=store)
    assert len(table.entries) == 22
    stored = {r.key.model_id: r for r in store.results(tag="lut")}
    store.close()
    assert set(stored) == {f"lut:{key}" for key in table.entries}  # one judged result per block
    assert len({r.run_id for r in stored.values()}) == 1  # the whole table is one run
    for key, entry in table.entries.items():
        result = stored[f"lut:{key}"]
        assert result.measurement is not None and result.measurement.count == entry.samples
        assert result.validity.value in ("VALID", "INVALID") and result.environment
        assert (result.validity.value == "INVALID") == (key in table.manifest["invalid_entries"])
        assert statistics.median(result.measurement.samples_ns[0]) / 1e6 == pytest.approx(entry.raw_ms)
    assert all(e.latency_ms > 0 and e.raw_ms >= e.latency_ms and e.samples >= 15
               for e in table.entries.values())
    manifest = load_table(out.with_suffix(".json")).manifest
    assert manifest["source"] == "measured" and manifest["resolutions"] == [32]
    assert 0 < manifest["overhead_ms"] < 1 and manifest["threads"] == 1
    assert manifest["environment"] and manifest["created_at"]
    conv3 = table.entries["nor_conv_3x3-input:32x32x16-output:32x32x16"].latency_ms
    skip = table.entries["skip_connect-input:32x32x16-output:32x32x16"].latency_ms
    assert conv3 > skip  # a 3x3 convolution costs more than an identity


def test_a_crashing_block_is_reported_and_the_rest_measured(block_workdir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.predictors.lut import measure as lut_measure

    specs = nb201_lut.space_blocks()[:4]
    real_export = lut_measure.export_block
    broken = block_workdir / "broken.onnx"
    broken.write_bytes(b"not an onnx file")

    def export(spec: blocks.BlockSpec, workdir: Path) -> Path:
        return broken if spec.key == specs[1].key else real_export(spec, workdir)

    monkeypatch.setattr(lut_measure, "export_block", export)
    timings, facts = lut_measure.measure_blocks(specs, workdir=block_workdir,
                                                protocol=lut_measure.lut_protocol(0.01))
    assert timings[specs[1].key].error and math.isnan(timings[specs[1].key].median_ms)
    assert all(timings[s.key].median_ms > 0 for s in specs if s.key != specs[1].key)
    assert facts["overhead_ms"] > 0


def test_predicted_table_sums_kernel_predictions(block_workdir: Path, tmp_path: Path) -> None:
    from costmeter.predictors.artifacts import save_predictor
    from costmeter.predictors.kernels.features import stack_tables
    from costmeter.predictors.estimators.forest import KernelForest, ModelForest
    from costmeter.models.onnx.graph import load_graph
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.kernels.fuse import fuse
    from costmeter.predictors.lut.measure import export_block, pinned_model

    specs = nb201_lut.space_blocks()
    rules = builtin_rules("onnxruntime")
    graphs = {s.key: fuse(load_graph(pinned_model(export_block(s, block_workdir).read_bytes(),
                                                  s.input_shape())), rules) for s in specs}
    tables = stack_tables(graphs)
    latency = {t: 1e-3 + frame["flops"].to_numpy() / 1e9 for t, frame in tables.items()}
    forest = KernelForest(ModelForest(n_estimators=8)).fit(tables, latency)
    path = tmp_path / "kernels.costmodel"
    save_predictor(forest, path, device="cpu", runtime="onnxruntime", feature_schema=f"kernels/v{FEATURE_SCHEMA_VERSION}")

    table = build_lut("nb201", predictor=path, workdir=block_workdir)
    expected = forest.predict(tables)
    assert table.manifest["source"] == "predicted" and table.manifest["predictor"]["path"]
    for key, value in expected.items():
        assert table.entries[key].latency_ms == pytest.approx(max(value, 1e-4))
    with pytest.raises(ConfigError, match="device 'cpu', not 'cuda'"):
        build_lut("nb201", device="cuda", predictor=path, workdir=block_workdir)


def test_predicted_mode_refuses_an_architecture_level_model(tmp_path: Path) -> None:
    from costmeter.predictors.estimators.arch import ArchPredictor

    archs = nb201.sample(40, seed=0)
    model = ArchPredictor("nb201").fit(archs, np.linspace(1, 2, 40))
    with pytest.raises(ConfigError, match="kernel-level predictor"):
        build_lut("nb201", predictor=model, workdir=tmp_path)


# ----------------------------------------------------------------------------- additivity check
def test_check_reports_bias_mape_share_and_rank(tmp_path: Path) -> None:
    table = synthetic_table("ofa_mbv3", (160, 224))
    rng = np.random.default_rng(0)

    def measure(archs: list[str]) -> np.ndarray:  # the networks run 5 % faster than the table
        return table.estimate_batch(archs) / 1.05

    class Noisy:
        def predict(self, archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
            truth = measure(archs)
            return truth * rng.uniform(0.97, 1.03, len(archs)), truth * 0.03

    report = check_lut(table, networks=25, predictor=Noisy(), measure=measure)
    metrics = report.metrics()
    assert list(metrics.index) == ["lut", "lut_raw", "predictor"]
    assert metrics.loc["lut", "bias_pct"] == pytest.approx(5.0)
    assert metrics.loc["lut", "mape_pct"] == pytest.approx(5.0)
    assert metrics.loc["lut", "within_10_pct"] == 100.0
    assert metrics.loc["lut", "spearman"] == pytest.approx(1.0)
    assert metrics.loc["predictor", "mape_pct"] < 3.0
    assert len(report.table()) == 25 and set(report.table().columns) >= {"arch", "measured_ms"}

    before = table.predict(report.archs)[1]
    path = record_check(table, report, tmp_path / "checked")
    reloaded = load_table(path)
    assert reloaded.manifest["check"]["rms_rel_error"] == pytest.approx(0.05)
    assert (reloaded.predict(report.archs)[1] > before).all()


SPREAD_NB201 = [  # cells of skips only, a mix, 3x3 convs only: several times apart in cost
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|skip_connect~1|nor_conv_3x3~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
]


@pytest.mark.slow
def test_real_additivity_check_on_nb201(block_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured table against three measured whole networks (harness runner, one worker each),
    chosen to span the space's cost. The table must rank them as measured (a table with blocks
    under the wrong keys does not), and price the cheapest, whose runs are too short to be
    preempted, within a factor of two of its fastest runs (one with the run overhead counted
    per block, or in the wrong unit, does not). Costlier networks are preempted on a loaded
    machine (their 10th percentile ran 1.8x the table's sum at load 10 on 2 CPUs, their median
    4x; see the check module), so they are only held to the right order of magnitude."""
    from costmeter.predictors.lut import check as check_module

    monkeypatch.setattr(check_module, "sample_archs", lambda space, n, resolutions, seed=0: SPREAD_NB201)
    table = build_lut("nb201", workdir=block_workdir, min_time_s=0.01)
    report = check_lut(table, networks=3, workdir=block_workdir, min_time_s=0.05)
    assert report.archs == SPREAD_NB201
    assert np.isfinite(report.measured_ms).all() and not report.failed
    lut, fastest = report.predictions["lut"], report.measured_p10_ms
    figures = (lut, report.measured_ms, fastest)
    assert list(np.argsort(lut)) == [0, 1, 2], figures
    assert list(np.argsort(report.measured_ms)) == [0, 1, 2], figures
    assert 0.5 < lut[0] / fastest[0] < 2.0, figures
    assert ((lut / fastest > 0.25) & (lut / fastest < 4.0)).all(), figures
    assert set(report.metrics().index) == {"lut", "lut_raw"}
