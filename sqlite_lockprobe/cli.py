"""The `lockprobe` command: parse options, call the API, pick a renderer, set the exit code.

No SQLite, analysis or formatting lives here; each command is a few lines over the library.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click
from rich.console import Console

from sqlite_lockprobe import __version__
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.inspect_watch import watch_inspections
from sqlite_lockprobe.inspection import inspect_database, inspection_findings
from sqlite_lockprobe.report.inspect_json import inspection_document
from sqlite_lockprobe.report.inspect_terminal import render_inspection, render_watch
from sqlite_lockprobe.report.jsonreport import write_json_atomically

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """A LockprobeError inside a click command: one line `lockprobe: ...`, its own exit code."""

    def __init__(self, error: LockprobeError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code  # type: ignore[misc]  # click declares it per class

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"lockprobe: {self.format_message()}", err=True)


def user_errors(command: F) -> F:
    """Turn LockprobeError into UserError, so CliRunner and `main` both print one line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LockprobeError as exc:
            raise UserError(exc) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockprobe")
def cli() -> None:
    """Find out why your application gets "database is locked", and what to change."""


@cli.command()
@click.argument("db", type=click.Path(readable=False, path_type=str))
@click.option(
    "--json", "json_out", metavar="FILE|-", help="Write the JSON report to FILE, or - for stdout."
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.05),
    is_flag=False,
    flag_value=1.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (default 1) and log lock changes until Ctrl-C.",
)
@user_errors
def inspect(db: str, json_out: str | None, watch: float | None) -> None:
    """Show who holds which lock on DB right now, read-only and without waiting."""
    if watch is not None:
        if json_out is not None:
            raise click.UsageError("--watch and --json cannot be combined")
        with contextlib.suppress(KeyboardInterrupt):
            render_watch(watch_inspections(db, watch), Console())
        return
    inspection = inspect_database(db)
    findings = inspection_findings(inspection)
    if json_out == "-":
        click.echo(json.dumps(inspection_document(inspection, findings), indent=2))
        return
    if json_out is not None:
        write_json_atomically(json_out, inspection_document(inspection, findings))
    render_inspection(inspection, findings, Console())


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
