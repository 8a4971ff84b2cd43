"""Plots of the history site: a key's trend (matplotlib, inline SVG whose points link to their
runs) and the index's sparklines (a few lines of hand-built SVG each, so that hundreds of keys
cost nothing to draw)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

MAX_TICKS = 30
P50_COLOR, P99_COLOR, STEP_COLOR = "#1f77b4", "#9467bd", "#d62728"


def _short(sha: str, run_id: str) -> str:
    return sha[:7] if sha else str(run_id)[:10]


def trend_figure(points: pd.DataFrame, steps: pd.DataFrame, *, link_prefix: str = "../") -> Any:
    """p50 per run with its interval band (top) and p99 with its band (bottom), runs in time
    order on x, labelled by git SHA (run id where none); detected steps as dashed lines with
    their change. Each point links to its run's page (``link_prefix + page``)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 5.2), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    x = points["position"].to_numpy(dtype=float)
    urls = [link_prefix + page for page in points["page"]]
    panels = ((top, "value_ms", "p50_low_ms", "p50_high_ms", P50_COLOR, "p50 (ms)"),
              (bottom, "p99_ms", "p99_low_ms", "p99_high_ms", P99_COLOR, "p99 (ms)"))
    for axes, value, low, high, color, title in panels:
        y = points[value].to_numpy(dtype=float)
        lo, hi = points[low].to_numpy(dtype=float), points[high].to_numpy(dtype=float)
        if np.isfinite(lo).any() and np.isfinite(hi).any():
            axes.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0,
                              label="95% interval")
        axes.plot(x, y, color=color, linewidth=1.2)
        markers = axes.scatter(x, y, s=14, color=color, zorder=3, label=title.split()[0])
        markers.set_urls(urls)
        axes.set_ylabel(title)
        axes.grid(True, alpha=0.3)
    for _, step in steps.iterrows():
        at = float(step["position"]) - 0.5
        for axes in (top, bottom):
            axes.axvline(at, color=STEP_COLOR, linestyle="--", linewidth=1)
        top.annotate(f"{float(step['change']) * 100:+.1f}%", (at, float(step["after_ms"])),
                     xytext=(3, 3), textcoords="offset points", fontsize=8, color=STEP_COLOR)
    every = max(1, int(np.ceil(len(x) / MAX_TICKS)))
    labels = [_short(s, r) for s, r in zip(points["git_sha"], points["run_id"])]
    bottom.set_xticks(x[::every], labels[::every], rotation=60, fontsize=7,
                      fontfamily="monospace")
    if len(points):
        first, last = (pd.Timestamp(points["started_at"].iloc[i]) for i in (0, -1))
        bottom.set_xlabel(f"runs in time order, {first:%Y-%m-%d} .. {last:%Y-%m-%d} "
                          "(labelled by git SHA, or run id where none)")
    top.legend(fontsize=7, loc="upper left")
    bottom.legend(fontsize=7, loc="upper left")
    return figure


def sparkline_svg(values: Sequence[float], step_positions: Sequence[int] = (), *,
                  width: int = 120, height: int = 24, label: str = "") -> str:
    """A small inline SVG line of ``values`` (scaled to their own range), red ticks at
    ``step_positions`` and a dot on the last value; an empty box when there are no values."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    head = (f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{label}">')
    if len(data) == 0:
        return head + "</svg>"
    pad = 2.0
    low, high = float(data.min()), float(data.max())
    span = high - low or 1.0
    xs = (np.linspace(pad, width - pad, len(data)) if len(data) > 1
          else np.array([width / 2.0]))
    ys = height - pad - (data - low) / span * (height - 2 * pad)
    parts = [head]
    for position in step_positions:
        if 0 < position < len(data):
            at = (xs[position - 1] + xs[position]) / 2
            parts.append(f'<line x1="{at:.1f}" y1="0" x2="{at:.1f}" y2="{height}" '
                         f'stroke="{STEP_COLOR}" stroke-width="1"/>')
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    parts.append(f'<polyline fill="none" stroke="{P50_COLOR}" stroke-width="1.2" '
                 f'points="{line}"/>')
    parts.append(f'<circle cx="{xs[-1]:.1f}" cy="{ys[-1]:.1f}" r="2" fill="{P50_COLOR}"/>')
    return "".join(parts) + "</svg>"
