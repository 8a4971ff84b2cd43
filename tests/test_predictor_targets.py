"""Peak memory and energy as predictor targets: trace columns, store columns, `--target`.

The trace fixture is synthetic: NB201 cells of the fixture slice with the slice's measured
gold_6240 latencies, and peak memory and energy made up from the cells' analytic features
(a fixed cost plus bytes per parameter and per live activation; a power times the latency),
with 3% multiplicative noise, so that a predictor has something learnable to find.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError

SLICE = Path(__file__).parent / "fixtures" / "nb201_slice.csv.gz"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 't.db'}"


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    from costmeter.models.spaces import get_space

    table = pd.read_csv(SLICE).head(100)
    space = get_space("nb201")
    names = list(space.feature_names())
    features = space.feature_matrix(list(table["arch"]))
    rng = np.random.default_rng(7)
    noise = rng.lognormal(0, 0.03, size=(2, len(table)))
    params = features[:, names.index("params_total")]
    live = features[:, names.index("act_elems_live")]
    peak = (30 * 2**20 + 4 * params + 8 * live) * noise[0]
    energy = table["gold_6240_ms"].to_numpy() * 1e-3 * 45.0 * noise[1]  # 45 W
    frame = pd.DataFrame({"arch": table["arch"], "device": "gold_6240",
                          "latency_ms": table["gold_6240_ms"], "peak_memory_bytes": peak.round(),
                          "energy_j": energy})
    frame.loc[frame.index[::10], "energy_j"] = np.nan  # some rows have no energy: empty cells
    path = tmp_path_factory.mktemp("traces") / "nb201_mem.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_trace_columns_become_memory_and_energy_of_results(trace) -> None:
    from costmeter.results.frames import frame_from_results
    from costmeter.results.traces import read_traces, traces_to_results

    path, source = trace
    results = traces_to_results(read_traces(path, space="nb201"))
    frame = frame_from_results(results)
    assert frame["peak_memory_bytes"].to_numpy() == pytest.approx(source["peak_memory_bytes"].to_numpy())
    assert results[0].memory.imported_peak_memory_bytes == int(source["peak_memory_bytes"].iloc[0])
    assert results[0].memory.peak_rss_above_baseline_bytes is None  # not what the trace measured
    energy = frame["energy_per_inference_j"].to_numpy()
    assert np.isnan(energy[0]) and results[0].energy.provenance.value == "unavailable"
    assert energy[1] == pytest.approx(source["energy_j"].iloc[1])
    assert results[1].energy.provenance.value == "imported"


@pytest.mark.parametrize("target, unit, within_10, median_error", [
    ("peak_memory", "MiB", 80, 0.05),
    ("energy", "mJ", 35, 0.10),  # as noisy as the measured latencies it is made from
])
def test_fit_each_target_from_imported_traces(trace, store_url: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture, target: str, unit: str,
                                              within_10: float, median_error: float) -> None:
    from costmeter.predictors import load_artifact, read_manifest

    path, source = trace
    assert main(["traces", "import", str(path), "--space", "nb201", "--store", store_url]) == 0
    model = tmp_path / f"{target}.costmodel"
    assert main(["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "--target", target,
                 "-o", str(model), "--store", store_url]) == 0
    out = capsys.readouterr().out
    rows = source["energy_j"].notna().sum() if target == "energy" else len(source)
    assert f"{target} of {rows} architectures" in out
    manifest = read_manifest(model)
    assert manifest["extra"]["target"] == target
    assert manifest["metrics"]["within_10_pct"] >= within_10  # the made-up relation is learnable
    predictor = load_artifact(model)
    assert predictor.target_ == target
    column = "peak_memory_bytes" if target == "peak_memory" else "energy_j"
    known = source[source[column].notna()]
    predicted = predictor.predict(list(known["arch"]))
    relative = np.abs(predicted / known[column].to_numpy() - 1)
    assert np.median(relative) < median_error
    assert main(["predict", str(model), "--model", known["arch"].iloc[0]]) == 0
    line = capsys.readouterr().out
    assert f"{target} " in line and unit in line and " ms" not in line


def test_a_target_the_traces_do_not_hold_names_those_they_do(store_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["traces", "import", str(SLICE), "--space", "nb201", "--device", "gold_6240",
                 "--store", store_url]) == 0
    capsys.readouterr()
    model = tmp_path / "e.costmodel"
    rc = main(["predictor", "fit", "--space", "nb201", "--device", "gold_6240", "--target", "energy",
               "-o", str(model), "--store", store_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "no energy values" in err and "latency (latency_p50_ms)" in err and "peak_memory" not in err.split(
        "hold:")[-1]
    assert not model.exists()


def test_unknown_target_is_refused(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["predictor", "fit", "--space", "nb201", "--device", "x", "--target", "power",
               "-o", str(tmp_path / "m"), "--store", store_url])
    assert rc == 2 and not (tmp_path / "m").exists()
    from costmeter.predictors.targets import get_target

    with pytest.raises(ConfigError, match="peak_memory"):
        get_target("memory")


@pytest.mark.parametrize("cells, message", [
    ("-5", "must be a finite number >= 0"),
    ("lots", "must be a finite number >= 0"),
    ("inf", "must be a finite number >= 0"),
])
def test_bad_memory_or_energy_cells_name_the_rows(tmp_path: Path, cells: str, message: str) -> None:
    from costmeter.results.traces import read_traces

    arch = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    path = tmp_path / "bad.csv"
    path.write_text(f"arch,device,latency_ms,energy_j\n{arch},d,1.0,0.5\n{arch},d,1.0,{cells}\n")
    with pytest.raises(ConfigError, match=message) as error:
        read_traces(path, space="nb201")
    assert "data row 2" in str(error.value) and "\n" not in str(error.value)


def test_memory_columns_need_the_long_layout(tmp_path: Path) -> None:
    from costmeter.results.traces import read_traces

    arch = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    path = tmp_path / "wide.csv"
    path.write_text(f"arch,a_ms,b_ms,peak_memory_bytes\n{arch},1.0,2.0,1000\n")
    with pytest.raises(ConfigError, match="long layout"):
        read_traces(path, space="nb201")


def test_store_keeps_cuda_and_headline_peak_memory(tmp_path: Path) -> None:
    from dataclasses import replace

    from costmeter.results.schema import MemoryInfo
    from costmeter.results.store import ResultStore
    from tests.test_store import make_result

    gpu = replace(make_result(), memory=MemoryInfo(peak_rss_bytes=900, baseline_rss_bytes=100,
                                                   peak_rss_above_baseline_bytes=800,
                                                   cuda_max_allocated_bytes=5000))
    cpu = replace(make_result(), run_id="cpu", memory=MemoryInfo(peak_rss_above_baseline_bytes=800))
    with ResultStore(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.write(gpu)
        store.write(cpu)
        frame = store.query().set_index("run_id")
        assert store.results()[0] == gpu
    assert frame.loc[gpu.run_id, "cuda_max_allocated_bytes"] == 5000
    assert frame.loc[gpu.run_id, "peak_memory_bytes"] == 5000  # on a GPU: the allocator's peak
    assert np.isnan(frame.loc["cpu", "cuda_max_allocated_bytes"])
    assert frame.loc["cpu", "peak_memory_bytes"] == 800  # else the RSS above baseline


def test_a_version_3_store_gets_the_memory_columns(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from costmeter.results.schema import MemoryInfo
    from costmeter.results.store import ResultStore
    from tests.test_store import make_result

    from dataclasses import replace

    path = tmp_path / "v3.db"
    with ResultStore(f"sqlite:///{path}") as store:
        store.write(replace(make_result(), memory=MemoryInfo(peak_rss_above_baseline_bytes=700,
                                                             cuda_max_allocated_bytes=None)))
        store.write(replace(make_result(), run_id="gpu", memory=MemoryInfo(cuda_max_allocated_bytes=4096)))
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # back to layout version 3: without the two columns
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN cuda_max_allocated_bytes"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN peak_memory_bytes"))
        conn.execute(sa.text("UPDATE meta SET value = '3' WHERE name = 'store_version'"))
    engine.dispose()
    with ResultStore(f"sqlite:///{path}") as store:
        frame = store.query().set_index("run_id")
    assert frame.loc["gpu", "cuda_max_allocated_bytes"] == 4096
    assert frame.loc["gpu", "peak_memory_bytes"] == 4096
    assert frame.drop("gpu")["peak_memory_bytes"].tolist() == [700]


def _matmul_onnx(path: Path, width: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, width), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
                              initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_graph_level_fit_and_predict_from_onnx_traces(store_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    widths = [50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000]
    rows = []
    for width in widths:
        _matmul_onnx(tmp_path / f"mm{width}.onnx", width)
        # made up: 40 MiB + twice the weights + the live activations (x and y)
        peak = 40 * 2**20 + 2 * 4 * 64 * width + 4 * (64 + width)
        rows.append(f"mm{width}.onnx,cpu,{0.01 * width:.3f},{peak},")
    trace = tmp_path / "mm.csv"
    trace.write_text("onnx_path,device,latency_ms,peak_memory_bytes,energy_j\n" + "\n".join(rows) + "\n")
    assert main(["traces", "import", str(trace), "--store", store_url, "--runtime", "onnxruntime"]) == 0
    capsys.readouterr()
    model = tmp_path / "mem.costmodel"
    assert main(["predictor", "fit", "--device", "cpu", "--target", "peak_memory", "-o", str(model),
                 "--store", store_url, "--workdir", str(tmp_path / "wd")]) == 0
    assert "peak_memory of 10 models" in capsys.readouterr().out
    new = _matmul_onnx(tmp_path / "mm3000.onnx", 3000)  # larger than every training model
    assert main(["predict", str(model), "--model", str(new), "--workdir", str(tmp_path / "wd")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    expected = (40 * 2**20 + 2 * 4 * 64 * 3000 + 4 * (64 + 3000)) / 2**20
    shown = float(line.split("peak_memory ")[1].split(" MiB")[0])
    assert shown == pytest.approx(expected, rel=0.01)
    rc = main(["predictor", "fit", "--device", "cpu", "--target", "energy", "-o", str(tmp_path / "e"),
               "--store", store_url, "--workdir", str(tmp_path / "wd")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "peak_memory (peak_memory_bytes)" in err
    assert not (tmp_path / "e").exists()
