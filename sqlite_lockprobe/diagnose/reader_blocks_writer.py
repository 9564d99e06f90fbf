"""reader-blocks-writer: in rollback-journal mode a COMMIT waits for every reader to finish.

To commit, the writer must go from RESERVED through PENDING to EXCLUSIVE, and EXCLUSIVE is
granted only when no other connection holds SHARED (lockingv3.html; pager.c pager_wait_on_lock
retries RESERVED->EXCLUSIVE through the busy handler). PENDING keeps new readers out meanwhile,
so long or frequent reads stall commits and commits stall reads. WAL mode has no such wait.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import blocking_readers, overlap_ns, waits_of
from sqlite_lockprobe.diagnose.evidence import (
    NearMiss,
    hold_facts,
    hold_story,
    is_reduced,
    near_miss,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import UNFINISHED_STATEMENT, BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Advice, Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
READERS_SHOWN = 3


Case = tuple[BusyWait, list[LockHold]]  # a COMMIT wait and the readers it waited for


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for rollback-mode COMMITs that failed or waited long behind readers."""
    if timeline.is_wal:
        return []
    cases: list[Case] = []
    for wait in waits_of(PATTERN, timeline):
        t1 = max(wait.t1, wait.t0 + 1)
        readers = sorted(
            blocking_readers(wait, timeline),
            key=lambda h: (-overlap_ns(h, wait.t0, t1), h.t0, h.holder.conn),
        )
        if readers:
            cases.append((wait, readers))
    if not cases:
        return []
    cases.sort(key=lambda case: wait_order(case[0]))
    return [_finding(timeline, cases)]


def _evidence(timeline: Timeline, cases: list[Case], missed: NearMiss | None) -> list[str]:
    origin = timeline.origin_ns
    failed = [w for w, _ in cases if w.failed]
    reader_conns = {h.holder.conn for _, readers in cases for h in readers}
    evidence = [
        f"journal_mode is {timeline.journal_mode.upper()}: {len(cases)} COMMIT"
        f"{'s' if len(cases) != 1 else ''} waited for other connections' SHARED locks "
        f"({len(failed)} failed); {len(reader_conns)} reading connection"
        f"{'s' if len(reader_conns) != 1 else ''} involved",
    ]
    if missed is not None:
        evidence.append(missed.line)
    for wait, readers in cases[:WORST_SHOWN]:
        evidence.append("writer: " + wait_line(wait, origin))
        t1 = max(wait.t1, wait.t0 + 1)
        ranked = sorted(readers, key=lambda h: (-overlap_ns(h, wait.t0, t1), h.t0, h.holder.conn))
        for hold in ranked[:READERS_SHOWN]:
            evidence.append("  reader: " + hold_story(hold, timeline, origin))
    return evidence


def _finding(timeline: Timeline, cases: list[Case]) -> Finding:
    origin = timeline.origin_ns
    failed = [w for w, _ in cases if w.failed]
    reader_conns = sorted({h.holder.conn for _, readers in cases for h in readers})
    missed = near_miss([w for w, _ in cases])
    evidence = _evidence(timeline, cases, missed)
    reduced = any(is_reduced(timeline, w.waiter.conn) for w, _ in cases)
    if reduced:
        evidence.append("busy-handler calls were not recorded (reduced detail)")
    worst_wait, worst_readers = cases[0]
    unfinished = sum(
        1 for _, readers in cases for h in readers if h.released_by == UNFINISHED_STATEMENT
    )
    changes: tuple[Advice, ...] = (advice.wal_mode(),)
    if unfinished:  # a cursor left open: finishing it is the fix in any journal mode
        changes = (advice.finish_unfinished_reads(), *changes)
    return Finding(
        pattern=PATTERN,
        title="Readers block commits (rollback-journal mode)",
        severity="error" if failed else "warning",
        confidence="medium" if reduced else "high",
        explanation=(
            f"The database uses the {timeline.journal_mode.upper()} rollback journal. To "
            "commit, a writer needs the EXCLUSIVE lock, which SQLite grants only once every "
            "reader has released its SHARED lock; meanwhile its PENDING lock keeps new "
            "readers out. Long or frequent read transactions therefore stall commits, and "
            "a COMMIT that waits past busy_timeout fails. In WAL mode readers never block "
            "the writer."
        ),
        evidence=tuple(evidence),
        advice=changes,
        facts={
            "journal_mode": timeline.journal_mode,
            "commit_waits": len(cases),
            "failed": len(failed),
            "readers": reader_conns,
            "unfinished_statements": unfinished,
            "worst": wait_facts(worst_wait, origin),
            "worst_reader": hold_facts(worst_readers[0], origin),
            **({"near_miss": missed.facts} if missed is not None else {}),
        },
    )
