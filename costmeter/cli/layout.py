"""Laying a results table out in the terminal's width (rich).

:func:`fit_table` tries, in turn, until the table fits: intervals on their values' line, then
under them; at each, columns narrowed as needed (long model ids folded first, then the columns
of :data:`SOFT_WRAP` wrapped at spaces, then the widest), but no column narrower than its
longest word; then the columns of :data:`~costmeter.cli.columns.HIDE_ORDER` hidden one by one.
A table asked for (``--wide``, ``--columns``) that cannot fit is printed wider than the
terminal by :func:`print_table` rather than with broken words.
"""
from __future__ import annotations

from typing import Any, Sequence

from costmeter.cli.columns import HIDE_ORDER, KEPT, Column, Row

COLUMN_GAP = 2  # the space between two columns (right padding + the box's blank divider)
# columns whose cells wrap well at their spaces ("INVALID [2]", "212.6 MiB"): narrowed first
SOFT_WRAP = frozenset({"status", "memory", "energy", "prepare", "tune", "parity", "speedup"})


def build_table(rows: Sequence[Row], columns: Sequence[Column], stacked: bool,
                widths: Sequence[int] | None = None) -> Any:
    """The rich table of ``rows`` (``stacked``: intervals under their values; ``widths``: each
    column's content width, cells wrapped at spaces and over-long words folded)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, COLUMN_GAP - 1, 0, 0))
    from rich.text import Text

    for i, c in enumerate(columns):  # Text, not markup: "[no CI]" is no style
        table.add_column(Text(_header(c, stacked)), justify=c.justify, overflow="fold", no_wrap=widths is None,
                         width=None if widths is None else widths[i])
    for row in rows:
        table.add_row(*[Text(c.cell(row, stacked)) for c in columns])
    return table


def print_table(console: Any, table: Any) -> None:
    """Print ``table``; one asked for (``--wide``, ``--columns``) that cannot fit the terminal
    without breaking words is printed at its own width, wider than the terminal."""
    width = _natural_width(table)
    if width <= console.width:
        console.print(table)
        return
    from rich.console import Console

    Console(file=console.file, width=width, color_system=console.color_system, highlight=False,
            force_terminal=console.is_terminal).print(table)


def _natural_width(table: Any) -> int:
    """The width ``table`` needs: its columns' fixed widths plus the gaps (0 when not fixed)."""
    widths = [c.width for c in table.columns]
    if any(w is None for w in widths):
        return 0
    return sum(widths) + COLUMN_GAP * (len(widths) - 1)


def _header(column: Column, stacked: bool) -> str:
    """The header; stacked, an interval's "[95% CI]" goes under "p50 ms" as its cells do."""
    return column.header.replace(" [", "\n[") if stacked else column.header


def _extent(rows: Sequence[Row], column: Column, stacked: bool, fold_at: int) -> tuple[int, int]:
    """(natural, minimum) content width of a column: its longest line, and its longest word
    (a model id folds at ``fold_at`` instead)."""
    from rich.cells import cell_len

    lines = [line for text in (_header(column, stacked), *(column.cell(r, stacked) for r in rows))
             for line in text.split("\n")]
    natural = max(cell_len(line) for line in lines)
    minimum = max((cell_len(word) for line in lines for word in line.split()), default=1)
    if column.name == "model":
        minimum = min(minimum, fold_at)
    return natural, minimum


def fit_table(rows: Sequence[Row], columns: list[Column], console: Any, may_hide: bool = True) -> tuple[Any, list[str]]:
    """The table of ``rows`` that fits ``console.width``, and the names of columns hidden for it.

    In turn, until it fits: intervals on their values' line, then under them; at each, columns
    narrowed as needed, long model ids folded first, then the columns of :data:`SOFT_WRAP`
    wrapped at spaces, then (intervals under their values) the widest, but no column narrower
    than its longest word; and (``may_hide``) the columns of :data:`HIDE_ORDER` hidden one by
    one."""
    width = console.width
    fold_at = max(12, width // 6)
    shown = list(columns)
    hidden: list[str] = []
    while True:
        for stacked in (False, True):
            extents = [_extent(rows, c, stacked, fold_at) for c in shown]
            room = width - COLUMN_GAP * (len(shown) - 1)
            if sum(n for n, _ in extents) <= room:
                return build_table(rows, shown, stacked), hidden
            groups = [[i for i, c in enumerate(shown) if c.name == "model"],
                      [i for i, c in enumerate(shown) if c.name in SOFT_WRAP]]
            widths = _allocate(extents, room, groups, only_groups=not stacked)
            if sum(widths) <= room:
                return build_table(rows, shown, stacked, widths), hidden
        hideable = [n for n in HIDE_ORDER if n in {c.name for c in shown} and n not in KEPT]
        if not may_hide or not hideable:  # asked for: wider than the terminal, no word broken
            return build_table(rows, shown, True, [m for _, m in extents]), hidden
        hidden.append(hideable[0])
        shown = [c for c in shown if c.name != hideable[0]]


def _allocate(extents: Sequence[tuple[int, int]], room: int, groups: Sequence[Sequence[int]] = (),
              only_groups: bool = False) -> list[int]:
    """Column widths from their natural widths, narrowing one character at a time the widest
    column that may still narrow (no narrower than its minimum), the columns of ``groups`` in
    order before any other (``only_groups``: no other), until they fit in ``room``."""
    widths = [natural for natural, _ in extents]
    minimums = [minimum for _, minimum in extents]
    excess = sum(widths) - room
    tiers = [list(g) for g in groups] + ([] if only_groups else [list(range(len(widths)))])
    while excess > 0:
        narrowable: list[int] = []
        for tier in tiers:
            narrowable = [i for i in tier if widths[i] > minimums[i]]
            if narrowable:
                break
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths
