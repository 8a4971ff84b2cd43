"""The ``bench`` command. The only place that turns errors into exit codes.

Exit codes: 0 success; 1 a gate failed (a significant regression found); 2 bad input or an
unusable environment (one-line message on stderr), and, reported as such, an internal error (set
COSTMETER_DEBUG=1 to see its traceback). Heavy libraries load only inside subcommands.
"""
from __future__ import annotations

import os
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
        farm_cmd,
        lut_cmd,
        nightly_cmd,
        predict_cmd,
        predictor_cmd,
        report_cmd,
        results_cmd,
        run_cmd,
        suite_cmd,
        workdir_cmd,
    )

    bench.add_command(run_cmd.run)
    bench.add_command(env_cmd.env)
    bench.add_command(env_cmd.models)
    bench.add_command(results_cmd.results)
    bench.add_command(report_cmd.report)
    bench.add_command(report_cmd.calibrate)
    bench.add_command(predictor_cmd.traces)
    bench.add_command(predictor_cmd.predictor)
    bench.add_command(predict_cmd.predict)
    bench.add_command(lut_cmd.lut)
    bench.add_command(collect_cmd.collect)
    bench.add_command(collect_cmd.kernels)
    bench.add_command(suite_cmd.suite)
    bench.add_command(nightly_cmd.nightly)
    bench.add_command(farm_cmd.farm)
    bench.add_command(workdir_cmd.workdir)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Every error becomes one line on stderr: bad input and environment trouble exit 2, a failed
    gate 1, an interrupt 130; running out of memory or an OS error (disk full, a path that changed)
    exit 2 too. Anything else is a bug, reported in one line as an internal error (exit 2). With
    COSTMETER_DEBUG set, OS errors, memory errors and bugs go through with their traceback.
    Libraries' log records and warnings go to the working folder's log file meanwhile
    (mentioned once, unless the command failed with exit code 2: its error stays one line).
    """
    from costmeter.cli.logging_setup import LIBRARY_LOG

    LIBRARY_LOG.use_workdir(None)
    LIBRARY_LOG.install()
    code = 2
    try:
        code = _run(argv)
        return code
    finally:
        logged = LIBRARY_LOG.uninstall()
        if logged and code != 2:  # an error is one line: the log file stays, unmentioned
            click.echo(f"note: {logged} log message{'s' if logged > 1 else ''} (libraries' output, warnings) "
                       f"written to {LIBRARY_LOG.display_path()}", err=True)


def _run(argv: list[str] | None) -> int:
    try:
        code = bench.main(args=argv, prog_name="bench", standalone_mode=False)
    except CostmeterError as exc:
        return _fail(f"error: {exc}")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:
        return _fail(f"error: {_usage_message(exc)}")
    except click.ClickException as exc:
        return _fail(f"error: {exc.format_message()}")
    except GateFailed as exc:
        return _fail(str(exc), code=1)
    except (MemoryError, OSError) as exc:
        if os.environ.get("COSTMETER_DEBUG"):  # inputs are checked first: reaching here is worth a look
            raise
        if isinstance(exc, MemoryError):
            return _fail("error: out of memory; use smaller inputs (--batch, --samples) or free some memory")
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"error: {exc.strerror or exc}{where}; check the path, its permissions and the free space")
    except Exception as exc:
        if os.environ.get("COSTMETER_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc}; this is a bug in costmeter, please "
                     "report it (COSTMETER_DEBUG=1 shows the traceback)")
    return code if isinstance(code, int) and code in (0, 1, 2) else 0


def _usage_message(exc: click.UsageError) -> str:
    """click's message plus where to read the command's options (one line)."""
    command = exc.ctx.command_path if exc.ctx is not None else "bench"
    group = exc.ctx.command if exc.ctx is not None else None
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and isinstance(group, click.Group):
        return f"missing command; give one of: {', '.join(sorted(group.commands))} (see '{command} --help')"
    return f"{exc.format_message()} (see '{command} --help')"


def _fail(message: str, code: int = 2) -> int:
    """Print ``message`` as exactly one line on stderr; return ``code``."""
    click.echo(" ".join(message.split()) or "error", err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
