"""The report of a run (or of a saved event log): header facts, per-group numbers, worst busy
events, and the diagnosis; in the terminal and as the JSON contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sqlite_lockprobe.diagnose.analysis import Analysis
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.events.records import SkippedLines
from sqlite_lockprobe.report.databasefacts import databases_json, several_databases
from sqlite_lockprobe.report.jsonreport import report_document
from sqlite_lockprobe.report.terminal import (
    diagnosis,
    groups_table,
    hanging,
    print_lines,
    worst_waits,
)
from sqlite_lockprobe.report.terminal_timeline import window_renderable, worst_window

if TYPE_CHECKING:  # renderers get the sources' results, they do not import the sources
    from sqlite_lockprobe.sources.run.runner import RunResult
    from sqlite_lockprobe.sources.run.scenario import Scenario
    from sqlite_lockprobe.workflows.comparefix import FixComparison

HEALTHY = (
    "No call failed on a lock (SQLITE_BUSY or SQLITE_LOCKED) and no wait used half of its "
    "busy_timeout: the workload's locking is fine as recorded. (A finding needs evidence; "
    "none was guessed.)"
)


def healthy_note(timeline: Timeline) -> str:
    """HEALTHY, and why the SQLITE_BUSY errors the table may show are no lock problem: a
    COMMIT or RELEASE met the connection's own unfinished statements (model.py,
    STATEMENTS_IN_PROGRESS)."""
    own = [c for c in timeline.calls if c.busy_from_own_statements]
    if not own:
        return HEALTHY
    messages = sorted({c.message or "" for c in own})
    return (
        f"{HEALTHY}\n{len(own)} call{'s' if len(own) != 1 else ''} failed with SQLITE_BUSY "
        f"because of {'their' if len(own) != 1 else 'its'} own connection's unfinished "
        f"statements, not a lock ({'; '.join(messages)}): a COMMIT or RELEASE while a "
        "statement of the same connection was still running, such as an INSERT ... RETURNING "
        "whose rows were not fetched yet. No other connection was involved."
    )


def automatic_mark(header: ReportHeader) -> str:
    """What to say after advice that --compare-fix can apply: only `run` re-runs a scenario,
    and the advice is verified only once it did (its results follow the diagnosis)."""
    if not header.title.startswith("run "):
        return ""
    if "compare_fix" in header.data:
        return " [re-run with this change by --compare-fix: results below]"
    return " [--compare-fix re-runs the scenario with this change to verify it]"


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
        facts.add_row(label, Text(value))
    console.print(facts)
    console.print()
    if analysis.summary.total.calls:
        console.print(groups_table(analysis.summary))
    print_lines(console, analysis.summary.notes, style="yellow")
    crashes = analysis.summary.total.crashes
    if crashes:
        print_lines(console, [f"{len(crashes)} worker(s) ended abnormally:"], "bold red")
        print_lines(console, [f"  {c}" for c in crashes], "red")
    if analysis.timeline.waits:
        origin = analysis.activity.first_ns or analysis.timeline.origin_ns
        console.print(worst_waits(analysis.timeline.waits, origin))
    window = worst_window(analysis.timeline)
    if window is not None:
        console.print(window_renderable(window))
    console.print()
    console.print(
        diagnosis(analysis.findings, healthy_note(analysis.timeline), automatic_mark(header))
    )


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
        *schema_facts(s, result.settings),
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


def schema_facts(scenario: Scenario, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """What preparing did to a database that already had the scenario's tables (a second run
    on the file a first run created): nothing is said when the schema was created."""
    kept = settings.get("schema_kept") or []
    if not kept:
        return []
    one = len(kept) == 1
    text = f"{', '.join(kept)} already there: kept as {'it was' if one else 'they were'}"
    text += f", with {'its' if one else 'their'} rows"
    setup = len(scenario.database.setup)
    if setup:
        text += f"; setup ({setup} statement{'s' if setup > 1 else ''}) not run again"
    return [("schema", text)]


def log_header(path: str, analysis: Analysis, skipped: SkippedLines | None = None) -> ReportHeader:
    """A saved log's header; `skipped` (counted while the log was read) adds a note on the
    lines that were not events."""
    activity = analysis.activity
    meta = activity.meta
    facts = [("event log", path), ("events", f"{activity.events:,}")]
    data: dict[str, Any] = {"events_file": path, "meta": meta}
    if skipped is not None:
        data["skipped_lines"] = skipped.to_json()
        note = skipped_note(skipped)
        if note:
            facts.append(("note", note))
    if meta:
        facts.append(("source", str(meta.get("source"))))
    if len(analysis.databases) > 1:  # a trace's log: each file in its own mode
        facts += several_databases(analysis.databases, analysis.findings)
        data["databases"] = databases_json(analysis.databases, analysis.findings)
    elif analysis.databases:
        facts.append(("journal mode", analysis.databases[0].journal_mode))
    elif meta:
        facts.append(("journal mode", str(meta.get("journal_mode"))))
    return ReportHeader(f"report {path}", tuple(facts), data)


def skipped_note(skipped: SkippedLines) -> str | None:
    """The lines of a log that were dropped, in words; a torn last line is what a killed
    process leaves, said as such (it is no error: every complete line was read)."""
    parts = []
    if skipped.torn:
        parts.append(
            "the last line was cut mid-line (normal when the recording process was killed)"
        )
    if skipped.not_json:
        parts.append(f"{skipped.not_json} not JSON")
    if skipped.not_events:
        parts.append(f"{skipped.not_events} not a lockprobe event")
    if not parts:
        return None
    lines = "line" if skipped.total == 1 else "lines"
    return f"{skipped.total} {lines} dropped: {'; '.join(parts)}"


def comparison_renderable(comparison: FixComparison) -> RenderableType:
    """Before/after of --compare-fix, with what was applied and what needs a code change."""
    if comparison.after is None:
        body: list[RenderableType] = [
            Text("No advice here can be applied by changing settings alone; nothing re-run.")
        ]
    else:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
        table.add_column("measure")
        table.add_column("before", justify="right")
        table.add_column("after the fix", justify="right")
        for measure, before, after in comparison.rows():
            table.add_row(measure, before, after)
        applied = "; ".join(describe_fix(k, v) for k, v in comparison.fixes.items())
        note = (
            f"(the scenario's wait steps were bounded to {comparison.wait_limit_s:g} s: the fix "
            "can change who waits for whom)"
        )
        body = [Text(f"Re-ran with: {applied}"), Text(note, style="dim"), table]
    if comparison.manual:
        body.append(Text("Needs a code change (not verified by a re-run):", style="bold"))
        for pattern, advice in comparison.manual:
            body.append(hanging("  • ", Text.assemble((pattern, "bold"), f": {advice.text}")))
    return Panel(Group(*body), title="--compare-fix: the advice applied", title_align="left")


def describe_fix(key: str, value: Any) -> str:
    return {
        "transaction": "BEGIN IMMEDIATE for every transaction that writes",
        "busy_timeout_ms": f"busy_timeout = {value} ms",
        "journal_mode": f"journal_mode = {str(value).upper()}",
        "synchronous": f"synchronous = {str(value).upper()}",
    }.get(key, f"{key} = {value}")
