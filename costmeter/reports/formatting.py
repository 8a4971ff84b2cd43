"""Number formatting and escaping shared by the text renderers (Markdown, HTML, LaTeX)."""
from __future__ import annotations

import html
import math
from typing import Any

MISSING = "–"


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pandas' NA."""
    import pandas as pd

    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are not missing scalars
        return False


def significant(value: Any, digits: int = 3) -> str:
    """``value`` with about ``digits`` significant digits in fixed notation (1234.5 -> 1235,
    1.2345 -> 1.23, 0.012345 -> 0.0123)."""
    if is_missing(value):
        return MISSING
    number = float(value)
    if number == 0 or not math.isfinite(number):
        return f"{number:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(number)))))
    return f"{number:.{decimals}f}"


def count(value: Any) -> str:
    """A count with an SI suffix: 11689512 -> '11.7 M', 1.82e9 -> '1.82 G', 950 -> '950'."""
    if is_missing(value):
        return MISSING
    number = float(value)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{significant(number / scale)} {suffix}"
    return significant(number)


def size_bytes(value: Any) -> str:
    """A size in bytes as KiB/MiB/GiB with one decimal: 47448064 -> '45.3 MiB'."""
    if is_missing(value):
        return MISSING
    number = float(value)
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(number) >= scale:
            return f"{number / scale:.1f} {suffix}"
    return f"{number:.0f} B"


def energy_joules(value: Any) -> str:
    """Energy in joules with a readable unit: 0.0123 -> '12.3 mJ', 4.5e-5 -> '45.0 µJ'."""
    if is_missing(value):
        return MISSING
    number = float(value)
    for scale, suffix in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ")):
        if abs(number) >= scale:
            return f"{significant(number / scale)} {suffix}"
    return f"{significant(number / 1e-9)} nJ"


def escape_markdown(text: str) -> str:
    """Escape the characters that break a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def escape_html(text: str) -> str:
    """HTML-escape text (quotes included)."""
    return html.escape(str(text), quote=True)


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "µ": r"\textmu{}", "†": r"\textdagger{}", "–": "--", "±": r"\textpm{}",
}


def escape_latex(text: str) -> str:
    """Escape LaTeX special characters (and µ, †, –, ±) in plain text."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def markdown_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    """A pipe table; ``align`` holds 'l' or 'r' per column."""
    rule = [":--" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(escape_markdown(h) for h in header) + " |"]
    lines.append("| " + " | ".join(rule) + " |")
    for row in rows:
        lines.append("| " + " | ".join(escape_markdown(c) for c in row) + " |")
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]], align: list[str], css_class: str) -> str:
    """An HTML table; cells are escaped; ``align`` holds 'l' or 'r' per column."""
    style = {"l": "left", "r": "right"}
    head = "".join(
        f'<th style="text-align:{style[a]}">{escape_html(h)}</th>' for h, a in zip(header, align)
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td style="text-align:{style[a]}">{escape_html(c)}</td>' for c, a in zip(row, align)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<table class="{escape_html(css_class)}">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )
