"""The wait-for chain behind one wait, told like InnoDB's "LATEST DETECTED DEADLOCK".

waiter -> the lock it waited for and who held it -> what that holder was itself waiting on,
until the chain reaches a holder that waits on nothing, or comes back to a connection already
in it. Every edge of the chain existed at one same instant: each hold and wait it names
overlaps all the waits before it (`window`). Coming back to a connection is a deadlock (a
cycle) only when no wait in it succeeded: SQLite breaks the upgrade deadlock itself by
failing one side at once, after which the others go on.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose.causes import overlap_ns
from sqlite_lockprobe.diagnose.evidence import (
    ConnWaits,
    at,
    hold_story,
    short_sql,
    wait_outcome,
)
from sqlite_lockprobe.diagnose.model import Actor, BusyWait, LockHold, Timeline

MAX_DEPTH = 4


def blockers(wait: BusyWait, timeline: Timeline) -> list[LockHold]:
    """Holds that could have blocked this wait, the one covering most of it first.

    A rollback-journal COMMIT needs EXCLUSIVE, which waits for every SHARED lock
    (lockingv3.html), so other connections' read transactions count for it; any other wait is
    for the single write lock."""
    t1 = max(wait.t1, wait.t0 + 1)
    holds = timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
    if wait.phase == "commit" and not timeline.is_wal:
        holds = holds + timeline.read_holders_during(wait.t0, t1, wait.waiter.conn)
    return sorted(
        holds,
        key=lambda h: (-overlap_ns(h, wait.t0, t1), h.kind != "write", h.t0, h.holder.conn),
    )


def wait_for_chain(
    wait: BusyWait, timeline: Timeline, conn_waits: ConnWaits | None = None
) -> list[str]:
    """Lines describing who waited for whom, starting from `wait`."""
    index = conn_waits or ConnWaits(timeline.waits)
    origin = timeline.origin_ns
    lines: list[str] = []
    path = [wait.waiter]
    chain = [wait]
    current = wait
    window = (wait.t0, _end(wait, timeline))  # the instants every edge so far shares
    for step in range(1, MAX_DEPTH + 1):
        lines.append(f"*** ({step}) WAITER: {current.waiter.describe()}")
        lines.append(
            f"    `{short_sql(current.call.sql or current.call.op)}` ({current.phase}) at "
            f"{at(current.t0, origin)}: {wait_outcome(current)}"
        )
        found = [h for h in blockers(current, timeline) if _overlaps(h.t0, h.t1, window)]
        if not found:
            lines.append(
                f"*** ({step}) WAITS FOR: a lock no recorded connection held "
                "(a process outside the recording?)"
            )
            return lines
        hold = found[0]
        window = (max(window[0], hold.t0), min(window[1], hold.t1))
        lines.append(f"*** ({step}) WAITS FOR: {hold_story(hold, timeline, origin)}")
        if len(found) > 1:
            others = sorted({h.holder.conn for h in found[1:]} - {hold.holder.conn})
            if others:
                lines.append(f"    also held during the wait by: {', '.join(others)}")
        if hold.holder.same_thread_as(current.waiter):
            lines.append(
                "    the holder is driven by the waiter's own OS thread: it cannot run its "
                "COMMIT until this wait gives up"
            )
            return lines
        if any(a.conn == hold.holder.conn for a in path):
            lines.append(_back_to(path, hold, chain))
            return lines
        path.append(hold.holder)
        # What held the holder up: its own waits at that same instant, while it held the lock.
        upstream = [
            w
            for w in index.during(hold.holder.conn, window[0], window[1])
            if w is not current and _overlaps(w.t0, _end(w, timeline), window)
        ]
        if not upstream:
            lines.append(
                f"    {hold.holder.worker} was not waiting on any lock: it was running "
                "statements or idle in the application"
            )
            return lines
        current = upstream[0]
        chain.append(current)
        window = (max(window[0], current.t0), min(window[1], _end(current, timeline)))
    lines.append("    ... (chain continues)")
    return lines


def _end(wait: BusyWait, timeline: Timeline) -> int:
    """Until when a wait stands in the chain: its end, except for a refusal (SQLite failed a
    write at once, without the busy handler, in a transaction that had read): that
    transaction can never go on, yet keeps its locks until it ends, so it stands until then."""
    end = max(wait.t1, wait.t0 + 1)
    if wait.failed and wait.handler_calls == 0:
        conn = wait.waiter.conn
        for hold in (*timeline.read_holds, *timeline.write_holds):
            if hold.holder.conn == conn and hold.t0 <= wait.t0 <= hold.t1:
                end = max(end, hold.t1)
    return end


def _overlaps(t0: int, t1: int, window: tuple[int, int]) -> bool:
    return t0 < window[1] and t1 > window[0]


def _back_to(path: list[Actor], hold: LockHold, chain: list[BusyWait]) -> str:
    """The chain came back to a connection in it: a deadlock only if no wait in it
    succeeded (every one failed, or gave up); otherwise the wait that failed broke it."""
    cycle = " -> ".join(a.worker for a in [*path, hold.holder])
    if all(w.failed for w in chain):
        return f"*** CYCLE: {cycle}: a deadlock; no busy_timeout can resolve it"
    broken = [w for w in chain if w.failed]
    if broken:
        how = (
            f"SQLite broke it by failing {broken[0].waiter.worker}'s "
            f"`{short_sql(broken[0].call.sql or broken[0].call.op, 40)}` with SQLITE_BUSY, "
            "after which the others went on"
        )
    else:
        how = "every wait in it ended and got its lock: the waits came one after another"
    return f"*** BACK TO {hold.holder.worker} ({cycle}): not a deadlock at the end; {how}"
