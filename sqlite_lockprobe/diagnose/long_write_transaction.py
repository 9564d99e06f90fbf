"""long-write-transaction: one connection kept the write lock while other writers timed out.

SQLite has one write lock per database (RESERVED and up in rollback mode, the WAL write lock in
WAL mode: lockingv3.html, wal.html); whoever holds it from its first write to COMMIT makes every
other writer sleep in the busy handler, and fail once busy_timeout runs out.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import dominant_holder, waits_of
from sqlite_lockprobe.diagnose.evidence import (
    NearMiss,
    fmt_ms,
    hold_facts,
    hold_story,
    is_reduced,
    ms,
    near_miss,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
Victims = tuple[LockHold, list[BusyWait]]  # a long hold and the waits it explains


def detect(timeline: Timeline) -> list[Finding]:
    """One finding naming the long write holds behind failed or long waits, longest first."""
    victims = _victims_by_hold(timeline)
    if not victims:
        return []
    return [_finding(timeline, victims)]


def _victims_by_hold(timeline: Timeline) -> list[Victims]:
    """Matching: each long hold and the waits it explains (each in wait order), the holds
    ranked by failed victims, then length."""
    victims: dict[int, list[BusyWait]] = {}
    holds: dict[int, LockHold] = {}
    for wait in waits_of(PATTERN, timeline):
        hold = dominant_holder(wait, timeline)
        if hold is None:
            continue
        holds[id(hold)] = hold
        victims.setdefault(id(hold), []).append(wait)
    for waits in victims.values():
        waits.sort(key=wait_order)
    ranked = sorted(
        holds.values(),
        key=lambda h: (
            -sum(w.failed for w in victims[id(h)]),
            -(h.t1 - h.t0),
            h.t0,
            h.holder.conn,
        ),
    )
    return [(h, victims[id(h)]) for h in ranked]


def _evidence(
    timeline: Timeline, victims: list[Victims], missed: NearMiss | None
) -> tuple[list[str], bool]:
    """The evidence lines, and whether the holds' timing was reduced."""
    origin = timeline.origin_ns
    ranked = [h for h, _ in victims]
    all_victims = [w for _, waits in victims for w in waits]
    longest = max(ranked, key=lambda h: (h.t1 - h.t0, -h.t0))
    evidence = [
        f"{len(ranked)} long write transaction{'s' if len(ranked) != 1 else ''} blocked "
        f"{len(all_victims)} wait{'s' if len(all_victims) != 1 else ''} "
        f"({sum(w.failed for w in all_victims)} failed); the longest held the lock for "
        f"{fmt_ms(ms(longest.t1 - longest.t0))}",
    ]
    if missed is not None:
        evidence.append(missed.line)
    for hold, hold_victims in victims[:WORST_SHOWN]:
        evidence.append("holder: " + hold_story(hold, timeline, origin))
        evidence.append(f"  {_split(hold)}")
        evidence.append(
            f"  blocked {len(hold_victims)} wait{'s' if len(hold_victims) != 1 else ''} "
            f"({sum(w.failed for w in hold_victims)} failed); worst: "
            + wait_line(hold_victims[0], origin)
        )
    reduced = any(is_reduced(timeline, w.waiter.conn) for w in all_victims)
    if reduced:
        evidence.append(
            "statement timing inside the holds was not fully recorded (reduced detail): the "
            "split between statements and idle time may be off"
        )
    return evidence, reduced


def _finding(timeline: Timeline, victims: list[Victims]) -> Finding:
    origin = timeline.origin_ns
    all_victims = [w for _, waits in victims for w in waits]
    failed = [w for w in all_victims if w.failed]
    longest = max((h for h, _ in victims), key=lambda h: (h.t1 - h.t0, -h.t0))
    missed = near_miss(all_victims)
    evidence, reduced = _evidence(timeline, victims, missed)
    return Finding(
        pattern=PATTERN,
        title="A write transaction held the lock for too long",
        severity="error" if failed else "warning",
        confidence="medium" if reduced else "high",
        explanation=(
            "SQLite lets one connection at a time hold the write lock, from its first write "
            "until COMMIT or ROLLBACK. Here a connection kept it for a long time, compared "
            "with the other writers' busy_timeout, while it ran slow statements or did "
            "other work between them (network calls, sleeps, awaits, big batches). Every "
            "other writer waited meanwhile, and those that ran out of busy_timeout failed "
            'with "database is locked". The failing statement is the victim; the holder '
            "below is the cause."
        ),
        evidence=tuple(evidence),
        advice=(
            advice.short_transactions(),
            advice.raise_busy_timeout_stopgap(_stopgap_ms(longest)),
        ),
        facts={
            "long_holds": len(victims),
            "blocked_waits": len(all_victims),
            "failed_waits": len(failed),
            "longest_hold_ms": ms(longest.t1 - longest.t0),
            "holds": [
                {
                    **hold_facts(h, origin),
                    "blocked_waits": len(waits),
                    "failed_waits": sum(w.failed for w in waits),
                }
                for h, waits in victims[:WORST_SHOWN]
            ],
            "worst": wait_facts(victims[0][1][0], origin),
            **({"near_miss": missed.facts} if missed is not None else {}),
        },
    )


def _split(hold: LockHold) -> str:
    """Say where the time went, since the fix differs: a slow statement or idle app time."""
    total = max(1, hold.t1 - hold.t0)
    if hold.idle_ns * 2 >= total:
        return (
            f"mostly idle in the application ({round(100 * hold.idle_ns / total)}% of the "
            "hold): move slow work out of the transaction, commit earlier"
        )
    return (
        f"mostly inside SQLite statements ({round(100 * hold.in_statements_ns / total)}% of "
        "the hold): a slow statement or big batch; add an index or split the batch"
    )


def _stopgap_ms(hold: LockHold) -> int:
    """A busy_timeout that would have outlasted the longest hold, rounded up to seconds."""
    needed = (hold.t1 - hold.t0) / 1_000_000 * 1.5
    return max(5000, int(-(-needed // 1000) * 1000))
