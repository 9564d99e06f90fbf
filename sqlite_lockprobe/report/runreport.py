"""The report of a run (or of a saved event log): header facts, per-group numbers, worst busy
events, and the diagnosis; in the terminal and as the JSON contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from sqlite_lockprobe.analysis import Analysis
from sqlite_lockprobe.report.jsonreport import report_document
from sqlite_lockprobe.report.terminal import diagnosis, groups_table, print_lines, worst_waits
from sqlite_lockprobe.report.terminal_timeline import window_renderable, worst_window
from sqlite_lockprobe.runner import RunResult

HEALTHY = (
    "No busy timeouts, no upgrade deadlocks, no long lock holds: the workload's locking is "
    "fine as recorded. (A finding needs evidence; none was guessed.)"
)


@dataclass(frozen=True)
class ReportHeader:
    """What was analysed: a run's scenario and database, or a saved log's origin."""

    title: str
    facts: tuple[tuple[str, str], ...]
    data: dict[str, Any]


def render(console: Console, header: ReportHeader, analysis: Analysis) -> None:
    console.rule(f"[bold]lockprobe[/bold] · {header.title}", align="left")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    for label, value in header.facts:
        facts.add_row(label, value)
    console.print(facts)
    console.print()
    if analysis.timeline.calls:
        console.print(groups_table(analysis.summary))
    print_lines(console, analysis.summary.notes, style="yellow")
    if analysis.timeline.waits:
        origin = analysis.timeline.calls[0].t0 if analysis.timeline.calls else 0
        console.print(worst_waits(analysis.timeline.waits, origin))
    window = worst_window(analysis.timeline)
    if window is not None:
        console.print(window_renderable(window))
    console.print()
    console.print(diagnosis(analysis.findings, HEALTHY))


def document(command: str, header: ReportHeader, analysis: Analysis) -> dict[str, Any]:
    return report_document(
        command,
        analysis.findings,
        **header.data,
        summary=analysis.summary.to_json(),
    )


def run_header(result: RunResult) -> ReportHeader:
    s = result.scenario
    timeouts = sorted({s.group_timeout_ms(g) for g in s.groups})
    modes = sorted({s.group_transaction_mode(g) for g in s.groups})
    groups = ", ".join(f"{g.name} ({g.kind} ×{g.count})" for g in s.groups)
    facts = [
        ("scenario", f"{s.name}: {s.description}" if s.description else s.name),
        ("database", result.db_note),
        ("journal mode", result.settings.get("journal_mode", "?")),
        ("busy timeout", ", ".join(f"{t} ms" for t in timeouts)),
        ("transactions", ", ".join(modes)),
        ("groups", groups),
        (
            "wall time",
            f"{result.wall_seconds:.2f} s" + ("  (interrupted)" if result.interrupted else ""),
        ),
    ]
    if s.seed:
        facts.append(("reproduces", s.seed))
    data = {
        "scenario": {
            "name": s.name,
            "source": s.source,
            "description": s.description,
            "expect": list(s.expect) if s.expect is not None else None,
        },
        "database": {"note": result.db_note, **result.settings},
        "run": {
            "wall_seconds": round(result.wall_seconds, 3),
            "interrupted": result.interrupted,
            "process_exit_codes": result.process_exit_codes,
        },
    }
    return ReportHeader(f"run {s.name}", tuple(facts), data)


def log_header(path: str, events: list[dict[str, Any]]) -> ReportHeader:
    meta = next((e for e in events if e.get("k") == "meta"), {})
    facts = [("event log", path), ("events", str(len(events)))]
    if meta:
        facts += [
            ("source", str(meta.get("source"))),
            ("journal mode", str(meta.get("journal_mode"))),
        ]
    return ReportHeader(f"report {path}", tuple(facts), {"events_file": path, "meta": meta})
