"""A fast decoder of canonical ofa_mbv3 strings, for batch prediction in NAS loops.

Parsing string by string costs tens of microseconds per architecture; NAS inner loops predict
hundreds of thousands. A canonical string is six ``|``-separated tokens: ``r<resolution>`` (25
spellings) and five stage groups such as ``k3e4,k5e6`` (9^2 + 9^3 + 9^4 = 7,371 spellings). A
batch is therefore decoded by one join and one split (C speed), one dictionary lookup per token
into a table of every valid spelling (built once), and numpy gathers of the stage rows. Only
valid canonical spellings are in the table, so what it decodes is in the space; anything else
goes back to the space's parser, which names the bad field.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import product, repeat

import numpy as np

TOKENS = 6  # resolution, then five stage groups


@lru_cache(maxsize=1)
def token_table() -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(code of every valid token spelling, stage rows ``(groups, 9)``: depth, four kernels and
    four expands (0 where inactive), resolution of each resolution code). Stage groups have codes
    ``0 .. groups - 1``; resolution ``r`` has code ``groups + its index``."""
    from costmeter.models.spaces import ofa_mbv3 as s

    codes: dict[str, int] = {}
    rows = []
    blocks = [(k, e) for k in s.KERNELS for e in s.EXPANDS]
    for depth in s.DEPTHS:
        pad = [0] * (s.MAX_DEPTH - depth)
        for chosen in product(blocks, repeat=depth):
            codes[",".join(f"k{k}e{e}" for k, e in chosen)] = len(rows)
            rows.append([depth, *(k for k, _ in chosen), *pad, *(e for _, e in chosen), *pad])
    stages = np.asarray(rows, dtype=np.int64)
    for i, r in enumerate(s.RESOLUTIONS):
        codes[f"r{r}"] = len(stages) + i
    stages.setflags(write=False)
    return codes, stages, np.asarray(s.RESOLUTIONS, dtype=np.int64)


def decode_canonical(items: Sequence[str]) -> np.ndarray | None:
    """Canonical ``(n, 46)`` rows of canonical strings (``r176|k3e4,k5e6|...``), all in the
    space; None when any string is not a valid architecture in the canonical spelling."""
    from costmeter.models.spaces import ofa_mbv3 as s

    n = len(items)
    codes_of, stages, resolutions = token_table()
    seps = np.fromiter(map(str.count, items, repeat("|")), dtype=np.int64, count=n)
    if n == 0 or np.any(seps != TOKENS - 1):
        return None
    tokens = "|".join(items).split("|")
    codes = np.fromiter(map(codes_of.get, tokens, repeat(-1)), dtype=np.int64,
                        count=len(tokens)).reshape(n, TOKENS)
    groups = len(stages)
    stage_codes = codes[:, 1:]
    if (codes[:, 0] < groups).any() or (stage_codes < 0).any() or (stage_codes >= groups).any():
        return None
    picked = np.take(stages, stage_codes, axis=0)                   # (n, 5, 9)
    out = np.empty((n, s.ARRAY_WIDTH), dtype=np.int64)
    out[:, 0] = resolutions[codes[:, 0] - groups]
    out[:, 1:1 + s.N_STAGES] = picked[:, :, 0]
    out[:, 1 + s.N_STAGES:1 + s.N_STAGES + s.N_SLOTS] = picked[:, :, 1:1 + s.MAX_DEPTH].reshape(n, -1)
    out[:, 1 + s.N_STAGES + s.N_SLOTS:] = picked[:, :, 1 + s.MAX_DEPTH:].reshape(n, -1)
    return out
