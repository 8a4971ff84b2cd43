"""A vectorised decoder of canonical ofa_mbv3 strings, for batch prediction in NAS loops.

Parsing string by string costs tens of microseconds per architecture; NAS inner loops predict
hundreds of thousands. Canonical strings have a fixed grammar (``r`` + three digits, then five
``|``-separated stages of ``k<digit>e<digit>`` tokens), so a batch can be decoded at once from
a padded byte matrix. Anything this decoder cannot vouch for goes back to the space's parser.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_CHARS = 4 + 5 * 20  # 'r224' + five stages of up to four 'k?e?' tokens with separators
def decode_canonical(items: Sequence[str]) -> np.ndarray | None:
    """``(n, 46)`` rows of canonical strings (``r176|k3e4,k5e6|...``) decoded with vectorised
    numpy, not yet validated; None when any string is not in the canonical spelling."""
    from costmeter.models.spaces import ofa_mbv3 as s

    n = len(items)
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
    if lengths.max() > MAX_CHARS:
        return None
    width = MAX_CHARS + 1  # at least one space after every string
    try:
        text = "".join(x.ljust(width) for x in items).encode("ascii")
    except UnicodeEncodeError:
        return None
    c = np.frombuffer(text, dtype=np.uint8).reshape(n, width)
    digit = (c >= ord("0")) & (c <= ord("9"))
    is_k, is_pipe, is_comma = c == ord("k"), c == ord("|"), c == ord(",")
    n_k = is_k.sum(axis=1)
    ok = ((c[:, 0] == ord("r")) & digit[:, 1:4].all(axis=1) & (c[:, 4] == ord("|"))
          & (is_pipe.sum(axis=1) == s.N_STAGES) & (is_comma.sum(axis=1) == n_k - s.N_STAGES)
          & (lengths == 4 + 5 * n_k))
    # every separator (columns 4..) is followed by a token and follows a digit
    sep = (is_pipe | is_comma)[:, 4:-1]
    ok &= ~(sep & ((c[:, 5:] != ord("k")) | ~digit[:, 3:-2])).any(axis=1)
    rows, cols = np.nonzero(is_k)
    if not ok.all() or cols.max(initial=0) + 4 >= c.shape[1]:
        return None
    end = c[rows, cols + 4]
    tok_ok = ((c[rows, cols + 2] == ord("e")) & digit[rows, cols + 1] & digit[rows, cols + 3]
              & ((end == ord(",")) | (end == ord("|")) | (end == ord(" "))))
    if not tok_ok.all():
        return None
    pipes = np.flatnonzero(is_pipe)  # flat positions, sorted; five per row
    stage = np.searchsorted(pipes, rows * width + cols) - rows * s.N_STAGES - 1
    depth = np.bincount(rows * s.N_STAGES + stage, minlength=n * s.N_STAGES).reshape(n, s.N_STAGES)
    if depth.max() > s.MAX_DEPTH:
        return None
    row_start = np.concatenate([[0], np.cumsum(n_k)[:-1]])
    order = np.arange(len(rows)) - row_start[rows]  # token number within the row
    stage_start = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(depth, axis=1)[:, :-1]], 1)
    slot = stage * s.MAX_DEPTH + order - stage_start[rows, stage]
    out = np.zeros((n, s.ARRAY_WIDTH), dtype=np.int64)
    digits = c[:, 1:4].astype(np.int64) - ord("0")
    out[:, 0] = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    out[:, 1:1 + s.N_STAGES] = depth
    out[rows, 1 + s.N_STAGES + slot] = c[rows, cols + 1].astype(np.int64) - ord("0")
    out[rows, 1 + s.N_STAGES + s.N_SLOTS + slot] = c[rows, cols + 3].astype(np.int64) - ord("0")
    return out

