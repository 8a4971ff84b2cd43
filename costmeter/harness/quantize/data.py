"""Calibration, held-out and labelled input sets: parsed, checked against the model, hashed, cached.

- ``--calibration random:N`` draws N inputs like the benchmark's (standard normal floats, token
  ids in range) from seeds of their own; ``--calibration FILE.npz`` gives one array per model
  input, named like the input, with the samples along the first axis. Random inputs make
  activation scales unrepresentative of real data: a warning says so with every result.
- Held-out inputs (fidelity against fp32) come from other seeds, never the calibration's, or
  from ``--accuracy-data FILE.npz`` (the model's inputs plus ``labels``, one int per sample).
- A set's identity is the SHA-256 of its arrays (names, dtypes, shapes, bytes); the arrays are
  kept under ``<workdir>/cache/calibration/<hash>.npz`` so that converter processes read them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError

CALIBRATION_SEED = 1_000_000  # sample i uses seed CALIBRATION_SEED + i
HELDOUT_SEED = 2_000_000
HELDOUT_COUNT = 32  # held-out inputs for the fidelity figures when no --accuracy-data is given
LABELS = "labels"
RANDOM_WARNING = ("calibrated on random inputs (--calibration random:N): activation scales are not "
                  "representative of real data; give --calibration FILE.npz with real inputs")
HASH_CHARS = 16


@dataclass(frozen=True)
class InputSet:
    """Named arrays with the samples along axis 0; ``sha`` identifies them, ``origin`` says where
    they came from (``random:N``, a file name, ``held-out random``)."""

    arrays: dict[str, Any]
    sha: str
    origin: str
    labels: Any = None

    @property
    def count(self) -> int:
        """Number of samples."""
        return int(next(iter(self.arrays.values())).shape[0])


def digest_arrays(arrays: dict[str, Any]) -> str:
    """16-hex-digit SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order)."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:HASH_CHARS]


def parse_calibration_spec(spec: str) -> tuple[str, int | str]:
    """``random:N`` -> ("random", N >= 1); ``FILE.npz`` -> ("file", path). ConfigError otherwise."""
    text = spec.strip()
    if text.startswith("random:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--calibration {spec!r}: random:N needs N >= 1 samples, e.g. random:32")
        return "random", int(count)
    if text.startswith("sha:"):
        return "sha", text[4:]
    if not text.endswith(".npz"):
        raise ConfigError(f"--calibration {spec!r} is neither random:N nor a FILE.npz; give one of them")
    if not Path(text).is_file():
        raise ConfigError(f"calibration file {text} not found; check the path")
    return "file", text


def random_set(source: Any, count: int, seed: int, origin: str) -> InputSet:
    """``count`` inputs drawn like the benchmark's, sample i from ``seed + i``."""
    import numpy as np

    samples = [source.example_inputs(1, seed=seed + i) for i in range(count)]
    arrays = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
    return InputSet(arrays, digest_arrays(arrays), origin)


def load_npz_set(path: str, source: Any, what: str, with_labels: bool = False) -> InputSet:
    """Read ``path`` and check it against ``source``'s inputs (names, per-sample shapes, kinds,
    one sample count); ConfigError naming the input and both shapes when they differ."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} file {path} cannot be read as .npz ({error}); save it with numpy.savez") from None
    labels = arrays.pop(LABELS, None)
    if with_labels and labels is None:
        raise ConfigError(f"{what} file {path} has no '{LABELS}' array; add one int label per sample")
    expected = {spec.name: spec for spec in source.inputs}
    if set(arrays) != set(expected):
        if len(arrays) == 1 and len(expected) == 1:  # one input: the name may differ
            arrays = {source.inputs[0].name: next(iter(arrays.values()))}
        else:
            raise ConfigError(
                f"{what} file {path} has arrays {sorted(arrays)}, model {source.model_id} takes "
                f"{sorted(expected)}; name one array per model input")
    counts = set()
    for name, array in arrays.items():
        spec = expected[name]
        if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != tuple(spec.shape):
            raise ConfigError(
                f"{what} file {path}: input {name!r} has shape {tuple(array.shape)}, model {source.model_id} "
                f"expects (N, {', '.join(str(d) for d in spec.shape)}); save one sample per row")
        wanted_kind = np.dtype(spec.dtype).kind
        if (wanted_kind in "iub") != (array.dtype.kind in "iub"):
            raise ConfigError(f"{what} file {path}: input {name!r} is {array.dtype}, the model takes "
                              f"{spec.dtype}; convert the array")
        arrays[name] = array.astype(spec.dtype, copy=False)
        counts.add(int(array.shape[0]))
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"{what} file {path}: inputs hold {sorted(counts)} samples; give every input "
                          "the same number of samples (at least one)")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != counts.pop() or labels.dtype.kind not in "iu":
            raise ConfigError(f"{what} file {path}: '{LABELS}' must be one int per sample; it is "
                              f"{labels.dtype} {tuple(labels.shape)}")
    return InputSet(arrays, digest_arrays({**arrays, **({LABELS: labels} if labels is not None else {})}),
                    Path(path).name, labels)


def calibration_option(spec: str, sources: list[Any], workdir: Path | str) -> str:
    """Check ``--calibration`` against every model and return the key's spelling of it:
    ``random:N``, or ``sha:<hash>`` for a file (its arrays cached under the working folder)."""
    kind, value = parse_calibration_spec(spec)
    if kind == "random":
        return f"random:{value}"
    if kind == "sha":
        raise ConfigError(f"--calibration {spec!r}: give random:N or a FILE.npz")
    if not sources:  # only python models: keyed per model once inspected (cli check_inspected_sets)
        return str(value)
    sets = [load_npz_set(str(value), source, "calibration") for source in sources]
    store_set(sets[0], workdir)
    return f"sha:{sets[0].sha}"


def store_set(data: InputSet, workdir: Path | str) -> Path:
    """Write ``data``'s arrays to ``<workdir>/cache/calibration/<sha>.npz`` (atomic; kept)."""
    import numpy as np

    from costmeter.workdir import Workdir

    path = Workdir.of(workdir).cache("calibration") / f"{data.sha}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **data.arrays, **({LABELS: data.labels} if data.labels is not None else {}))
        tmp.replace(path)
    return path


def calibration_set(option: str, source: Any, workdir: Path | str) -> tuple[InputSet, Path]:
    """The calibration inputs named by a run's ``calibration`` option, and their cached file."""
    kind, value = parse_calibration_spec(option)
    if kind == "random":
        data = random_set(source, int(value), CALIBRATION_SEED, option)
        return data, store_set(data, workdir)
    from costmeter.workdir import Workdir

    path = Workdir.of(workdir).cache("calibration") / f"{value}.npz"
    if not path.is_file():
        raise ConfigError(f"calibration set {value} is not in {path.parent}; pass --calibration FILE.npz again")
    return load_npz_set(str(path), source, "calibration"), path


def heldout_set(source: Any, accuracy_data: str | None) -> InputSet:
    """The inputs the fidelity figures use: ``--accuracy-data`` (with labels) when given, else
    :data:`HELDOUT_COUNT` random inputs from seeds no calibration set uses."""
    if accuracy_data:
        return load_npz_set(accuracy_data, source, "accuracy data", with_labels=True)
    return random_set(source, HELDOUT_COUNT, HELDOUT_SEED, "held-out random")
