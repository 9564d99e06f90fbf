"""no-busy-timeout: connections without a busy timeout fail at the first moment of contention.

With no busy handler (busy_timeout 0, main.c sqlite3_busy_timeout with ms <= 0 clears it),
SQLite returns SQLITE_BUSY the instant a lock is taken (c3ref/busy_handler.html). Python's
sqlite3 defaults to timeout=5.0 s, so this is usually an explicit timeout=0 or a driver that
sets its own.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import TINY_TIMEOUT_MS, waits_of
from sqlite_lockprobe.diagnose.evidence import hold_story, wait_facts, wait_line, wait_order
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for BUSY failures on connections whose busy_timeout is under 50 ms."""
    failures = waits_of(PATTERN, timeline)
    if not failures:
        return []
    failures.sort(key=lambda w: (w.t0, w.waiter.conn))
    origin = timeline.origin_ns
    timeouts = {w.waiter.conn: w.timeout_ms for w in failures}
    conns = sorted(timeouts)
    upgrades = [w for w in failures if w.had_read and w.phase in ("write", "other")]

    evidence = [
        f"{len(failures)} call{'s' if len(failures) != 1 else ''} failed with SQLITE_BUSY on "
        f"{len(conns)} connection{'s' if len(conns) != 1 else ''} whose busy_timeout was under "
        f"{TINY_TIMEOUT_MS} ms: " + ", ".join(f"{conn} ({timeouts[conn]} ms)" for conn in conns),
    ]
    for wait in sorted(failures, key=wait_order)[:WORST_SHOWN]:
        evidence.append("failed: " + wait_line(wait, origin))
        t1 = max(wait.t1, wait.t0 + 1)
        for hold in timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)[:1]:
            evidence.append("  holder at that moment: " + hold_story(hold, timeline, origin))
    if upgrades:
        evidence.append(
            f"{len(upgrades)} of them wrote after reading in the same DEFERRED transaction: a "
            "busy timeout will not cover those (SQLite refuses to wait there), so use BEGIN "
            "IMMEDIATE too"
        )
    fixes = [advice.busy_timeout()]
    if upgrades:
        fixes.append(advice.begin_immediate())

    return [
        Finding(
            pattern=PATTERN,
            title="Connections have no busy timeout, so any contention fails at once",
            severity="error",
            confidence="high",
            explanation=(
                "These connections have busy_timeout 0 (or only a few milliseconds), so SQLite "
                "has no busy handler to sleep and retry with: whenever another connection holds "
                'the lock, even for a millisecond, the call fails with "database is locked". '
                "Give every connection a busy timeout of a few seconds (Python's sqlite3 "
                "default is timeout=5.0)."
            ),
            evidence=tuple(evidence),
            advice=tuple(fixes),
            facts={
                "failures": len(failures),
                "connections": [{"conn": c, "timeout_ms": timeouts[c]} for c in conns],
                "read_then_write": len(upgrades),
                "first": wait_facts(failures[0], origin),
            },
        )
    ]
