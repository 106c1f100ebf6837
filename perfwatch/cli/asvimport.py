"""``perfwatch store import-asv``: an asv results directory brought into the store, one run per results file."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from perfwatch.bench.asvresults import read_results_dir
from perfwatch.cli.app import err, out, results_dir_option, store_of
from perfwatch.cli.store import store
from perfwatch.errors import UserError


@store.command("import-asv")
@click.argument("asv_results", metavar="RESULTS_DIR", type=click.Path(path_type=Path, file_okay=False))
@results_dir_option
@click.pass_context
def import_asv(ctx: click.Context, asv_results: Path, results_dir: Path | None) -> None:
    """Import asv's results (RESULTS_DIR/MACHINE/*.json with their machine.json): each results file becomes a
    run with its commit, date, machine and samples, so `history` goes on from asv's. Runs already imported
    are left as they are; a file that cannot be read is named, and the others are imported (exit 2)."""
    if not asv_results.is_dir():
        raise UserError(f"{asv_results}: no such directory; give asv's results_dir (where asv.conf.json points)")
    found = read_results_dir(asv_results)
    for problem in found.problems:
        err.print(f"[yellow]warning:[/] {escape(problem)}", soft_wrap=True)
    if not found.files:
        raise UserError(f"{asv_results}: no asv results files (MACHINE/*.json) in it; give asv's results_dir")
    target = store_of(ctx, results_dir)
    imported = target.import_runs(found.runs)
    already = len(found.runs) - len(imported)
    out.print(f"imported {len(imported)} of {len(found.runs)} asv runs into {escape(str(target.root))}"
              + (f" ({already} already stored)" if already else ""), soft_wrap=True)
    if found.problems:
        raise UserError(f"{found.files - len(found.runs)} of {found.files} asv results files were not imported; "
                        "see the warnings above")
