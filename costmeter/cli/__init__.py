"""The ``bench`` command. The only place that turns errors into exit codes.

Exit codes: 0 success; 1 a gate failed (a significant regression found); 2 bad input or an
unusable environment (one-line message on stderr). Heavy libraries load only inside subcommands.
"""
from __future__ import annotations

import sys

import click

from costmeter import __version__
from costmeter.errors import CostmeterError


class GateFailed(Exception):
    """Raised by a subcommand whose check failed on purpose (exit code 1), e.g. a regression."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="costmeter")
def bench() -> None:
    """costmeter: measure what a model really costs on a device, and learn to predict it."""


def _register() -> None:
    from costmeter.cli import (
        collect_cmd,
        env_cmd,
        lut_cmd,
        nightly_cmd,
        predictor_cmd,
        report_cmd,
        results_cmd,
        run_cmd,
        suite_cmd,
    )

    bench.add_command(run_cmd.run)
    bench.add_command(env_cmd.env)
    bench.add_command(env_cmd.models)
    bench.add_command(results_cmd.results)
    bench.add_command(report_cmd.report)
    bench.add_command(report_cmd.calibrate)
    bench.add_command(predictor_cmd.traces)
    bench.add_command(predictor_cmd.predictor)
    bench.add_command(predictor_cmd.predict)
    bench.add_command(lut_cmd.lut)
    bench.add_command(collect_cmd.collect)
    bench.add_command(collect_cmd.kernels)
    bench.add_command(suite_cmd.suite)
    bench.add_command(nightly_cmd.nightly)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code. Libraries' log
    records and warnings go to the working folder's log file meanwhile (mentioned once)."""
    from costmeter.cli.logging_setup import LIBRARY_LOG

    LIBRARY_LOG.use_workdir(None)
    LIBRARY_LOG.install()
    try:
        return _run(argv)
    finally:
        logged = LIBRARY_LOG.uninstall()
        if logged:
            click.echo(f"note: {logged} log message{'s' if logged > 1 else ''} (libraries' output, warnings) "
                       f"written to {LIBRARY_LOG.display_path()}", err=True)


def _run(argv: list[str] | None) -> int:
    try:
        bench.main(args=argv, prog_name="bench", standalone_mode=False)
    except CostmeterError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except GateFailed as exc:
        click.echo(str(exc), err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
