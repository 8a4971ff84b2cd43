"""``--wide`` and ``--columns``: the options that shape a results table (bench run, bench results)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import click


def table_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--wide`` and ``--columns LIST`` to a command."""
    f = click.option("--columns", default=None, metavar="A,B,...",
                     help="Table columns to show, in order (an unknown name lists the known ones)")(f)
    return click.option("--wide", is_flag=True, help="Show every column of the table")(f)


def table_columns(wide: bool, columns: str | None, percentiles: Sequence[float], as_json: bool = False,
                  listing: bool = False) -> list[str] | None:
    """The ``--columns`` names, checked before anything runs (ConfigError for an unknown name,
    or for table options given with ``--json``); None when not given."""
    from costmeter.cli.columns import check_column_names
    from costmeter.cli.common import split_list
    from costmeter.errors import ConfigError

    if as_json and (wide or columns is not None):
        raise ConfigError("--wide and --columns shape the table; --json prints every figure without one")
    if columns is None:
        return None
    return check_column_names(split_list(columns), percentiles, listing)
