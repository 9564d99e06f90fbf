"""The `lockprobe` command: parse options, call the API, pick a renderer, set the exit code.

No SQLite, analysis or formatting lives here; each command is a few lines over the library.
"""

from __future__ import annotations

import sys

import click

from sqlite_lockprobe import __version__
from sqlite_lockprobe.errors import LockprobeError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockprobe")
def cli() -> None:
    """Find out why your application gets "database is locked", and what to change."""


def main() -> None:
    """Entry point: user errors become one line on stderr and their exit code, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except LockprobeError as exc:
        click.echo(f"lockprobe: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("lockprobe: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
