"""unexplained-busy: a call failed with SQLITE_BUSY, or waited most of its busy_timeout, and
no pattern explains why.

The catch-all at the end of the precedence (causes.py): a failed or long wait that no other
detector claims is reported as what it is, with what was seen, never given a guessed cause
and never left out. Typical reasons: the holder was a process outside the recording and the
OS lock table was not read (or showed nothing) during the wait; a holder's record stopped
before the wait (its end was not recorded); SQLite refused to wait outside a read-then-write
transaction. A BUSY from the connection's own unfinished statements is no wait at all
(model.STATEMENTS_IN_PROGRESS) and never lands here.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import unexplained
from sqlite_lockprobe.diagnose.evidence import (
    NearMiss,
    at,
    code_name,
    hold_story,
    is_reduced,
    near_miss,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import END_NOT_RECORDED, BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
HOLDS_SHOWN = 3


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for every failed or long wait that no other pattern explains."""
    waits = sorted(unexplained(timeline), key=wait_order)
    if not waits:
        return []
    return [_finding(timeline, waits)]


def _codes(failed: list[BusyWait]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for w in failed:
        counted[code_name(w.code)] = counted.get(code_name(w.code), 0) + 1
    return dict(sorted(counted.items()))


def _evidence(timeline: Timeline, waits: list[BusyWait], missed: NearMiss | None) -> list[str]:
    origin = timeline.origin_ns
    failed = [w for w in waits if w.failed]
    conns = {w.waiter.conn for w in waits}
    if failed:
        head = (
            f"{len(failed)} call{'s' if len(failed) != 1 else ''} failed with "
            + ", ".join(f"{n} x {name}" for name, n in _codes(failed).items())
            + f" on {len(conns)} connection{'s' if len(conns) != 1 else ''} "
            "and no pattern explains why"
        )
        if len(waits) > len(failed):
            head += f"; {len(waits) - len(failed)} more waited over half their busy_timeout"
    else:
        head = (
            f"{len(waits)} wait{'s' if len(waits) != 1 else ''} used over half of "
            f"{'their' if len(waits) != 1 else 'its'} busy_timeout and no pattern explains why"
        )
    evidence = [head]
    if missed is not None:
        evidence.append(missed.line)
    for wait in waits[:WORST_SHOWN]:
        evidence.append(("failed: " if wait.failed else "waited: ") + wait_line(wait, origin))
        evidence.extend("  " + line for line in _seen(wait, timeline, origin))
    if any(is_reduced(timeline, w.waiter.conn) for w in waits):
        evidence.append("busy-handler calls were not recorded (reduced detail)")
    return evidence


def _finding(timeline: Timeline, waits: list[BusyWait]) -> Finding:
    origin = timeline.origin_ns
    failed = [w for w in waits if w.failed]
    missed = near_miss(waits)
    return Finding(
        pattern=PATTERN,
        title=(
            "Calls failed with SQLITE_BUSY, cause not determined"
            if failed
            else "Waits used over half of busy_timeout, cause not determined"
        ),
        severity="error" if failed else "warning",
        confidence="low",
        explanation=(
            'These calls met a lock (SQLITE_BUSY, "database is locked") or waited for '
            "one most of their busy_timeout, but what was recorded does not show who held "
            "it: no recorded connection held a lock that blocks them, or the pattern could "
            "not be told apart. lockprobe says so rather than guess. The evidence lists "
            "everything seen around each wait. A holder outside the recording (another "
            "program, a process not traced, a process whose last events were lost) is the "
            "usual reason."
        ),
        evidence=tuple(_evidence(timeline, waits, missed)),
        advice=(advice.find_the_holder(),),
        facts={
            "failed": len(failed),
            "long_waits": len(waits) - len(failed),
            "codes": _codes(failed),
            "connections": sorted({w.waiter.conn for w in waits}),
            "waits": [wait_facts(w, origin) for w in waits[:WORST_SHOWN]],
            **({"near_miss": missed.facts} if missed is not None else {}),
        },
    )


def _seen(wait: BusyWait, timeline: Timeline, origin: int) -> list[str]:
    """What the recording shows around one wait: the holds open during it (context, not a
    cause), the OS lock table readings, and why SQLite may not have waited."""
    lines: list[str] = []
    t1 = max(wait.t1, wait.t0 + 1)
    holds = _one_per_connection(
        timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
        + timeline.read_holders_during(wait.t0, t1, wait.waiter.conn)
    )
    for hold in holds[:HOLDS_SHOWN]:
        lines.append("open during it: " + hold_story(hold, timeline, origin))
    if not holds:
        lines.append("no other recorded connection held a lock during it")
    earlier = _one_per_connection(
        [
            h
            for h in (*timeline.write_holds, *timeline.read_holds)
            if h.released_by == END_NOT_RECORDED and h.t1 <= wait.t0
        ]
    )
    for hold in earlier[:HOLDS_SHOWN]:
        lines.append(
            f"a hold of {hold.holder.describe()} from {at(hold.t0, origin)} has no recorded "
            f"end: its process recorded nothing after {at(hold.t1, origin)}, so it may still "
            "have held the lock"
        )
    samples = timeline.os_samples_of(wait)
    if samples:
        seen = sorted({f"pid {lock.pid} {lock.name}" for s in samples for lock in s.locks})
        sources = sorted({s.source for s in samples})
        lines.append(
            f"{len(samples)} reading{'s' if len(samples) != 1 else ''} of the OS lock table "
            f"({', '.join(sources)}) during it showed "
            + (", ".join(seen) if seen else "no lock held by anyone")
        )
    else:
        lines.append("the OS lock table was not read during it")
    if wait.failed and wait.handler_calls == 0 and not is_reduced(timeline, wait.waiter.conn):
        lines.append(
            "SQLite returned SQLITE_BUSY without calling the busy handler (it refused to wait) "
            f"in a {wait.phase} statement"
            + ("" if wait.had_read else " of a transaction that had not read")
        )
    return lines


def _one_per_connection(holds: list[LockHold]) -> list[LockHold]:
    """A connection's write hold stands for its read hold of the same transaction."""
    ranked = sorted(holds, key=lambda h: (h.holder.conn, h.kind != "write", h.t0))
    first: dict[str, LockHold] = {}
    for hold in ranked:
        first.setdefault(hold.holder.conn, hold)
    return sorted(first.values(), key=lambda h: (h.t0, h.holder.conn))
