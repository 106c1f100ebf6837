"""``perfwatch store``: bring results documents into the store, take one out, say what is in it, and
store the runs that wait in the local spool."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from perfwatch.cli.app import cli, out, results_dir_option, store_of
from perfwatch.errors import UserError
from perfwatch.results import RunRecord
from perfwatch.store.files import write_or_refuse


@cli.group()
def store() -> None:
    """The run store: sqlite:///PATH (default .perfwatch/perfwatch.db), postgresql://... or a directory.

    Choose it with --store URL, PERFWATCH_STORE or `store = "..."` in the settings.
    """


def documents(paths: tuple[Path, ...]) -> list[Path]:
    """The results files named: files as given, directories for their *.json, oldest run id first."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.glob("*.json") if not p.name.startswith("."))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path}: no such results file or directory")
    return found


@store.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@results_dir_option
@click.pass_context
def store_import(ctx: click.Context, paths: tuple[Path, ...], results_dir: Path | None) -> None:
    """Import results documents (files or directories of them); runs already stored are left as they are."""
    records = [RunRecord.load(path) for path in documents(paths)]  # all read before any is stored
    target = store_of(ctx, results_dir)
    imported = target.import_runs(records)
    out.print(f"imported {len(imported)} of {len(records)} runs into {escape(str(target.root))}"
              + (f" ({len(records) - len(imported)} already stored)" if len(imported) < len(records) else ""))


@store.command("export")
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--to", "path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the document to this file instead of stdout.")
@results_dir_option
@click.pass_context
def store_export(ctx: click.Context, run_ref: str | None, path: Path | None, results_dir: Path | None) -> None:
    """Print a stored run (id, prefix or `latest`) as its results document, as `perfwatch show --json` does."""
    text = store_of(ctx, results_dir).load(run_ref).to_json()
    if path is None:
        click.echo(text)
        return
    write_or_refuse(path, text + "\n", path, "the document", "pass a writable file", setting="path")


@store.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@results_dir_option
@click.pass_context
def store_info(ctx: click.Context, as_json: bool, results_dir: Path | None) -> None:
    """Where runs are stored, the backend, its schema version, how many runs, the oldest and latest, and how
    many runs wait in the local spool for it (`perfwatch store sync`)."""
    info = store_of(ctx, results_dir).info()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for key, value in info.items():
        out.print(f"{key}: {escape(str('-' if value is None else value))}")


@store.command("sync")
@results_dir_option
@click.pass_context
def store_sync(ctx: click.Context, results_dir: Path | None) -> None:
    """Store the runs that wait in the local spool (.perfwatch/spool) because the store could not take them
    when they were made; a run already stored is not stored twice, so it is safe to run again."""
    target = store_of(ctx, results_dir)
    synced = target.sync()
    root = escape(str(target.root))
    already = f" ({len(synced.already)} already stored)" if synced.already else ""
    out.print(f"stored {len(synced.stored)} waiting run{'s' if len(synced.stored) != 1 else ''} in {root}{already}")
    for other, count in synced.elsewhere.items():
        out.print(f"{count} run{'s wait' if count != 1 else ' waits'} for another store: {escape(other)}")
    if synced.error is not None:
        raise UserError(f"{synced.error}; {synced.left} run{'s still wait' if synced.left != 1 else ' still waits'} in "
                        f"{target.spool.root}: run `perfwatch store sync` again once the store takes them")
