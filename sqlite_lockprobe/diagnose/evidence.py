"""Shared wording and arithmetic for evidence lines, so every finding names things the same way.

Every function here is pure and deterministic: the same spans always give the same text.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from sqlite_lockprobe.diagnose.model import (
    END_NOT_RECORDED,
    NS_PER_MS,
    UNFINISHED_STATEMENT,
    BusyWait,
    LockHold,
    Timeline,
)
from sqlite_lockprobe.events.resultcodes import code_name

SQL_WIDTH = 80


def ms(ns: int) -> float:
    """Nanoseconds to milliseconds, rounded to 0.1 ms so facts stay stable and readable."""
    return round(ns / NS_PER_MS, 1)


def fmt_ms(value_ms: float) -> str:
    return f"{value_ms:.1f} ms"


def at(t: int, origin: int) -> str:
    """A moment relative to the start of the recording: '+1234.5 ms'."""
    return f"+{ms(t - origin):.1f} ms"


def short_sql(sql: str, width: int = SQL_WIDTH) -> str:
    """One line of SQL, cut to width, so evidence stays one line per fact."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def is_reduced(timeline: Timeline, conn: str) -> bool:
    """True when busy-handler calls were not recorded for conn (the probe's hooks were missing)."""
    if timeline.reduced_detail:
        return True
    info = timeline.connections.get(conn)
    return info is not None and not info.instrumented


def lock_name(hold: LockHold, timeline: Timeline) -> str:
    """SQLite's own name for what a hold is (https://sqlite.org/lockingv3.html, wal.html)."""
    if hold.kind == "write":
        return "the WAL write lock" if timeline.is_wal else "the RESERVED lock"
    return "a WAL read snapshot" if timeline.is_wal else "a SHARED lock"


def wait_outcome(wait: BusyWait) -> str:
    """How a wait ended: how long, with which code, after how many busy-handler calls."""
    calls = f"{wait.handler_calls} busy-handler call{'s' if wait.handler_calls != 1 else ''}"
    if wait.failed:
        return (
            f"failed with {code_name(wait.code)} after {fmt_ms(wait.duration_ms)} and {calls} "
            f"(busy_timeout {wait.timeout_ms} ms)"
        )
    return (
        f"waited {fmt_ms(wait.duration_ms)} and succeeded after {calls} "
        f"(busy_timeout {wait.timeout_ms} ms)"
    )


def wait_line(wait: BusyWait, origin: int) -> str:
    """Who waited, when, on which statement, and how it ended."""
    sql = short_sql(wait.call.sql or wait.call.op)
    return (
        f"{wait.waiter.describe()} at {at(wait.t0, origin)} running `{sql}` "
        f"({wait.phase}): {wait_outcome(wait)}"
    )


def hold_story(hold: LockHold, timeline: Timeline, origin: int) -> str:
    """The holder's story (PATTERNS.md): who, taken by what and when, how long, and how the
    time was spent: inside SQLite statements or idle in the application between them."""
    held_ms = ms(hold.t1 - hold.t0)
    inside_ms = ms(hold.in_statements_ns)
    idle_ms = ms(hold.idle_ns)
    if hold.released_by == UNFINISHED_STATEMENT:
        ending = (
            f"still unfinished when last seen at {at(hold.t1, origin)} (a cursor not exhausted "
            "outside any transaction keeps its read lock until it is fetched to the end or "
            "closed; its thread was then at the line named)"
        )
    else:
        ending = f"released by {hold.released_by}"
    parts = [
        f"{lock_name(hold, timeline)} held by {hold.holder.describe()} for {fmt_ms(held_ms)} "
        f"from {at(hold.t0, origin)}, taken by `{short_sql(hold.taken_by)}`, {ending}",
        f"{fmt_ms(inside_ms)} inside SQLite statements, {fmt_ms(idle_ms)} idle in the application",
    ]
    if _notable_part(hold.own_wait_ns, hold):
        parts.append(
            f"of the time inside statements, {fmt_ms(ms(hold.own_wait_ns))} the holder itself "
            f"waited for a lock (its `{short_sql(hold.own_wait_sql or '?', 40)}` waiting for "
            "other connections to let go)"
        )
    if _notable_part(hold.scheduling_delay_ns, hold):
        parts.append(
            f"of which {fmt_ms(ms(hold.scheduling_delay_ns))} in no step of the workload (the "
            "holder was waiting to be scheduled)"
        )
    gap = hold.longest_idle
    if gap is not None and round(gap.duration_ms, 1) > 0:
        parts.append(
            f"longest idle gap {fmt_ms(round(gap.duration_ms, 1))} between "
            f"`{short_sql(gap.before_sql, 40)}` and `{short_sql(gap.after_sql, 40)}`"
        )
    if hold.autocommit_false:
        parts.append(
            "transaction opened implicitly by Python's sqlite3 with autocommit=False (Python "
            ">= 3.12: a BEGIN right after every commit and rollback, so a transaction is always "
            "open, even after a plain SELECT)"
        )
    elif hold.implicit_begin:
        parts.append(
            "transaction opened implicitly by Python's sqlite3 (a DEFERRED BEGIN before the "
            "first DML)"
        )
    if hold.failed_commit_t is not None:
        parts.append(_after_failed_commit(hold, origin))
    elif hold.released_by in ("error", "end-of-run", "close", "process killed", END_NOT_RECORDED):
        parts.append(_left_open(hold.released_by))
    return "; ".join(parts)


def left_open_after_failed_commit(hold: LockHold) -> bool:
    """A COMMIT failed and nobody rolled back: the transaction kept its locks until the
    connection closed, failed again, or the program ended."""
    return hold.failed_commit_t is not None and hold.released_by in ("error", "end-of-run", "close")


def _after_failed_commit(hold: LockHold, origin: int) -> str:
    assert hold.failed_commit_t is not None
    failed = (
        f"its COMMIT failed at {at(hold.failed_commit_t, origin)} with "
        f"{code_name(hold.failed_commit_code)}"
    )
    longer = fmt_ms(ms(hold.t1 - hold.failed_commit_t))
    if left_open_after_failed_commit(hold):
        return (
            f"{failed} and the transaction was never rolled back: it stayed open {longer} "
            f"longer, holding its lock, until {_ENDINGS[hold.released_by]} (roll back when a "
            "COMMIT fails)"
        )
    return f"{failed}; {hold.released_by} came {longer} later"


_ENDINGS = {
    "error": "a later call failed",
    "close": "the connection was closed",
    "end-of-run": "the run ended (in a traced program: exit)",
}


def _left_open(released_by: str) -> str:
    if released_by == "error":
        return "the transaction was left open after an error until the connection failed"
    if released_by == "close":
        return "the transaction was never committed: closing the connection ended it"
    if released_by == END_NOT_RECORDED:
        return (
            "its end was not recorded: the holder's process recorded nothing after this (it "
            "was killed before its last events were written, or exited with the transaction "
            "open); the hold may have ended at any moment since, so it is shown only up to there"
        )
    if released_by == "process killed":
        return (
            "the holder's process was killed with the transaction open: the OS released its "
            "locks and SQLite rolled the transaction back (hot journal or uncommitted WAL "
            "frames) when the database was next read; none of its writes were kept"
        )
    return (
        "no COMMIT or ROLLBACK was recorded: still open when the run ended (in a traced "
        "program: at exit, or its process's last events were lost)"
    )


@dataclass(frozen=True)
class NearMiss:
    """How close waits that all succeeded came to failing: the evidence line and its facts."""

    line: str
    facts: dict[str, object]


def near_miss(waits: Sequence[BusyWait]) -> NearMiss | None:
    """The margin the longest of these waits left before its busy_timeout, when none failed
    (None when one did: then the margin is gone)."""
    timed = [w for w in waits if w.timeout_ms > 0]
    if not timed or any(w.failed for w in waits):
        return None
    worst = max(timed, key=lambda w: (w.duration_ms / w.timeout_ms, -w.t0))
    used = math.floor(100 * worst.duration_ms / worst.timeout_ms)
    if used >= 100:
        margin = (
            "no margin left (it got the lock on the busy handler's last retry, at the end of "
            "its busy_timeout)"
        )
    else:
        margin = f"{100 - used} % margin"
    line = (
        f"nothing failed, but the longest wait used {used} % of busy_timeout: {margin} "
        f"({fmt_ms(ms(worst.t1 - worst.t0))} of {worst.timeout_ms} ms, {worst.waiter.describe()})"
    )
    facts: dict[str, object] = {
        "longest_wait_ms": ms(worst.t1 - worst.t0),
        "timeout_ms": worst.timeout_ms,
        "used_percent": used,
        "margin_percent": max(0, 100 - used),
        "waiter_conn": worst.waiter.conn,
    }
    return NearMiss(line, facts)


def hold_facts(hold: LockHold, origin: int) -> dict[str, object]:
    """The machine-readable twin of hold_story."""
    gap = hold.longest_idle
    return {
        "holder_conn": hold.holder.conn,
        "holder_worker": hold.holder.worker,
        "holder_pid": hold.holder.pid,
        "holder_thread": hold.holder.thread,
        "holder_task": hold.holder.task,
        "kind": hold.kind,
        "start_ms": ms(hold.t0 - origin),
        "held_ms": ms(hold.t1 - hold.t0),
        "in_statements_ms": ms(hold.in_statements_ns),
        "idle_ms": ms(hold.idle_ns),
        "longest_idle_ms": ms(gap.t1 - gap.t0) if gap else 0.0,
        "taken_by": hold.taken_by,
        "released_by": hold.released_by,
        "implicit_begin": hold.implicit_begin,
        "autocommit_false": hold.autocommit_false,
        "failed_commit_ms": (
            ms(hold.failed_commit_t - origin) if hold.failed_commit_t is not None else None
        ),
        "left_open_after_failed_commit": left_open_after_failed_commit(hold),
    }


def wait_facts(wait: BusyWait, origin: int) -> dict[str, object]:
    return {
        "waiter_conn": wait.waiter.conn,
        "waiter_worker": wait.waiter.worker,
        "waiter_pid": wait.waiter.pid,
        "waiter_thread": wait.waiter.thread,
        "waiter_task": wait.waiter.task,
        "start_ms": ms(wait.t0 - origin),
        "waited_ms": ms(wait.t1 - wait.t0),
        "failed": wait.failed,
        "code": wait.code,
        "handler_calls": wait.handler_calls,
        "timeout_ms": wait.timeout_ms,
        "phase": wait.phase,
        "sql": wait.call.sql,
    }


def wait_order(wait: BusyWait) -> tuple[int, int, int, str, int]:
    """Worst first: failed before succeeded, longer before shorter, then a stable tie-break."""
    return (0 if wait.failed else 1, -(wait.t1 - wait.t0), wait.t0, wait.waiter.conn, wait.t1)


class ConnWaits:
    """Each connection's waits in time order, for 'what is this holder itself waiting on'.

    A connection runs one call at a time, so its waits never overlap each other."""

    def __init__(self, waits: Sequence[BusyWait]) -> None:
        self._waits: dict[str, list[BusyWait]] = {}
        for w in waits:
            self._waits.setdefault(w.waiter.conn, []).append(w)
        self._starts: dict[str, list[int]] = {}
        for conn, conn_waits in self._waits.items():
            conn_waits.sort(key=lambda w: (w.t0, w.t1))
            self._starts[conn] = [w.t0 for w in conn_waits]

    def during(self, conn: str, t0: int, t1: int) -> list[BusyWait]:
        """conn's waits that overlap [t0, t1] (a zero-length wait at t0 counts)."""
        conn_waits = self._waits.get(conn)
        if not conn_waits:
            return []
        i = bisect_left(self._starts[conn], t1 + 1) - 1
        found: list[BusyWait] = []
        while i >= 0 and conn_waits[i].t1 >= t0:
            found.append(conn_waits[i])
            i -= 1
        found.reverse()
        return found


def _notable_part(part_ns: int, hold: LockHold) -> bool:
    """Worth a sentence: at least a fifth of the hold and at least 5 ms."""
    return part_ns >= 5 * NS_PER_MS and part_ns * 5 >= hold.t1 - hold.t0
