"""Shared matplotlib plumbing: figures without pyplot state, saving, embedding as data URIs.

matplotlib is imported inside the functions, so importing the reports stays cheap. Figures are
built with ``matplotlib.figure.Figure`` directly (no global pyplot state, no GUI backend).
Saved SVGs are reproducible: fixed hash salt, no date metadata.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from costmeter.errors import ConfigError

PLOT_FORMATS = ("png", "svg", "pdf")
SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
_RC = {"svg.hashsalt": "costmeter", "svg.fonttype": "none"}


def new_figure(width_in: float = 7.0, height_in: float = 4.5) -> tuple[Any, Any]:
    """A fresh (figure, axes) pair; size in inches."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    return figure, figure.subplots()


def plot_format(path: str | Path) -> str:
    """The image format named by ``path``'s suffix; ConfigError for anything but png/svg/pdf."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError(
            f"cannot write a plot to {str(path)!r}; use a file name ending in "
            + ", ".join(f".{f}" for f in PLOT_FORMATS)
        )
    return suffix


def figure_bytes(figure: Any, fmt: str = "png") -> bytes:
    """The figure encoded as ``fmt`` (png, svg or pdf)."""
    import matplotlib

    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else ({"Software": None} if fmt == "png" else None)
    with matplotlib.rc_context(_RC):
        figure.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix; folders created); returns the path."""
    fmt = plot_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_bytes(figure, fmt))
    return path


def figure_data_uri(figure: Any, fmt: str = "png") -> str:
    """The figure as a ``data:`` URI, for self-contained HTML that opens offline."""
    mime = {"png": "image/png", "svg": "image/svg+xml"}[fmt]
    return f"data:{mime};base64," + base64.b64encode(figure_bytes(figure, fmt)).decode("ascii")


def series_color(index: int) -> str:
    """A distinct colour for series number ``index`` (cycles after ten)."""
    return SERIES_COLORS[index % len(SERIES_COLORS)]


def figure_svg(figure: Any) -> str:
    """The figure as SVG markup to put inline in an HTML page (no XML prolog or doctype)."""
    text = figure_bytes(figure, "svg").decode("utf-8")
    return text[text.index("<svg"):]
