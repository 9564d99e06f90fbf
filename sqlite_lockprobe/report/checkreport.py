"""The report of `lockprobe check`: a short pass/fail table (rich) and the JSON contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from sqlite_lockprobe.findings import sort_findings
from sqlite_lockprobe.report.fitting import fold_identifier, pack_words
from sqlite_lockprobe.report.jsonreport import report_document
from sqlite_lockprobe.report.terminal import compact_table, hanging, table_chrome

if TYPE_CHECKING:  # renderers get the sources' results, they do not import the sources
    from sqlite_lockprobe.workflows.checking import CheckResult


@dataclass(frozen=True)
class CheckRow:
    """One scenario's line of the check table, as text."""

    scenario: str
    passed: bool
    checks: str
    busy_errors: str
    p99_ms: str
    patterns: tuple[str, ...]  # empty: healthy


class CheckTable:
    """The pass/fail table, sized to the console: pattern ids are never broken (several go on
    one line only when they fit), a long scenario name is folded at its `-`/`_` separators."""

    def __init__(self, rows: Sequence[CheckRow]) -> None:
        self.rows = tuple(rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fixed = [
            len("result"),
            max([len("checks")] + [len(r.checks) for r in self.rows]),
            max([len("busy err")] + [len(r.busy_errors) for r in self.rows]),
            max([len("p99 ms")] + [len(r.p99_ms) for r in self.rows]),
        ]
        words = [r.patterns or ("healthy",) for r in self.rows]
        longest_id = max([len("findings")] + [len(w) for ids in words for w in ids])
        longest_line = max([len("findings")] + [len(", ".join(ids)) for ids in words])
        longest_name = max([len("scenario")] + [len(r.scenario) for r in self.rows])
        room = options.max_width - sum(fixed) - table_chrome(6)
        # The scenario keeps its whole name when it can; the findings take the rest.
        name_width = max(12, min(longest_name, room - longest_id))
        findings_width = max(longest_id, min(longest_line, room - name_width))
        table = compact_table()
        table.add_column("scenario", no_wrap=True, width=name_width)
        table.add_column("result", no_wrap=True, width=fixed[0])
        table.add_column("checks", justify="right", no_wrap=True, width=fixed[1])
        table.add_column("busy err", justify="right", no_wrap=True, width=fixed[2])
        table.add_column("p99 ms", justify="right", no_wrap=True, width=fixed[3])
        table.add_column("findings", no_wrap=True, width=findings_width)
        for r, ids in zip(self.rows, words, strict=True):
            table.add_row(
                Text("\n".join(fold_identifier(r.scenario, name_width))),
                Text("pass", style="green") if r.passed else Text("FAIL", style="bold red"),
                r.checks,
                r.busy_errors,
                r.p99_ms,
                "\n".join(pack_words(ids, findings_width)),
            )
        yield table


def check_table(results: Sequence[CheckResult]) -> RenderableType:
    """One row per scenario, then one line per limit that failed, then the verdict."""
    rows = []
    for r in results:
        total = r.analysis.summary.total
        rows.append(
            CheckRow(
                scenario=r.scenario.name,
                passed=r.passed,
                checks=f"{sum(t.passed for t in r.results)}/{len(r.results)}",
                busy_errors=str(total.busy_errors),
                p99_ms=f"{total.waits.p99_ms:,.1f}" if total.waits.count else "-",
                patterns=tuple(r.analysis.pattern_ids),
            )
        )
    failures = []
    for r in results:
        for t in r.failures:
            failures.append(hanging("✗ ", f"{r.scenario.name} {t.name}: {t.message}", "bold red"))
    failed = sum(not r.passed for r in results)
    seconds = sum(r.outcome.wall_seconds for r in results)
    verdict = Text(
        f"check: {len(results)} scenario(s), {len(results) - failed} passed, {failed} failed "
        f"({seconds:.1f} s of runs)",
        style="bold red" if failed else "bold green",
    )
    return Group(CheckTable(rows), *failures, verdict)


def check_document(results: Sequence[CheckResult]) -> dict[str, Any]:
    """The JSON envelope with `command: "check"`: every scenario's findings in one top-level
    list (each with its `scenario`), and per scenario its limits and verdicts."""
    # Most harmful first, as in every report; equal ones keep the scenarios' order.
    pairs = [(r.scenario.name, f) for r in results for f in sort_findings(r.analysis.findings)]
    pairs.sort(key=lambda p: (p[1].rank, p[1].pattern))
    document = report_document(
        "check",
        [],
        passed=all(r.passed for r in results),
        scenarios=[_scenario_json(r) for r in results],
    )
    document["findings"] = [{**f.to_json(), "scenario": name} for name, f in pairs]
    return document


def _scenario_json(r: CheckResult) -> dict[str, Any]:
    return {
        "name": r.scenario.name,
        "source": r.scenario.source,
        "passed": r.passed,
        "thresholds": r.thresholds.to_json(),
        "results": [t.to_json() for t in r.results],
        "patterns": r.analysis.pattern_ids,
        "database": r.db_note,
        "wall_seconds": round(r.outcome.wall_seconds, 3),
        "summary": r.analysis.summary.to_json(),
    }
