"""The terminal report (rich): what ran, per-group numbers, the worst busy events, and the
diagnosis. Built from plain data (RunSummary, BusyWait, Finding), like every renderer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sqlite_lockprobe.diagnose.model import BusyWait
from sqlite_lockprobe.findings import Finding, sort_findings
from sqlite_lockprobe.resultcodes import code_name
from sqlite_lockprobe.stats import GroupStats, RunSummary

_SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
_WORST_EVENTS = 10
_KIND_SHORT = {"thread": "thr", "process": "proc", "coroutine": "coro"}


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _shorten(sql: str, width: int = 60) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _short_code(name: str) -> str:
    """ "SQLITE_BUSY_SNAPSHOT (517)" -> "BUSY_SNAPSHOT", for narrow tables."""
    return name.split(" ")[0].removeprefix("SQLITE_")


def groups_table(summary: RunSummary) -> Table:
    table = Table(
        title="Workers  (rb: rollbacks; waits: calls that met a busy lock,"
        " their p50/p99/max duration in ms; tx/s: commits per second)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("group (workers)", overflow="fold", max_width=22)
    for name in ("calls", "commits", "rb", "errors", "waits", "p50", "p99", "max", "tx/s"):
        left = name == "errors"
        width = 5 if name in ("waits", "p50", "p99", "max", "tx/s") else len(name)
        table.add_column(name, justify="left" if left else "right", no_wrap=True, min_width=width)
    rows: list[GroupStats] = list(summary.groups)
    if len(rows) > 1:
        rows.append(summary.total)
    for i, g in enumerate(rows):
        errors = " ".join(f"{n} {_short_code(name)}" for name, n in g.errors.items()) or "-"
        w = g.waits
        table.add_row(
            f"{g.group} ({g.workers} {_KIND_SHORT.get(g.kind, g.kind)})".replace(" )", ")"),
            str(g.calls),
            str(g.commits),
            str(g.rollbacks),
            Text(errors, style="red" if g.errors else ""),
            str(w.count),
            _ms(w.p50_ms) if w.count else "-",
            _ms(w.p99_ms) if w.count else "-",
            _ms(w.max_ms) if w.count else "-",
            f"{g.commits_per_second:,.0f}",
            end_section=i == len(rows) - 2 and len(rows) > 1,
        )
    return table


def worst_waits(waits: Sequence[BusyWait], origin_ns: int, limit: int = _WORST_EVENTS) -> Table:
    """The busy events that matter most: failures first, then the longest waits."""
    chosen = sorted(waits, key=lambda w: (not w.failed, -w.duration_ms, w.t0))[:limit]
    table = Table(
        title=f"Busy events (worst {len(chosen)} of {len(waits)})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("at s", justify="right", no_wrap=True, min_width=5)
    table.add_column("who", no_wrap=True)
    table.add_column("call")
    table.add_column("retries", justify="right", no_wrap=True, min_width=7)
    table.add_column("waited ms", justify="right", no_wrap=True, min_width=9)
    table.add_column("result", no_wrap=True)
    for w in sorted(chosen, key=lambda w: w.t0):
        result = (
            Text(_short_code(code_name(w.code)), style="red")
            if w.failed
            else Text("got lock", style="green")
        )
        table.add_row(
            f"{(w.t0 - origin_ns) / 1e9:.3f}",
            w.waiter.worker,
            f"{w.phase}: {_shorten(w.call.sql, 36)}",
            str(w.handler_calls),
            _ms(w.duration_ms),
            result,
        )
    return table


def finding_panel(finding: Finding, automatic_mark: str = "") -> Panel:
    """One finding; `automatic_mark` follows each piece of advice that --compare-fix can apply
    and re-run (what it says depends on whether it ran: `run` only)."""
    parts: list[RenderableType] = []
    if finding.database is not None or finding.journal_mode is not None:
        where = finding.database or "in-memory databases"
        parts.append(Text(f"database: {where} (journal mode {finding.journal_mode})", "dim"))
    parts.append(Text(finding.explanation))
    if finding.evidence:
        evidence = Text("\nEvidence\n", style="bold")
        for line in finding.evidence:
            evidence.append(f"  • {line}\n")
        parts.append(evidence)
    if finding.advice:
        advice = Text("What to change\n", style="bold")
        for a in finding.advice:
            mark = automatic_mark if a.automatic else ""
            advice.append(f"  → {a.text}{mark}\n")
            for stack, snippet in a.snippets.items():
                advice.append(f"      {stack}: ", style="dim")
                advice.append(snippet.replace("\n", "\n        ") + "\n", style="cyan")
        parts.append(advice)
    style = _SEVERITY_STYLE.get(finding.severity, "bold")
    title = Text.assemble(
        (f"{finding.severity.upper()} ", style),
        (f"{finding.pattern}", "bold"),
        f": {finding.title}  (confidence: {finding.confidence})",
    )
    return Panel(Group(*parts), title=title, title_align="left", border_style=style.split()[-1])


def diagnosis(
    findings: Iterable[Finding], healthy_note: str, automatic_mark: str = ""
) -> RenderableType:
    ordered = sort_findings(list(findings))
    if not ordered:
        return Panel(
            Text(healthy_note, style="green"),
            title="Diagnosis: no lock problems found",
            title_align="left",
            border_style="green",
        )
    return Group(
        Text(f"Diagnosis: {len(ordered)} finding(s), most harmful first", style="bold"),
        *[finding_panel(f, automatic_mark) for f in ordered],
    )


def print_lines(console: Console, lines: Iterable[str], style: str = "") -> None:
    for line in lines:
        console.print(line, style=style, highlight=False)
