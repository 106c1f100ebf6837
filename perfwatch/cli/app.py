"""The ``perfwatch`` click group and what its commands share: consoles, config, store, options."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.logging import RichHandler
from rich.markup import escape

from perfwatch.bench import runner
from perfwatch.config import Config, load_config
from perfwatch.display import TerminalConsole
from perfwatch.errors import UserError
from perfwatch.store import DEFAULT_STORE, RunStore, open_store

out = TerminalConsole(highlight=False)
err = TerminalConsole(stderr=True, highlight=False)


class Command(click.Command):
    """A command that adds its own flag to an error about the setting that flag sets (errors.py)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            flag = next((opt for p in self.params if isinstance(p, click.Option) and p.name == exc.setting
                         for opt in p.opts if opt.startswith("--")), None)
            if flag is None:
                raise
            raise UserError(f"{exc} ({flag})") from exc


class Group(click.Group):
    """Commands and sub-groups of ``perfwatch`` are Command and Group."""

    command_class = Command
    group_class = type


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="perfwatch")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Profiling and continuous benchmarking for PyTorch training pipelines."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )
    ctx.obj = {"debug": debug, "config": load_config()}


def config_of(ctx: click.Context) -> Config:
    return ctx.obj["config"]


def store_of(ctx: click.Context, results_dir: Path | None) -> RunStore:
    """The store --results-dir, --store / PERFWATCH_STORE, or the settings name; else the SQLite default,
    into which the runs of .perfwatch/results (or results_dir) are imported."""
    store = ctx.meta.get("perfwatch.store")
    if results_dir is not None and ctx.get_parameter_source("store") is click.core.ParameterSource.COMMANDLINE:
        raise UserError("--store and --results-dir: give one (--results-dir DIR is --store DIR)")
    config = config_of(ctx)
    if results_dir is not None or store or config.store:
        return open_store(results_dir or store or config.store)
    return open_store(DEFAULT_STORE, legacy=config.results_dir)


paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))


def results_dir_option(command):
    """--store URL (or PERFWATCH_STORE) and its alias for a directory, --results-dir; store_of reads both."""
    command = click.option(
        "--store", metavar="URL", envvar="PERFWATCH_STORE", show_envvar=True, expose_value=False,
        callback=lambda ctx, param, value: ctx.meta.setdefault("perfwatch.store", value),
        help="Where runs are stored: sqlite:///PATH, postgresql://USER@HOST/DB or a directory "
             "(default: store in config, else sqlite:///.perfwatch/perfwatch.db).")(command)
    return click.option("--results-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="A directory of results documents to store runs in (same as --store DIR).")(command)


def prepare_store(store: RunStore, results_dir: Path | None) -> None:
    """Before a suite runs: the store opens (a database) or takes a file (a directory), and what an
    earlier killed run left is cleaned up, said in one line; never an error found after the suite. A
    database that cannot be reached now is a warning: the run will wait in the spool."""
    if store.backend == "directory":
        runner.check_writable(store.root, setting="results_dir" if results_dir else "store")
    away = store.ready()
    if away:
        err.print(f"[yellow]warning:[/] {escape(away)}", soft_wrap=True)
    cleaned = runner.clean_leftovers(store)
    if cleaned:
        err.print(f"[yellow]note:[/] {escape(cleaned)}", soft_wrap=True)
