"""Verified fixes: re-run a scenario with the diagnosis's automatic advice applied (BEGIN
IMMEDIATE, busy_timeout, WAL, synchronous=NORMAL) and compare before and after, so advice is
shown to work rather than asserted. Advice that needs a code change is listed, not applied."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from sqlite_lockprobe.diagnose.analysis import Analysis, analyze
from sqlite_lockprobe.findings import Advice, Finding
from sqlite_lockprobe.sources.run.runner import RunResult, run_scenario
from sqlite_lockprobe.sources.run.scenario import Group, Scenario

# A scenario's signal/wait handshakes line up the contention of the original settings; a fix
# can change who waits for whom (BEGIN IMMEDIATE takes the lock earlier), and a handshake
# would then wait for a worker that waits for the lock it holds. In the re-run every wait
# gives up after this long and the worker goes on.
HANDSHAKE_LIMIT_S = 0.5


def fixes_from(findings: list[Finding]) -> dict[str, Any]:
    """The settings every automatic advice asks for, merged (the longest busy_timeout wins)."""
    fixes: dict[str, Any] = {}
    for finding in findings:
        for advice in finding.advice:
            for key, value in advice.fix.items():
                if key == "busy_timeout_ms":
                    fixes[key] = max(int(value), int(fixes.get(key, 0)))
                else:
                    fixes[key] = value
    return dict(sorted(fixes.items()))


def manual_advice(findings: list[Finding]) -> list[tuple[str, Advice]]:
    """(pattern, advice) pairs that need a change in the application's code."""
    return [(f.pattern, a) for f in findings for a in f.advice if not a.fix]


def apply_fixes(scenario: Scenario, fixes: dict[str, Any]) -> Scenario:
    """The scenario as it would run with the fixes applied."""
    database = scenario.database
    groups = list(scenario.groups)
    if "journal_mode" in fixes:
        database = replace(database, journal_mode=fixes["journal_mode"])
    if "synchronous" in fixes:
        database = replace(database, synchronous=fixes["synchronous"])
    if "busy_timeout_ms" in fixes:
        wanted = int(fixes["busy_timeout_ms"])
        database = replace(database, busy_timeout_ms=max(database.busy_timeout_ms, wanted))
        groups = [
            replace(g, busy_timeout_ms=max(g.busy_timeout_ms, wanted))
            if g.busy_timeout_ms is not None
            else g
            for g in groups
        ]
    if fixes.get("transaction") == "immediate":
        if database.transaction_mode == "deferred":
            database = replace(database, transaction_mode="immediate")
        groups = [_begin_immediate(g) for g in groups]
    return replace(scenario, database=database, groups=tuple(groups))


def _begin_immediate(group: Group) -> Group:
    """Explicit deferred BEGINs become BEGIN IMMEDIATE; legacy implicit ones too."""
    steps = tuple(
        replace(s, mode="immediate") if s.action == "begin" and s.mode in (None, "deferred") else s
        for s in group.steps
    )
    mode = "immediate" if group.transaction_mode == "deferred" else group.transaction_mode
    return replace(group, steps=steps, transaction_mode=mode)


@dataclass(frozen=True)
class FixComparison:
    fixes: dict[str, Any]
    before: Analysis
    after: Analysis | None
    after_result: RunResult | None
    manual: list[tuple[str, Advice]]
    # How long the re-run's wait steps could wait at most (None: nothing was re-run).
    wait_limit_s: float | None = None

    def rows(self) -> list[tuple[str, str, str]]:
        """(measure, before, after) for the side-by-side table."""
        b = self.before.summary.total
        a = self.after.summary.total if self.after else None

        def both(fn: Any) -> tuple[str, str]:
            return fn(b), fn(a) if a is not None else "-"

        rows = [
            ("BUSY errors", *both(lambda t: str(t.busy_errors))),
            ("failed calls", *both(lambda t: str(sum(t.errors.values())))),
            ("p99 wait ms", *both(lambda t: f"{t.waits.p99_ms:,.1f}")),
            ("max wait ms", *both(lambda t: f"{t.waits.max_ms:,.1f}")),
            ("commits", *both(lambda t: str(t.commits))),
            ("commits/s", *both(lambda t: f"{t.commits_per_second:,.0f}")),
        ]
        after_patterns = ", ".join(self.after.pattern_ids) if self.after else "-"
        rows.append(
            ("findings", ", ".join(self.before.pattern_ids) or "none", after_patterns or "none")
        )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "fixes": self.fixes,
            "before": self.before.summary.total.to_json() | {"patterns": self.before.pattern_ids},
            "after": (
                self.after.summary.total.to_json() | {"patterns": self.after.pattern_ids}
                if self.after
                else None
            ),
            "manual": [{"pattern": p, "text": a.text} for p, a in self.manual],
        }


def compare_fix(
    scenario: Scenario,
    before: Analysis,
    db: str | os.PathLike[str] | None = None,
    instrument: bool = True,
) -> FixComparison:
    """Re-run `scenario` with the automatic fixes its findings call for, if there are any."""
    fixes = fixes_from(before.findings)
    manual = manual_advice(before.findings)
    if not fixes:
        return FixComparison(fixes, before, None, None, manual)
    fixed = apply_fixes(scenario, fixes)
    result = run_scenario(fixed, db=db, instrument=instrument, wait_limit_s=HANDSHAKE_LIMIT_S)
    return FixComparison(
        fixes, before, analyze(result.events), result, manual, wait_limit_s=HANDSHAKE_LIMIT_S
    )
