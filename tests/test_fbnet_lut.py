"""FBNet lookup-table blocks: registry capability, every choice at every layer, blocks that add up
to the whole network (FLOPs and parameters), dense lookups from every encoding, the batch API,
`bench predict` with a table, and a real (small) build."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from costmeter.cli import main
from costmeter.errors import ConfigError
from costmeter.models.spaces import fbnet, has_capability, lut_blocks, spaces_with
from costmeter.models.spaces.fbnet import lut as fb_lut
from costmeter.predictors.lut import blocks
from costmeter.predictors.lut.table import LatencyTable, LutEntry

ALL_SKIP = "|".join(["skip"] * 22)
ALL_BIG = "|".join(["k5_e6"] * 22)
ALL_G2 = "|".join(["k3_e1_g2", "k5_e1_g2"] * 11)


def synthetic_fbnet_table(seed: int = 0, overhead_ms: float = 0.004,
                          drop: tuple[str, ...] = ()) -> LatencyTable:
    """Random positive entries for every fbnet block (except ``drop``)."""
    rng = np.random.default_rng(seed)
    entries = []
    for spec in blocks.space_blocks("fbnet"):
        if spec.key in drop:
            continue
        latency = float(rng.uniform(0.01, 1.0))
        entries.append(LutEntry(spec.key, spec.kind, latency, latency + overhead_ms,
                                float(rng.uniform(0.001, 0.01)), 20, "measured"))
    manifest = {"space": "fbnet", "device": "cpu", "runtime": "onnxruntime", "threads": 1,
                "resolutions": [32], "overhead_ms": overhead_ms}
    return LatencyTable(manifest, entries)


# ----------------------------------------------------------------------------- registry and keys
def test_lut_capability_is_declared_in_the_registry() -> None:
    assert has_capability("fbnet", "lut") and "fbnet" in spaces_with("lut")
    assert "fbnet" in blocks.lut_spaces()
    assert lut_blocks("fbnet") is fb_lut
    assert blocks.space_resolutions("fbnet") == (32,)
    with pytest.raises(ConfigError, match="resolution 224 is not in the space; allowed: 32"):
        blocks.space_blocks("fbnet", [224])


def test_every_choice_at_every_layer_has_its_block() -> None:
    table = fb_lut.layer_specs()
    assert len(table) == 22 and all(len(row) == 9 for row in table)
    identity = [layer for layer, row in enumerate(table) if row[fbnet.BLOCKS.index("skip")] is None]
    assert identity == np.flatnonzero(~fbnet.SKIP_IS_CONV).tolist() and len(identity) == 16
    assert all(spec is not None for row in table for spec in row[:8])
    # 12 distinct layer shapes x 8 inverted residuals + 6 skip convolutions + stem, head, logits
    every = blocks.space_blocks("fbnet")
    assert len(every) == 12 * 8 + 6 + 3 == 105
    needed = {spec.key for arch in fbnet.sample(300, seed=2) for spec in blocks.arch_blocks("fbnet", arch)}
    assert needed <= {spec.key for spec in every}
    # layer 7 (16x16x32, stride 1): grouped blocks say so in their key and export apart
    g2 = table[6][fbnet.BLOCKS.index("k5_e1_g2")]
    plain = table[6][fbnet.BLOCKS.index("k5_e1")]
    assert g2.key == ("expanded_conv-input:16x16x32-output:16x16x32-expand:1-kernel:5-stride:1"
                      "-idskip:1-se:0-hs:0-groups:2")
    assert plain.key == g2.key.removesuffix("-groups:2") and plain.module_key != g2.module_key
    # layer 6 is the stride-2 one of stage 3: no residual, skip is a strided 1x1 conv
    assert table[5][0].stride == 2 and not table[5][0].idskip
    assert table[5][8].key == "skip_conv-input:32x32x24-output:16x16x32"
    assert len(blocks.arch_blocks("fbnet", ALL_SKIP)) == 3 + 6


@pytest.mark.parametrize("arch", [ALL_G2, ALL_SKIP, ALL_BIG, fbnet.sample(1, seed=11)[0]])
def test_blocks_add_up_to_the_network_macs_and_params(arch: str) -> None:
    """Run one block after the other: the blocks' FLOPs and parameters are the whole torch
    network's (and twice / equal to the analytic MACs and parameter count), and each block
    produces the shape its key promises. Grouped blocks carry their channel shuffle."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from costmeter.models.spaces.fbnet.torch_module import ChannelShuffle

    def run(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = module(x)
        return counter.get_total_flops(), out

    network = fbnet.build_torch(arch)
    total, _ = run(network, torch.randn(*fbnet.input_shape(arch)))
    flops = params = shuffles = 0
    for spec in blocks.arch_blocks("fbnet", arch):
        module = blocks.build_block_module(spec)
        count, out = run(module, torch.randn(*spec.input_shape()))
        h, w, c = spec.output_hwc
        assert tuple(out.shape[1:]) in ((c, h, w), (c,)), spec.key
        flops += count
        params += sum(p.numel() for p in module.parameters())
        shuffles += sum(isinstance(m, ChannelShuffle) for m in module.modules())
    assert flops == total == 2 * fbnet.macs(arch)
    assert params == sum(p.numel() for p in network.parameters()) == fbnet.param_count(arch)
    assert shuffles == sum(isinstance(m, ChannelShuffle) for m in network.modules())
    assert shuffles == sum(name.endswith("_g2") for name in arch.split("|"))


# ----------------------------------------------------------------------------- dense lookups
def test_dense_lookup_is_the_sum_of_the_entries_for_every_encoding() -> None:
    table = synthetic_fbnet_table()
    codes = fbnet.sample_codes(40, seed=4)
    strings = fbnet.format_many(codes)
    expected = [math.fsum(table.entries[k].latency_ms for k in table.keys_of(a)) + table.overhead_ms
                for a in strings]
    assert table.estimate_batch(strings) == pytest.approx(expected, rel=1e-12)
    assert table.estimate_batch(codes) == pytest.approx(expected, rel=1e-12)
    assert table.estimate_batch(codes.astype(np.int64)) == pytest.approx(expected, rel=1e-12)
    dicts = [{"op_idx_list": row.tolist()} for row in codes]
    assert table.estimate_batch(dicts) == pytest.approx(expected, rel=1e-12)
    assert table.estimate(strings[0].split("|")) == pytest.approx(expected[0], rel=1e-12)
    raw = [math.fsum(table.entries[k].raw_ms for k in table.keys_of(a)) for a in strings]
    assert table.estimate_batch(strings, corrected=False) == pytest.approx(raw, rel=1e-12)
    mean, unc = table.predict(strings)
    spreads = [math.sqrt(sum(table.entries[k].spread_ms ** 2 for k in table.keys_of(a)))
               for a in strings]
    assert unc == pytest.approx(spreads, rel=1e-12)
    # an identity skip costs nothing: all-skip = fixed blocks + the six skip convolutions
    fixed = math.fsum(table.entries[s.key].latency_ms for s in fb_lut.fixed_specs())
    convs = math.fsum(table.entries[s.key].latency_ms for s in blocks.arch_blocks("fbnet", ALL_SKIP)
                      if s.kind == "skip_conv")
    assert table.estimate(ALL_SKIP) == pytest.approx(fixed + convs + table.overhead_ms, rel=1e-12)


def test_a_missing_entry_and_bad_architectures_are_named() -> None:
    gone = fb_lut.layer_specs()[21][fbnet.BLOCKS.index("k5_e6")].key
    table = synthetic_fbnet_table(drop=(gone,))
    ok = "|".join(["k3_e1"] * 22)
    assert np.isfinite(table.estimate_batch([ok])).all()
    with pytest.raises(ConfigError, match=f"table has no entry {gone}"):
        table.estimate_batch([ok, "|".join(["k3_e1"] * 21 + ["k5_e6"])])
    with pytest.raises(ConfigError, match=r"layer 7 \(stage 3, block 2 of 4\) has unknown block 'k7_e6'"):
        table.estimate_batch(["|".join(["k3_e1"] * 6 + ["k7_e6"] + ["k3_e1"] * 15)])
    with pytest.raises(ConfigError, match="op code 9 at layer 1"):
        table.predict(np.full((2, 22), 9))
    with pytest.raises(ConfigError, match="unknown fbnet block kind 'Pool'"):
        fb_lut.block_module(blocks.BlockSpec("fbnet", "Pool", (4, 4, 8), (1, 1, 8)))


def test_batch_api_loads_a_saved_fbnet_table(tmp_path: Path) -> None:
    from costmeter import load_predictor
    from costmeter.predictors.api import load_lut

    table = synthetic_fbnet_table(seed=3)
    json_path, csv_path = table.save(tmp_path / "fbnet-cpu")
    header = csv_path.read_text().splitlines()[0].split(",")
    assert "groups" in header
    archs = fbnet.sample(200, seed=8)
    expected = table.estimate_batch(archs)
    for loaded in (load_predictor(json_path, device="cpu", space="fbnet"), load_lut(csv_path)):
        mean, unc = loaded.predict(archs)
        assert mean == pytest.approx(expected, rel=1e-12) and (unc > 0).all()
        assert loaded.predict(fbnet.to_array(archs))[0] == pytest.approx(expected, rel=1e-12)
        budget = float(np.median(expected))
        assert (loaded.satisfies(archs, budget) == (expected <= budget)).all()
    with pytest.raises(ConfigError, match="space 'fbnet', not 'nb201'"):
        load_lut(json_path, space="nb201")


# ----------------------------------------------------------------------------- command line
def test_bench_predict_with_an_fbnet_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = synthetic_fbnet_table(seed=5)
    json_path, _ = table.save(tmp_path / "fbnet")
    arch = fbnet.sample(1, seed=1)[0]
    assert main(["predict", str(json_path), "--model", arch, "--model", f"fbnet:{ALL_SKIP}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"fbnet:{arch}", f"fbnet:{ALL_SKIP}"]
    assert f"{table.estimate(arch):.4g} ms" in lines[0] and "lookup table" in lines[0]

    bad = [("|".join(["k3_e1"] * 21 + ["k3_e9"]), "layer 22 (stage 7, block 1 of 1) has unknown block 'k3_e9'"),
           ("fbnet:" + "|".join(["k3_e1"] * 21), "has 21 layers separated by '|', expected 22"),
           ("nb201:|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "is a nb201 architecture but")]
    for value, message in bad:
        rc = main(["predict", str(json_path), "--model", value])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_tiny_build_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """`bench lut build --space fbnet` measures real blocks with ONNX Runtime (restricted here to
    layer 2's nine choices and the stem, so it stays short): every entry positive, grouped blocks
    measured, a six-fold expansion dearer than none. The table then prices what it holds and
    names the first entry it lacks."""
    subset = [fb_lut.fixed_specs()[0], *(s for s in fb_lut.layer_specs()[1] if s is not None)]
    monkeypatch.setattr(fb_lut, "space_blocks", lambda resolutions=fb_lut.RESOLUTIONS: subset)
    out = tmp_path / "fbnet-small.json"
    assert main(["lut", "build", "--space", "fbnet", "--min-time", "0.01", "-o", str(out),
                 "--workdir", str(tmp_path / "wd")]) == 0
    assert "10 entries" in capsys.readouterr().out
    from costmeter.predictors.api import load_lut

    table = load_lut(out, space="fbnet")
    assert set(table.entries) == {s.key for s in subset}
    assert all(e.latency_ms > 0 and e.samples >= 15 for e in table.entries.values())
    layer2 = fb_lut.layer_specs()[1]
    small, big = (table.entries[layer2[fbnet.BLOCKS.index(b)].key].latency_ms for b in ("k3_e1", "k5_e6"))
    assert big > 1.5 * small, (small, big)
    assert dict(table.entries[layer2[fbnet.BLOCKS.index("k3_e1_g2")].key].fields)["groups"] == 2
    assert table.manifest["space"] == "fbnet" and table.manifest["interleave"] == 1
    rc = main(["predict", str(out), "--model", ALL_SKIP])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "table has no entry" in err
