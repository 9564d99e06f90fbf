"""The report of `lockprobe check`: a short pass/fail table (rich) and the JSON contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sqlite_lockprobe.checking import CheckResult
from sqlite_lockprobe.findings import sort_findings
from sqlite_lockprobe.report.jsonreport import report_document


def check_table(results: Sequence[CheckResult]) -> RenderableType:
    """One row per scenario, then one line per limit that failed, then the verdict."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
    table.add_column("scenario", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("checks", justify="right", no_wrap=True)
    table.add_column("busy err", justify="right", no_wrap=True)
    table.add_column("p99 ms", justify="right", no_wrap=True)
    table.add_column("findings", overflow="fold")
    for r in results:
        total = r.analysis.summary.total
        passed = sum(t.passed for t in r.results)
        table.add_row(
            r.scenario.name,
            Text("pass", style="green") if r.passed else Text("FAIL", style="bold red"),
            f"{passed}/{len(r.results)}",
            str(total.busy_errors),
            f"{total.waits.p99_ms:,.1f}" if total.waits.count else "-",
            ", ".join(r.analysis.pattern_ids) or "healthy",
        )
    lines = Text()
    for r in results:
        for t in r.failures:
            lines.append("✗ ", style="bold red")
            lines.append(f"{r.scenario.name} {t.name}: {t.message}\n")
    failed = sum(not r.passed for r in results)
    seconds = sum(r.outcome.wall_seconds for r in results)
    verdict = Text(
        f"check: {len(results)} scenario(s), {len(results) - failed} passed, {failed} failed "
        f"({seconds:.1f} s of runs)",
        style="bold red" if failed else "bold green",
    )
    return Group(table, lines, verdict) if lines else Group(table, verdict)


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
