"""``bench suite run|subset``: run a suite file, exactly once across kills and resumes; choose a
cheap nightly subset of it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from costmeter.cli.common import OutputPath, input_file, open_store, store_option, subset_options, workdir_option
from costmeter.errors import ConfigError
from costmeter.harness.config import default_workdir

FARM_FORMS = "ray://HEAD:PORT, HEAD:PORT, auto or local"


@click.group()
def suite() -> None:
    """Suites: TOML files of models x devices x runtimes x batches x threads."""


def suite_options(f: Any) -> Any:
    """Options shared by ``bench suite run`` and ``bench nightly``."""
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bar")(f)
    f = click.option("--farm", default=None, metavar="ADDRESS",
                     help=f"Run on a Ray device farm: {FARM_FORMS}")(f)
    f = click.option("--tag", default=None, help="Tag stored with every result (default: the suite's)")(f)
    f = click.option("--sha", default=None, metavar="SHA",
                     help="Git SHA of the code under test (default: HEAD of the suite's repository)")(f)
    f = click.option("--resume", is_flag=True,
                     help="Continue the suite's interrupted run: run only the jobs not done")(f)
    f = click.argument("suite_file", type=input_file())(f)
    return store_option(workdir_option(f))


def check_farm(address: str | None) -> Any:
    """The farm module for ``--farm`` (None without it); ConfigError for an address that is not
    one of :data:`FARM_FORMS`, UnavailableError (with the extra to install) without Ray."""
    if address is None:
        return None
    from costmeter.harness.executors import ray_farm

    try:
        where = ray_farm.parse_farm_address(address)
    except ConfigError:
        where = None
    if where is None or (where.kind == "cluster" and ":" not in address):  # a bare word is a typo
        raise ConfigError(f"--farm {address!r} is not {FARM_FORMS}")
    ray_farm.import_ray()
    return ray_farm


def run_suite_file(suite_file: str, *, resume: bool, sha: str | None, tag: str | None,
                   farm: str | None, quiet: bool, store_url: str | None, workdir: Path | None) -> Any:
    """Load, check and run a suite (the body of ``bench suite run`` and ``bench nightly``):
    returns (SuiteOutcome, SuiteConfig, open store). Bad input raises before anything runs."""
    from costmeter.harness.config import SuiteConfig
    from costmeter.harness.executors.remote import DeviceExecutors
    from costmeter.harness.suite_run import SuiteRunner
    from costmeter.results.store import ResultStore, default_store_url

    config = SuiteConfig.from_toml(suite_file)
    farm_module = check_farm(farm)
    workdir = workdir or default_workdir()
    jobs = config.expand(workdir)
    if farm_module is not None:
        needed = sorted({farm_module.farm_device(j.config) for j in jobs})
        held = farm_module.devices_available(farm, needed)
        missing = [d for d in needed if d not in held]
        if missing:
            raise ConfigError(f"no farm node holds device {missing[0]!r} (the farm has "
                              f"{', '.join(sorted(held)) or 'none'}); fix [matrix] devices in "
                              f"{Path(suite_file).name} or attach the device")
    store = ResultStore(store_url or default_store_url(workdir), busy_timeout_s=config.busy_timeout_s)
    executors = DeviceExecutors()
    try:
        if farm_module is None:  # on a farm, each node checks its own boards and CPUs
            executors.preflight([j.config for j in jobs])
        on_farm = None
        bar = LazyProgress(quiet)
        if farm_module is not None:
            def on_farm(configs: list[Any], sink: Any) -> Any:
                return farm_module.run_on_farm(configs, farm, sink, workdir, progress=bar)
        runner = SuiteRunner(config, store, workdir, run_in=executors, farm=on_farm, progress=bar,
                             log=lambda line: click.echo(line, err=True))
        try:
            outcome = runner.run(resume=resume, sha=sha, tag=tag)
        finally:
            bar.stop()
    except KeyboardInterrupt:
        store.close()
        click.echo(f"interrupted; `bench suite run {suite_file} --resume` runs what is left", err=True)
        raise
    except BaseException:
        store.close()
        raise
    finally:
        executors.close()
    return outcome, config, store


class LazyProgress:
    """A progress bar on stderr that appears with the first job (so bad input found before any
    job runs prints one line and no bar)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self._bar, self._task = quiet, None, None

    def __call__(self, done: int, total: int, cfg: Any = None, result: Any = None) -> None:
        if self.quiet:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("jobs", total=total)
        label = f"{cfg.model}/{cfg.runtime} b{cfg.batch}" if cfg is not None else "jobs"
        self._bar.update(self._task, completed=done, total=total, description=label[-60:])

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@suite.command("run")
@suite_options
def run(suite_file: str, resume: bool, sha: str | None, tag: str | None, farm: str | None,
        quiet: bool, store_url: str | None, workdir: Path | None) -> None:
    """Expand SUITE_FILE and run every job; each result is stored as soon as it finishes (or kept
    in the spool when the store cannot take it). Ctrl-C stops cleanly; --resume continues."""
    outcome, _config, store = run_suite_file(suite_file, resume=resume, sha=sha, tag=tag, farm=farm,
                                             quiet=quiet, store_url=store_url, workdir=workdir)
    store.close()
    click.echo(outcome.summary())


@suite.command("subset")
@click.argument("suite_file", type=input_file())
@subset_options
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Write the subset report as JSON here")
@store_option
@workdir_option
def subset(suite_file: str, history: str, budget: float, budget_by: str, rank_by: str,
           json_out: str | None, store_url: str | None, workdir: Path | None) -> None:
    """Choose the cheap nightly subset of SUITE_FILE from its stored history (the reports'
    choose_subset): Kendall tau and alarm recall on held-out nights."""
    from costmeter.cli.common import split_list
    from costmeter.harness.config import SuiteConfig
    from costmeter.reports.nightly_commands import report_subset
    from costmeter.results import journal

    config = SuiteConfig.from_toml(suite_file)
    if json_out is not None and not Path(json_out).parent.is_dir():
        raise ConfigError(f"cannot write {json_out}: folder {Path(json_out).parent} does not "
                          "exist; create it or pass another --json path")
    store = open_store(store_url, workdir)
    try:
        with store.reading() as conn:
            runs = [r.run_id for r in journal.suite_runs(conn, config.suite_id)]
        frame = store.query(run_id=runs) if runs else store.query()
    finally:
        store.close()
    _, text = report_subset(frame, history=history, budget=budget, budget_by=budget_by,
                            rank_by=split_list(rank_by), json_out=json_out)
    if not runs:  # after the report: a refusal stays one line
        click.echo(f"note: no stored run of suite {config.suite_id}; using every stored result", err=True)
    click.echo(text)
