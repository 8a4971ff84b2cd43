"""Once-for-All MobileNetV3 search space (Cai et al., "Once-for-All", ICLR 2020), width 1.0.

Network: 3x3 stride-2 stem conv to 16 channels (BN, h-swish); a fixed first block
(depthwise 3x3 + pointwise 16->16, ReLU, residual); five elastic stages of inverted-bottleneck
(MBConv) blocks with widths 24/40/80/112/160, first-block strides 2/2/2/1/2, activations
ReLU/ReLU/h-swish/h-swish/h-swish and squeeze-excite in stages 2, 4 and 5; then a 1x1 conv to
960 (BN, h-swish), global average pool, a 1x1 conv to 1280 (no BN, h-swish) and a linear
classifier to 1000 classes.

Elastic dimensions: depth per stage {2, 3, 4}; kernel {3, 5, 7} and expand ratio {3, 4, 6} per
block; input resolution 128..224 in steps of 4 (25 values, OFA's training resolutions).

Encodings:

- *string*: ``r176|k3e4,k5e6|k7e3,k3e4,k5e6|...`` -- resolution, then one group per stage with
  one ``k<kernel>e<expand>`` token per active block (depth = number of tokens);
- *OFA dict*: ``{"ks": [20], "e": [20], "d": [5], "r": [176]}`` as OFA's code writes it
  (slots beyond a stage's depth are ignored);
- *array*: ``int`` array ``(n, 46)``: ``[r, d1..d5, k1..k20, e1..e20]`` with 0 in the
  inactive slots (the canonical form; see :func:`to_array`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from costmeter.errors import ConfigError, UnsupportedError

NAME = "ofa_mbv3"
FEATURE_SCHEMA_VERSION = 1
CAPABILITIES: frozenset[str] = frozenset({"lut"})
N_STAGES = 5
MAX_DEPTH = 4
N_SLOTS = N_STAGES * MAX_DEPTH
DEPTHS: tuple[int, ...] = (2, 3, 4)
KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (3, 4, 6)
RESOLUTIONS: tuple[int, ...] = tuple(range(128, 225, 4))
STAGE_WIDTHS: tuple[int, ...] = (24, 40, 80, 112, 160)
STAGE_STRIDES: tuple[int, ...] = (2, 2, 2, 1, 2)
STAGE_ACTS: tuple[str, ...] = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE: tuple[bool, ...] = (False, True, False, True, True)
STEM_WIDTH = 16
FINAL_EXPAND_WIDTH = 960
FEATURE_MIX_WIDTH = 1280
NUM_CLASSES = 1000
SE_REDUCTION = 4
ARRAY_WIDTH = 1 + N_STAGES + 2 * N_SLOTS
DECODE_CHUNK = 8192  # strings decoded per vectorised pass
_PER_STAGE = sum(len(KERNELS) ** d * len(EXPANDS) ** d for d in DEPTHS)
SIZE = _PER_STAGE ** N_STAGES * len(RESOLUTIONS)
_BLOCK = re.compile(r"^k(\d+)e(\d+)$")


def make_divisible(value: np.ndarray | float, divisor: int = 8) -> np.ndarray:
    """Round channels to a multiple of ``divisor`` (never below 90% of ``value``), as in OFA."""
    v = np.asarray(value, dtype=np.float64)
    new = np.maximum(divisor, np.floor(v + divisor / 2) // divisor * divisor)
    return np.where(new < 0.9 * v, new + divisor, new).astype(np.int64)


# ----------------------------------------------------------------------------- parse / format
def _check_values(field: str, value: int, allowed: Sequence[int]) -> int:
    if int(value) not in allowed:
        raise ConfigError(f"ofa_mbv3: {field} = {value} is not allowed; allowed: "
                          f"{', '.join(str(a) for a in allowed) if len(allowed) < 10 else f'{allowed[0]}..{allowed[-1]} step 4'}")
    return int(value)


def _from_parts(r: int, depths: Sequence[int], ks: Sequence[int], es: Sequence[int]) -> np.ndarray:
    row = np.zeros(ARRAY_WIDTH, dtype=np.int64)
    row[0] = _check_values("resolution", r, RESOLUTIONS)
    for s in range(N_STAGES):
        row[1 + s] = _check_values(f"stage {s + 1} depth", depths[s], DEPTHS)
        for b in range(int(depths[s])):
            slot = s * MAX_DEPTH + b
            row[1 + N_STAGES + slot] = _check_values(f"stage {s + 1} block {b + 1} kernel",
                                                     ks[slot], KERNELS)
            row[1 + N_STAGES + N_SLOTS + slot] = _check_values(
                f"stage {s + 1} block {b + 1} expand", es[slot], EXPANDS)
    return row


def parse(text: str) -> np.ndarray:
    """Parse an architecture string into its canonical array row; ConfigError names the field."""
    if not isinstance(text, str):
        raise ConfigError(f"ofa_mbv3: architecture must be a string, got {type(text).__name__}")
    parts = text.strip().split("|")
    if len(parts) != 1 + N_STAGES or not re.fullmatch(r"r\d+", parts[0]):
        raise ConfigError(f"ofa_mbv3: {text!r} must be 'r<resolution>' then {N_STAGES} stage "
                          "groups separated by '|' (like r224|k3e4,k5e6|...)")
    ks = [0] * N_SLOTS
    es = [0] * N_SLOTS
    depths = []
    for s, group in enumerate(parts[1:]):
        tokens = group.split(",") if group else []
        depths.append(len(tokens))
        if len(tokens) not in DEPTHS:
            raise ConfigError(f"ofa_mbv3: stage {s + 1} has {len(tokens)} blocks; "
                              f"allowed depths: {', '.join(map(str, DEPTHS))}")
        for b, token in enumerate(tokens):
            m = _BLOCK.match(token.strip())
            if m is None:
                raise ConfigError(f"ofa_mbv3: stage {s + 1} block {b + 1} token {token!r} "
                                  "is not of the form k<kernel>e<expand> (like k5e6)")
            ks[s * MAX_DEPTH + b], es[s * MAX_DEPTH + b] = int(m.group(1)), int(m.group(2))
    return _from_parts(int(parts[0][1:]), depths, ks, es)


def from_ofa_dict(arch: dict[str, Any]) -> np.ndarray:
    """Canonical array row of an OFA-style dict ``{"ks", "e", "d", "r"}``."""
    missing = [k for k in ("ks", "e", "d", "r") if k not in arch]
    if missing:
        raise ConfigError(f"ofa_mbv3: architecture dict lacks {', '.join(missing)} "
                          "(expected keys ks, e, d, r)")
    r = arch["r"][0] if isinstance(arch["r"], (list, tuple)) else arch["r"]
    for key, n in (("ks", N_SLOTS), ("e", N_SLOTS), ("d", N_STAGES)):
        if len(arch[key]) != n:
            raise ConfigError(f"ofa_mbv3: {key} has {len(arch[key])} values, expected {n}")
    return _from_parts(int(r), arch["d"], arch["ks"], arch["e"])


def format_arch(row: Sequence[int] | np.ndarray) -> str:
    """Canonical string of one array row (inverse of :func:`parse`)."""
    a = to_array(np.asarray(row).reshape(1, -1))[0]
    groups = []
    for s in range(N_STAGES):
        toks = [f"k{a[1 + N_STAGES + s * MAX_DEPTH + b]}e{a[1 + N_STAGES + N_SLOTS + s * MAX_DEPTH + b]}"
                for b in range(int(a[1 + s]))]
        groups.append(",".join(toks))
    return f"r{a[0]}|" + "|".join(groups)


def canonical(arch: Any) -> str:
    """Canonical string of any accepted encoding."""
    return format_arch(to_array([arch])[0])


def to_ofa_dict(arch: Any) -> dict[str, list[int]]:
    """OFA-style dict of one architecture (inactive slots filled with the stage's last block)."""
    a = to_array([arch])[0]
    ks = a[1 + N_STAGES:1 + N_STAGES + N_SLOTS].tolist()
    es = a[1 + N_STAGES + N_SLOTS:].tolist()
    for s in range(N_STAGES):
        d = int(a[1 + s])
        for b in range(d, MAX_DEPTH):
            ks[s * MAX_DEPTH + b] = ks[s * MAX_DEPTH + d - 1]
            es[s * MAX_DEPTH + b] = es[s * MAX_DEPTH + d - 1]
    return {"ks": ks, "e": es, "d": a[1:1 + N_STAGES].tolist(), "r": [int(a[0])]}


def _allowed_mask(values: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    lut = np.zeros(max(allowed) + 2, dtype=bool)
    lut[list(allowed)] = True
    return lut[np.clip(values, 0, len(lut) - 1)] & (values >= 0)


def _byte_mask(allowed: Sequence[int]) -> np.ndarray:
    mask = np.zeros(256, dtype=np.uint8)
    mask[list(allowed)] = 1
    return mask


_OK_R, _OK_D, _OK_K, _OK_E = (_byte_mask(v) for v in (RESOLUTIONS, DEPTHS, KERNELS, EXPANDS))
_ACTIVE_SLOTS = (np.arange(MAX_DEPTH)[None, :] < np.arange(256)[:, None]).astype(np.uint8)
"""depth -> 0/1 per slot of a stage (uint8, so that masks multiply bytes without casts)"""
VALIDATE_CHUNK = 4096  # rows checked per pass (the byte copies stay in cache)


def _validate_array(a: np.ndarray) -> np.ndarray:
    """Check an (n, 46) array and zero the inactive slots (vectorised).

    Arrays whose values all fit a byte are checked, :data:`VALIDATE_CHUNK` rows at a time,
    with byte-indexed 0/1 masks: every field in its allowed set, where an inactive slot (zeroed)
    must look invalid and an active one valid. Anything else (or anything invalid) goes
    through the field-by-field check that names the first bad value."""
    if a.ndim != 2 or a.shape[1] != ARRAY_WIDTH:
        raise ConfigError(f"ofa_mbv3: array encoding must have shape (n, {ARRAY_WIDTH}), got {a.shape}")
    out = np.empty(a.shape, dtype=np.int64)
    k0, e0 = 1 + N_STAGES, 1 + N_STAGES + N_SLOTS
    for start in range(0, len(a), VALIDATE_CHUNK):
        part = a[start:start + VALIDATE_CHUNK]
        if not (part.min() >= 0 and part.max() < 256):
            return _validate_slowly(a)
        b = part.astype(np.uint8)
        depth = b[:, 1:k0]
        active = np.take(_ACTIVE_SLOTS, depth, axis=0).reshape(len(b), N_SLOTS)
        b[:, k0:e0] *= active
        b[:, e0:] *= active
        if not (np.take(_OK_R, b[:, 0]).all() and np.take(_OK_D, depth).all()
                and np.array_equal(np.take(_OK_K, b[:, k0:e0]), active)
                and np.array_equal(np.take(_OK_E, b[:, e0:]), active)):
            return _validate_slowly(a)
        out[start:start + VALIDATE_CHUNK] = b
    return out


def _validate_slowly(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int64, copy=True)
    depth = a[:, 1:1 + N_STAGES]
    active = (np.arange(MAX_DEPTH)[None, None, :] < depth[:, :, None]).reshape(len(a), N_SLOTS)
    ks = a[:, 1 + N_STAGES:1 + N_STAGES + N_SLOTS]
    es = a[:, 1 + N_STAGES + N_SLOTS:]
    ks *= active
    es *= active
    checks = [("resolution", a[:, :1], RESOLUTIONS, None), ("depth", depth, DEPTHS, None),
              ("kernel", ks, KERNELS, active), ("expand", es, EXPANDS, active)]
    for field, values, allowed, mask in checks:
        bad = ~_allowed_mask(values, allowed)
        if mask is not None:
            bad &= mask
        if bad.any():
            row, col = np.argwhere(bad)[0]
            where = (f"stage {col // MAX_DEPTH + 1} block {col % MAX_DEPTH + 1} "
                     if field in ("kernel", "expand") else
                     (f"stage {col + 1} " if field == "depth" else ""))
            _check_values(f"{where}{field} (row {row})", int(values[row, col]), allowed)
    return a


def to_array(archs: Iterable[Any] | np.ndarray | str) -> np.ndarray:
    """Canonical ``(n, 46)`` int array of strings, OFA dicts, rows, or an int array.

    Lists of canonical strings are decoded by token lookups (:mod:`.strings`, in chunks of
    :data:`DECODE_CHUNK` so the working set stays in cache; what it decodes is in the space);
    anything else, and any string the fast path cannot vouch for, goes through :func:`parse`,
    whose ConfigError names the bad field."""
    if isinstance(archs, (str, dict)):
        archs = [archs]
    if isinstance(archs, np.ndarray) and archs.dtype.kind in "iu":
        return _validate_array(archs.reshape(1, -1) if archs.ndim == 1 else archs)
    if not isinstance(archs, (list, tuple)):
        archs = list(archs)
    if archs and set(map(type, archs)) == {str}:
        from costmeter.models.spaces.ofa_mbv3.strings import decode_canonical

        parts = [decode_canonical(archs[i:i + DECODE_CHUNK])
                 for i in range(0, len(archs), DECODE_CHUNK)]
        if all(part is not None for part in parts):
            return np.concatenate(parts)  # type: ignore[arg-type]
    rows = [parse(a) if isinstance(a, str) else from_ofa_dict(a) if isinstance(a, dict)
            else np.asarray(a, dtype=np.int64) for a in archs]
    if not rows:
        return np.zeros((0, ARRAY_WIDTH), dtype=np.int64)
    return _validate_array(np.stack(rows))


def sample_array(n: int, seed: int = 0) -> np.ndarray:
    """``n`` architectures drawn uniformly per dimension, as a canonical ``(n, 46)`` array.

    Nested: each field has its own random stream, filled row by row, so the first ``k`` rows
    of ``sample_array(n, seed)`` are ``sample_array(k, seed)``."""
    r_rng, d_rng, k_rng, e_rng = (np.random.default_rng(s)
                                  for s in np.random.SeedSequence(seed).spawn(4))
    a = np.zeros((n, ARRAY_WIDTH), dtype=np.int64)
    a[:, 0] = np.asarray(RESOLUTIONS)[r_rng.integers(len(RESOLUTIONS), size=n)]
    a[:, 1:1 + N_STAGES] = np.asarray(DEPTHS)[d_rng.integers(len(DEPTHS), size=(n, N_STAGES))]
    a[:, 1 + N_STAGES:1 + N_STAGES + N_SLOTS] = np.asarray(KERNELS)[
        k_rng.integers(len(KERNELS), size=(n, N_SLOTS))]
    a[:, 1 + N_STAGES + N_SLOTS:] = np.asarray(EXPANDS)[e_rng.integers(len(EXPANDS), size=(n, N_SLOTS))]
    return _validate_array(a)


def sample(n: int, seed: int = 0) -> list[str]:
    """``n`` architecture strings drawn uniformly per dimension (see :func:`sample_array`)."""
    return [format_arch(row) for row in sample_array(n, seed)]


def enumerate_archs() -> list[str]:
    """Not available: the space holds about 5e20 architectures."""
    raise UnsupportedError(f"ofa_mbv3 has {SIZE:.3g} architectures and cannot be enumerated; "
                           "use sample(n) instead")


def input_shape(arch: Any, batch: int = 1) -> tuple[int, ...]:
    """Input tensor shape (NCHW) at the architecture's resolution."""
    r = int(to_array([arch])[0, 0])
    return (int(batch), 3, r, r)


def build_torch(arch: Any, num_classes: int = NUM_CLASSES) -> Any:
    """The network of ``arch`` as a ``torch.nn.Module`` (random init, eval mode)."""
    from costmeter.models.spaces.ofa_mbv3.torch_module import OFAMobileNetV3

    return OFAMobileNetV3(blocks(arch), num_classes=num_classes).eval()


def blocks(arch: Any) -> list[dict[str, Any]]:
    """The active MBConv blocks of one architecture, in order, with all their shapes."""
    a = to_array([arch])[0]
    out = []
    h = -(-int(a[0]) // 2)
    c_in = STEM_WIDTH
    for s in range(N_STAGES):
        for b in range(int(a[1 + s])):
            slot = s * MAX_DEPTH + b
            stride = STAGE_STRIDES[s] if b == 0 else 1
            e = int(a[1 + N_STAGES + N_SLOTS + slot])
            mid = int(make_divisible(c_in * e))
            h_out = -(-h // stride)
            out.append({"stage": s + 1, "block": b + 1, "in_channels": c_in,
                        "out_channels": STAGE_WIDTHS[s], "mid_channels": mid,
                        "kernel": int(a[1 + N_STAGES + slot]), "expand": e, "stride": stride,
                        "act": STAGE_ACTS[s], "se": STAGE_SE[s],
                        "se_channels": int(make_divisible(mid // SE_REDUCTION)),
                        "input_hw": h, "output_hw": h_out,
                        "residual": stride == 1 and c_in == STAGE_WIDTHS[s]})
            c_in, h = STAGE_WIDTHS[s], h_out
    return out


# ----------------------------------------------------------------------------- analytic features
@lru_cache(maxsize=1)
def feature_names() -> tuple[str, ...]:
    """Names of the analytic features, in the column order of :func:`features`."""
    names = ["resolution", "depth_total"] + [f"stage{s + 1}_depth" for s in range(N_STAGES)]
    names += [f"n_k{k}e{e}" for k in KERNELS for e in EXPANDS]
    names += [f"stage{s + 1}_macs" for s in range(N_STAGES)]
    names += [f"stage{s + 1}_params" for s in range(N_STAGES)]
    names += ["macs_total", "macs_expand", "macs_depthwise", "macs_se", "macs_project",
              "params_total", "act_elems_total"]
    names += [f"slot{s + 1}{b + 1}_{f}" for f in ("kernel", "expand")
              for s in range(N_STAGES) for b in range(MAX_DEPTH)]
    return tuple(names)


def _fixed_parts(r: np.ndarray) -> tuple[np.ndarray, float]:
    """MACs (per row) and parameters of the stem, first block and head at resolution ``r``."""
    h0 = -(-r // 2)
    h5 = h0
    for stride in STAGE_STRIDES:
        h5 = -(-h5 // stride)
    c0, c5 = STEM_WIDTH, STAGE_WIDTHS[-1]
    macs_ = (h0 * h0 * (3 * c0 * 9 + c0 * 9 + c0 * c0) + h5 * h5 * c5 * FINAL_EXPAND_WIDTH
             + FINAL_EXPAND_WIDTH * FEATURE_MIX_WIDTH + FEATURE_MIX_WIDTH * NUM_CLASSES)
    params = (3 * c0 * 9 + 2 * c0 + c0 * 9 + 2 * c0 + c0 * c0 + 2 * c0
              + c5 * FINAL_EXPAND_WIDTH + 2 * FINAL_EXPAND_WIDTH
              + FINAL_EXPAND_WIDTH * FEATURE_MIX_WIDTH + FEATURE_MIX_WIDTH * NUM_CLASSES + NUM_CLASSES)
    return macs_.astype(np.float64), float(params)


_BLOCK_TABLES = ("macs_expand", "macs_depthwise", "macs_se", "macs_project", "params", "elems")


@lru_cache(maxsize=1)
def _block_tables() -> np.ndarray:
    """Per-block quantities for every (resolution, slot, kernel, expand) combination.

    Shape ``(25 * 20 * 4 * 4, 6)``: rows indexed by (resolution, slot, kernel, expand),
    columns :data:`_BLOCK_TABLES`; kernel/expand index 0 is an inactive slot (all zeros),
    1..3 the allowed values in order.
    """
    r = np.asarray(RESOLUTIONS)[:, None, None, None]
    ks = np.asarray((0,) + KERNELS, dtype=np.float64)[None, None, :, None]
    es = np.asarray((0,) + EXPANDS, dtype=np.float64)[None, None, None, :]
    slot_h_in = np.zeros((len(RESOLUTIONS), N_SLOTS))
    slot_h_out = np.zeros_like(slot_h_in)
    c_in, c_out, se_on = np.zeros(N_SLOTS), np.zeros(N_SLOTS), np.zeros(N_SLOTS)
    h = -(-r[:, 0, 0, 0] // 2)
    for st in range(N_STAGES):
        ho = -(-h // STAGE_STRIDES[st])
        sl = slice(st * MAX_DEPTH, (st + 1) * MAX_DEPTH)
        slot_h_out[:, sl] = ho[:, None]
        slot_h_in[:, sl] = ho[:, None]
        slot_h_in[:, st * MAX_DEPTH] = h
        c_in[sl] = STAGE_WIDTHS[st]
        c_in[st * MAX_DEPTH] = STEM_WIDTH if st == 0 else STAGE_WIDTHS[st - 1]
        c_out[sl] = STAGE_WIDTHS[st]
        se_on[sl] = float(STAGE_SE[st])
        h = ho
    h_in = slot_h_in[:, :, None, None]
    h_out = slot_h_out[:, :, None, None]
    c_in, c_out, se_on = (v[None, :, None, None] for v in (c_in, c_out, se_on))
    active = (es > 0) & (ks > 0)
    mid = make_divisible(c_in * es).astype(np.float64) * active
    se_mid = make_divisible(mid // SE_REDUCTION).astype(np.float64) * active * se_on
    out = [h_in ** 2 * c_in * mid, h_out ** 2 * mid * ks ** 2, 2 * mid * se_mid,
           h_out ** 2 * mid * c_out,
           (c_in * mid + 2 * mid + mid * ks ** 2 + 2 * mid + mid * c_out + 2 * c_out * active
            + (2 * mid * se_mid + se_mid + mid) * (se_mid > 0)),
           h_in ** 2 * mid + 2 * h_out ** 2 * mid + h_out ** 2 * c_out * active]
    tables = np.stack([np.broadcast_to(t, (len(RESOLUTIONS), N_SLOTS, 4, 4)) for t in out], -1)
    tables = np.ascontiguousarray(tables.reshape(-1, len(_BLOCK_TABLES)))
    tables.setflags(write=False)
    return tables


@lru_cache(maxsize=1)
def _block_sums() -> np.ndarray:
    """``(20 * 6, 17)`` 0/1 matrix summing the per-block quantities of :func:`_block_tables`:
    MACs per stage (5), parameters per stage (5), each quantity over the network (6), MACs
    over the network (1)."""
    q = len(_BLOCK_TABLES)
    m = np.zeros((N_SLOTS, q, 17))
    for slot in range(N_SLOTS):
        stage = slot // MAX_DEPTH
        m[slot, :4, stage] = 1.0
        m[slot, 4, 5 + stage] = 1.0
        m[slot, np.arange(q), 10 + np.arange(q)] = 1.0
        m[slot, :4, 16] = 1.0
    return m.reshape(N_SLOTS * q, 17)


def _value_index(values: Sequence[int]) -> np.ndarray:
    lut = np.zeros(max(values) + 1, dtype=np.int64)
    lut[list(values)] = np.arange(1, len(values) + 1)
    return lut


_K_INDEX = _value_index(KERNELS)
_E_INDEX = _value_index(EXPANDS)
_COMBO = (_K_INDEX[:, None] * 4 + _E_INDEX[None, :]).ravel()
"""(kernel index * 4 + expand index) of ``kernel * len(_E_INDEX) + expand``: one lookup"""


def feature_matrix(archs: Iterable[Any] | np.ndarray, validated: bool = False) -> np.ndarray:
    """Analytic features as a float64 ``(n, len(feature_names()))`` array.

    Vectorised: per-block MACs/params for every (resolution, slot, kernel, expand) are
    tabulated once and gathered. MACs count multiply-accumulates of convolutions and linear
    layers at batch 1; parameters are trainable ones (BN running statistics excluded).
    ``validated``: ``archs`` is already what :func:`to_array` returned, used as it is.
    """
    a = archs if validated else to_array(archs)
    n = len(a)
    r = a[:, 0]
    depth = a[:, 1:1 + N_STAGES]
    ks = a[:, 1 + N_STAGES:1 + N_STAGES + N_SLOTS]
    es = a[:, 1 + N_STAGES + N_SLOTS:]
    combo = np.take(_COMBO, ks * len(_E_INDEX) + es)           # 0 = inactive
    flat = (((r - RESOLUTIONS[0]) // 4)[:, None] * N_SLOTS + np.arange(N_SLOTS)) * 16 + combo
    per_block = np.take(_block_tables(), flat, axis=0).reshape(n, -1)  # (n, 20 * 6)
    sums = per_block @ _block_sums()  # integers below 2**53: exact in any order
    stage_macs, stage_params, totals = sums[:, :5], sums[:, 5:10], sums[:, 10:16]
    fixed_macs, fixed_params = _fixed_parts(r)
    combo_counts = np.bincount((np.arange(n)[:, None] * 16 + combo).ravel(),
                               minlength=16 * n).reshape(n, 16)
    counts = combo_counts[:, [4 * (1 + i) + 1 + j for i in range(len(KERNELS))
                              for j in range(len(EXPANDS))]]
    out = np.empty((n, len(feature_names())))
    cols = [r[:, None], depth.sum(axis=1, keepdims=True), depth, counts, stage_macs,
            stage_params, (fixed_macs + sums[:, 16])[:, None], totals[:, :4],
            (fixed_params + totals[:, 4])[:, None], totals[:, 5:6], ks, es]
    start = 0
    for c in cols:
        out[:, start:start + c.shape[1]] = c
        start += c.shape[1]
    return out


def features(archs: Iterable[Any] | np.ndarray) -> Any:
    """Analytic features as a pandas DataFrame with named columns (see :func:`feature_names`)."""
    import pandas as pd

    return pd.DataFrame(feature_matrix(archs), columns=list(feature_names()))


def param_count(arch: Any) -> int:
    """Trainable parameters of one architecture (analytic)."""
    return int(feature_matrix([arch])[0, feature_names().index("params_total")])


def macs(arch: Any) -> int:
    """Multiply-accumulates at batch 1 (analytic)."""
    return int(feature_matrix([arch])[0, feature_names().index("macs_total")])


__all__ = [
    "FEATURE_SCHEMA_VERSION",
    "NAME",
    "SIZE",
    "blocks",
    "build_torch",
    "canonical",
    "enumerate_archs",
    "feature_matrix",
    "feature_names",
    "features",
    "format_arch",
    "from_ofa_dict",
    "input_shape",
    "macs",
    "param_count",
    "parse",
    "sample",
    "sample_array",
    "to_array",
    "to_ofa_dict",
]
