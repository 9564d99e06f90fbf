"""The `lockprobe` command: parse options, call the API, pick a renderer, set the exit code.

No SQLite, analysis or formatting lives here; each command is a few lines over the library.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console, RenderableType
from rich.table import Table

from sqlite_lockprobe import __version__
from sqlite_lockprobe.diagnose.analysis import Analysis, analyze
from sqlite_lockprobe.diagnose.registry import ANY_WORD, pattern_ids
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.records import (
    SkippedLines,
    load_event_log,
    stream_event_log,
    write_events,
)
from sqlite_lockprobe.report import runreport, tracereport
from sqlite_lockprobe.report.checkreport import check_document, check_table
from sqlite_lockprobe.report.html import render_html
from sqlite_lockprobe.report.inspect_json import inspection_document
from sqlite_lockprobe.report.inspect_terminal import render_inspection, render_watch
from sqlite_lockprobe.report.jsonreport import (
    output_problem,
    write_json_atomically,
    write_text_atomically,
)
from sqlite_lockprobe.report.junit import junit_xml
from sqlite_lockprobe.report.progress import live_progress
from sqlite_lockprobe.report.runreport import ReportHeader
from sqlite_lockprobe.report.timeline import chrome_trace
from sqlite_lockprobe.sources.inspect.inspection import inspect_database, inspection_findings
from sqlite_lockprobe.sources.inspect.watch import watch_inspections
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import builtin_names, load_scenario
from sqlite_lockprobe.sources.run.thresholds import Thresholds
from sqlite_lockprobe.sources.trace import GRACE_SECONDS, trace_program
from sqlite_lockprobe.workflows.checking import check_scenario, load_targets
from sqlite_lockprobe.workflows.comparefix import compare_fix as run_with_fixes
from sqlite_lockprobe.workflows.scenario_from_events import ScenarioDraft, scenario_from_events

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
    except click.UsageError as exc:
        # One line, not click's usage block: a bad option is a user's mistake like any other.
        # The subcommands by name: the program's own may be "python -m sqlite_lockprobe".
        names, ctx = [], exc.ctx
        while ctx is not None and ctx.parent is not None:
            names.append(ctx.info_name or "")
            ctx = ctx.parent
        command = " ".join(["lockprobe", *reversed(names)])
        click.echo(f"lockprobe: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


# ----------------------------------------------------------------- run, scenarios, report

DEFAULT_SCENARIO = "upgrade-deadlock"


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[list[int]]:
    """Treat SIGTERM like Ctrl-C while a workload runs, so it stops cleanly and reports what it
    recorded; the list says whether SIGTERM came (exit 143 rather than 130)."""
    received: list[int] = []

    def interrupt(signum: int, _frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def writable_output(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """Refuse at once an output file that could not be written at the end (`-` is stdout), so
    a run or a traced program is not started for results that would be lost."""
    if value is None or str(value) == "-":
        return value
    problem = output_problem(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


def pattern_ids_option(
    allow_healthy: bool = False, allow_any: bool = False
) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[str, ...] | None]:
    """The callback of every option that takes pattern ids (registry.py): the ids validated,
    sorted and de-duplicated before anything runs, None when the option was not given. An
    unknown id is the same one-line error, exit 2, in every command."""

    def validate(
        _ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        if not value:
            return None
        where = param.opts[0] if param.opts else str(param.name)
        try:
            return pattern_ids(value, where, allow_healthy=allow_healthy, allow_any=allow_any)
        except LockprobeError as exc:
            raise UserError(exc) from exc

    return validate


events_option = click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_output,
    help="Keep the full event log (JSON lines) in this file.",
)


@dataclass(frozen=True)
class ReportOutputs:
    """Where a diagnosis goes, for every command that produces one (run, report, trace)."""

    json_path: str | None
    quiet: bool
    expect: tuple[str, ...] | None  # validated ids, () for healthy; None: not asked
    timeline_path: Path | None = None
    html_path: Path | None = None


def report_outputs(command: F) -> F:
    """The output options shared by run, report and trace; passes `outputs: ReportOutputs`."""

    @click.option(
        "--json",
        "json_path",
        metavar="FILE|-",
        callback=writable_output,
        help="Write the JSON report (- for stdout).",
    )
    @click.option(
        "--expect",
        multiple=True,
        metavar="PATTERN",
        callback=pattern_ids_option(allow_healthy=True),
        help="Exit 1 unless the findings are exactly these pattern ids ('healthy' for none).",
    )
    @click.option("--quiet", "-q", is_flag=True, help="No progress display and no terminal report.")
    @click.option(
        "--timeline",
        "timeline_path",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE.json",
        callback=writable_output,
        help="Write the lock timeline for ui.perfetto.dev or chrome://tracing.",
    )
    @click.option(
        "--html",
        "html_path",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        callback=writable_output,
        help="Write a self-contained HTML report (opens offline).",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any,
        json_path: str | None,
        expect: tuple[str, ...] | None,
        quiet: bool,
        timeline_path: Path | None,
        html_path: Path | None,
        **kwargs: Any,
    ) -> Any:
        outputs = ReportOutputs(json_path, quiet, expect, timeline_path, html_path)
        return command(*args, outputs=outputs, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit_report(
    command: str,
    header: ReportHeader,
    analysis: Analysis,
    outputs: ReportOutputs,
    appendix: tuple[RenderableType, ...] = (),
    unwritten: tuple[str, ...] = (),
    render: Callable[[Console], None] | None = None,
) -> None:
    """Write the JSON, timeline and HTML files and print the terminal report (then
    `appendix`) as asked, or `render`'s instead. A file that cannot be written does not stop
    the others nor the report: each is named after it (with `unwritten`, the ones that failed
    before), then exit 2. Else exit 1 when --expect differs."""
    failed = list(unwritten)

    def write(path: Path | str, text: str) -> None:
        try:
            write_text_atomically(path, text)
        except LockprobeError as exc:
            failed.append(str(exc))

    if outputs.timeline_path:
        trace = chrome_trace(analysis.timeline, header.title)
        write(outputs.timeline_path, json.dumps(trace, separators=(",", ":")))
    document = runreport.document(command, header, analysis)
    if outputs.html_path:
        write(outputs.html_path, render_html(header.title, header.facts, analysis, document))
    if outputs.json_path == "-":
        click.echo(json.dumps(document, indent=2))
    elif outputs.json_path:
        write(outputs.json_path, json.dumps(document, indent=2) + "\n")
    if outputs.json_path != "-" and not outputs.quiet:
        console = Console()
        if render is not None:
            render(console)
        else:
            runreport.render(console, header, analysis)
        for renderable in appendix:
            console.print(renderable)
    for problem in failed:
        click.echo(f"lockprobe: {problem}", err=True)
    mismatch = False
    if outputs.expect is not None:
        want = list(outputs.expect)
        got = analysis.pattern_ids
        if want != got:
            click.echo(
                f"lockprobe: expected patterns {want or ['healthy']}, found {got or ['healthy']}",
                err=True,
            )
            mismatch = True
    if failed:
        sys.exit(2)
    if mismatch:
        sys.exit(1)


def write_event_log(path: Path | None, events: list[dict[str, Any]]) -> tuple[str, ...]:
    """Write --events; what went wrong, to say after the report rather than instead of it."""
    if path is None:
        return ()
    try:
        write_events(path, events)
    except LockprobeError as exc:
        return (str(exc),)
    return ()


@cli.command()
@click.argument("scenario", required=False, default=DEFAULT_SCENARIO)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Database file to run against: created if missing; an existing one is copied "
    "first and never modified.",
)
@events_option
@click.option(
    "--compare-fix",
    is_flag=True,
    help="Re-run with the advice applied (BEGIN IMMEDIATE, busy_timeout, WAL, synchronous) "
    "and show before and after.",
)
@report_outputs
@click.option(
    "--no-probe", is_flag=True, hidden=True, help="Run without SQLite hooks (benchmarks)."
)
@user_errors
def run(
    scenario: str,
    db: Path | None,
    events_path: Path | None,
    compare_fix: bool,
    outputs: ReportOutputs,
    no_probe: bool,
) -> None:
    """Run SCENARIO (a built-in name or a .toml file; default: upgrade-deadlock) and report
    every busy wait, what caused it, and what to change."""
    loaded = load_scenario(scenario)
    show_progress = not outputs.quiet and outputs.json_path != "-"
    with (
        sigterm_interrupts() as terminated,
        live_progress(show_progress, f"running {loaded.name}") as progress,
    ):
        result = run_scenario(loaded, db=db, instrument=not no_probe, progress=progress)
    unwritten = write_event_log(events_path, result.events)
    analysis = analyze(result.events)
    header = runreport.run_header(result)
    appendix: tuple[RenderableType, ...] = ()
    if compare_fix and not result.interrupted:
        with live_progress(show_progress, f"re-running {loaded.name} with the fixes"):
            comparison = run_with_fixes(loaded, analysis, db=db, instrument=not no_probe)
        header.data["compare_fix"] = comparison.to_json()
        appendix = (runreport.comparison_renderable(comparison),)
    emit_report("run", header, analysis, outputs, appendix, unwritten)
    if result.interrupted:
        sys.exit(143 if terminated else 130)


@cli.command()
@user_errors
def scenarios() -> None:
    """List the built-in scenarios."""
    table = Table(box=None, pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("expected findings")
    table.add_column("description")
    for name in builtin_names():
        s = load_scenario(name)
        table.add_row(name, ", ".join(s.expect or ()) or "none (healthy)", s.description)
    Console().print(table)


@cli.command()
@click.argument("events_file", type=click.Path(dir_okay=False, path_type=Path))
@report_outputs
@user_errors
def report(events_file: Path, outputs: ReportOutputs) -> None:
    """Diagnose a saved event log (from run --events or trace --events)."""
    skipped = SkippedLines()
    analysis = analyze(stream_event_log(events_file, skipped))
    header = runreport.log_header(str(events_file), analysis, skipped)
    emit_report("report", header, analysis, outputs)


# -------------------------------------------------------------------------- scenario


def scenario_name(output: str) -> str:
    return "from-trace" if output == "-" else Path(output).stem


def write_scenario(output: str, draft: ScenarioDraft) -> None:
    """The generated TOML to stdout or a file, and one line on stderr saying what to do next."""
    if output == "-":
        click.echo(draft.text, nl=False)
        return
    write_text_atomically(output, draft.text)
    click.echo(f"lockprobe: wrote {output} (run it: lockprobe run {output})", err=True)
    for note in draft.notes:
        click.echo(f"lockprobe: note: {note}", err=True)


scenario_option = click.option(
    "--scenario",
    "scenario_path",
    metavar="FILE.toml",
    callback=writable_output,
    help="Write a scenario that reproduces the recorded transactions (no data copied).",
)


@cli.command("scenario")
@click.argument("events_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE.toml|-",
    callback=writable_output,
    help="Where to write the scenario (- for stdout).",
)
@click.option(
    "--schema-from",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    metavar="DB",
    help="Read the schema from this database file (read-only) instead of the one the log names.",
)
@user_errors
def scenario_command(events_file: Path, output: str, schema_from: str | None) -> None:
    """Write a scenario reproducing a saved event log (trace, run or record() --events): its
    workers, transactions, think times and settings, with generated values."""
    events = load_event_log(events_file)
    patterns = analyze(events).pattern_ids
    draft = scenario_from_events(
        events, patterns, name=scenario_name(output), schema_db=schema_from
    )
    write_scenario(output, draft)


# ----------------------------------------------------------------------------- check


@cli.command()
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option(
    "--db",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run every scenario on a copy of this database (the file is never written).",
)
@click.option(
    "--max-busy-errors",
    type=click.IntRange(min=0),
    metavar="N",
    help="Fail when more than N calls fail with SQLITE_BUSY.",
)
@click.option(
    "--max-p99-wait",
    "max_p99_wait_ms",
    type=click.FloatRange(min=0),
    metavar="MS",
    help="Fail when the p99 of busy waits is longer than MS milliseconds.",
)
@click.option(
    "--forbid",
    multiple=True,
    metavar="PATTERN",
    callback=pattern_ids_option(),
    help="Fail when this pattern is found (repeatable).",
)
@click.option(
    "--expect",
    multiple=True,
    metavar="PATTERN",
    callback=pattern_ids_option(allow_healthy=True),
    help="Fail unless the findings are exactly these patterns ('healthy' for none; "
    "default: the scenario's own expect list).",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write a JUnit XML report (one test case per limit).",
)
@click.option("--json", "json_path", metavar="FILE|-", help="Write the JSON report (- for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no table.")
@user_errors
def check(
    targets: tuple[str, ...],
    db: Path | None,
    max_busy_errors: int | None,
    max_p99_wait_ms: float | None,
    forbid: tuple[str, ...] | None,
    expect: tuple[str, ...] | None,
    junit_path: Path | None,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Run scenarios and fail (exit 1) when a limit does not hold: for CI.

    TARGET is a built-in scenario name, a .toml file or a directory of .toml files
    (default: every built-in scenario). Limits come from the options, else from each
    scenario's [check] table and its expect list. Exit 0: all hold; 1: one failed;
    2: bad input."""
    overrides = Thresholds(
        max_busy_errors=max_busy_errors,
        max_p99_wait_ms=max_p99_wait_ms,
        forbid=forbid,
        expect=expect,
    )
    scenarios = load_targets(targets)
    results = []
    for i, scenario in enumerate(scenarios, 1):
        title = f"check {scenario.name} ({i}/{len(scenarios)})"
        with live_progress(not quiet and json_path != "-", title) as progress:
            results.append(check_scenario(scenario, overrides, db=db, progress=progress))
        if results[-1].outcome.interrupted:
            break
    if junit_path:
        write_text_atomically(junit_path, junit_xml(results))
    if json_path == "-":
        click.echo(json.dumps(check_document(results), indent=2))
    elif json_path:
        write_json_atomically(json_path, check_document(results))
    if json_path != "-" and not quiet:
        Console().print(check_table(results))
    if results and results[-1].outcome.interrupted:
        sys.exit(130)
    sys.exit(0 if all(r.passed for r in results) else 1)


# ------------------------------------------------------------------------------- trace


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Record only connections to this database file (others run untouched).",
)
@events_option
@scenario_option
@report_outputs
@click.option(
    "--fail-on",
    multiple=True,
    metavar="PATTERN",
    callback=pattern_ids_option(allow_any=True),
    help="Exit 1 when the diagnosis finds PATTERN (repeatable; 'any': any finding), "
    "instead of the program's own exit code.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=GRACE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="After a second Ctrl-C, time the program has to exit before lockprobe sends SIGTERM "
    "(and as long again before SIGKILL).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@user_errors
def trace(
    db: Path | None,
    events_path: Path | None,
    scenario_path: str | None,
    outputs: ReportOutputs,
    fail_on: tuple[str, ...] | None,
    grace: float,
    command: tuple[str, ...],
) -> None:
    """Run your own program with every sqlite3 connection instrumented, then report like
    `run`: lockprobe trace [OPTIONS] -- python app.py ARGS. Ctrl-C goes to the program
    first; lockprobe exits with the program's exit code."""
    result = trace_program(list(command), db=db, grace_seconds=grace)
    unwritten = write_event_log(events_path, result.events)
    analysis = analyze(result.events)
    if scenario_path is not None:
        unwritten += trace_scenario(scenario_path, result.events, analysis)
    header = tracereport.trace_header(result, analysis)
    if result.nothing_recorded:

        def nothing(console: Console) -> None:
            tracereport.render_nothing_recorded(console, header)

        emit_report("trace", header, analysis, outputs, unwritten=unwritten, render=nothing)
    else:
        emit_report("trace", header, analysis, outputs, unwritten=unwritten)
    fail_on = fail_on or ()
    failed = [p for p in analysis.pattern_ids if p in fail_on or ANY_WORD in fail_on]
    if failed:
        click.echo(f"lockprobe: found {', '.join(failed)} (--fail-on)", err=True)
        sys.exit(1)
    sys.exit(result.exit_code)


def trace_scenario(
    output: str, events: list[dict[str, Any]], analysis: Analysis
) -> tuple[str, ...]:
    """trace --scenario; what went wrong, to say after the report rather than instead of it."""
    try:
        draft = scenario_from_events(events, analysis.pattern_ids, name=scenario_name(output))
        write_scenario(output, draft)
    except LockprobeError as exc:
        return (f"--scenario: {exc}",)
    return ()
