"""`bench collect` and `bench kernels detect` wiring, with real ONNX Runtime measurements."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmeter.cli import main


@pytest.mark.slow
def test_collect_then_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wd, store = tmp_path / "wd", f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["collect", "--space", "nb201", "--samples", "3", "--min-time", "0.02", "--threads", "1",
                 "--store", store, "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "measured 3 nb201 architectures" in out
    assert main(["results", "list", "--store", store]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    # a second collect skips what is already measured
    assert main(["collect", "--space", "nb201", "--samples", "3", "--min-time", "0.02", "--threads", "1",
                 "--store", store, "--workdir", str(wd)]) == 0
    assert "measured 0 nb201 architectures" in capsys.readouterr().out


@pytest.mark.slow
def test_kernels_detect_writes_rules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wd = tmp_path / "wd"
    assert main(["kernels", "detect", "--pairs", "Conv+Relu", "--repeats", "1", "--min-time", "0.05",
                 "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "fusion rules" in out and "Conv" in out
    written = list(wd.rglob("*.json"))
    assert written and any("Conv" in p.read_text() for p in written)
    json.loads(written[0].read_text())


def test_bad_pair_is_one_line(capsys: pytest.CaptureFixture) -> None:
    rc = main(["kernels", "detect", "--pairs", "Conv+Banana"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Banana" in err


def test_kernels_show_lists_kernels_and_unpriced_ops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["kernels", "show", "--model", "tiny_cnn", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kernels (onnxruntime rules on cpu)" in out and "conv" in out.lower()


@pytest.mark.slow
def test_kernel_sample_fit_then_predicted_lut(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    from costmeter.predictors.sampling import prior as kernel_prior

    monkeypatch.setattr(kernel_prior, "DEFAULT_COUNTS", {"conv": 6, "dwconv": 4, "fc": 2, "pool": 2,
                                                         "global_pool": 2, "elementwise": 2, "activation": 2})
    wd = tmp_path / "wd"
    store = f"sqlite:///{tmp_path / 'k.db'}"
    assert main(["kernels", "sample", "--min-time", "0.02", "--space-samples", "2", "--adaptive-rounds", "0",
                 "--store", store, "--workdir", str(wd)]) == 0
    assert "kernel samples in" in capsys.readouterr().out
    model = tmp_path / "k.costmodel"
    assert main(["kernels", "fit", "-o", str(model), "--workdir", str(wd)]) == 0
    assert model.exists()
    capsys.readouterr()
    out = tmp_path / "pred.json"
    assert main(["lut", "build", "--space", "nb201", "--predicted", "--predictor", str(model), "-o", str(out),
                 "--workdir", str(wd)]) == 0
    body = json.loads(out.read_text())
    assert body["entries"] and all(e["latency_ms"] > 0 for e in body["entries"])


def test_kernels_fit_cold_needs_samples_timed_in_context(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from costmeter.predictors.artifacts import read_manifest
    from costmeter.predictors.kernels.rules import builtin_rules
    from costmeter.predictors.sampling.measure import measure_kernels, samples_path
    from costmeter.predictors.sampling.configs import make_config

    configs = [make_config("conv", (1, c, 8, 8), [("Conv", {"c_out": c, "kernel": 1})]) for c in (16, 32, 64, 256)]

    def measure(groups: list[list[Path]]) -> list[list[float]]:  # cold groups hold several kernel copies
        return [[0.01 if p.name.startswith("overhead") else 0.1 if p.name.startswith("baseline")
                 else 0.5 * sum(q.name.startswith("conv_ctx") for q in g) for p in g] for g in groups]

    for context, wd in ((True, tmp_path / "ctx"), (False, tmp_path / "alone")):
        samples = measure_kernels(configs, builtin_rules("onnxruntime"), workdir=wd, measure=measure,
                                  context=context)
        samples.save(samples_path(wd, "cpu", "onnxruntime"))
    model = tmp_path / "cold.costmodel"
    assert main(["kernels", "fit", "--cold", "-o", str(model), "--workdir", str(tmp_path / "ctx")]) == 0
    assert read_manifest(model)["extra"]["kernel_timing"] == "context, cold weights"
    capsys.readouterr()
    rc = main(["kernels", "fit", "--cold", "-o", str(tmp_path / "x.costmodel"), "--workdir", str(tmp_path / "alone")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--context" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.costmodel").exists()


@pytest.mark.slow
def test_kernels_fit_calibrated_on_collected_networks_then_predict(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from costmeter.predictors.artifacts import read_manifest
    from test_calibration import _kernel_samples

    wd, store = tmp_path / "wd", f"sqlite:///{tmp_path / 'c.db'}"
    _kernel_samples(wd)
    for space, n in (("nb201", "3"), ("resnet", "2")):
        assert main(["collect", "--space", space, "--samples", n, "--min-time", "0.02", "--threads", "1",
                     "--store", store, "--workdir", str(wd)]) == 0
    capsys.readouterr()
    model = tmp_path / "k.costmodel"
    base = ["kernels", "fit", "-o", str(model), "--workdir", str(wd), "--store", store]
    for bad, message in ((["--calibrate-on", "nb201,bogus"], "bogus"), (["--calibrate-on", "nb201"], "at least 2")):
        assert main(base + bad) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not model.exists()
    assert main(base + ["--calibrate-on", "nb201,resnet"]) == 0
    out = capsys.readouterr().out
    assert "calibrated" in out and "--context" in out  # kernels timed alone: a note says what fits better
    calibration = read_manifest(model)["extra"]["calibration"]
    assert calibration["networks"] == 5 and calibration["families"] == ["nb201", "resnet"]
    assert main(["predict", str(model), "-m", "tiny_cnn", "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("tiny_cnn"))
    predicted = float(line.split("\t")[1].split(" ms")[0])
    kernel_sum = float(line.split("kernel sum ")[1].split(" ms")[0])
    assert predicted > 0
    if calibration["terms"]:  # far smaller than every calibration network: moved by at most the CV error
        assert "outside the calibration networks' sizes" in line
        assert abs(predicted / kernel_sum - 1) <= calibration["lofo_rel_rmse"] + 0.01
    else:  # no term beat the kernel sum out of family: the kernel sum is the answer, and says so
        assert "kernel sum, not calibrated" in line and predicted == pytest.approx(kernel_sum, rel=1e-3)
    assert "conv" in out  # the per kernel type breakdown
    # 5 calibration networks: a 50% interval, but too few for 90% (19 needed), said in words
    assert len(read_manifest(model)["extra"]["interval"]["scores"]) == 5
    assert main(["predict", str(model), "-m", "tiny_cnn", "--coverage", "0.5", "--no-breakdown",
                 "--workdir", str(wd)]) == 0
    assert "(50% interval)" in capsys.readouterr().out
    assert main(["predict", str(model), "-m", "tiny_cnn", "--coverage", "0.9", "--no-breakdown",
                 "--workdir", str(wd)]) == 0
    assert "no finite 90% interval: 5 calibration networks, a 90% interval needs at least 19" \
        in capsys.readouterr().out
