"""The terminal report (rich): what ran, per-group numbers, the worst busy events, and the
diagnosis. Built from plain data (RunSummary, BusyWait, Finding), like every renderer.

The tables are renderables that size themselves to the console: a pipe or a CI log gets 80
columns, and names are then folded at their separators or shortened in the middle
(report/fitting.py), never cut mid-word by the table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sqlite_lockprobe.diagnose.model import BusyWait
from sqlite_lockprobe.diagnose.stats import GroupStats, RunSummary
from sqlite_lockprobe.events.resultcodes import code_name
from sqlite_lockprobe.findings import Finding, sort_findings
from sqlite_lockprobe.report.fitting import ellipsize_middle, fold_identifier, one_line

_SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
_WORST_EVENTS = 10
_KIND_SHORT = {"thread": "thr", "process": "proc", "coroutine": "coro"}
# The narrowest a name column gets before the table gives up fitting the console.
_MIN_NAME_WIDTH = 12
# Below this many columns for the call, the busy events table puts it under the worker.
_MIN_CALL_WIDTH = 24


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _short_code(name: str) -> str:
    """ "SQLITE_BUSY_SNAPSHOT (517)" -> "BUSY_SNAPSHOT", for narrow tables."""
    return name.split(" ")[0].removeprefix("SQLITE_")


def compact_table(**options: object) -> Table:
    """The house table: a rule under the header, two spaces between columns."""
    return Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        title_justify="left",
        **options,  # type: ignore[arg-type]
    )


def table_chrome(columns: int) -> int:
    """What compact_table adds to its columns' widths: its edges (a space at the left, two at
    the right) and two spaces between columns."""
    return 2 * columns + 1


def _name_width(available: int, natural: int) -> int:
    """The width a name column gets: its longest name, or what the console leaves."""
    return max(_MIN_NAME_WIDTH, min(natural, available))


_GROUP_HEADERS = ("calls", "commits", "rb", "errors", "waits", "p50", "p99", "max", "tx/s")


@dataclass(frozen=True)
class GroupRow:
    """One group's line of the Workers table, as text."""

    name: str
    workers: str  # " (2 thr)", or " (12)" for the total
    cells: tuple[str, ...]  # in _GROUP_HEADERS order
    has_errors: bool
    last_group: bool  # the line before the total


class GroupsTable:
    """The Workers table. The group column takes what the numbers leave: a long group name is
    folded after its `_`/`-` separators, and its worker count stays whole on its last line."""

    def __init__(self, rows: Sequence[GroupRow]) -> None:
        self.rows = tuple(rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = [
            max(5 if h in ("waits", "p50", "p99", "max") else 0, len(h)) for h in _GROUP_HEADERS
        ]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row.cells, strict=True)]
        natural = max([len("group (workers)")] + [len(r.name + r.workers) for r in self.rows])
        room = options.max_width - sum(widths) - table_chrome(len(widths) + 1)
        width = _name_width(room, natural)
        table = compact_table(
            title="Workers  (rb: rollbacks; waits: calls that met a busy lock,"
            " their p50/p99/max duration in ms; tx/s: commits per second)"
        )
        header = "group (workers)" if width >= len("group (workers)") else "group"
        table.add_column(header, no_wrap=True, width=width)
        for name, w in zip(_GROUP_HEADERS, widths, strict=True):
            left = name == "errors"
            table.add_column(name, justify="left" if left else "right", no_wrap=True, width=w)
        for row in self.rows:
            label = Text("\n".join(fold_identifier(row.name, width, tail=row.workers)))
            errors = Text(row.cells[3], style="red" if row.has_errors else "")
            cells: list[RenderableType] = [*map(Text, row.cells[:3]), errors]
            cells += map(Text, row.cells[4:])
            table.add_row(label, *cells, end_section=row.last_group)
        yield table


def groups_table(summary: RunSummary) -> GroupsTable:
    rows: list[GroupStats] = list(summary.groups)
    if len(rows) > 1:
        rows.append(summary.total)
    out = []
    for i, g in enumerate(rows):
        errors = " ".join(f"{n} {_short_code(name)}" for name, n in g.errors.items()) or "-"
        w = g.waits
        kind = _KIND_SHORT.get(g.kind, g.kind)
        out.append(
            GroupRow(
                name=g.group,
                workers=f" ({g.workers} {kind})" if kind else f" ({g.workers})",
                cells=(
                    str(g.calls),
                    str(g.commits),
                    str(g.rollbacks),
                    errors,
                    str(w.count),
                    _ms(w.p50_ms) if w.count else "-",
                    _ms(w.p99_ms) if w.count else "-",
                    _ms(w.max_ms) if w.count else "-",
                    f"{g.commits_per_second:,.0f}",
                ),
                has_errors=bool(g.errors),
                last_group=i == len(rows) - 2 and len(rows) > 1,
            )
        )
    return GroupsTable(out)


@dataclass(frozen=True)
class BusyEventRow:
    """One busy event of the table, as text."""

    at: str
    who: str
    call: str  # "phase: SQL", whitespace not yet flattened
    retries: str
    waited: str
    result: Text


class BusyEventsTable:
    """The worst busy events, one line each: the worker's name shortened in the middle only
    when the call would get too little room, the call's SQL cut to one line. On a console too
    narrow for both side by side, the call goes under the worker's name."""

    def __init__(self, title: str, rows: Sequence[BusyEventRow]) -> None:
        self.title = title
        self.rows = tuple(rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fixed = [
            max([5] + [len(r.at) for r in self.rows]),
            max([7] + [len(r.retries) for r in self.rows]),
            max([9] + [len(r.waited) for r in self.rows]),
            max([6] + [r.result.cell_len for r in self.rows]),
        ]
        longest_who = max([3] + [len(r.who) for r in self.rows])
        longest_call = max([4] + [len(one_line(r.call, 10_000)) for r in self.rows])
        room = options.max_width - sum(fixed)
        side_by_side = room - table_chrome(6) >= min(longest_who, 20) + _MIN_CALL_WIDTH
        table = compact_table(title=self.title)
        table.add_column("at s", justify="right", no_wrap=True, width=fixed[0])
        if side_by_side:
            room -= table_chrome(6)
            who_width = max(min(longest_who, 20), min(longest_who, room - _MIN_CALL_WIDTH))
            call_width = max(4, min(longest_call, room - who_width))
            table.add_column("who", no_wrap=True, width=who_width)
            table.add_column("call", no_wrap=True, width=call_width)
        else:
            room -= table_chrome(5)
            width = max(_MIN_NAME_WIDTH, room)
            table.add_column("who: call", no_wrap=True, width=width)
        table.add_column("retries", justify="right", no_wrap=True, width=fixed[1])
        table.add_column("waited ms", justify="right", no_wrap=True, width=fixed[2])
        table.add_column("result", no_wrap=True, width=fixed[3])
        for r in self.rows:
            if side_by_side:
                who = [
                    Text(ellipsize_middle(r.who, who_width)),
                    Text(one_line(r.call, call_width)),
                ]
            else:
                who = [Text(f"{ellipsize_middle(r.who, width)}\n  {one_line(r.call, width - 2)}")]
            table.add_row(r.at, *who, r.retries, r.waited, r.result)
        yield table


def worst_waits(
    waits: Sequence[BusyWait], origin_ns: int, limit: int = _WORST_EVENTS
) -> BusyEventsTable:
    """The busy events that matter most: failures first, then the longest waits."""
    chosen = sorted(waits, key=lambda w: (not w.failed, -w.duration_ms, w.t0))[:limit]
    rows = [
        BusyEventRow(
            at=f"{(w.t0 - origin_ns) / 1e9:.3f}",
            who=w.waiter.worker,
            call=f"{w.phase}: {w.call.sql}",
            retries=str(w.handler_calls),
            waited=_ms(w.duration_ms),
            result=(
                Text(_short_code(code_name(w.code)), style="red")
                if w.failed
                else Text("got lock", style="green")
            ),
        )
        for w in sorted(chosen, key=lambda w: w.t0)
    ]
    return BusyEventsTable(f"Busy events (worst {len(chosen)} of {len(waits)})", rows)


def hanging(marker: str, text: str | Text, marker_style: str = "") -> Table:
    """`marker` then `text`, whose wrapped lines line up under its first word, not under
    the marker: a bullet list that reads as one at any width."""
    row = Table.grid()
    row.add_column(no_wrap=True, width=len(marker), style=marker_style)
    row.add_column()
    # Text, not str: a str would be read as rich markup, and `[...]` in it lost.
    row.add_row(marker, Text(text) if isinstance(text, str) else text)
    return row


def bullets(lines: Iterable[str], bullet: str = "•") -> list[Table]:
    """Evidence lines as a bullet list; a line indented by the diagnosis continues the one
    before it, so it gets no bullet of its own, only its indent."""
    rows = []
    for line in lines:
        text = line.lstrip(" ")
        indent = len(line) - len(text)
        marker = f"  {bullet} " if indent == 0 else " " * (4 + indent)
        rows.append(hanging(marker, text))
    return rows


def snippet_lines(stack: str, snippet: str) -> list[Table]:
    """A ready-to-paste snippet: `stack:` and its first line, then each line indented by its
    own indent, wrapped lines under the code they continue."""
    first, *rest = snippet.split("\n")
    label = f"      {stack}: "
    rows = [hanging(label, Text(first, style="cyan"), "dim")]
    for line in rest:
        code = line.lstrip(" ")
        rows.append(hanging(" " * (8 + len(line) - len(code)), Text(code, style="cyan")))
    return rows


def finding_panel(finding: Finding, automatic_mark: str = "") -> Panel:
    """One finding. The panel's title is the severity and the pattern id, short enough for
    any console; the finding's own title opens the panel, with its confidence.
    `automatic_mark` follows each piece of advice that --compare-fix can apply and re-run
    (what it says depends on whether it ran: `run` only)."""
    style = _SEVERITY_STYLE.get(finding.severity, "bold")
    parts: list[RenderableType] = [Text(finding.title, style="bold")]
    about = f"confidence: {finding.confidence}"
    if finding.database is not None or finding.journal_mode is not None:
        where = finding.database or "in-memory databases"
        about += f"   database: {where} (journal mode {finding.journal_mode})"
    parts.append(Text(about, "dim"))
    parts.append(Text(""))
    parts.append(Text(finding.explanation))
    if finding.evidence:
        parts.append(Text("\nEvidence", style="bold"))
        parts.extend(bullets(finding.evidence))
    if finding.advice:
        parts.append(Text("\nWhat to change", style="bold"))
        for a in finding.advice:
            mark = automatic_mark if a.automatic else ""
            parts.append(hanging("  → ", f"{a.text}{mark}"))
            for stack, snippet in a.snippets.items():
                parts.extend(snippet_lines(stack, snippet))
    title = Text.assemble((f"{finding.severity.upper()} ", style), (finding.pattern, "bold"))
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
