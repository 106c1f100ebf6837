"""The ``perfwatch`` command line: parse, call a public function, print.

Only this package turns errors into messages and exit codes (docs/architecture.md): 0 ok,
1 confirmed regression, 2 usage or input error, 3 a benchmark failed, 70 an internal error
(a bug). A traceback is shown only with ``--debug``. Each module holds one family of
commands and registers it on the group in ``app``.
"""

from __future__ import annotations

import itertools
import sys
import traceback

import click

from perfwatch.cli import (  # noqa: F401  (registers the commands)
    asvimport,
    bench,
    bisect,
    grafana,
    history,
    publish,
    regress,
    report,
    store,  # noqa: F401
    tune,
    watch,
)
from perfwatch.cli.app import cli, err
from perfwatch.errors import INTERNAL_ERROR_EXIT, PerfwatchError, one_line

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in itertools.takewhile(lambda arg: arg.startswith("-"), argv)  # not a launched command's
    try:
        cli.main(args=argv, prog_name="perfwatch", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # unknown option, bad choice: click's own usage message
        exc.show(file=sys.stderr)
        return 2
    except click.exceptions.Abort:
        err.print("perfwatch: interrupted")
        return 130
    except PerfwatchError as exc:
        if debug:
            traceback.print_exc()
        prefix = "perfwatch: error: " if exc.exit_code == 2 else "perfwatch: "
        click.echo(prefix + str(exc), err=True)
        return exc.exit_code
    except Exception as exc:  # not raised on purpose: a bug, whatever its input
        if debug:
            traceback.print_exc()
        click.echo(f"perfwatch: internal error: {one_line(exc)}; "
                   "this is a bug: rerun with --debug and report the traceback", err=True)
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
