"""The header of a `trace` report: what ran, how it ended, what was recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from sqlite_lockprobe.diagnose.analysis import Analysis
from sqlite_lockprobe.events.databases import DatabaseInfo
from sqlite_lockprobe.report.databasefacts import databases_json, several_databases
from sqlite_lockprobe.report.runreport import ReportHeader

if TYPE_CHECKING:  # renderers get the sources' results, they do not import the sources
    from sqlite_lockprobe.sources.trace import TraceResult

NOTHING_TO_TRACE = "nothing to trace (no sqlite3 connection recorded)"


def trace_header(result: TraceResult, analysis: Analysis) -> ReportHeader:
    meta = analysis.activity.meta  # the first: the recording's database
    databases = () if result.nothing_recorded else analysis.databases
    processes = ", ".join(str(p) for p in result.pids) or "none"
    facts = [
        ("command", result.command),
        ("program", result.outcome),
        ("recorded", f"{result.connections} connection(s) in {len(result.pids)} process(es)"),
        ("processes", processes),
        *database_facts(result, analysis, meta),
        ("wall time", f"{result.wall_seconds:.2f} s"),
    ]
    main = _main_database(result, databases, meta)
    paths = probe_paths(result.events)
    if paths:
        facts.append(("probe", _describe_paths(paths)))
    data = {
        "trace": {
            "command": list(result.argv),
            "exit_code": result.exit_code,
            "signal": result.signal,
            "interrupted": result.interrupted,
            "received_signals": list(result.received),
            "escalated": result.escalated,
            "wall_seconds": round(result.wall_seconds, 3),
            "pids": list(result.pids),
            "connections": result.connections,
            "nothing_recorded": result.nothing_recorded,
            "probe_path": _one_path(paths),
        },
        "database": {
            "path": main.path if main else result.db or meta.get("db"),
            "journal_mode": main.journal_mode if main else None,
        },
        "databases": databases_json(databases, analysis.findings),
    }
    return ReportHeader(f"trace {result.command}", tuple(facts), data)


def database_facts(
    result: TraceResult, analysis: Analysis, meta: dict[str, Any]
) -> list[tuple[str, str]]:
    """The header lines about databases: one database and its journal mode, or how many
    there were in which mode, with each one (or, when many, each one a finding is about)."""
    databases = () if result.nothing_recorded else analysis.databases
    if len(databases) > 1:
        return several_databases(databases, analysis.findings)
    main = _main_database(result, databases, meta)
    path = main.path if main else result.db or meta.get("db")
    return [
        ("database", str(path or "every database opened")),
        ("journal mode", str(main.journal_mode if main else "?")),
    ]


def _main_database(
    result: TraceResult, databases: Sequence[DatabaseInfo], meta: dict[str, Any]
) -> DatabaseInfo | None:
    """The database `database` names: the --db filter, the only one, or the first recorded."""
    wanted = result.db or (databases[0].path if len(databases) == 1 else meta.get("db"))
    return next((db for db in databases if db.path == wanted), None)


def probe_paths(events: list[dict[str, Any]]) -> dict[str, int]:
    """How many traced processes recorded their calls with each probe path ("compiled": the
    C fast path, "python": its pure-Python twin), from their `meta` events."""
    by_pid: dict[Any, str] = {}
    for event in events:
        if event["k"] == "meta" and event.get("probe_path"):
            by_pid[event.get("pid")] = event["probe_path"]
    counts: dict[str, int] = {}
    for path in by_pid.values():
        counts[path] = counts.get(path, 0) + 1
    return counts


def _one_path(paths: dict[str, int]) -> str | None:
    """The JSON value: the one path every process took, "mixed", or null (none recorded)."""
    if not paths:
        return None
    return next(iter(paths)) if len(paths) == 1 else "mixed"


_PATH_WORDS = {"compiled": "compiled (C fast path)", "python": "pure Python"}


def _describe_paths(paths: dict[str, int]) -> str:
    if len(paths) == 1:
        return _PATH_WORDS.get(next(iter(paths)), next(iter(paths)))
    return "mixed: " + ", ".join(
        f"{path} in {count}" for path, count in sorted(paths.items())
    )  # "mixed: compiled in 2, python in 1" (processes)


def render_nothing_recorded(console: Console, header: ReportHeader) -> None:
    """The terminal report when the program opened no (matching) sqlite3 connection."""
    console.rule(f"[bold]lockprobe[/bold] · {header.title}", align="left")
    for label, value in header.facts[:2]:
        console.print(Text.assemble((label, "dim"), f"  {value}"), highlight=False)
    console.print(NOTHING_TO_TRACE, style="yellow", highlight=False)
