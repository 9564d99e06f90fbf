"""self-deadlock: the waiter and the lock holder are driven by the same OS thread.

A busy wait blocks its thread inside sqlite3_step (the default busy handler sleeps: main.c,
sqliteDefaultBusyCallback). When the holder's COMMIT must run on that same thread (another task
of the same asyncio event loop, or a second connection used by the same thread), it can only
run after the wait gives up: the wait always lasts the full busy_timeout, then fails.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import same_thread_blocker, waits_of
from sqlite_lockprobe.diagnose.chain import wait_for_chain
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
from sqlite_lockprobe.diagnose.model import Actor, BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
Case = tuple[BusyWait, LockHold]  # a wait and the same-thread hold it waited for


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for every wait whose lock holder runs on the waiter's own thread."""
    cases: list[Case] = []
    for wait in waits_of(PATTERN, timeline):
        hold = same_thread_blocker(wait, timeline)
        if hold is not None:
            cases.append((wait, hold))
    if not cases:
        return []
    cases.sort(key=lambda case: wait_order(case[0]))
    return [_finding(timeline, cases)]


def _evidence(timeline: Timeline, cases: list[Case], missed: NearMiss | None) -> list[str]:
    origin = timeline.origin_ns
    evidence = [
        f"{len(cases)} wait{'s' if len(cases) != 1 else ''} "
        f"({sum(w.failed for w, _ in cases)} failed) on a lock "
        "held by another connection driven by the same OS thread",
    ]
    if missed is not None:
        evidence.append(missed.line)
    for wait, hold in cases[:WORST_SHOWN]:
        evidence.append("waiter: " + wait_line(wait, origin))
        evidence.append("  holder: " + hold_story(hold, timeline, origin))
        evidence.append("  " + _same_thread(wait.waiter, hold.holder))
    return evidence


def _finding(timeline: Timeline, cases: list[Case]) -> Finding:
    origin = timeline.origin_ns
    failed = [w for w, _ in cases if w.failed]
    pairs = sorted({(w.waiter.conn, h.holder.conn) for w, h in cases})
    threads = sorted({(w.waiter.pid, w.waiter.thread) for w, _ in cases})
    missed = near_miss([w for w, _ in cases])
    evidence = _evidence(timeline, cases, missed)
    reduced = any(is_reduced(timeline, w.waiter.conn) for w, _ in cases)
    if reduced:
        evidence.append(
            "busy-handler calls were not recorded (reduced detail): the waits' lengths and the "
            "thread ids are the evidence"
        )
    worst_wait, worst_hold = cases[0]
    chain = wait_for_chain(worst_wait, timeline)
    evidence.append("wait-for chain:")
    evidence.extend(chain)
    return Finding(
        pattern=PATTERN,
        title="A thread waits for a lock that it holds itself (self-deadlock)",
        severity="error" if failed else "warning",
        confidence="medium" if reduced else "high",
        explanation=(
            "The connection waiting for the lock and the connection holding it are driven "
            "by the same OS thread (two tasks of one asyncio event loop, or one thread "
            "using two connections). While the waiter sits in SQLite's busy handler the "
            "thread is blocked, so the holder can never reach its COMMIT: the wait always "
            'runs to the full busy_timeout and fails with "database is locked". A longer '
            "timeout only makes the freeze longer."
        ),
        evidence=tuple(evidence),
        advice=(advice.one_connection_per_thread(), advice.short_transactions()),
        facts={
            "waits": len(cases),
            "failed": len(failed),
            "pairs": [list(p) for p in pairs],
            "threads": [{"pid": pid, "thread": thread} for pid, thread in threads],
            "worst": wait_facts(worst_wait, origin),
            "worst_holder": hold_facts(worst_hold, origin),
            "chain": chain,
            **({"near_miss": missed.facts} if missed is not None else {}),
        },
    )


def _same_thread(waiter: Actor, holder: Actor) -> str:
    both = f"pid {waiter.pid} thread {waiter.thread}"
    if waiter.task or holder.task:
        return (
            f"both driven by {both}: task {waiter.task or '?'} (waiter) and task "
            f"{holder.task or '?'} (holder) share one event loop"
        )
    return f"both connections ({waiter.conn}, {holder.conn}) are used by {both}"
