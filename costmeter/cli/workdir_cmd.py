"""``bench workdir du`` and ``bench workdir clean``: what the working folder holds, and freeing it."""
from __future__ import annotations

from pathlib import Path

import click

from costmeter.cli.common import split_list, workdir_option
from costmeter.harness.config import default_workdir


@click.group()
def workdir() -> None:
    """The working folder: disk use by kind, and freeing space."""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@workdir.command()
@workdir_option
def du(workdir: Path | None) -> None:
    """Disk use per kind; kinds marked * go with a plain `bench workdir clean`."""
    from costmeter.workdir import KINDS, Workdir

    wd = Workdir.of(workdir or default_workdir())
    usage = wd.usage()
    for kind, (description, default) in KINDS.items():
        size, files = usage[kind]
        click.echo(f"{'*' if default else ' '} {kind:<8} {_size(size):>9} {files:>7} files  {description}")
    total = sum(size for size, _ in usage.values())
    click.echo(f"  {'total':<8} {_size(total):>9} in {wd.root}")


@workdir.command()
@click.option("--kind", "kinds", default=None, metavar="KINDS",
              help="Comma-separated kinds to remove (default: caches,micro,tmp); samples, lut and "
                   "store only when named")
@click.option("--dry-run", is_flag=True, help="Say what would go, remove nothing")
@workdir_option
def clean(kinds: str | None, dry_run: bool, workdir: Path | None) -> None:
    """Free space: caches, kept micro-benchmark models and temporary files by default; never the
    results store, kernel samples or tables unless named with --kind."""
    from costmeter.errors import ConfigError
    from costmeter.workdir import KINDS, Workdir

    chosen = set(split_list(kinds)) if kinds else {k for k, (_, default) in KINDS.items() if default}
    unknown = sorted(chosen - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    wd = Workdir.of(workdir or default_workdir())
    if dry_run:
        usage = wd.usage()
        size = sum(usage[k][0] for k in chosen)
        click.echo(f"would free {_size(size)} ({', '.join(sorted(chosen))}) in {wd.root}")
        return
    freed, files = wd.remove(chosen)
    click.echo(f"freed {_size(freed)} ({files} files: {', '.join(sorted(chosen))}) in {wd.root}")
