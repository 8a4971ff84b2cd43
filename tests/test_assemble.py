"""The runner's merge of per-process outcomes: each process judged on its own, the headline on
all of them, parity failures INVALID, and the judged protocol recorded with the result."""
from __future__ import annotations

import numpy as np
import pytest

from costmeter.harness.config import ProtocolConfig, RunConfig
from costmeter.harness.runner import assemble
from costmeter.harness.verdict import ONE_PROCESS_WARNING
from costmeter.harness.worker import WorkerOutcome
from costmeter.results.schema import BenchKey, Validity

KEY = BenchKey("m", "h" * 16, "fake", "fake", 1, (1, 4), "float32", None)
CFG = RunConfig(model="m", device="fake", runtime="fake", processes=3,
                protocol=ProtocolConfig(percentiles=(50.0, 90.0), min_count=500))


def _outcome(samples: np.ndarray, hit_max_time: bool = False, warmup_cut_short: bool = False) -> WorkerOutcome:
    return WorkerOutcome("ok", data={
        "samples_ns": [int(s) for s in samples], "warmup_count": 10, "warmup_s": 0.5, "sampling_s": 2.0,
        "hit_max_time": hit_max_time, "warmup_cut_short": warmup_cut_short, "blocks": 0,
        "throttled_blocks": 0, "health": [], "memory": {}, "prepare_session_s": 0.1, "environment": {},
        "energy": {"provenance": "unavailable", "energy_j": None, "reason": "none here"}})


def _assemble(outcomes: list[WorkerOutcome], extra: dict | None = None, cfg: RunConfig = CFG):
    base = dict(key=KEY, run_id="r", tag=None, started_at="2026-01-01T00:00:00.000+00:00", model_info={})
    return assemble(cfg, outcomes, base, dict(extra or {}), None, {})


def test_a_process_short_of_its_count_invalidates_the_pooled_result() -> None:
    rng = np.random.default_rng(0)
    good = [_outcome(rng.normal(1e6, 1e4, 3000)) for _ in range(2)]
    short = _outcome(rng.normal(1e6, 1e4, 200), hit_max_time=True)
    result = _assemble([good[0], short, good[1]])
    assert result.validity is Validity.INVALID
    assert any(r.startswith("process 2 of 3: maximum time") for r in result.reasons), result.reasons
    assert result.extra["per_process_samples"] == [3000, 200, 3000]
    fine = _assemble([*good, _outcome(rng.normal(1e6, 1e4, 3000))])
    assert fine.validity is Validity.VALID, fine.reasons
    assert ONE_PROCESS_WARNING not in fine.warnings
    assert fine.extra["protocol"]["max_rel_ci"] == 0.01 and fine.extra["protocol"]["percentiles"] == [50.0, 90.0]
    assert fine.extra["throughput_items_per_s"] == pytest.approx(1e9 / fine.measurement.summary((50.0,)).median)


def test_parity_failure_is_invalid_and_warm_up_cut_short_is_a_warning() -> None:
    rng = np.random.default_rng(1)
    one = RunConfig(model="m", device="fake", runtime="fake", protocol=CFG.protocol)
    result = _assemble([_outcome(rng.normal(1e6, 1e4, 3000), warmup_cut_short=True)],
                       extra={"parity_ok": False, "max_abs_diff": 0.5}, cfg=one)
    assert result.validity is Validity.INVALID
    assert any(r.startswith("outputs differ from torch by 0.5") for r in result.reasons)
    assert any(w.startswith("warm-up cut short") for w in result.warnings)
    assert ONE_PROCESS_WARNING in result.warnings
