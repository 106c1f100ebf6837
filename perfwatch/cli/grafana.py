"""`perfwatch grafana export DIR`: the Prometheus config, alert rules, Grafana dashboards and
provisioning, for users who installed perfwatch from a wheel and have no grafana/ directory."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from perfwatch import assets
from perfwatch.cli.app import cli, out


@cli.group()
def grafana() -> None:
    """Prometheus and Grafana assets for live monitoring and benchmark history."""


@grafana.command("export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite files that differ from perfwatch's copies.")
def export(directory: Path, force: bool) -> None:
    """Write prometheus.yml, rules/, targets/, dashboards/ and provisioning/ into DIRECTORY.

    Files already there and identical are left alone; one that differs (your edit) is
    replaced only with --force. DIRECTORY/README.md says how to run them.
    """
    for action, path in assets.export_grafana(directory, force):
        out.print(f"{action:<9} {escape(str(path))}", soft_wrap=True)
    out.print(f"next: prometheus --config.file={escape(str(directory / 'prometheus.yml'))}; "
              f"Grafana: see {escape(str(directory / 'README.md'))}, section 3", soft_wrap=True)
