"""A stored nightly history for the site tests (real SQLite store): four keys over twelve
nights, one stepping 15% slower from nightly-08 on, one 20% slower on the last night only, a
pull-request run of another commit each day, and a failed key on the last night."""
from __future__ import annotations

import numpy as np

from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore

NIGHTS = 12
KEYS = (("resnet18", "onnxruntime"), ("resnet18", "openvino"), ("vit_tiny", "onnxruntime"),
        ("vit_tiny", "openvino"))
STEPPED = "resnet18/openvino@cpu b1 t4"  # 15% slower from nightly-08 on
REGRESSED = "vit_tiny/openvino@cpu b1 t4"  # 20% slower on the last night only


def sha(night: int) -> str:
    return f"{night:02d}" + "c" * 38


def write(store: ResultStore, run_id: str, started: str, model: str, runtime: str, *,
          median_ms: float = 0.0, rng: np.random.Generator | None = None, tag: str = "nightly",
          git_sha: str = "", status: Status = Status.OK, error: str | None = None) -> None:
    key = BenchKey(model, f"hash-{model}", "cpu", runtime, 1, (1, 3, 224, 224), "float32", 4)
    measurement = None
    if status == Status.OK:
        samples = rng.lognormal(np.log(median_ms * 1e6), 0.02, 300).astype(np.int64).tolist()
        measurement = Measurement(samples_ns=[samples])
    store.write(RunResult(key=key, status=status, run_id=run_id, tag=tag, started_at=started,
                          finished_at=started, measurement=measurement,
                          validity=Validity.VALID if status == Status.OK else Validity.INVALID,
                          error=error, environment={"git_sha": git_sha, "host": "ci-box"}))


def fill(store: ResultStore) -> None:
    rng = np.random.default_rng(7)
    for night in range(NIGHTS):
        started = f"2024-07-{night + 1:02d}T02:00:00+00:00"
        for index, (model, runtime) in enumerate(KEYS):
            level = 2.0 + index
            if (model, runtime) == ("resnet18", "openvino") and night >= 8:
                level *= 1.15
            if (model, runtime) == ("vit_tiny", "openvino") and night == NIGHTS - 1:
                level *= 1.20
            write(store, f"nightly-{night:02d}", started, model, runtime, median_ms=level,
                  rng=rng, git_sha=sha(night))
        # a pull-request run between two nights measured another commit
        write(store, f"pr-{night}", f"2024-07-{night + 1:02d}T12:00:00+00:00", "resnet18",
              "openvino", median_ms=2.0, rng=rng, tag="pr", git_sha=f"{night:02d}" + "d" * 38)
    write(store, f"nightly-{NIGHTS - 1:02d}", f"2024-07-{NIGHTS:02d}T02:00:00+00:00",
          "bert_tiny", "onnxruntime", status=Status.FAILED, error="worker crashed",
          git_sha=sha(NIGHTS - 1))
