"""FBNet space: the macro network's constants, the block choices and the architecture encodings.

Encodings of one architecture (22 searchable layers, one block choice each):

- *string* (canonical): the 22 block names joined by ``|``, e.g. ``k5_e6|skip|k3_e1_g2|...``;
- *op codes*: ``int8`` array ``(n, 22)`` of indices into :data:`BLOCKS` -- the same order as
  HW-NAS-Bench's list of FBNet primitives, so its ``op_idx_list`` is an op-code row;
- a list of 22 block names, or a dict ``{"op_idx_list": [...]}``.

No two encodings name the same network (block order inside a stage changes the function), so
the canonical form is the string itself, whitespace stripped.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

BLOCKS: tuple[str, ...] = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3",
                           "k5_e6", "skip")
SKIP = BLOCKS.index("skip")
#: depthwise kernel, expansion and 1x1-conv groups per block (0 for ``skip``)
BLOCK_KERNEL = np.array([3, 3, 3, 3, 5, 5, 5, 5, 0])
BLOCK_EXPAND = np.array([1, 1, 3, 6, 1, 1, 3, 6, 0])
BLOCK_GROUPS = np.array([1, 2, 1, 1, 1, 2, 1, 1, 0])

STAGE_DEPTHS: tuple[int, ...] = (1, 4, 4, 4, 4, 4, 1)
STAGE_WIDTHS: tuple[int, ...] = (16, 24, 32, 64, 112, 184, 352)
STAGE_STRIDES: tuple[int, ...] = (1, 1, 2, 2, 1, 2, 1)   # CIFAR setting (ImageNet: stage 2 has 2)
N_STAGES = len(STAGE_DEPTHS)
N_LAYERS = sum(STAGE_DEPTHS)  # 22
RESOLUTION = 32
STEM_WIDTH = 16
STEM_STRIDE = 1
HEAD_WIDTH = 1504
NUM_CLASSES = 100

_INDEX = {name: i for i, name in enumerate(BLOCKS)}
DECODE_CHUNK = 8192  # strings decoded per vectorised pass (the buffers stay in cache)


def _layer_shapes() -> np.ndarray:
    """``(22, 6)`` int array: stage, c_in, c_out, stride, h_in, h_out of every layer."""
    rows = []
    c, h = STEM_WIDTH, -(-RESOLUTION // STEM_STRIDE)
    for s, (depth, width, stride) in enumerate(zip(STAGE_DEPTHS, STAGE_WIDTHS, STAGE_STRIDES)):
        for b in range(depth):
            st = stride if b == 0 else 1
            h_out = -(-h // st)
            rows.append((s, c, width, st, h, h_out))
            c, h = width, h_out
    out = np.asarray(rows, dtype=np.int64)
    out.setflags(write=False)
    return out


#: per layer: stage (0-based), input/output channels, stride, input/output height (= width)
LAYERS = _layer_shapes()
LAYER_STAGE, LAYER_C_IN, LAYER_C_OUT, LAYER_STRIDE, LAYER_H_IN, LAYER_H_OUT = LAYERS.T
#: layers where ``skip`` cannot be an identity (stride 2 or a channel change): there it is a
#: 1x1 convolution (with the stride) + BN + ReLU, as in HW-NAS-Bench's network
SKIP_IS_CONV = (LAYER_STRIDE != 1) | (LAYER_C_IN != LAYER_C_OUT)
#: layers whose non-skip blocks add their input back (same shape in and out)
RESIDUAL = ~SKIP_IS_CONV
FINAL_HW = int(LAYER_H_OUT[-1])


def layer_name(layer: int) -> str:
    """``layer 6 (stage 3, block 1 of 4)`` for a 0-based layer index."""
    s = int(LAYER_STAGE[layer])
    first = int(np.flatnonzero(LAYER_STAGE == s)[0])
    return f"layer {layer + 1} (stage {s + 1}, block {layer - first + 1} of {STAGE_DEPTHS[s]})"


# ----------------------------------------------------------------------------- parse / format
def parse(text: str) -> np.ndarray:
    """Op codes (``int8``, 22) of an architecture string; ConfigError names the bad layer."""
    if not isinstance(text, str):
        raise ConfigError(f"fbnet: architecture must be a string, got {type(text).__name__}")
    tokens = [t.strip() for t in text.strip().split("|")]
    if len(tokens) != N_LAYERS:
        raise ConfigError(f"fbnet: {_short(text)} has {len(tokens)} layers separated by '|', "
                          f"expected {N_LAYERS} (like k5_e6|skip|k3_e1_g2|...)")
    return _codes_of_names(tokens)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _codes_of_names(names: Sequence[Any]) -> np.ndarray:
    codes = np.empty(N_LAYERS, dtype=np.int8)
    for i, name in enumerate(names):
        code = _INDEX.get(str(name).strip(), -1)
        if code < 0:
            raise ConfigError(f"fbnet: {layer_name(i)} has unknown block {str(name)!r}; "
                              f"allowed: {', '.join(BLOCKS)}")
        codes[i] = code
    return codes


def _from_item(item: Any) -> np.ndarray:
    if isinstance(item, str):
        return parse(item)
    if isinstance(item, dict):
        if "op_idx_list" not in item:
            raise ConfigError("fbnet: architecture dict needs the key 'op_idx_list' "
                              f"({N_LAYERS} block indices 0..{len(BLOCKS) - 1})")
        item = item["op_idx_list"]
    if not isinstance(item, (Sequence, np.ndarray)):
        raise ConfigError(f"fbnet: cannot read an architecture from a {type(item).__name__}; give "
                          "a string like k5_e6|skip|..., 22 block names or 22 block indices")
    values = list(item)
    if len(values) != N_LAYERS:
        raise ConfigError(f"fbnet: architecture has {len(values)} layers, expected {N_LAYERS}")
    if all(isinstance(v, str) for v in values):
        return _codes_of_names(values)
    return check_codes(np.asarray(values).reshape(1, -1))[0]


def check_codes(codes: np.ndarray) -> np.ndarray:
    """Validate an ``(n, 22)`` op-code array; ConfigError names the first bad layer and row."""
    if codes.ndim != 2 or codes.shape[1] != N_LAYERS:
        raise ConfigError(f"fbnet: op codes must have shape (n, {N_LAYERS}), got {codes.shape}")
    if codes.dtype.kind not in "iu":
        if codes.size and not np.all(np.equal(np.mod(codes, 1), 0)):
            raise ConfigError("fbnet: op codes must be integers 0..8 (indices into the blocks "
                              f"{', '.join(BLOCKS)})")
    codes = codes.astype(np.int64, copy=False)
    bad = (codes < 0) | (codes >= len(BLOCKS))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ConfigError(f"fbnet: op code {int(codes[row, col])} at {layer_name(int(col))} "
                          f"(row {int(row)}) is outside 0..{len(BLOCKS) - 1}; codes index "
                          f"{', '.join(BLOCKS)}")
    return codes.astype(np.int8)


def _token_keys() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code of each token key, or -1; each block's name as a little-endian 8-byte word; the
    mask keeping a token's first ``length`` bytes of such a word). A token's key is its length,
    second byte and last byte, which tell the nine block names apart."""
    lookup = np.full(9 * 256 * 256, -1, dtype=np.int64)
    words = np.zeros(len(BLOCKS), dtype=np.uint64)
    for code, name in enumerate(BLOCKS):
        raw = name.encode("ascii")
        lookup[(len(raw) * 256 + raw[1]) * 256 + raw[-1]] = code
        words[code] = np.frombuffer(raw.ljust(8, b"\0"), dtype="<u8")[0]
    masks = np.asarray([(1 << (8 * k)) - 1 for k in range(8)] + [2 ** 64 - 1], dtype=np.uint64)
    return lookup, words, masks


_TOKEN_KEYS = _token_keys()


def _fast_codes(items: list[str]) -> np.ndarray | None:
    """Op codes of many canonical strings, decoded from one byte buffer with numpy (no string
    object per token); None if any string is not canonical (the caller then parses)."""
    n = len(items)
    try:
        text = ("\n".join(items) + "\n").encode("ascii")
    except UnicodeEncodeError:
        return None
    buf = np.frombuffer(text + b"\0" * 8, dtype=np.uint8)
    newline = buf == ord("\n")
    ends = np.flatnonzero(newline | (buf == ord("|")))
    if len(ends) != n * N_LAYERS or int(newline.sum()) != n or not newline[ends[N_LAYERS - 1::N_LAYERS]].all():
        return None  # some string has another number of layers (or a line break)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    length = ends - starts
    if length.min() < 4 or length.max() > 8:
        return None
    lookup, words, masks = _TOKEN_KEYS
    codes = lookup[(length * 256 + buf[starts + 1]) * 256 + buf[ends - 1]]
    if codes.min() < 0:
        return None
    # every byte of every token spells its block's name: compare 8-byte words
    windows = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - 7, 8), strides=(1, 1))
    spelled = np.ascontiguousarray(windows[starts]).view("<u8")[:, 0] & masks[length]
    if not (spelled == words[codes]).all():
        return None
    return codes.astype(np.int8).reshape(n, N_LAYERS)


def to_codes(archs: Iterable[Any] | np.ndarray | str | dict) -> np.ndarray:
    """``(n, 22)`` op codes of strings, name lists, dicts, code rows or an int array.

    Lists of canonical strings are decoded from one byte buffer with numpy; anything else
    goes through :func:`parse`, which names the bad layer.
    """
    if isinstance(archs, (str, dict)):
        archs = [archs]
    if isinstance(archs, np.ndarray) and archs.dtype.kind in "iuf":
        return check_codes(archs.reshape(1, -1) if archs.ndim == 1 else archs)
    items = list(archs)
    if not items:
        return np.zeros((0, N_LAYERS), dtype=np.int8)
    if set(map(type, items)) == {str}:
        parts = [_fast_codes(items[i:i + DECODE_CHUNK]) for i in range(0, len(items), DECODE_CHUNK)]
        if all(part is not None for part in parts):
            return np.concatenate(parts)  # type: ignore[arg-type]
    return np.stack([_from_item(a) for a in items])


def format_arch(codes: Sequence[int] | np.ndarray) -> str:
    """Canonical string of one op-code row (inverse of :func:`parse`)."""
    row = check_codes(np.asarray(codes).reshape(1, -1))[0]
    return "|".join(BLOCKS[int(c)] for c in row)


def format_many(codes: np.ndarray) -> list[str]:
    """Canonical strings of an ``(n, 22)`` op-code array."""
    c = check_codes(np.asarray(codes))
    names = np.asarray(BLOCKS, dtype=object)[c]
    return ["|".join(row) for row in names.tolist()]


def canonical(arch: Any) -> str:
    """Canonical string of any accepted encoding of one architecture."""
    return format_arch(to_codes([arch] if not isinstance(arch, np.ndarray) else arch)[0])


def sample_codes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` architectures with every layer's block drawn uniformly, as ``(n, 22)`` op codes.

    Nested: the first ``m`` rows of ``sample_codes(n, seed)`` are ``sample_codes(m, seed)``
    (the draws are one stream of uniform doubles, consumed row by row). Drawn with
    replacement; a repeat has probability about n^2 / (2 * 9^22), i.e. none in practice.
    """
    if n < 0:
        raise ConfigError(f"fbnet: sample size must be >= 0, got {n}")
    u = np.random.default_rng(seed).random((int(n), N_LAYERS))
    return np.minimum((u * len(BLOCKS)).astype(np.int8), len(BLOCKS) - 1)


def sample(n: int, seed: int = 0) -> list[str]:
    """``n`` random canonical strings (see :func:`sample_codes`; nested in ``n``)."""
    return format_many(sample_codes(n, seed))
